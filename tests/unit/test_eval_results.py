"""The `dopd-vlm eval` wrapper without models: results parsing, failure detection, the comparison
table and chart, suites. (The end-to-end runs with tiny checkpoints are in tests/integration.)"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from dopd_vlm import evaluate as E

REPO = Path(__file__).resolve().parents[2]

RESULTS = {
    "results": {
        "scenes": {"alias": "scenes", "accuracy,none": 0.5, "accuracy_stderr,none": 0.1,
                   "accuracy_stderr_clustered,none": "N/A", "accuracy_count,none": 0.25},
        "gsm8k_cot_zeroshot": {"exact_match,strict-match": 0.1, "exact_match,flexible-extract": 0.3},
    },
}


def test_parse_results_keeps_metrics_drops_stderr(tmp_path):
    path = tmp_path / "x_results.json"
    path.write_text(json.dumps(RESULTS))
    got = E.parse_results(path, ["scenes", "gsm8k_cot_zeroshot"])
    assert got == {"scenes": {"accuracy": 0.5, "accuracy_count": 0.25},
                   "gsm8k_cot_zeroshot": {"exact_match,strict-match": 0.1, "exact_match,flexible-extract": 0.3}}


def test_parse_results_missing_task_is_an_error(tmp_path):
    path = tmp_path / "x_results.json"
    path.write_text(json.dumps({"results": {"scenes": {"alias": "scenes"}}}))
    with pytest.raises(E.EvalError, match="no metrics for task 'scenes'"):
        E.parse_results(path, ["scenes"])
    with pytest.raises(E.EvalError, match="no metrics for task 'other'"):
        E.parse_results(path, ["other"])


def _fake_lmms_eval(script: str):
    """Replace the lmms-eval command by a Python snippet; ``RUN_DIR`` is the run folder."""
    def command(checkpoint, tasks, run_dir, **kw):
        return [sys.executable, "-c", script.replace("RUN_DIR", str(run_dir))]
    return command


@pytest.mark.parametrize("script,error", [
    # lmms-eval 0.7.3 logs the exception and exits 0: no results JSON is the signal
    ("print('| ERROR | lmms_eval.__main__:cli_evaluate:614 - Error during evaluation: boom')",
     "Error during evaluation: boom"),
    ("import sys; sys.exit(3)", "lmms-eval exited 3"),
    # a results JSON without the task's metrics is a failure too
    ("import json, pathlib; p = pathlib.Path('RUN_DIR') / 'm'; p.mkdir(); "
     "(p / 'a_results.json').write_text(json.dumps({'results': {}}))", "no metrics for task 'scenes'"),
])
def test_run_checkpoint_detects_failures(tmp_path, monkeypatch, script, error):
    monkeypatch.setattr(E, "lmms_eval_command", _fake_lmms_eval(script))
    r = E.run_checkpoint("ckpt", "ckpt", ["scenes"], tmp_path)
    assert r.error is not None and error in r.error
    assert r.metrics == {}
    assert (tmp_path / "runs" / "ckpt" / "command.sh").is_file()


def test_run_checkpoint_reads_fresh_results(tmp_path, monkeypatch):
    script = ("import json, pathlib; p = pathlib.Path('RUN_DIR') / 'm'; p.mkdir(); "
              f"(p / '1_results.json').write_text({json.dumps(json.dumps(RESULTS))})")
    monkeypatch.setattr(E, "lmms_eval_command", _fake_lmms_eval(script))
    r = E.run_checkpoint("ckpt", "ckpt", ["scenes"], tmp_path)
    assert r.error is None
    assert r.metrics == {"scenes": {"accuracy": 0.5, "accuracy_count": 0.25}}


def _result(label, metrics, error=None):
    return E.RunResult(label, f"/ckpts/{label}", metrics, error, Path("."))


def test_comparison_table_and_chart(tmp_path):
    results = [_result("student", {"scenes": {"accuracy": 0.4, "accuracy_count": 0.2, "accuracy_exist": 0.6}}),
               _result("dopd", {"scenes": {"accuracy": 0.55, "accuracy_count": 0.3, "accuracy_exist": 0.8}}),
               _result("broken", {}, error="no results JSON under x: boom")]
    cols = E.comparison_columns(results, {}, ["scenes"])
    assert cols == [("scenes", "accuracy"), ("scenes", "accuracy_count"), ("scenes", "accuracy_exist")]
    paths = E.write_comparison(results, cols, tmp_path)
    rows = list(csv.DictReader(open(paths["csv"])))
    assert [r["checkpoint"] for r in rows] == ["student", "dopd", "broken"]
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert rows[1]["scenes/accuracy_exist"] == "0.8000"
    assert rows[2]["scenes/accuracy"] == "FAILED"
    md = paths["md"].read_text()
    assert "| dopd | ok | 0.5500 | 0.3000 | 0.8000 |" in md
    assert "## Failed evaluations" in md and "**broken**" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_primary_metric_columns_from_a_suite():
    results = [_result("a", {"gsm8k_cot_zeroshot": {"exact_match,strict-match": 0.1,
                                                    "exact_match,flexible-extract": 0.3}})]
    cols = E.comparison_columns(results, {"gsm8k_cot_zeroshot": "exact_match,flexible-extract"},
                                ["gsm8k_cot_zeroshot"])
    assert cols == [("gsm8k_cot_zeroshot", "exact_match,flexible-extract")]


def test_labels_unique_and_explicit():
    assert E._labels(["/r1/ckpt", "/r2/other"], None) == ["ckpt", "other"]
    assert E._labels(["/r1/checkpoint-10", "/r2/checkpoint-10"], None) == ["r1_checkpoint-10", "r2_checkpoint-10"]
    assert E._labels(["/a", "/b"], ["student", "dopd"]) == ["student", "dopd"]
    with pytest.raises(E.EvalError, match="2 --label values for 1"):
        E._labels(["/a"], ["x", "y"])


def _installed_task_names() -> set[str]:
    """Every task and group name declared in the installed lmms-eval's task YAMLs."""
    root = Path(importlib.util.find_spec("lmms_eval").submodule_search_locations[0]) / "tasks"
    names = set()
    pattern = re.compile(r"^(?:task|group):\s*[\"']?([A-Za-z0-9_.+-]+)", re.MULTILINE)
    for path in root.rglob("*"):
        if path.is_file() and (path.suffix == ".yaml" or path.name.endswith("_yaml")):
            names.update(pattern.findall(path.read_text(errors="replace")))
    return names


