"""Evaluate checkpoints with lmms-eval, and turn built datasets into lmms-eval tasks.

Two modes:

  dopd-vlm eval --model CKPT [--model CKPT ...] (--tasks T1,T2 | --suite SUITE.yaml)
                [--include-path eval/tasks] [--limit N] [--out DIR]
      Runs lmms-eval (model ``dopd_vlm``) once per checkpoint, checks every run's results JSON
      (lmms-eval 0.7.3 exits 0 even when the evaluation crashed), and writes one comparison table
      across checkpoints: DIR/comparison.md, DIR/comparison.csv and DIR/comparison.png
      (per-checkpoint results JSON, samples and logs under DIR/runs/LABEL/).
      Exit status 1 when any evaluation failed (its cells read "FAILED"; its log is kept).

  dopd-vlm eval make-task DATASET_DIR --name NAME [--out eval/tasks/NAME] [--split test]
      Writes an lmms-eval task folder for a dataset built by ``dopd-vlm build`` (a
      ``save_to_disk`` folder of records): NAME.yaml, utils.py and the student view of the data
      as parquet (images embedded; privileged fields are never written). The metric is chosen per
      record: option letter for multiple choice, numeric with tolerance for numbers, normalised
      exact match otherwise; ``accuracy_<family>`` per question family when the records carry one.

How lmms-eval runs: by default in this process, through ``lmms_eval.evaluator.simple_evaluate``
with one ``TaskManager`` for all checkpoints. Importing lmms-eval and indexing its ~1,000 task
configs takes 8-15 s on these CPUs, so paying it once instead of once per checkpoint matters for
the CPU demo (five or more checkpoints). A crash in one checkpoint is caught, recorded and the next
checkpoint runs. ``--subprocess`` runs each checkpoint as its own ``python -m lmms_eval`` process
instead (the exact command users run, saved as ``command.sh``): full isolation, so an
out-of-memory or CUDA error cannot affect the others and memory returns to the system between
checkpoints; use it for large models. Either way the verdict comes from the run's results JSON,
never from an exit status (lmms-eval 0.7.3 exits 0 when the evaluation crashed).
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

TASK_UTILS_MODULE = "dopd_vlm.lmms_task_utils"
METRIC_KINDS = ("auto", "choice", "numeric", "exact")
# Project decision: the scene generator (data_builders/scenes.py) stores the question family in
# meta["question_family"].
DEFAULT_FAMILY_KEY = "question_family"
# Generation budget written into make-task tasks: room for a chain of thought that ends in \boxed{}
# (the records' prompts ask for one). 1024 is OpenAI simple-evals' chat-sampler max_tokens, the
# budget lmms-eval's openai_math doubles; `make-task --max-new-tokens` and `eval --max-new-tokens`
# (which replaces every task's value) change it either way.
DEFAULT_TASK_MAX_NEW_TOKENS = 1024
DEFAULT_OUT = "outputs/eval"  # project decision (outputs/ is git-ignored)
DEFAULT_BATCH_SIZE = 8  # project decision: tiny models on 2 CPU cores gain little beyond 8


class EvalError(RuntimeError):
    """A failed evaluation or an unusable input; the message names the checkpoint/task/file."""


# ================================================================================ make-task
def _letter_target(rid: str, answer: str, choices: list[str]) -> str:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:len(choices)]
    if answer in letters:
        return answer
    if answer in choices:
        return letters[choices.index(answer)]
    raise EvalError(f"record {rid!r}, field 'answer': {answer!r} is neither an option letter "
                    f"({', '.join(letters)}) nor one of the choices {choices}")


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def scoring_columns(row: dict, metric: str, family_key: str | None, rel_tol: float) -> dict:
    """``{target, metric, rel_tol, family}`` for one record (``id``, ``choices``, ``answer``, ``meta``)."""
    rid, answer, choices = row["id"], row["answer"], row["choices"]
    if answer is None or not str(answer).strip():
        raise EvalError(f"record {rid!r}, field 'answer': empty; a task needs a canonical answer to score")
    answer = str(answer).strip()
    kind = metric
    if kind == "auto":
        kind = "choice" if choices else ("numeric" if _is_number(answer) else "exact")
    if kind == "choice":
        if not choices:
            raise EvalError(f"record {rid!r}, field 'choices': metric 'choice' needs options")
        target = _letter_target(rid, answer, list(choices))
    elif kind == "numeric":
        if not _is_number(answer):
            raise EvalError(f"record {rid!r}, field 'answer': {answer!r} is not a number (metric 'numeric')")
        target = answer
    else:
        target = answer
    family = ""
    if family_key:
        meta = row["meta"] or {}
        family = str(meta.get(family_key) or "")
    return {"target": target, "metric": kind, "rel_tol": float(rel_tol), "family": family}


def _load_split(dataset_dir: Path, split: str):
    import datasets

    if not dataset_dir.is_dir():
        raise EvalError(f"{dataset_dir}: no such dataset folder (expected a datasets save_to_disk folder)")
    ds = datasets.load_from_disk(str(dataset_dir))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise EvalError(f"{dataset_dir}: no split {split!r}; splits: {sorted(ds)} (pass --split)")
        ds = ds[split]
    required = ("id", "images", "prompt", "question", "choices", "answer")
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        raise EvalError(f"{dataset_dir}: records lack field(s) {missing} (see docs/data.md)")
    return ds


def make_task(dataset_dir: str | Path, name: str, out: str | Path | None = None, split: str = "test",
              limit: int | None = None, metric: str = "auto", family_key: str | None = DEFAULT_FAMILY_KEY,
              rel_tol: float = 0.0, max_new_tokens: int = DEFAULT_TASK_MAX_NEW_TOKENS) -> Path:
    """Write an lmms-eval task folder for ``dataset_dir``'s ``split``; returns the folder.

    Only the student view is written (``id, images, prompt, question, choices``) plus the scoring
    columns of ``scoring_columns``; ``privileged`` and ``privileged_context`` never leave the dataset.
    """
    import importlib

    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
        raise EvalError(f"task name {name!r}: use letters, digits and underscores (it becomes a metric key)")
    if metric not in METRIC_KINDS:
        raise EvalError(f"--metric {metric!r}; choose from {METRIC_KINDS}")
    out = Path(out) if out is not None else Path("eval") / "tasks" / name
    ds = _load_split(Path(dataset_dir), split)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    if len(ds) == 0:
        raise EvalError(f"{dataset_dir}: split {split!r} is empty")
    meta_cols = ["id", "choices", "answer"] + (["meta"] if family_key and "meta" in ds.column_names else [])
    if family_key and "meta" not in ds.column_names:
        family_key = None
    rows = ds.select_columns(meta_cols).to_list()
    cols = [scoring_columns({**r, "meta": r.get("meta")}, metric, family_key, rel_tol) for r in rows]
    student = ds.select_columns(["id", "images", "prompt", "question", "choices"])
    for key in ("target", "metric", "rel_tol", "family"):
        student = student.add_column(key, [c[key] for c in cols])

    out.mkdir(parents=True, exist_ok=True)
    student.to_parquet(str(out / f"{split}.parquet"))
    utils_src = Path(importlib.import_module(TASK_UTILS_MODULE).__file__).read_text()
    (out / "utils.py").write_text(utils_src)
    families = sorted({c["family"] for c in cols if c["family"]})
    (out / f"{name}.yaml").write_text(_task_yaml(name, split, families, max_new_tokens, dataset_dir))
    counts = {"n": len(cols), "metrics": _count(c["metric"] for c in cols),
              "families": _count(c["family"] for c in cols if c["family"])}
    (out / "task_info.json").write_text(json.dumps(
        {"task": name, "source": str(dataset_dir), "split": split, "limit": limit, **counts}, indent=2) + "\n")
    return out


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def _task_yaml(name: str, split: str, families: list[str], max_new_tokens: int, source) -> str:
    from dopd_vlm.lmms_task_utils import family_metric_name

    metrics = ["accuracy"] + [family_metric_name(f) for f in families]
    metric_list = "".join(f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true\n" for m in metrics)
    return (
        f"# Written by: dopd-vlm eval make-task {source} --name {name} --split {split}\n"
        f"# Run: lmms-eval --model dopd_vlm --model_args pretrained=CKPT --tasks {name} "
        f"--include_path <folder above this one>\n"
        f"task: {name}\n"
        "dataset_path: parquet\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    {split}: {split}.parquet\n"
        f"test_split: {split}\n"
        "output_type: generate_until\n"
        "doc_to_visual: !function utils.doc_to_visual\n"
        "doc_to_text: !function utils.doc_to_text\n"
        "doc_to_messages: !function utils.doc_to_messages\n"
        "doc_to_target: !function utils.doc_to_target\n"
        "process_results: !function utils.process_results\n"
        "generation_kwargs:\n"
        f"  max_new_tokens: {max_new_tokens}\n"
        "  temperature: 0\n"
        "  do_sample: false\n"
        "  until: []\n"
        "metric_list:\n"
        f"{metric_list}"
        "metadata:\n"
        "  version: 1.0\n"
    )


# ================================================================================ running lmms-eval
@dataclass
class RunResult:
    label: str
    checkpoint: str
    metrics: dict[str, dict[str, float]]  # task -> metric -> value
    error: str | None  # None when the run succeeded
    run_dir: Path


def read_suite(path: str | Path) -> tuple[list[str], dict[str, str], Path | None]:
    """A suite YAML -> (task names, {task: primary metric}, include path or None)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise EvalError(f"suite {path}: no such file (suites live in eval/suites/)")
    suite = yaml.safe_load(path.read_text())
    if not isinstance(suite, dict) or not isinstance(suite.get("tasks"), list) or not suite["tasks"]:
        raise EvalError(f"suite {path}: needs a non-empty 'tasks' list")
    tasks, primary = [], {}
    for i, entry in enumerate(suite["tasks"]):
        if not isinstance(entry, dict) or "task" not in entry:
            raise EvalError(f"suite {path}: tasks[{i}] needs a 'task' key (an lmms-eval task name)")
        tasks.append(str(entry["task"]))
        if entry.get("metric"):
            primary[str(entry["task"])] = str(entry["metric"])
    include = suite.get("include_path")
    include_path = (path.parent / include).resolve() if include else None
    return tasks, primary, include_path


