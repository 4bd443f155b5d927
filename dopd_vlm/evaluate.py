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
from dataclasses import dataclass, field
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
    error: str | None  # a failure of the whole run (every cell FAILED); None otherwise
    run_dir: Path
    task_errors: dict[str, str] = field(default_factory=dict)  # task -> why only that task failed
    counts: dict[str, int] = field(default_factory=dict)  # task -> documents scored
    totals: dict[str, int] = field(default_factory=dict)  # task -> documents in the benchmark split

    def failed(self, task: str) -> bool:
        return self.error is not None or task in self.task_errors

    @property
    def status(self) -> str:
        if self.error:
            return "failed"
        return "partial" if self.task_errors else "ok"


@dataclass
class Suite:
    """A suite YAML (eval/suites/*.yaml): lmms-eval tasks, harness benchmarks, their table metrics."""

    path: Path
    tasks: list[str]  # every entry's table name, in suite order
    lmms_tasks: list[str]  # run through lmms-eval (its own tasks and the project's eval/tasks)
    harness_tasks: list  # dopd_vlm.eval_harness.HarnessTask, run through a harness
    primary: dict[str, str]  # task -> the metric the table reports
    benchmarks: dict[str, str]  # task -> benchmark name as the paper writes it
    include_path: Path | None
    chat_template_kwargs: dict | None  # None: the suite sets none (each checkpoint's training run decides)


