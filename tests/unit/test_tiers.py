"""The unit tier stays torch-only: the pure modules must not import transformers or datasets."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

PURE_MODULES = ["dopd_vlm.config", "dopd_vlm.divergences", "dopd_vlm.routing", "dopd_vlm.tables",
                "dopd_vlm.loss", "dopd_vlm.lean", "dopd_vlm.privileged", "dopd_vlm.cli", "dopd_vlm.evaluate",
                "dopd_vlm.lmms_task_utils", "dopd_vlm.views", "data_builders.cli"]


def test_pure_modules_do_not_import_heavy_libraries():
    present = [m for m in PURE_MODULES if importlib.util.find_spec(m) is not None]
    assert "dopd_vlm.config" in present
    code = (
        "import sys\n"
        f"for m in {present!r}: __import__(m)\n"
        "heavy = [m for m in ('transformers', 'datasets', 'lmms_eval', 'accelerate') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