def lmms_eval_command(checkpoint: str, tasks: list[str], run_dir: Path, include_path: str | None,
                      limit: int | None, batch_size: int, device: str, dtype: str | None,
                      max_new_tokens: int | None, launcher: str | None = None) -> list[str]:
    """The lmms-eval CLI call for one checkpoint; ``launcher`` (e.g. ``accelerate launch
    --num_processes 8``) replaces ``python`` to run data-parallel, one model copy per process."""
    import shlex
    import sys

    model_args = [f"pretrained={Path(checkpoint).resolve()}", f"device={device}"]
    if dtype:
        model_args.append(f"dtype={dtype}")
    if max_new_tokens is not None:
        model_args.append(f"max_new_tokens={max_new_tokens}")
    prefix = shlex.split(launcher) if launcher else [sys.executable]
    cmd = [*prefix, "-m", "lmms_eval", "--model", "dopd_vlm", "--model_args", ",".join(model_args),
           "--tasks", ",".join(tasks), "--batch_size", str(batch_size), "--output_path", str(run_dir),
           "--log_samples"]
    if include_path:
        cmd += ["--include_path", str(Path(include_path).resolve())]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    return cmd


def _numeric_metrics(block: dict) -> dict[str, float]:
    """lmms-eval's ``"metric,filter": value`` entries -> {name: value}, where the name is ``metric``
    for the default filter ``none`` and ``metric,filter`` otherwise (tasks such as GSM8K score one
    metric under several answer filters); stderr entries and aliases are dropped."""
    out = {}
    for key, value in block.items():
        metric, _, filt = key.partition(",")
        if "_stderr" in metric or key == "alias" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[metric if filt in ("", "none") else key] = float(value)
    return out