def load_suite(path: str | Path) -> Suite:
    """Read a suite YAML. Entries: ``benchmark`` (name), ``task`` (table name: an lmms-eval task or
    group, or the harness benchmark's name), ``metric``; harness entries add ``harness``
    (``evalscope`` | ``livebench``), ``dataset`` (the harness's benchmark name) and optionally
    ``dataset_args`` and ``tool_calling``; ``dataset_args.local_path`` (evalscope: the benchmark's
    data in its hub layout) and ``dataset_args.question_dir`` (LiveBench: question.jsonl files) are
    read relative to the suite file. Top level: ``include_path`` (relative to the suite file)
    and ``chat_template_kwargs`` (applied to every run, e.g. ``{enable_thinking: false}``)."""
    import yaml

    from dopd_vlm.eval_harness import HarnessTask

    path = Path(path)
    if not path.is_file():
        raise EvalError(f"suite {path}: no such file (suites live in eval/suites/)")
    suite = yaml.safe_load(path.read_text())
    if not isinstance(suite, dict) or not isinstance(suite.get("tasks"), list) or not suite["tasks"]:
        raise EvalError(f"suite {path}: needs a non-empty 'tasks' list")
    tasks, lmms, harness, primary, names = [], [], [], {}, {}
    for i, entry in enumerate(suite["tasks"]):
        if not isinstance(entry, dict) or "task" not in entry:
            raise EvalError(f"suite {path}: tasks[{i}] needs a 'task' key (an lmms-eval task name)")
        task = str(entry["task"])
        if task in tasks:
            raise EvalError(f"suite {path}: task {task!r} is listed twice")
        tasks.append(task)
        names[task] = str(entry.get("benchmark") or task)
        if entry.get("metric"):
            primary[task] = str(entry["metric"])
        if entry.get("harness"):
            if not entry.get("dataset"):
                raise EvalError(f"suite {path}: tasks[{i}] ({task}) names a harness but no 'dataset'")
            dataset_args = dict(entry.get("dataset_args") or {})
            for key in ("local_path", "question_dir"):  # local data: relative to the suite file
                if dataset_args.get(key):
                    dataset_args[key] = str((path.parent / str(dataset_args[key])).resolve())
            try:
                harness.append(HarnessTask(task=task, harness=str(entry["harness"]), dataset=str(entry["dataset"]),
                                           metric=str(entry.get("metric") or "score"), dataset_args=dataset_args,
                                           tool_calling=bool(entry.get("tool_calling", False))))
            except ValueError as e:
                raise EvalError(f"suite {path}: {e}") from None
        else:
            lmms.append(task)
    kwargs = suite.get("chat_template_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise EvalError(f"suite {path}: chat_template_kwargs must be a mapping, got {kwargs!r}")
    include = suite.get("include_path")
    include_path = (path.parent / include).resolve() if include else None
    return Suite(path, tasks, lmms, harness, primary, names, include_path, None if kwargs is None else dict(kwargs))


def read_suite(path: str | Path) -> tuple[list[str], dict[str, str], Path | None]:
    """A suite YAML -> (task names, {task: primary metric}, include path or None)."""
    suite = load_suite(path)
    return suite.tasks, suite.primary, suite.include_path


def lmms_eval_command(checkpoint: str, tasks: list[str], run_dir: Path, include_path: str | None,
                      limit: int | None, batch_size: int, device: str, dtype: str | None,
                      max_new_tokens: int | None, launcher: str | None = None,
                      chat_template_kwargs: dict | None = None) -> list[str]:
    """The lmms-eval CLI call for one checkpoint; ``launcher`` (e.g. ``accelerate launch
    --num_processes 8``) replaces ``python`` to run data-parallel, one model copy per process."""
    import shlex
    import sys

    model_args = [f"pretrained={Path(checkpoint).resolve()}", f"device={device}"]
    if dtype:
        model_args.append(f"dtype={dtype}")
    if max_new_tokens is not None:
        model_args.append(f"max_new_tokens={max_new_tokens}")
    if chat_template_kwargs is not None:  # lmms-eval keeps a braced value together when it splits model_args
        model_args.append(f"chat_template_kwargs={json.dumps(chat_template_kwargs, separators=(',', ':'))}")
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


def parse_counts(data: dict, tasks: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """(documents scored, documents in the split) per task from lmms-eval's ``n-samples``; a group
    counts the documents of its subtasks (``group_subtasks``, recursively)."""
    samples = data.get("n-samples") or {}
    subtasks = data.get("group_subtasks") or {}

    def total(task: str, key: str, seen: frozenset = frozenset()) -> int:
        if task in samples:
            return int(samples[task].get(key) or 0)
        return sum(total(t, key, seen | {task}) for t in subtasks.get(task, []) if t not in seen)

    counts = {t: total(t, "effective") for t in tasks}
    totals = {t: total(t, "original") for t in tasks}
    return ({t: n for t, n in counts.items() if n}, {t: n for t, n in totals.items() if n})


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions behind it: ``__cause__`` / ``__context__``, and the last attempt's
    exception of a tenacity ``RetryError`` (how datasets/huggingface_hub report an unreachable Hub)."""
    chain, todo = [], [exc]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is c for c in chain):
            continue
        chain.append(e)
        last = getattr(e, "last_attempt", None)
        if last is not None and hasattr(last, "exception"):
            try:
                todo.append(last.exception())
            except Exception:  # a cancelled or unfinished attempt has no exception to give
                pass
        todo += [e.__cause__, e.__context__]
    return chain


def _root_message(exc: BaseException) -> str:
    """One line for a failure: the innermost informative exception (a connection or HTTP error
    rather than the RetryError wrapping it)."""
    chain = _exception_chain(exc)
    wrappers = ("RetryError",)
    useful = [e for e in chain if type(e).__name__ not in wrappers and str(e).strip()]
    network = [e for e in useful if any(k in type(e).__name__ for k in ("Connection", "HTTP", "Timeout", "Offline"))
               or isinstance(e, OSError)]
    pick = (network or useful or chain)[-1] if (network or useful) else exc
    text = " ".join(str(pick).split())
    return f"{type(pick).__name__}: {text[:300]}" if text else type(pick).__name__


def task_dataset(task_manager, task: str) -> str | None:
    """Where an lmms-eval task (or every subtask of a group) reads its data: ``dataset_path``
    (+ ``dataset_name`` / ``data_files``), or None when the config cannot be read."""
    try:
        config = task_manager._get_config(task)
    except Exception:  # an unknown name or an unreadable YAML: no dataset to report
        return None
    if not isinstance(config, dict):
        return None
    if config.get("dataset_path") is None and config.get("task") and isinstance(config["task"], list):
        paths = {task_dataset(task_manager, str(t)) for t in config["task"]} - {None}
        return ", ".join(sorted(paths)) or None
    path = config.get("dataset_path")
    if path is None:
        return None
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, dict):
        files = ", ".join(str(v) for v in files.values())
    name = config.get("dataset_name")
    where = str(path) + (f"/{name}" if name else "")
    return f"{where} ({files})" if files else where


def describe_failure(task: str, exc: BaseException, task_manager=None) -> str:
    """``task T (dataset D): ErrorType: message`` — the summary line of a failed task."""
    dataset = task_dataset(task_manager, task) if task_manager is not None else None
    return f"task {task}" + (f" (dataset {dataset})" if dataset else "") + f": {_root_message(exc)}"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _logged_error(log: Path) -> str:
    """The last ERROR line of an lmms-eval log (its crash message), ANSI colours removed; a
    ``RetryError`` line is followed by the connection error behind it when the log shows one."""
    lines = [_ANSI.sub("", ln).strip() for ln in log.read_text(errors="replace").splitlines()]
    errors = [ln for ln in lines if "ERROR" in ln or "Error" in ln]
    if errors:
        last = errors[-1].split(" - ", 1)[-1]
        if "RetryError" in last:
            causes = [ln for ln in errors if re.search(r"(Connection|HTTP|Timeout)\w*Error", ln) and "RetryError" not in ln]
            if causes:
                last += " <- " + causes[-1].split(" - ", 1)[-1][:300]
        return last
    return "no error message in the log" + (f" (last line: {lines[-1]!r})" if lines else " (empty log)")


def _find_results(run_dir: Path, since: float) -> Path | None:
    found = [p for p in run_dir.rglob("*_results.json") if p.stat().st_mtime >= since]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def run_checkpoint(checkpoint: str, label: str, tasks: list[str], out: Path, include_path: str | None = None,
                   limit: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE, device: str = "cpu",
                   dtype: str | None = None, max_new_tokens: int | None = None,
                   launcher: str | None = None, chat_template_kwargs: dict | None = None) -> RunResult:
    """``--subprocess``: one ``python -m lmms_eval`` process per task for one checkpoint, so a task
    that fails (its dataset unreachable, a crash) fails only its cell, named with its dataset; the
    row fails only when every task did. Failures are captured, not raised."""
    import shlex
    import subprocess
    import time

    run_dir = out / "runs" / label
    run_dir.mkdir(parents=True, exist_ok=True)
    result = RunResult(label, checkpoint, {}, None, run_dir)
    commands = []
    task_manager = None
    for task in tasks:
        cmd = lmms_eval_command(checkpoint, [task], run_dir, include_path=include_path, limit=limit,
                                batch_size=batch_size, device=device, dtype=dtype, max_new_tokens=max_new_tokens,
                                launcher=launcher, chat_template_kwargs=chat_template_kwargs)
        commands.append(shlex.join(cmd))
        (run_dir / "command.sh").write_text("\n".join(commands) + "\n")
        log = run_dir / (f"lmms_eval_{task}.log" if len(tasks) > 1 else "lmms_eval.log")
        start = time.time() - 1  # file-system mtime granularity
        with open(log, "w") as fh:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
        error = None
        results = _find_results(run_dir, start) if proc.returncode == 0 else None
        if proc.returncode != 0:
            error = f"lmms-eval exited {proc.returncode}: {_logged_error(log)}"
        elif results is None:
            error = f"no results JSON under {run_dir} (lmms-eval exits 0 on a crash): {_logged_error(log)}"
        else:
            try:
                result.metrics.update(parse_results(results, [task]))
                counts, totals = parse_counts(json.loads(results.read_text()), [task])
                result.counts.update(counts)
                result.totals.update(totals)
            except EvalError as e:
                error = str(e)
        if error is not None:
            if task_manager is None:  # only to name the failing task's dataset
                try:
                    task_manager = _task_manager(include_path)
                except Exception:
                    task_manager = False
            dataset = task_dataset(task_manager, task) if task_manager else None
            result.task_errors[task] = (f"task {task}" + (f" (dataset {dataset})" if dataset else "")
                                        + f": {error}; see {log}")
    if tasks and len(result.task_errors) == len(tasks):  # nothing scored: the row failed
        result.error = "every task failed: " + "; ".join(result.task_errors.values())
    return result


def run_checkpoint_inline(checkpoint: str, label: str, tasks: list[str], out: Path, task_manager,
                          limit: int | None, batch_size: int, device: str, dtype: str | None,
                          max_new_tokens: int | None, chat_template_kwargs: dict | None = None) -> RunResult:
    """Evaluate one checkpoint in this process, one ``simple_evaluate`` per task on one loaded
    model: a task that fails (e.g. its dataset is unreachable) is recorded with its dataset and the
    other tasks still run. A model that cannot be loaded fails the whole row."""
    import gc
    import traceback

    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.utils import handle_non_serializable

    from dopd_vlm.lmms_model import DopdVLM

    run_dir = out / "runs" / label
    run_dir.mkdir(parents=True, exist_ok=True)
    result = RunResult(label, checkpoint, {}, None, run_dir)
    lm = None
    try:
        try:
            lm = DopdVLM(pretrained=checkpoint, device=device, dtype=dtype, max_new_tokens=max_new_tokens,
                         batch_size=batch_size, chat_template_kwargs=chat_template_kwargs)
            lm.keep_loaded = True  # one model for every task's simple_evaluate (freed below)
        except Exception as e:  # the checkpoint itself is unusable: the whole row fails
            (run_dir / "error.log").write_text(traceback.format_exc())
            result.error = f"{type(e).__name__}: {e}; see {run_dir / 'error.log'}"
            return result
        everything: dict = {"results": {}, "groups": {}, "n-samples": {}, "group_subtasks": {}, "configs": {}}
        for task in tasks:
            try:
                results = simple_evaluate(model=lm, tasks=[task], task_manager=task_manager, limit=limit,
                                          log_samples=True)
                if results is None:
                    raise EvalError("simple_evaluate returned no results")
                samples = results.pop("samples", {})
                for name, task_samples in samples.items():
                    with open(run_dir / f"samples_{name}.jsonl", "w") as fh:
                        for sample in task_samples:
                            fh.write(json.dumps(sample, default=handle_non_serializable) + "\n")
                for key in everything:
                    everything[key].update(results.get(key) or {})
                everything["config"] = results.get("config")
                result.metrics.update(parse_results_block(results, task))
            except Exception as e:  # this task failed; the next task still runs on the same model
                with open(run_dir / "error.log", "a") as fh:
                    fh.write(f"--- task {task}\n{traceback.format_exc()}\n")
                result.task_errors[task] = f"{describe_failure(task, e, task_manager)}; see {run_dir / 'error.log'}"
        (run_dir / "results.json").write_text(json.dumps(everything, indent=2, default=handle_non_serializable) + "\n")
        result.counts, result.totals = parse_counts(everything, [t for t in tasks if t in result.metrics])
    finally:
        del lm
        gc.collect()
    if tasks and len(result.task_errors) == len(tasks):  # nothing scored: the row failed
        result.error = "every task failed: " + "; ".join(result.task_errors.values())
    return result


def parse_results_block(results: dict, task: str) -> dict[str, dict[str, float]]:
    """``{task: metrics}`` from an in-memory ``simple_evaluate`` result (EvalError when empty)."""
    blocks = {**results.get("results", {}), **results.get("groups", {})}
    metrics = _numeric_metrics(blocks.get(task, {}))
    if not metrics:
        raise EvalError(f"no metrics for task {task!r} (tasks present: {sorted(blocks)})")
    return {task: metrics}


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
        cols += [(task, m) for m in seen] or [(task, "result")]  # a task no run scored keeps a column
    return cols


def _cell(r: RunResult, task: str, metric: str) -> str:
    if r.failed(task):
        return "FAILED"
    v = r.metrics.get(task, {}).get(metric)
    return "" if v is None else f"{v:.4f}"


def _scope_counts(results: list[RunResult], task: str) -> tuple[int | None, int | None]:
    """(documents scored, documents in the split) of a task, from the first run that has them."""
    for r in results:
        if task in r.counts:
            return r.counts[task], r.totals.get(task)
    return None, None


def write_comparison(results: list[RunResult], columns: list[tuple[str, str]], out: Path,
                     limit: int | None = None, benchmarks: dict[str, str] | None = None) -> dict[str, Path]:
    """comparison.csv / .md / .png in ``out``: one row per checkpoint, one column per (task, metric),
    with the scope of every number: ``--limit`` and the documents each task scored (``n``, of the
    split's ``N``) in the markdown header and as ``TASK/n`` columns (+ ``limit``) in the CSV."""
    import csv

    benchmarks = benchmarks or {}
    tasks = list(dict.fromkeys(t for t, _ in columns))
    header = ["checkpoint", "status"] + [f"{t}/{m}" for t, m in columns]
    table = [[r.label, r.status] + [_cell(r, t, m) for t, m in columns] for r in results]
    paths = {"csv": out / "comparison.csv", "md": out / "comparison.md", "png": out / "comparison.png"}
    with open(paths["csv"], "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header + [f"{t}/n" for t in tasks] + ["limit", "path"])
        for r, row in zip(results, table):
            writer.writerow(row + [r.counts.get(t, "") for t in tasks] + ["" if limit is None else limit,
                                                                          r.checkpoint])

    def md_head(t: str, m: str) -> str:
        n, total = _scope_counts(results, t)
        name = benchmarks.get(t)
        # a make-task family column (accuracy_<family>) scores only that family's rows within the n
        within = "one family within " if m.startswith("accuracy_") else ""
        scope = "" if n is None else f" ({within}n={n}" + (f" of {total}" if total and total != n else "") + ")"
        return (f"{name}: " if name and name != t else "") + f"{t}/{m}{scope}"

    lines = ["| " + " | ".join(["checkpoint", "status"] + [md_head(t, m) for t, m in columns]) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    text = "# Evaluation comparison\n\n"
    if limit is not None:
        text += (f"**Scope: `--limit {limit}`** — each task scored only its first {limit} documents; these are "
                 "not full-benchmark numbers.\n\n")
    else:
        text += "Scope: every document of each task's evaluation split.\n\n"
    text += "\n".join(lines) + "\n"
    counts = [f"- {t}: {n} documents" + (f" of {total}" if total else "")
              for t in tasks for n, total in [_scope_counts(results, t)] if n is not None]
    if counts:
        text += "\nDocuments scored per task:\n\n" + "\n".join(counts) + "\n"
    summary = method_summary(results, columns)
    if any(max(v["n"], default=0) > 1 for v in summary.values()):
        text += "\n## Per method (mean ± 95% interval over seeds)\n\n"
        text += "| method | seeds | " + " | ".join(f"{t}/{m}" for t, m in columns) + " |\n"
        text += "|" + "---|" * (len(columns) + 2) + "\n"
        for method, v in summary.items():
            cells = [("" if mu is None else f"{mu:.4f}" + (f" ± {hw:.4f}" if hw else ""))
                     for mu, hw in zip(v["mean"], v["half_width"])]
            text += f"| {method} | {max(v['n'])} | " + " | ".join(cells) + " |\n"
    failures = []
    for r in results:
        if r.error:
            failures.append(f"- **{r.label}** ({r.checkpoint}): {r.error.splitlines()[0]}")
        else:
            failures += [f"- **{r.label}** ({r.checkpoint}): {msg.splitlines()[0]}" for msg in r.task_errors.values()]
    if failures:
        text += "\n## Failed evaluations\n\n" + "\n".join(failures) + "\n"
    paths["md"].write_text(text)
    plot_comparison(results, columns, paths["png"])
    return paths


# Two-sided 95 % Student-t quantiles t_{0.975, df} for df = 1..30 (standard tables); 1.96 beyond.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]
REFERENCE_METHODS = ("teacher", "student")  # drawn as reference lines, not bars
_SEED_RE = re.compile(r"^(?P<method>.+?)[-_.]?(?:seed|s)(?P<seed>\d+)$", re.IGNORECASE)


def method_of(label: str) -> str:
    """The method a checkpoint label belongs to: the label without a trailing seed
    (``dopd_seed1``, ``dopd-s2``, ``dopd.seed3`` -> ``dopd``); other labels are their own method."""
    m = _SEED_RE.match(label)
    return m.group("method") if m else label


def t_half_width(values: list[float]) -> float:
    """Half width of the 95 % Student-t interval of the mean (0 for fewer than two values)."""
    import math

    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
    return t * sd / math.sqrt(n)


def method_summary(results: list[RunResult], columns: list[tuple[str, str]]) -> dict[str, dict]:
    """{method: {"mean": [...], "half_width": [...], "n": [...], "values": [[...], ...]}} per column,
    over the successful runs of each method (seeds grouped by ``method_of``), in first-seen order."""
    groups: dict[str, list[RunResult]] = {}
    for r in results:
        groups.setdefault(method_of(r.label), []).append(r)
    out = {}
    for method, runs in groups.items():
        means, hws, ns, values = [], [], [], []
        for t, m in columns:
            vals = [v for r in runs if not r.failed(t) and (v := r.metrics.get(t, {}).get(m)) is not None]
            values.append(vals)
            ns.append(len(vals))
            means.append(sum(vals) / len(vals) if vals else None)
            hws.append(t_half_width(vals))
        out[method] = {"mean": means, "half_width": hws, "n": ns, "values": values}
    return out


def plot_comparison(results: list[RunResult], columns: list[tuple[str, str]], path: Path) -> None:
    """Grouped bars: one group per (task, metric), one bar per method — the mean over its seeds
    (labels ``NAME_seedK``), a 95 % Student-t interval when it has two or more, its seeds as dots.
    ``teacher`` and ``student`` (when present) are dashed reference lines across each group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = method_summary(results, columns)
    refs = {m: v for m, v in summary.items() if m.lower() in REFERENCE_METHODS}
    bars = {m: v for m, v in summary.items() if m.lower() not in REFERENCE_METHODS
            and any(mu is not None for mu in v["mean"])}
    n_cols, n_bars = max(len(columns), 1), max(len(bars), 1)
    # Project decision: ~0.3 inch per bar, between 6 and 14 inches wide.
    fig, ax = plt.subplots(figsize=(min(14.0, max(6.0, 0.3 * n_cols * n_bars + 2.0)), 4.5))
    width = 0.8 / n_bars
    tasks = list(dict.fromkeys(t for t, _ in columns))
    labels = [m if len(tasks) == 1 else f"{t}\n{m}" for t, m in columns]
    labels = [lab.replace("accuracy_", "") for lab in labels]  # per-family columns: the family name
    for i, (method, v) in enumerate(bars.items()):
        xs = [j + (i - (n_bars - 1) / 2) * width for j in range(len(columns))]
        ys = [float("nan") if mu is None else mu for mu in v["mean"]]
        seeds = max(v["n"]) if v["n"] else 0
        err = [hw if hw else 0.0 for hw in v["half_width"]]
        handle = ax.bar(xs, ys, width=width, label=method + (f" (mean of {seeds} seeds, 95% CI)" if seeds > 1 else ""),
                        yerr=err if any(err) else None, capsize=2 if any(err) else 0)
        if seeds > 1:
            for x, vals in zip(xs, v["values"]):
                ax.scatter([x] * len(vals), vals, s=6, color="black", zorder=3)
        elif len(columns) * n_bars <= 32:  # values on the bars while they stay readable
            ax.bar_label(handle, fmt="%.2f", fontsize=6, padding=1)
    styles = {"teacher": ("tab:red", "--"), "student": ("tab:gray", ":")}
    for method, v in refs.items():
        color, ls = styles.get(method.lower(), ("black", "--"))
        for j, mu in enumerate(v["mean"]):
            if mu is not None:
                ax.hlines(mu, j - 0.45, j + 0.45, colors=color, linestyles=ls, lw=1.5,
                          label=method if j == next(k for k, x in enumerate(v["mean"]) if x is not None) else None)
    # a thin line between a task's overall accuracy and its per-family breakdown
    for j, (t, m) in enumerate(columns[:-1]):
        if m == "accuracy" and columns[j + 1][0] == t:
            ax.axvline(j + 0.5, color="0.6", lw=0.8, ls="--")
    many = n_cols > 8
    ax.set_xticks(range(len(columns)), labels, rotation=30 if many else 0, ha="right" if many else "center")
    values = [v for r in results for t, m in columns if not r.failed(t)
              and (v := r.metrics.get(t, {}).get(m)) is not None and v == v]
    if values and 0.0 <= min(values) and max(values) <= 1.0:  # accuracies: the full 0-1 scale
        ax.set_ylim(0.0, 1.1)
    elif values:
        ax.set_ylim(min(0.0, min(values)), max(values) * 1.1 if max(values) > 0 else 1.0)
    title = tasks[0] if len(tasks) == 1 else "comparison"
    if len(tasks) == 1 and any(m.startswith("accuracy_") for _, m in columns):
        title += ": accuracy overall and per question family"
    n_failed = sum(1 for r in results if r.error)
    if n_failed:
        title += f"  ({n_failed} failed run(s) not shown)"
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("score")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if bars or refs:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _task_manager(include_path: str | None):
    from lmms_eval.tasks import TaskManager

    from dopd_vlm.lmms_model import MODEL_ID

    return TaskManager("INFO", include_path=str(Path(include_path).resolve()) if include_path else None,
                       model_name=MODEL_ID)


def evaluate(checkpoints: list[str], tasks: list[str], out: str | Path, include_path: str | None = None,
             limit: int | None = None, labels: list[str] | None = None, primary: dict[str, str] | None = None,
             batch_size: int = DEFAULT_BATCH_SIZE, device: str = "cpu", dtype: str | None = None,
             max_new_tokens: int | None = None, subprocess: bool = False,
             launcher: str | None = None, harness_tasks: list | None = None,
             chat_template_kwargs: dict | None = None, benchmarks: dict[str, str] | None = None,
             livebench: str | None = None, harness_port: int | None = None,
             harness_server_cmd: list[str] | None = None, serve_python: str | None = None,
             harness_python: str | None = None, serve_args: list[str] | None = None,
             livebench_python: str | None = None) -> tuple[list[RunResult], dict[str, Path]]:
    """Run lmms-eval (``tasks``) and the harness benchmarks (``harness_tasks``) on every checkpoint
    and write one comparison table; returns (results, paths).

    ``subprocess``: one ``python -m lmms_eval`` process per checkpoint instead of in-process runs;
    ``launcher`` (implies ``subprocess``): the program that runs lmms-eval, e.g.
    ``accelerate launch --num_processes 8`` for data parallelism. ``chat_template_kwargs`` reach the
    lmms-eval model and the harnesses' local server alike. ``serve_python`` / ``harness_python``:
    the Pythons with vLLM and with the harnesses (``eval_harness.run_checkpoint``)."""
    from dopd_vlm import eval_harness

    harness_tasks = list(harness_tasks or [])
    if not checkpoints:
        raise EvalError("no checkpoint given (--model DIR)")
    if not tasks and not harness_tasks:
        raise EvalError("no task given (--tasks T1,T2 or --suite FILE)")
    for c in checkpoints:
        if not (Path(c) / "config.json").is_file():
            raise EvalError(f"--model {c}: not a checkpoint folder (no config.json)")
    if include_path is not None and not Path(include_path).is_dir():
        raise EvalError(f"--include-path {include_path}: no such folder")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = _labels(checkpoints, labels)
    settings = dict(limit=limit, batch_size=batch_size, device=device, dtype=dtype, max_new_tokens=max_new_tokens,
                    chat_template_kwargs=chat_template_kwargs)
    results = []
    task_manager = None
    if tasks and not (subprocess or launcher):
        task_manager = _task_manager(include_path)
        unknown = [t for t in tasks if t not in task_manager.all_tasks]
        if unknown:
            raise EvalError(f"unknown lmms-eval task(s) {unknown}" + ("" if include_path else
                            " (tasks written by make-task need --include-path, e.g. eval/tasks)")
                            + "; `dopd-vlm eval --list-tasks` lists them")
    for checkpoint, label in zip(checkpoints, labels):
        if not tasks:
            r = RunResult(label, checkpoint, {}, None, out / "runs" / label)
        elif subprocess or launcher:
            r = run_checkpoint(checkpoint, label, tasks, out, include_path=include_path, launcher=launcher, **settings)
        else:
            r = run_checkpoint_inline(checkpoint, label, tasks, out, task_manager, **settings)
        if harness_tasks:
            h = eval_harness.run_checkpoint(
                checkpoint, harness_tasks, out / "runs" / label, limit=limit, max_new_tokens=max_new_tokens,
                chat_template_kwargs=chat_template_kwargs, dtype=dtype,
                port=harness_port or eval_harness.DEFAULT_PORT, livebench=livebench, server_cmd=harness_server_cmd,
                serve_python=serve_python, harness_python=harness_python, serve_args=serve_args,
                livebench_python=livebench_python)
            r.metrics.update(h.metrics)
            r.counts.update(h.counts)
            r.task_errors.update(h.errors)
            if not tasks and len(h.errors) == len(harness_tasks):
                r.error = "every task failed: " + "; ".join(h.errors.values())
        results.append(r)
    all_tasks = list(tasks) + [t.task for t in harness_tasks if t.task not in tasks]
    if benchmarks:  # a suite: its own order (the dict keeps the file's order)
        order = {t: i for i, t in enumerate(benchmarks)}
        all_tasks.sort(key=lambda t: order.get(t, len(order)))
    primary = dict(primary or {})
    for t in harness_tasks:
        primary.setdefault(t.task, t.metric)
    columns = comparison_columns(results, primary, all_tasks)
    (out / "results.json").write_text(json.dumps(
        [{"label": r.label, "checkpoint": r.checkpoint, "status": r.status, "metrics": r.metrics,
          "documents": r.counts, "split_documents": r.totals, "limit": limit, "error": r.error,
          "task_errors": r.task_errors} for r in results], indent=2) + "\n")
    return results, write_comparison(results, columns, out, limit=limit, benchmarks=benchmarks)


def list_tasks(include_path: str | None = None, suites_dir: Path | None = None) -> str:
    """What ``dopd-vlm eval`` can run: the project's task folders (``include_path``), the harness
    benchmarks of the shipped suites, and every lmms-eval task and group name."""
    tm = _task_manager(include_path)
    lines, own = [], []
    if include_path:
        root = Path(include_path).resolve()
        own = sorted(n for n in tm.all_tasks
                     if str(tm.task_index[n].get("yaml_path", "")).startswith(str(root)))
        lines += [f"Project tasks ({include_path}, {len(own)}):"] + [f"  {n}" for n in own] + [""]
    if suites_dir is not None and suites_dir.is_dir():
        harness = []
        for suite_path in sorted(suites_dir.glob("*.yaml")):
            try:
                suite = load_suite(suite_path)
            except EvalError:
                continue
            harness += [f"  {t.task}  ({t.harness}: {t.dataset}; suite {suite_path.name})" for t in suite.harness_tasks]
        if harness:
            lines += ["Harness benchmarks (run through --suite):"] + harness + [""]
    own = set(own) if include_path else set()
    groups, subtasks = set(tm.all_groups), [n for n in tm.all_tasks if n not in own]
    lines += [f"lmms-eval tasks and groups ({len(subtasks)}; [group] marks groups):"]
    lines += [f"  {n}" + ("  [group]" if n in groups else "") for n in subtasks]
    return "\n".join(lines) + "\n"


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
    parser.add_argument("--chat-template-kwargs", type=_json_mapping, metavar="JSON",
                        help="keyword arguments for the checkpoint's chat template in every run, e.g. "
                             "'{\"enable_thinking\": false}' (non-thinking Qwen3, as model.chat_template_kwargs "
                             "in training); overrides the suite's chat_template_kwargs")
    parser.add_argument("--list-tasks", action="store_true",
                        help="list the tasks this command can run (the project's eval/tasks, the suites' harness "
                             "benchmarks, every lmms-eval task and group) and exit")
    parser.add_argument("--livebench-dir", help="a LiveBench clone for suites with LiveBench (default: $LIVEBENCH_DIR)")
    parser.add_argument("--harness-port", type=int,
                        help="port of the local OpenAI-compatible server the harness benchmarks query "
                             "(default 8011; project decision)")
    parser.add_argument("--serve-python", metavar="PYTHON",
                        help="the Python (or virtualenv folder) with vLLM that serves the checkpoint to the harness "
                             "benchmarks, e.g. .venv-vllm (default: this Python, if it has vLLM)")
    parser.add_argument("--serve-args", metavar="ARGS",
                        help="extra flags for that vLLM server, e.g. '--max-model-len 8192 --tensor-parallel-size 2'")
    parser.add_argument("--harness-python", metavar="PYTHON",
                        help="the Python (or virtualenv folder) with evalscope that runs BFCL-v3 and LiveCodeBench, "
                             "e.g. .venv-harness (default: this Python)")
    parser.add_argument("--livebench-python", metavar="PYTHON",
                        help="the Python (or virtualenv folder) with LiveBench installed (pip install -e CLONE), "
                             "default: --harness-python; LiveBench and evalscope pin different antlr4 versions, so "
                             "they need separate virtualenvs")
    parser.add_argument("--harness-data", action="append", metavar="TASK=PATH", default=[],
                        help="local data for one harness benchmark (repeatable): an evalscope task reads PATH as its "
                             "dataset folder (hub layout; evalscope's local_path), LiveBench copies PATH's "
                             "live_bench/**/question.jsonl into the clone and reads them (--question-source jsonl)")
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
                         "a chain of thought ending in \\boxed{}; `eval --max-new-tokens` overrides it)")


def apply_harness_data(harness_tasks: list, overrides: list[str]) -> None:
    """``--harness-data TASK=PATH``: evalscope tasks read PATH as ``local_path``, LiveBench as
    ``question_dir``. EvalError (one line) for a malformed item, an unknown task or a missing PATH."""
    by_name = {t.task: t for t in harness_tasks}
    for item in overrides or []:
        task, sep, where = item.partition("=")
        if not sep or not task or not where:
            raise EvalError(f"--harness-data {item!r}: expected TASK=PATH")
        if task not in by_name:
            raise EvalError(f"--harness-data {item!r}: {task!r} is not a harness benchmark of the suite "
                            f"(harness tasks: {', '.join(by_name) or 'none'})")
        if not Path(where).exists():
            raise EvalError(f"--harness-data {item!r}: {where} does not exist")
        t = by_name[task]
        t.dataset_args = {**t.dataset_args, ("local_path" if t.harness == "evalscope" else "question_dir"):
                          str(Path(where).resolve())}


def _json_mapping(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


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

    include_path = args.include_path
    if args.list_tasks:
        default_tasks = Path("eval") / "tasks"
        include = include_path or (str(default_tasks) if default_tasks.is_dir() else None)
        if args.suite:
            include = include or (str(load_suite(args.suite).include_path or "") or None)
        print(list_tasks(include, Path("eval") / "suites"), end="")
        return 0
    primary: dict[str, str] = {}
    harness_tasks: list = []
    benchmarks: dict[str, str] = {}
    chat_kwargs: dict | None = None  # None: each checkpoint's training run decides (lmms_model)
    if args.suite and args.tasks:
        raise EvalError("give --tasks or --suite, not both")
    if args.suite:
        suite = load_suite(args.suite)
        tasks, primary, harness_tasks, benchmarks = suite.lmms_tasks, suite.primary, suite.harness_tasks, suite.benchmarks
        chat_kwargs = suite.chat_template_kwargs
        include_path = include_path or (str(suite.include_path) if suite.include_path else None)
    else:
        tasks = [t.strip() for t in (args.tasks or "").split(",") if t.strip()]
    if args.chat_template_kwargs is not None:
        chat_kwargs = args.chat_template_kwargs
    apply_harness_data(harness_tasks, args.harness_data)
    import shlex

    results, paths = evaluate(args.model or [], tasks, args.out, include_path=include_path, limit=args.limit,
                              labels=args.label, primary=primary, batch_size=args.batch_size, device=args.device,
                              dtype=args.dtype, max_new_tokens=args.max_new_tokens, subprocess=args.subprocess,
                              launcher=args.launcher, harness_tasks=harness_tasks, chat_template_kwargs=chat_kwargs,
                              benchmarks=benchmarks, livebench=args.livebench_dir, harness_port=args.harness_port,
                              serve_python=args.serve_python, harness_python=args.harness_python,
                              livebench_python=args.livebench_python,
                              serve_args=shlex.split(args.serve_args) if args.serve_args else None)
    print(paths["md"].read_text())
    print(f"wrote {paths['md']}, {paths['csv']}, {paths['png']}")
    failed = [r for r in results if r.error or r.task_errors]
    for r in failed:
        if r.error:
            print(f"FAILED {r.label}: {r.error}")
        for msg in r.task_errors.values():
            print(f"FAILED {r.label}: {msg}")
    return 1 if failed else 0
