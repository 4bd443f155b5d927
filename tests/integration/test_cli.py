"""The console script and every subcommand's --help."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from dopd_vlm.cli import SUBCOMMANDS


def _cli(*args):
    exe = shutil.which("dopd-vlm") or sys.executable
    cmd = [exe, *args] if exe.endswith("dopd-vlm") else [exe, "-m", "dopd_vlm.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_subcommands():
    res = _cli("--help")
    assert res.returncode == 0, res.stderr
    for name in SUBCOMMANDS:
        assert name in res.stdout


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_subcommand_help(name):
    from dopd_vlm.cli import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([name, "--help"])
    assert exc.value.code == 0


def test_unknown_subcommand_fails():
    res = _cli("frobnicate")
    assert res.returncode != 0 and "invalid choice" in res.stderr