def parse_results(results_json: Path, tasks: list[str]) -> dict[str, dict[str, float]]:
    """The metrics of each requested task in an lmms-eval results JSON; raises ``EvalError`` naming
    the task when a task (or group) has no numeric metric."""
    data = json.loads(results_json.read_text())
    blocks = {**data.get("results", {}), **data.get("groups", {})}
    out = {}
    for task in tasks:
        metrics = _numeric_metrics(blocks.get(task, {}))
        if not metrics:
            raise EvalError(f"{results_json}: no metrics for task {task!r} (lmms-eval crashed or the task "
                            f"produced nothing; tasks present: {sorted(blocks)})")
        out[task] = metrics
    return out


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _logged_error(log: Path) -> str:
    """The last ERROR line of an lmms-eval log (its crash message), ANSI colours removed."""
    lines = [_ANSI.sub("", ln).strip() for ln in log.read_text(errors="replace").splitlines()]
    errors = [ln for ln in lines if "ERROR" in ln or "Error" in ln]
    if errors:
        return errors[-1].split(" - ", 1)[-1]
    return "no error message in the log" + (f" (last line: {lines[-1]!r})" if lines else " (empty log)")


def _find_results(run_dir: Path, since: float) -> Path | None:
    found = [p for p in run_dir.rglob("*_results.json") if p.stat().st_mtime >= since]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def run_checkpoint(checkpoint: str, label: str, tasks: list[str], out: Path, include_path: str | None = None,
                   limit: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE, device: str = "cpu",
                   dtype: str | None = None, max_new_tokens: int | None = None,
                   launcher: str | None = None) -> RunResult:
    """One ``python -m lmms_eval`` process for one checkpoint; failures are captured, not raised."""
    import shlex
    import subprocess
    import time

    run_dir = out / "runs" / label
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = lmms_eval_command(checkpoint, tasks, run_dir, include_path=include_path, limit=limit,
                            batch_size=batch_size, device=device, dtype=dtype, max_new_tokens=max_new_tokens,
                            launcher=launcher)
    (run_dir / "command.sh").write_text(shlex.join(cmd) + "\n")
    log = run_dir / "lmms_eval.log"
    start = time.time() - 1  # file-system mtime granularity
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        return RunResult(label, checkpoint, {}, f"lmms-eval exited {proc.returncode}; see {log}", run_dir)
    results = _find_results(run_dir, start)
    if results is None:
        return RunResult(label, checkpoint, {}, f"no results JSON under {run_dir} (lmms-eval exits 0 on a "
                                                f"crash): {_logged_error(log)}; see {log}", run_dir)
    try:
        metrics = parse_results(results, tasks)
    except EvalError as e:
        return RunResult(label, checkpoint, {}, f"{e}; see {log}", run_dir)
    return RunResult(label, checkpoint, metrics, None, run_dir)


