"""Data-parallel lmms-eval (opt-in, slow): `accelerate launch --multi_gpu --num_processes 2` runs two
gloo processes on CPU (docs/gpu.md); the documents are sharded across them and the answers
equal a single-process run's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _answers(path: Path) -> dict[int, str]:
    """doc_id -> answer; lmms-eval logs a gathered (multi-process) answer as a one-element list and
    does not strip it, so compare stripped strings."""
    out = {}
    for s in map(json.loads, path.read_text().splitlines()):
        resp = s["filtered_resps"]
        out[s["doc_id"]] = (resp[0] if isinstance(resp, list) else resp).strip()
    return out


@pytest.mark.slow
def test_two_process_run_matches_single_process(tmp_path, tiny_ckpt):
    from dopd_vlm.evaluate import evaluate

    ckpt, tasks = tiny_ckpt("qwen3_vl"), str(REPO / "eval" / "tasks")
    common = dict(include_path=tasks, limit=6, batch_size=1)
    single, _ = evaluate([ckpt], ["synthetic_scenes"], tmp_path / "one", labels=["one"], **common)
    launcher = f"{Path(sys.executable).parent / 'accelerate'} launch --multi_gpu --num_processes 2"
    multi, _ = evaluate([ckpt], ["synthetic_scenes"], tmp_path / "two", labels=["two"], launcher=launcher, **common)
    assert single[0].error is None and multi[0].error is None, (single[0].error, multi[0].error)
    assert multi[0].metrics == single[0].metrics
    one = _answers(tmp_path / "one" / "runs" / "one" / "samples_synthetic_scenes.jsonl")
    two = _answers(next((tmp_path / "two" / "runs" / "two").rglob("*_samples_synthetic_scenes.jsonl")))
    assert sorted(two) == list(range(6)) and two == one
    log = (tmp_path / "two" / "runs" / "two" / "lmms_eval.log").read_text()
    assert "Running on rank 1" in log  # really two processes
