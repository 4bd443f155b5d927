"""`dopd-vlm demo --quick` end to end on the shipped warm starts (issue 10 acceptance: <= 3 min)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from dopd_vlm.demo import ASSETS


@pytest.mark.skipif(not (ASSETS / "teacher" / "config.json").exists(), reason="no shipped demo warm starts")
def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "dopd_vlm.cli", "demo", "--quick", "--out", str(out)],
                         capture_output=True, text=True, timeout=900)
    elapsed = time.perf_counter() - t0
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    report = (out / "report" / "report.md").read_text()
    for row in ("teacher + privileged text", "teacher (plain)", "student (warm start)", "vanilla_opd",
                "opd_priv_teacher", "| dopd |"):
        assert row in report, row
    assert "| dopd |" in res.stdout  # the table is printed
    assert (out / "report" / "tokens_dopd.html").exists()
    assert (out / "report" / "plots_dopd" / "regime_fractions.png").exists()
    print(f"demo --quick took {elapsed:.0f} s")