def run_checkpoint_inline(checkpoint: str, label: str, tasks: list[str], out: Path, task_manager,
                          limit: int | None, batch_size: int, device: str, dtype: str | None,
                          max_new_tokens: int | None) -> RunResult:
    """Evaluate one checkpoint in this process; failures are captured, not raised."""
    import gc
    import traceback

    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.utils import handle_non_serializable

    from dopd_vlm.lmms_model import DopdVLM

    run_dir = out / "runs" / label
    run_dir.mkdir(parents=True, exist_ok=True)
    lm = None
    try:
        lm = DopdVLM(pretrained=checkpoint, device=device, dtype=dtype, max_new_tokens=max_new_tokens,
                     batch_size=batch_size)
        results = simple_evaluate(model=lm, tasks=tasks, task_manager=task_manager, limit=limit, log_samples=True)
    except Exception as e:  # one checkpoint's crash is recorded; the other checkpoints still run
        (run_dir / "error.log").write_text(traceback.format_exc())
        return RunResult(label, checkpoint, {}, f"{type(e).__name__}: {e}; see {run_dir / 'error.log'}", run_dir)
    finally:
        del lm
        gc.collect()
    if results is None:
        return RunResult(label, checkpoint, {}, "simple_evaluate returned no results", run_dir)
    samples = results.pop("samples", {})
    for task, task_samples in samples.items():
        with open(run_dir / f"samples_{task}.jsonl", "w") as fh:
            for sample in task_samples:
                fh.write(json.dumps(sample, default=handle_non_serializable) + "\n")
    results_json = run_dir / "results.json"
    results_json.write_text(json.dumps(results, indent=2, default=handle_non_serializable) + "\n")
    try:
        metrics = parse_results(results_json, tasks)
    except EvalError as e:
        return RunResult(label, checkpoint, {}, str(e), run_dir)
    return RunResult(label, checkpoint, metrics, None, run_dir)


