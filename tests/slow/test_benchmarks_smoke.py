"""Opt-in smoke runs of the benchmark scripts on tiny settings (they are measured by hand, not in CI)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_gpu_tiny_runs_every_code_path_on_cpu(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--tiny"], capture_output=True,
                         text=True, timeout=900, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.slow
def test_bench_loss_small(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_loss.py"), "--R", "64", "--V", "2048",
                          "--H", "64"], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
