"""`dopd-vlm eval`: several tiny checkpoints through lmms-eval into one comparison table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_eval_table_lists_every_checkpoint(tmp_path, tiny_ckpt, capsys):
    """In-process runs (the default): two VL checkpoints score, a text-only checkpoint on the image
    task crashes inside lmms-eval; all three are rows of one table and the exit status is 1."""
    from dopd_vlm.cli import main

    student, other, text_only = tiny_ckpt("qwen3_vl"), tiny_ckpt("qwen3_vl", seed=1), tiny_ckpt("qwen3")
    out = tmp_path / "cmp"
    rc = main(["eval", "--model", student, "--model", other, "--model", text_only,
               "--label", "student", "--label", "seed1", "--label", "llm",
               "--suite", str(REPO / "eval" / "suites" / "synthetic.yaml"), "--limit", "4", "--batch-size", "2",
               "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 1, printed[-3000:]
    rows = list(csv.DictReader(open(out / "comparison.csv")))
    assert [r["checkpoint"] for r in rows] == ["student", "seed1", "llm"]
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    for r in rows[:2]:
        assert 0.0 <= float(r["synthetic_scenes/accuracy"]) <= 1.0
    assert rows[2]["synthetic_scenes/accuracy"] == "FAILED"
    # per-family columns come from the task's own metrics (first 4 held-out scenes)
    assert any(k.startswith("synthetic_scenes/accuracy_") for k in rows[0])
    md = (out / "comparison.md").read_text()
    assert "| student | ok |" in md and "| seed1 | ok |" in md and "| llm | failed |" in md
    assert "text-only model got" in md
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "results.json").read_text())
    assert [s["error"] is None for s in summary] == [True, True, False]
    assert len((out / "runs" / "student" / "samples_synthetic_scenes.jsonl").read_text().splitlines()) == 4


def test_eval_subprocess_reports_a_crashed_run(tmp_path, tiny_ckpt, capsys):
    """--subprocess: lmms-eval exits 0 after the crash; the wrapper finds no results JSON, marks the
    row FAILED with lmms-eval's logged error, and exits 1."""
    from dopd_vlm.cli import main

    out = tmp_path / "cmp"
    rc = main(["eval", "--model", tiny_ckpt("qwen3"), "--tasks", "synthetic_scenes", "--subprocess",
               "--include-path", str(REPO / "eval" / "tasks"), "--limit", "2", "--out", str(out)])
    assert rc == 1
    rows = list(csv.DictReader(open(out / "comparison.csv")))
    assert rows[0]["status"] == "failed"
    md = (out / "comparison.md").read_text()
    assert "## Failed evaluations" in md and "no results JSON" in md and "text-only model got" in md
    assert "--model dopd_vlm" in (out / "runs" / rows[0]["checkpoint"] / "command.sh").read_text()


def _text_only_dataset(out: Path) -> Path:
    import datasets

    from data_builders.records import make_record, record_features

    records = [make_record(id=f"text/test/{i}", source={"dataset": "text", "split": "test"}, images=[],
                           question=f"What is {i} plus {i}?", answer=str(2 * i),
                           privileged={"hints": [f"Add {i} to itself."]}, meta={"question_family": "add"})
               for i in range(3)]
    datasets.DatasetDict({"test": datasets.Dataset.from_list(records, features=record_features())}).save_to_disk(str(out))
    return out


def test_eval_in_process_text_only_and_qwen2_vl(tmp_path, tiny_ckpt):
    """Every family loads through the adapters: a text-only Qwen3 checkpoint on a text task (numeric
    metric), a Qwen2-VL checkpoint on the image task."""
    from dopd_vlm.evaluate import evaluate, make_task

    tasks = tmp_path / "tasks"
    make_task(_text_only_dataset(tmp_path / "ds"), "text_sums", out=tasks / "text_sums")
    results, paths = evaluate([tiny_ckpt("qwen3")], ["text_sums"], tmp_path / "llm", include_path=str(tasks))
    assert results[0].error is None, results[0].error
    assert set(results[0].metrics["text_sums"]) == {"accuracy", "accuracy_add"}
    results, _ = evaluate([tiny_ckpt("qwen2_vl")], ["synthetic_scenes"], tmp_path / "vl",
                          include_path=str(REPO / "eval" / "tasks"), limit=2)
    assert results[0].error is None, results[0].error
    assert 0.0 <= results[0].metrics["synthetic_scenes"]["accuracy"] <= 1.0