def _labels(checkpoints: list[str], labels: list[str] | None) -> list[str]:
    if labels:
        if len(labels) != len(checkpoints):
            raise EvalError(f"{len(labels)} --label values for {len(checkpoints)} --model values")
        names = labels
    else:
        names = [Path(c).resolve().name for c in checkpoints]
        if len(set(names)) < len(names):  # e.g. several runs' checkpoint-000100: add the run folder
            names = [f"{Path(c).resolve().parent.name}/{Path(c).resolve().name}" for c in checkpoints]
    if len(set(names)) < len(names):
        raise EvalError(f"checkpoint labels are not unique: {names}; pass --label for each --model")
    return [re.sub(r"[^A-Za-z0-9_.-]+", "_", n) for n in names]


# ================================================================================ the comparison table
def comparison_columns(results: list[RunResult], primary: dict[str, str], tasks: list[str]) -> list[tuple[str, str]]:
    """(task, metric) columns: the suite's primary metric per task, else every metric seen."""
    cols: list[tuple[str, str]] = []
    for task in tasks:
        if task in primary:
            cols.append((task, primary[task]))
            continue
        seen: list[str] = []
        for r in results:
            for m in r.metrics.get(task, {}):
                if m not in seen:
                    seen.append(m)
        # "accuracy" first, then the per-family breakdown in name order
        seen.sort(key=lambda m: (m != "accuracy", m))
        cols += [(task, m) for m in seen]
    return cols


