"""BFCL-v3, LiveCodeBench v5 and LiveBench through their real harnesses, from `dopd-vlm eval`.

The tiny random checkpoint answers garbage, so its scores are near 0; what is checked is that the
real server and the real harnesses ran end to end and that the harness's own score and document
count landed in the comparison table. ``test_local_rows_pass_the_official_checkers`` shows the rows
can score 1 (right answers pass the same checkers), so a 0 here is the model, not the data.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
MAIN_BIN = Path(sys.executable).parent  # the main .venv: `dopd-vlm eval` is the command under test


def _python(var: str) -> str:
    value = os.environ.get(var)
    if not value or not Path(value).is_file():
        raise RuntimeError(f"{var}={value!r}: run `make test-harness`, which builds the virtualenvs and sets it")
    return os.path.abspath(value)  # the CLI runs in a temporary folder; abspath keeps the venv's symlink


HARNESS_PY = _python("DOPD_HARNESS_PYTHON")
SERVE_PY = _python("DOPD_SERVE_PYTHON")
SERVE_ARGS = "--dtype float32 --enforce-eager --max-model-len 4096"  # tiny model on CPU; 4096 = its context


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1")
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server runs its engine as it normally does
    return env


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "student"
    # head size 32: the smallest vLLM's CPU attention takes (as in tests/vllm_tier)
    subprocess.run([str(MAIN_BIN / "dopd-vlm"), "tiny-models", str(out), "--family", "qwen3", "--size", "tiny-h32",
                    "--seed", "1"], check=True, capture_output=True)
    return out


def _eval(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(MAIN_BIN / "dopd-vlm"), "eval", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_local_rows_pass_the_official_checkers():
    """Right answers on the local rows pass bfcl-eval's AST checker and LiveCodeBench's test runner."""
    proc = subprocess.run([HARNESS_PY, str(HERE / "check_rows.py"), str(DATA)], capture_output=True, text=True,
                          env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["bfcl"] == {"simple_0": True, "simple_1": True, "multiple_0": True, "live_simple_0-0-0": True}
    assert got["lcb"] == {f"dopd_t00{i}": 100.0 for i in range(1, 5)}


def test_suite_runs_bfcl_and_livecodebench_through_vllm_and_evalscope(tmp_path, checkpoint):
    suite = tmp_path / "suite.yaml"
    bfcl = os.path.relpath(DATA / "bfcl_v3", tmp_path)  # relative to the suite file
    suite.write_text(f"""name: harness_tier
chat_template_kwargs: {{enable_thinking: false}}
tasks:
  - benchmark: BFCLv3
    task: bfcl_v3
    harness: evalscope
    dataset: bfcl_v3
    dataset_args: {{local_path: {bfcl}, extra_params: {{is_fc_model: true, underscore_to_dot: true}}}}
    tool_calling: true
    metric: score
  - benchmark: LiveCodeBench v5
    task: livecodebench_v5
    harness: evalscope
    dataset: live_code_bench
    dataset_args: {{subset_list: [release_v5], extra_params: {{start_date: "2024-10-01", end_date: "2025-02-01"}}}}
    metric: score
  - benchmark: LiveCodeBench v5 (no data)
    task: livecodebench_nodata
    harness: evalscope
    dataset: live_code_bench
    dataset_args: {{local_path: {tmp_path / 'empty'}, subset_list: [release_v5]}}
    metric: score
