"""`dopd-vlm eval --suite` with harness benchmarks next to lmms-eval tasks: one comparison table.

The real run (vLLM serving a tiny checkpoint, evalscope 1.14.1 scoring BFCL-v3 and LiveCodeBench rows)
is tests/harness_tier (`make test-harness`, its own virtualenvs). Here, without them, stand-ins take
their places and nothing else is replaced: a local HTTP server answering ``/v1/models`` (the
readiness check the real server must pass), a stand-in harness Python (``--harness-python``) whose
``-m evalscope.cli.cli eval`` writes the report recorded with evalscope 1.14.1's own report code
(tests/fixtures/eval_harness) where ``--work-dir`` puts it, and a LiveBench folder whose two scripts
write result CSVs in show_livebench_result.py's layout. What is exercised: the suite file, the
server start/stop, the commands and their arguments as the stand-ins receive them, report
discovery and parsing, and the table."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "eval_harness"


def _stand_ins(tmp_path: Path) -> tuple[Path, Path, list[str], int]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.jsonl"
    python = bin_dir / "python"
    python.write_text(f"""#!{sys.executable}
import json, runpy, shutil, sys
from pathlib import Path
argv = sys.argv[1:]
if argv[0] == "-c":  # the adapter's check that this Python has the harness module: it has
    sys.exit(0)
if argv[0] != "-m":  # LiveBench's scripts: run them
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")
    sys.exit(0)
assert argv[:2] == ["-m", "evalscope.cli.cli"], argv
argv = argv[2:]
with open({str(calls)!r}, "a") as fh:
    fh.write(json.dumps(argv) + "\\n")
a = dict(zip(argv[1::2], argv[2::2]))
fixture = {{"bfcl_v3": {str(FIXTURES / "evalscope_bfcl_v3.json")!r},
            "live_code_bench": {str(FIXTURES / "evalscope_live_code_bench.json")!r}}}[a["--datasets"]]
out = Path(a["--work-dir"]) / "reports" / a["--model"] / (a["--datasets"] + ".json")
out.parent.mkdir(parents=True, exist_ok=True)
shutil.copy(fixture, out)
""")
    python.chmod(0o755)
    lb = tmp_path / "LiveBench" / "livebench"
    lb.mkdir(parents=True)
    (lb / "run_livebench.py").write_text(f"import json, sys\nopen({str(calls)!r}, 'a').write(json.dumps(sys.argv) + '\\n')\n")
    (lb / "show_livebench_result.py").write_text(
        "open('all_groups.csv', 'w').write('model,average,coding,math\\ndopd-eval,40.0,30.0,50.0\\n')\n"
        "open('df_raw.csv', 'w').write(',model,score,task,category,question_id\\n0,dopd-eval,1,t,coding,q1\\n"
        "1,dopd-eval,0,t,math,q2\\n2,dopd-eval,1,t,math,q3\\n')\n")
    www = tmp_path / "www" / "v1"
    www.mkdir(parents=True)
    (www / "models").write_text('{"data": [{"id": "dopd-eval"}]}')
    port = 20000 + (os.getpid() % 1000)
    server = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(www.parent)]
    return bin_dir, lb.parent, server, port


def _flags(argv: list[str]) -> dict:
    """``--flag value`` pairs of a command line; a flag followed by another flag is True."""
    out, i = {}, 0
    while i < len(argv):
        if argv[i].startswith("--"):
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                out[argv[i]], i = argv[i + 1], i + 2
                continue
            out[argv[i]] = True
        i += 1
    return out


def test_harness_benchmarks_join_the_comparison_table(tmp_path, tiny_ckpt, monkeypatch):
    from dopd_vlm.evaluate import evaluate, load_suite

    bin_dir, livebench, server, port = _stand_ins(tmp_path)
    suite = load_suite(REPO / "eval" / "suites" / "paper_llm.yaml")
    results, paths = evaluate([tiny_ckpt("qwen3")], [], tmp_path / "out", labels=["student"], limit=3,
                              max_new_tokens=512, primary=suite.primary, harness_tasks=suite.harness_tasks,
                              benchmarks=suite.benchmarks, chat_template_kwargs=suite.chat_template_kwargs,
                              livebench=str(livebench), harness_port=port, harness_server_cmd=server,
                              harness_python=str(bin_dir / "python"))
    r = results[0]
    assert r.status == "ok", r.task_errors
    assert r.metrics["bfcl_v3"]["score"] == 0.3924 and r.metrics["livecodebench_v5"]["score"] == 0.4
    assert r.metrics["livebench"]["score"] == 0.4 and r.counts == {"bfcl_v3": 42, "livecodebench_v5": 5, "livebench": 3}
    calls = [json.loads(x) for x in (tmp_path / "calls.jsonl").read_text().splitlines()]
    evalscope_calls = [c for c in calls if c[0] == "eval"]
    assert [_flags(c)["--datasets"] for c in evalscope_calls] == ["bfcl_v3", "live_code_bench"]
    lcb = _flags(evalscope_calls[1])
    assert lcb["--no-timestamp"] is True and lcb["--eval-type"] == "openai_api"
    assert lcb["--api-url"] == f"http://127.0.0.1:{port}/v1" and lcb["--limit"] == "3"
    assert json.loads(lcb["--dataset-args"])["live_code_bench"]["subset_list"] == ["release_v5"]
    assert json.loads(lcb["--generation-config"])["max_tokens"] == 512
    lb_call = next(c for c in calls if c[0].endswith("run_livebench.py"))
    assert lb_call[lb_call.index("--livebench-release-option") + 1] == "2024-11-25"
    # the server command dopd-vlm eval would have started (vllm serve) is kept beside the run
    serve = (tmp_path / "out" / "runs" / "student" / "harness" / "serve.sh").read_text()
    assert serve.startswith(sys.executable)  # the stand-in here; serve_command() builds vLLM's api_server
    md = paths["md"].read_text()
    assert "BFCLv3: bfcl_v3/score (n=42)" in md and "LiveBench: livebench/score (n=3)" in md
    assert "| student | ok | 0.4000 | 0.3924 | 0.4000 |" in md  # suite order: LiveBench, BFCLv3, LCB v5
    row = next(csv.DictReader(open(paths["csv"])))
    assert row["livecodebench_v5/score"] == "0.4000" and row["bfcl_v3/n"] == "42"