def write_comparison(results: list[RunResult], columns: list[tuple[str, str]], out: Path) -> dict[str, Path]:
    """comparison.csv / .md / .png in ``out``: one row per checkpoint, one column per (task, metric)."""
    import csv

    header = ["checkpoint", "status"] + [f"{t}/{m}" for t, m in columns]
    table = []
    for r in results:
        cells = []
        for t, m in columns:
            v = r.metrics.get(t, {}).get(m)
            cells.append("FAILED" if r.error else ("" if v is None else f"{v:.4f}"))
        table.append([r.label, "failed" if r.error else "ok"] + cells)
    paths = {"csv": out / "comparison.csv", "md": out / "comparison.md", "png": out / "comparison.png"}
    with open(paths["csv"], "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header + ["path"])
        for r, row in zip(results, table):
            writer.writerow(row + [r.checkpoint])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    failures = [f"- **{r.label}** ({r.checkpoint}): {r.error.splitlines()[0]}" for r in results if r.error]
    text = "# Evaluation comparison\n\n" + "\n".join(lines) + "\n"
    if failures:
        text += "\n## Failed evaluations\n\n" + "\n".join(failures) + "\n"
    paths["md"].write_text(text)
    plot_comparison(results, columns, paths["png"])
    return paths


def plot_comparison(results: list[RunResult], columns: list[tuple[str, str]], path: Path) -> None:
    """Grouped bars: one group per (task, metric), one bar per checkpoint (failed runs are omitted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if not r.error]
    n_cols, n_ok = max(len(columns), 1), max(len(ok), 1)
    # Project decision: ~0.3 inch per bar, between 6 and 14 inches wide.
    fig, ax = plt.subplots(figsize=(min(14.0, max(6.0, 0.3 * n_cols * n_ok + 2.0)), 4.5))
    width = 0.8 / n_ok
    tasks = list(dict.fromkeys(t for t, _ in columns))
    labels = [m if len(tasks) == 1 else f"{t}\n{m}" for t, m in columns]
    labels = [lab.replace("accuracy_", "") for lab in labels]  # per-family columns: the family name
    for i, r in enumerate(ok):
        xs = [j + (i - (n_ok - 1) / 2) * width for j in range(len(columns))]
        ys = [r.metrics.get(t, {}).get(m, float("nan")) for t, m in columns]
        bars = ax.bar(xs, ys, width=width, label=r.label)
        if len(columns) * n_ok <= 32:  # values on the bars while they stay readable
            ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
    # a thin line between a task's overall accuracy and its per-family breakdown
    for j, (t, m) in enumerate(columns[:-1]):
        if m == "accuracy" and columns[j + 1][0] == t:
            ax.axvline(j + 0.5, color="0.6", lw=0.8, ls="--")
    many = n_cols > 8
    ax.set_xticks(range(len(columns)), labels, rotation=30 if many else 0, ha="right" if many else "center")
    values = [v for r in ok for t, m in columns if (v := r.metrics.get(t, {}).get(m)) is not None]
    if values and 0.0 <= min(values) and max(values) <= 1.0:  # accuracies: the full 0-1 scale
        ax.set_ylim(0.0, 1.1)
    elif values:
        ax.set_ylim(min(0.0, min(values)), max(values) * 1.1 if max(values) > 0 else 1.0)
    title = tasks[0] if len(tasks) == 1 else "lmms-eval comparison"
    if len(tasks) == 1 and any(m.startswith("accuracy_") for _, m in columns):
        title += ": accuracy overall and per question family"
    if len(ok) < len(results):
        title += f"  ({len(results) - len(ok)} failed run(s) not shown)"
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("score")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if ok:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate(checkpoints: list[str], tasks: list[str], out: str | Path, include_path: str | None = None,
             limit: int | None = None, labels: list[str] | None = None, primary: dict[str, str] | None = None,
             batch_size: int = DEFAULT_BATCH_SIZE, device: str = "cpu", dtype: str | None = None,
             max_new_tokens: int | None = None, subprocess: bool = False,
             launcher: str | None = None) -> tuple[list[RunResult], dict[str, Path]]:
    """Run lmms-eval on every checkpoint and write the comparison table; returns (results, paths).

    ``subprocess``: one ``python -m lmms_eval`` process per checkpoint instead of in-process runs;
    ``launcher`` (implies ``subprocess``): the program that runs lmms-eval, e.g.
    ``accelerate launch --num_processes 8`` for data parallelism."""
    if not checkpoints:
        raise EvalError("no checkpoint given (--model DIR)")
    if not tasks:
        raise EvalError("no task given (--tasks T1,T2 or --suite FILE)")
    for c in checkpoints:
        if not (Path(c) / "config.json").is_file():
            raise EvalError(f"--model {c}: not a checkpoint folder (no config.json)")
    if include_path is not None and not Path(include_path).is_dir():
        raise EvalError(f"--include-path {include_path}: no such folder")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = _labels(checkpoints, labels)
    settings = dict(limit=limit, batch_size=batch_size, device=device, dtype=dtype, max_new_tokens=max_new_tokens)
    results = []
    if subprocess or launcher:
        for checkpoint, label in zip(checkpoints, labels):
            results.append(run_checkpoint(checkpoint, label, tasks, out, include_path=include_path,
                                          launcher=launcher, **settings))
    else:
        from lmms_eval.tasks import TaskManager

        from dopd_vlm.lmms_model import MODEL_ID

        task_manager = TaskManager("INFO", include_path=str(Path(include_path).resolve()) if include_path else None,
                                   model_name=MODEL_ID)
        unknown = [t for t in tasks if t not in task_manager.all_tasks]
        if unknown:
            raise EvalError(f"unknown lmms-eval task(s) {unknown}" + ("" if include_path else
                            " (tasks written by make-task need --include-path, e.g. eval/tasks)"))
        for checkpoint, label in zip(checkpoints, labels):
            results.append(run_checkpoint_inline(checkpoint, label, tasks, out, task_manager, **settings))
    columns = comparison_columns(results, primary or {}, tasks)
    (out / "results.json").write_text(json.dumps(
        [{"label": r.label, "checkpoint": r.checkpoint, "metrics": r.metrics, "error": r.error} for r in results],
        indent=2) + "\n")
    return results, write_comparison(results, columns, out)


# ================================================================================ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", metavar="DIR", help="checkpoint folder (repeat for several)")
    parser.add_argument("--label", action="append", help="table label per --model (default: folder name)")
    parser.add_argument("--tasks", help="comma-separated lmms-eval task names")
    parser.add_argument("--suite", help="suite YAML (eval/suites/*.yaml): tasks, primary metrics, include path")
    parser.add_argument("--include-path", help="folder of extra lmms-eval task YAMLs (e.g. eval/tasks)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N documents of each task")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"generation batch size (default {DEFAULT_BATCH_SIZE}; project decision)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                        help="default: float32 on cpu, bfloat16 elsewhere")
    parser.add_argument("--max-new-tokens", type=int,
                        help="generation budget for every task, replacing each task's own max_new_tokens "
                             "(raise it for long reasoning, lower it for smoke tests; default: the task's)")
    parser.add_argument("--subprocess", action="store_true",
                        help="run each checkpoint as its own `python -m lmms_eval` process (isolation for "
                             "large models; ~10 s start-up each) instead of in this process")
    parser.add_argument("--launcher", help="with --subprocess: what runs lmms-eval instead of python, e.g. "
                                           "'accelerate launch --num_processes 8' (data parallel, one model per GPU)")
    sub = parser.add_subparsers(dest="eval_command", metavar="[make-task]", title="second mode")
    mt = sub.add_parser("make-task", help="write an lmms-eval task folder for a built dataset (see above)",
                        description="Write an lmms-eval task folder (NAME.yaml, utils.py, SPLIT.parquet, "
                                    "task_info.json) for a dataset built by `dopd-vlm build`. Only the student "
                                    "view is written (id, images, prompt, question, choices, plus the scoring "
                                    "columns); privileged fields never leave the dataset. Run the task with: "
                                    "lmms-eval --model dopd_vlm --model_args pretrained=CKPT --tasks NAME "
                                    "--include_path <folder holding the task folder>.")
    mt.add_argument("dataset_dir", help="a dataset written by `dopd-vlm build` (datasets save_to_disk folder)")
    mt.add_argument("--name", required=True, help="task name (letters, digits, underscores)")
    mt.add_argument("--out", dest="task_out", help="task folder (default: eval/tasks/NAME)")
    mt.add_argument("--split", default="test", help="split to evaluate (default: test, the held-out split)")
    mt.add_argument("--limit", dest="task_limit", type=int, help="keep only the first N records")
    mt.add_argument("--metric", default="auto", choices=METRIC_KINDS,
                    help="auto: option letter when the record has choices, numeric when the answer is a "
                         "number, else normalised exact match")
    mt.add_argument("--family-key", default=DEFAULT_FAMILY_KEY,
                    help=f"meta field holding the question family (default: {DEFAULT_FAMILY_KEY}; '' for none)")
    mt.add_argument("--rel-tol", type=float, default=0.0,
                    help="relative tolerance of numeric answers (default 0: exact; project decision)")
    mt.add_argument("--max-new-tokens", dest="task_max_new_tokens", type=int, default=DEFAULT_TASK_MAX_NEW_TOKENS,
                    help=f"generation budget written into the task (default {DEFAULT_TASK_MAX_NEW_TOKENS}: "
                         "a chain of thought ending in \\boxed{{}}; `eval --max-new-tokens` overrides it)")


def run(args) -> int:
    import sys

    try:
        return _run(args)
    except EvalError as e:  # bad inputs: one clear line, no traceback
        print(f"dopd-vlm eval: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    if args.eval_command == "make-task":
        out = make_task(args.dataset_dir, args.name, out=args.task_out, split=args.split, limit=args.task_limit,
                        metric=args.metric, family_key=args.family_key or None, rel_tol=args.rel_tol,
                        max_new_tokens=args.task_max_new_tokens)
        info = json.loads((out / "task_info.json").read_text())
        print(f"wrote task {args.name!r} to {out}: {info['n']} documents, metrics {info['metrics']}, "
              f"families {info['families'] or 'none'}")
        print(f"run: lmms-eval --model dopd_vlm --model_args pretrained=CKPT --tasks {args.name} "
              f"--include_path {out.parent}")
        return 0

    primary: dict[str, str] = {}
    include_path = args.include_path
    if args.suite and args.tasks:
        raise EvalError("give --tasks or --suite, not both")
    if args.suite:
        tasks, primary, suite_include = read_suite(args.suite)
        include_path = include_path or (str(suite_include) if suite_include else None)
    else:
        tasks = [t.strip() for t in (args.tasks or "").split(",") if t.strip()]
    results, paths = evaluate(args.model or [], tasks, args.out, include_path=include_path, limit=args.limit,
                              labels=args.label, primary=primary, batch_size=args.batch_size, device=args.device,
                              dtype=args.dtype, max_new_tokens=args.max_new_tokens, subprocess=args.subprocess,
                              launcher=args.launcher)
    print(paths["md"].read_text())
    print(f"wrote {paths['md']}, {paths['csv']}, {paths['png']}")
    failed = [r for r in results if r.error]
    for r in failed:
        print(f"FAILED {r.label}: {r.error}")
    return 1 if failed else 0
