"""The shipped benchmark task folders (eval/tasks/ceval, math500, zebralogic, autologi) run end to end under
lmms-eval with the dopd_vlm model, offline: each folder is copied with its data source pointed at
a few local rows in the benchmark's real schema (everything else — prompts, scoring, metrics,
aggregations — is the shipped YAML and utils.py). A task whose data cannot be read fails alone,
named with its dataset, while the other tasks of the row are scored."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _rows():
    """The real-schema rows of tests/unit/test_eval_benchmarks.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_bench_rows", REPO / "tests" / "unit" / "test_eval_benchmarks.py")
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    CEVAL_ROW, ZEBRA_ROW, ZEBRA_HARD, AUTOLOGI_ROW = m.CEVAL_ROW, m.ZEBRA_ROW, m.ZEBRA_HARD, m.AUTOLOGI_ROW
    math = [m.MATH_ROW, m.MATH_FRAC]
    ceval = [CEVAL_ROW, {**CEVAL_ROW, "id": 1, "answer": "A"}]
    zebra = [ZEBRA_ROW, ZEBRA_HARD]
    autologi = [AUTOLOGI_ROW, {**AUTOLOGI_ROW, "idx": 8}]
    return ceval, zebra, autologi, math


def _local_tasks(root: Path) -> Path:
    """Copies of the shipped task folders whose YAMLs read local JSONL files instead of the Hub."""
    ceval, zebra, autologi, math = _rows()
    tasks = root / "tasks"
    for name in ("ceval", "zebralogic", "autologi", "math500"):
        shutil.copytree(REPO / "eval" / "tasks" / name, tasks / name)
    data = root / "data"
    data.mkdir()
    for name, rows in (("ceval", ceval), ("zebralogic", zebra), ("autologi", autologi), ("math500", math)):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    # C-Eval: keep two subjects and the shipped group restricted to them (the shipped template still
    # sets split, prompt and scoring; the group its question-weighted aggregate)
    keep = ("ceval_valid_logic", "ceval_valid_law")
    for p in (tasks / "ceval").glob("ceval_valid_*.yaml"):
        if p.stem not in keep:
            p.unlink()
    for name in keep:
        y = tasks / "ceval" / f"{name}.yaml"
        subject = name.removeprefix("ceval_valid_")
        y.write_text(y.read_text().replace(f"dataset_name: {subject}\n", "dataset_path: json\n"
                                           f"dataset_kwargs:\n  data_files:\n    val: {data / 'ceval.jsonl'}\n"))
    group = tasks / "ceval" / "ceval_valid.yaml"
    lines = [ln for ln in group.read_text().splitlines() if not ln.startswith("  - ceval_valid_") or ln[4:] in keep]
    group.write_text("\n".join(lines) + "\n")
    zy = tasks / "zebralogic" / "zebralogic.yaml"
    zy.write_text(zy.read_text().replace("dataset_path: allenai/ZebraLogicBench-private\ndataset_name: grid_mode\n",
                                         f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data / 'zebralogic.jsonl'}\n"))
    my = tasks / "math500" / "math500.yaml"
    my.write_text(my.read_text().replace("dataset_path: HuggingFaceH4/MATH-500\n",
                                         f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data / 'math500.jsonl'}\n"))
    for lang, path in (("en", data / "autologi.jsonl"), ("cn", root / "missing" / "AutoLogi_cn.jsonl")):
        y = tasks / "autologi" / f"autologi_{lang}.yaml"
        text = y.read_text()
        url = text.split("test: ", 1)[1].strip()
        y.write_text(text.replace(url, str(path)))
    return tasks


def test_benchmark_tasks_run_under_lmms_eval(tmp_path, tiny_ckpt):
    from dopd_vlm.evaluate import evaluate

    tasks = _local_tasks(tmp_path)
    names = ["ceval_valid", "math500", "zebralogic", "autologi_en", "autologi_cn"]
    results, paths = evaluate([tiny_ckpt("qwen3")], names, tmp_path / "out", include_path=str(tasks), limit=2,
                              labels=["student"], batch_size=2, max_new_tokens=8,
                              chat_template_kwargs={"enable_thinking": False})
    r = results[0]
    # autologi_cn's data file does not exist: that task alone fails, named with its dataset
    assert list(r.task_errors) == ["autologi_cn"], r.task_errors
    assert r.task_errors["autologi_cn"].startswith("task autologi_cn (dataset json (")
    assert "AutoLogi_cn.jsonl" in r.task_errors["autologi_cn"]
    assert r.status == "partial" and r.error is None
    assert "accuracy" in r.metrics["ceval_valid"] and r.counts["ceval_valid"] == 4  # 2 subjects x 2
    assert set(r.metrics["zebralogic"]) == {"puzzle_acc", "cell_acc", "easy_puzzle_acc", "hard_puzzle_acc", "no_answer"}
    assert set(r.metrics["autologi_en"]) == {"accuracy", "extraction_failed"}
    assert set(r.metrics["math500"]) == {"exact_match", "accuracy_level_1", "accuracy_level_2"}
    for task in ("math500", "zebralogic", "autologi_en"):
        assert r.counts[task] == 2, (task, r.counts)
        assert all(0.0 <= v <= 1.0 for v in r.metrics[task].values() if v == v)
    # the random tiny model writes no parsable ZebraLogic JSON: no answers, nothing solved
    assert r.metrics["zebralogic"]["no_answer"] == 1.0 and r.metrics["zebralogic"]["puzzle_acc"] == 0.0
    md = paths["md"].read_text()
    assert "`--limit 2`" in md and "ceval_valid/accuracy (n=4)" in md
    assert "| student | partial |" in md and "task autologi_cn (dataset json" in md
    row = next(csv.DictReader(open(paths["csv"])))
    assert row["zebralogic/n"] == "2" and row["limit"] == "2" and row["autologi_cn/result"] == "FAILED"
    # the prompts reached the model in the shipped form, rendered non-thinking
    samples = [json.loads(x) for x in (tmp_path / "out" / "runs" / "student" / "samples_ceval_valid_logic.jsonl")
               .read_text().splitlines()]
    assert len(samples) == 2 and samples[0]["target"] == "B"


def test_subprocess_mode_fails_only_the_failing_task(tmp_path, tiny_ckpt):
    """--subprocess runs one lmms-eval process per task: autologi_cn's missing data file fails that
    cell alone, named with its dataset; math500 in the same row is scored."""
    from dopd_vlm.evaluate import evaluate

    tasks = _local_tasks(tmp_path)
    results, paths = evaluate([tiny_ckpt("qwen3")], ["math500", "autologi_cn"], tmp_path / "out",
                              include_path=str(tasks), limit=2, labels=["student"], batch_size=2,
                              max_new_tokens=8, subprocess=True)
    r = results[0]
    assert r.status == "partial" and r.error is None
    assert list(r.task_errors) == ["autologi_cn"], r.task_errors
    assert r.task_errors["autologi_cn"].startswith("task autologi_cn (dataset json (") and "lmms_eval_autologi_cn.log" in r.task_errors["autologi_cn"]
    assert r.counts["math500"] == 2 and "exact_match" in r.metrics["math500"]
    row = next(csv.DictReader(open(paths["csv"])))
    assert row["status"] == "partial" and row["autologi_cn/result"] == "FAILED" and row["math500/n"] == "2"
    assert len((tmp_path / "out" / "runs" / "student" / "command.sh").read_text().splitlines()) == 2


def test_lmms_eval_aime25_scores_boxed_integer_answers_without_a_judge(monkeypatch):
    """AIME25 runs on lmms-eval's own aime25_nofigures: its scoring needs no GPT judge for integer
    answers (checked on simplescaling/aime25_nofigures-style rows: problem, answer, solution)."""
    from lmms_eval.tasks.aime import utils as aime

    monkeypatch.delenv("PROCESSOR", raising=False)
    doc = {"problem": "Find the sum of all integer bases $b>9$ for which $17_b$ is a divisor of $97_b$.",
           "answer": "70", "solution": ""}
    cot = "Writing $17_b = b+7$ and $97_b = 9b+7$, we need $b+7 \\mid 56$, so $b = 21$ or $49$; the sum is $\\boxed{70}$."
    assert aime.process_results(doc, [cot])["exact_match"] == 1
    assert aime.process_results(doc, ["\\boxed{070}"])["exact_match"] == 1
    assert aime.process_results(doc, ["so the sum is \\boxed{56}"])["exact_match"] == 0