@pytest.mark.parametrize("suite", ["paper_vlm.yaml", "paper_llm.yaml", "synthetic.yaml"])
def test_suites_name_real_tasks(suite):
    s = E.load_suite(REPO / "eval" / "suites" / suite)
    tasks, primary, include = s.tasks, s.primary, s.include_path
    assert len(tasks) == len(set(tasks))
    if suite.startswith("paper_"):
        assert len(tasks) == 8  # docs/method.md §9: eight benchmarks per setting
        assert set(primary) == set(tasks)
    known = _installed_task_names()
    if include is not None:  # the project's task folders: the task and group names of their YAMLs
        pattern = re.compile(r"^(?:task|group):\s*([A-Za-z0-9_.+-]+)", re.MULTILINE)
        known |= {n for p in include.rglob("*.yaml") for n in pattern.findall(p.read_text())}
    missing = [t for t in s.lmms_tasks if t not in known]  # harness entries: tests/unit/test_eval_benchmarks.py
    assert not missing, f"{suite}: not lmms-eval 0.7.3 task names: {missing}"


def test_eval_modules_import_light():
    """`dopd-vlm eval --help` and task utils must not pull in torch-heavy libraries."""
    import subprocess

    code = ("import sys, dopd_vlm.evaluate, dopd_vlm.lmms_task_utils\n"
            "heavy = [m for m in ('torch', 'transformers', 'datasets', 'lmms_eval', 'matplotlib') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_lmms_eval_command_passes_batch_size_outside_model_args(tmp_path):
    """lmms-eval 0.7.3 passes --batch_size to the model too; inside --model_args it would clash."""
    cmd = E.lmms_eval_command("ck", ["a", "b"], tmp_path, include_path=str(tmp_path), limit=5, batch_size=4,
                              device="cpu", dtype=None, max_new_tokens=32)
    assert cmd[1:3] == ["-m", "lmms_eval"]
    args, rest = {}, cmd[3:]
    while rest:  # "--flag value" pairs, "--log_samples" alone
        if len(rest) > 1 and not rest[1].startswith("--"):
            args[rest[0]], rest = rest[1], rest[2:]
        else:
            args[rest[0]], rest = True, rest[1:]
    assert args["--log_samples"] is True
    assert args["--model"] == "dopd_vlm" and args["--tasks"] == "a,b" and args["--batch_size"] == "4"
    assert args["--model_args"] == f"pretrained={Path('ck').resolve()},device=cpu,max_new_tokens=32"
    assert args["--limit"] == "5" and args["--include_path"] == str(tmp_path.resolve())


def test_shipped_synthetic_task_is_current():
    """eval/tasks/synthetic_scenes carries today's scoring code and the student view only."""
    import pyarrow.parquet as pq

    task = REPO / "eval" / "tasks" / "synthetic_scenes"
    assert (task / "utils.py").read_text() == Path(E.__file__).with_name("lmms_task_utils.py").read_text(), \
        "re-run eval/make_synthetic_task.sh"
    table = pq.read_table(task / "test.parquet")
    assert sorted(table.column_names) == sorted(["id", "images", "prompt", "question", "choices", "target",
                                                 "metric", "rel_tol", "family"])
    info = json.loads((task / "task_info.json").read_text())
    assert table.num_rows == info["n"] == 60
    assert sorted(set(table.column("family").to_pylist())) == ["compare", "count", "exist", "extreme", "query", "spatial"]