""")
    (tmp_path / "empty").mkdir()
    port = _free_port()
    out = tmp_path / "out"
    proc = _eval(["--model", str(checkpoint), "--label", "student", "--suite", str(suite), "--out", str(out),
                  "--serve-python", SERVE_PY, "--harness-python", str(Path(HARNESS_PY).parent.parent),
                  "--serve-args", SERVE_ARGS, "--harness-port", str(port), "--max-new-tokens", "32",
                  "--harness-data", f"livecodebench_v5={DATA / 'live_code_bench'}"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # 1: the task without data failed
    row = next(csv.DictReader(open(out / "comparison.csv")))
    # a benchmark whose data folder is empty fails alone, named with its task and data, in one line
    assert row["status"] == "partial" and row["livecodebench_nodata/score"] == "FAILED"
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("FAILED student: livecodebench_nodata"))
    assert f"livecodebench_nodata (evalscope live_code_bench, data {tmp_path / 'empty'})" in line
    assert "EmptyDatasetError" in line and "Traceback" not in line
    for col in ("bfcl_v3/score", "livecodebench_v5/score"):
        assert 0.0 <= float(row[col]) <= 1.0, row
    # every BFCL row is scored; LiveCodeBench's v5 date window drops the problem dated 2024-05
    assert row["bfcl_v3/n"] == "5" and row["livecodebench_v5/n"] == "3"
    md = (out / "comparison.md").read_text()
    assert "BFCLv3: bfcl_v3/score (n=5)" in md and "LiveCodeBench v5: livecodebench_v5/score (n=3)" in md

    harness = out / "runs" / "student" / "harness"
    # the real server, with the flags the harnesses rely on
    serve = (harness / "serve.sh").read_text()
    for flag in ("-m vllm.entrypoints.openai.api_server", "--served-model-name dopd-eval", "--generation-config vllm",
                 "--default-chat-template-kwargs '{\"enable_thinking\": false}'", "--enable-auto-tool-choice",
                 "--tool-call-parser hermes", "--max-model-len 4096"):
        assert flag in serve, (flag, serve)
    assert "Application startup complete" in (harness / "server.log").read_text()
    # the real evalscope: its report (read for the table) and its per-sample reviews
    for task, dataset, n in (("bfcl_v3", "bfcl_v3", 5), ("livecodebench_v5", "live_code_bench", 3)):
        report = json.loads((harness / task / "reports" / "dopd-eval" / f"{dataset}.json").read_text())
        assert report["dataset_name"] == dataset and sum(1 for _ in (harness / task).rglob("reviews/*/*.jsonl")) >= 1
        reviews = [json.loads(x) for p in (harness / task).rglob("reviews/*/*.jsonl") for x in p.read_text().splitlines()]
        assert len(reviews) == n
        assert "evalscope.cli.cli eval" in (harness / task / "command.sh").read_text()
    lcb = [json.loads(x) for p in (harness / "livecodebench_v5").rglob("reviews/*/*.jsonl") for x in p.read_text().splitlines()]
    assert all("Pass@1" in r["sample_score"]["score"]["explanation"] for r in lcb)  # the programs were executed
    results = json.loads((out / "results.json").read_text())[0]
    assert results["metrics"]["bfcl_v3"]["score"] == results["metrics"]["bfcl_v3"]["subset/OVERALL"]
    # the server was stopped with its engine processes: the port is free again
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


LIVEBENCH_DIR = os.environ.get("LIVEBENCH_DIR")


@pytest.mark.skipif(not LIVEBENCH_DIR, reason="LiveBench is not on PyPI: set LIVEBENCH_DIR to a clone of its repository "
                                              "(commit b0fb577) and DOPD_LIVEBENCH_PYTHON to a Python where it is "
                                              "installed (pip install -e; not .venv-harness: its antlr4 pin "
                                              "conflicts with evalscope's) to run it")
def test_livebench_through_its_repository(tmp_path, checkpoint):
    """LiveBench's run_livebench.py + show_livebench_result.py on local question files in its schema."""
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"""name: harness_tier_livebench
tasks:
  - benchmark: LiveBench
    task: livebench
    harness: livebench
    dataset: live_bench
    dataset_args: {{release: "2024-11-25", question_dir: {DATA / 'livebench'}}}
    metric: score
""")
    out = tmp_path / "out"
    proc = _eval(["--model", str(checkpoint), "--label", "student", "--suite", str(suite), "--out", str(out),
                  "--serve-python", SERVE_PY, "--livebench-python", _python("DOPD_LIVEBENCH_PYTHON"),
                  "--serve-args", SERVE_ARGS, "--harness-port", str(_free_port()), "--max-new-tokens", "32",
                  "--livebench-dir", LIVEBENCH_DIR],
                 cwd=tmp_path, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    row = next(csv.DictReader(open(out / "comparison.csv")))
    n_questions = sum(len(p.read_text().splitlines()) for p in (DATA / "livebench").rglob("question.jsonl"))
    assert row["status"] == "ok" and 0.0 <= float(row["livebench/score"]) <= 1.0
    assert row["livebench/n"] == str(n_questions)
