"""`dopd-vlm annotate` against a real OpenAI-compatible server (issue 13, points 1, 2, 5).

The test starts `transformers serve` on 127.0.0.1 with the shipped demo teacher (a trained tiny
Qwen2.5-VL, 1.2M parameters, that answers in single words and stops): real generation, real HTTP,
the `openai` client. It checks that images reach the server, garbage replies become counted skips,
and that a run killed mid-way and rerun sends no stored request again and writes the same dataset
as an uninterrupted run. The server is stopped by its pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEACHER = ROOT / "dopd_vlm" / "assets" / "demo" / "teacher"
N_ROWS = 8

pytest.importorskip("fastapi", reason="transformers serve needs fastapi/uvicorn (pip install -e .[dev])")
pytest.importorskip("uvicorn", reason="transformers serve needs fastapi/uvicorn (pip install -e .[dev])")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    port = _free_port()
    exe = Path(sys.executable).parent / "transformers"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
                                 str(TEACHER)], stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"transformers serve did not come up: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield {"url": url, "log": log, "model": str(TEACHER), "pid": proc.pid}
    finally:
        proc.send_signal(signal.SIGTERM)  # stopped by its pid
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _posts(server) -> int:
    """Chat-completion requests the server has answered (its access log)."""
    return server["log"].read_text().count('"POST /v1/chat/completions HTTP/1.1" 200')


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from data_builders.scenes import DEMO_FAMILIES
    from data_builders.synthetic import build_synthetic

    root = tmp_path_factory.mktemp("annotate_src")
    build_synthetic(root / "scenes", n_train=N_ROWS, n_test=0, seed=3, layout="grid", families=DEMO_FAMILIES,
                    privileged_kinds=[], quiet=True)
    return root / "scenes"


def _annotate(server, src, out, *extra) -> list[str]:
    return ["annotate", str(src), "--out", str(out), "--model", server["model"], "--base-url", server["url"],
            "--max-tokens", "8", "--quiet", *extra]


def test_images_reach_the_server_and_tokens_are_counted(server, scenes):
    from datasets import Image, List, load_from_disk

    from data_builders.annotate_backends import OpenAIBackend, Request

    rec = load_from_disk(str(scenes))["train"].cast_column("images", List(Image(decode=False)))[0]
    text = {"type": "text", "text": rec["question"]}
    with_image = [{"role": "user", "content": [{"type": "image", "image": rec["images"][0]["bytes"]}, text]}]
    without = [{"role": "user", "content": [text]}]
    backend = OpenAIBackend(server["model"], base_url=server["url"], concurrency=2)
    before = _posts(server)
    replies = {r.key: rep for r, rep in backend.run([Request("img", with_image, max_tokens=8),
                                                      Request("txt", without, max_tokens=8)])}
    backend.close()
    assert _posts(server) - before == 2 and backend.requests_sent == 2
    assert replies["img"].error is None and replies["img"].text.strip()
    # the shipped demo teacher may answer in more than 8 tokens: "length" is a real, complete reply too
    assert replies["img"].finish_reason in ("stop", "length") and replies["img"].completion_tokens > 0
    # the 84x84 image is 3x3 merged patches = 9 image tokens (+ vision start/end) in the server's prompt
    assert replies["img"].prompt_tokens - replies["txt"].prompt_tokens >= 9


def test_garbage_replies_become_counted_skips_and_are_never_asked_twice(server, scenes, tmp_path, capsys):
    from dopd_vlm.cli import main

    before = _posts(server)
    args = _annotate(server, scenes, tmp_path / "boxes", "--kind", "boxes_labels", "--limit", "4",
                     "--coords", "qwen2_5_vl")
    assert main(args) == 1  # the demo teacher answers in single words: no box in any reply
    err = capsys.readouterr().err
    assert "kept 0 rows: train: no box found 4" in err and not (tmp_path / "boxes").exists()
    assert _posts(server) - before == 8  # 4 requests + 4 retries that say what was wrong
    cache = tmp_path / "boxes.annotate-cache" / "responses.jsonl"
    assert len(cache.read_text().splitlines()) == 8
    # the same command again: every reply comes from the cache, no request is sent
    assert main(args) == 1
    assert _posts(server) - before == 8


def test_kill_mid_run_then_rerun_sends_no_request_twice_and_writes_the_same_dataset(server, scenes, tmp_path):
    from datasets import load_from_disk

    from dopd_vlm.cli import main

    common = ["--kind", "captions", "--recheck", "flag", "--leak-policy", "keep", "--concurrency", "1"]
    # reference: one uninterrupted run
    assert main(_annotate(server, scenes, tmp_path / "ref", *common)) == 0
    ref = load_from_disk(str(tmp_path / "ref"))["train"]
    summary = json.loads((tmp_path / "ref" / "build_summary.json").read_text())["splits"][0]
    assert summary["kept"] == N_ROWS and summary["requests"]["sent"] == summary["requests"]["sent"] > N_ROWS
    n_requests = summary["requests"]["sent"]
    assert summary["tokens"]["prompt"] > 0 and summary["tokens"]["completion"] > 0
    r = ref[0]
    assert r["privileged"]["captions"][0] and r["privileged_context"] == "Caption: " + r["privileged"]["captions"][0]
    prov = r["meta"]["annotate"]["captions"]
    assert prov["model"] == server["model"] and prov["backend"] == "openai" and prov["template"].endswith("captions.txt")
    assert prov["params"]["temperature"] == 0.0 and len(prov["template_sha256"]) == 64 and "recheck" in prov

    # the same command into another folder, killed after a few replies, then rerun
    out = tmp_path / "resumed"
    cache = tmp_path / "resumed.annotate-cache" / "responses.jsonl"
    cmd = [sys.executable, "-m", "dopd_vlm.cli", *_annotate(server, scenes, out, *common)]
    start = _posts(server)
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (cache.exists() and len(cache.read_text().splitlines()) >= 6):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # nothing half-written
    stored = len(cache.read_text().splitlines())
    sent_before_kill = _posts(server) - start
    assert stored < n_requests

    mid = _posts(server)
    assert main(_annotate(server, scenes, out, *common)) == 0
    sent_on_rerun = _posts(server) - mid
    assert sent_on_rerun == n_requests - stored  # no stored reply was asked for again
    assert sent_before_kill + sent_on_rerun <= n_requests + 1  # at most the one request in flight at the kill
    keys = [json.loads(line)["key"] for line in cache.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == n_requests
    resumed = load_from_disk(str(out))["train"]
    assert resumed.to_list() == ref.to_list()  # identical output, images and provenance included
    s2 = json.loads((out / "build_summary.json").read_text())["splits"][0]
    assert s2["requests"] == {"sent": n_requests - stored, "from_cache": stored}


def test_local_backend_runs_the_same_checkpoint_offline(scenes, tmp_path):
    from datasets import load_from_disk

    from dopd_vlm.cli import main

    out = tmp_path / "local"
    assert main(["annotate", str(scenes), "--out", str(out), "--kind", "captions", "--backend", "local",
                 "--local-engine", "transformers", "--model", str(TEACHER), "--max-tokens", "8", "--limit", "3",
                 "--recheck", "off", "--leak-policy", "keep", "--quiet"]) == 0
    ds = load_from_disk(str(out))["train"]
    assert len(ds) == 3 and all(r["privileged"]["captions"][0] for r in ds)
    assert ds[0]["meta"]["annotate"]["captions"]["engine"] == "transformers"


class _FlakyProxy:
    """127.0.0.1 proxy in front of the real server: answers the first ``fail`` requests itself with
    ``status`` (or stalls past the client's timeout when ``status`` is "stall"), forwards the rest."""

    def __init__(self, upstream: str, fail: int, status):
        import http.server
        import threading

        proxy = self
        self.seen = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                proxy.seen += 1
                if proxy.seen <= fail:
                    if status == "stall":
                        time.sleep(1.5)
                        return
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(json.dumps({"error": {"message": "injected", "type": "x"}}).encode())
                    return
                req = urllib.request.Request(upstream + self.path.removeprefix("/v1"), data=body,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=60) as r:
                    data = r.read()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("status,retried", [(503, True), (429, True), ("stall", True), (400, False)])
def test_retries_with_backoff_on_transient_errors_only(server, status, retried):
    from data_builders.annotate_backends import OpenAIBackend, Request

    proxy = _FlakyProxy(server["url"], fail=1, status=status)
    try:
        backend = OpenAIBackend(server["model"], base_url=proxy.url, concurrency=1, timeout=0.75, max_retries=2,
                                backoff=0.05)
        before = _posts(server)
        [(_, rep)] = list(backend.run([Request("k", [{"role": "user", "content": [
            {"type": "text", "text": "How many objects?"}]}], max_tokens=4)]))
        backend.close()
    finally:
        proxy.close()
    if retried:
        assert rep.error is None and rep.attempts == 2 and rep.text is not None
        assert _posts(server) - before == 1  # the failed attempt never reached the model
    else:  # a 4xx is the request's fault: not retried, reported
        assert rep.error is not None and "BadRequestError" in rep.error and rep.attempts == 1
        assert _posts(server) - before == 0



def test_build_annotate_train_end_to_end(server, scenes, tmp_path, tiny_ckpt):
    """The data path of the paper presets on tiny parts: data without privilege is refused by train,
    annotated by the served model, then trained on with the teacher reading the model-written text."""
    from datasets import load_from_disk

    from dopd_vlm.cli import main
    from dopd_vlm.config import TrainConfig, load_config
    from dopd_vlm.privilege_check import EmptyPrivilegeError
    from dopd_vlm.train import train

    # the scenes carry captions of their own: strip them to stand for a source without privilege
    bare = tmp_path / "bare"
    ds = load_from_disk(str(scenes))["train"].select(range(4))

    def strip(rec):
        rec["privileged"]["captions"] = []
        return rec

    ds.map(strip, features=ds.features).save_to_disk(str(bare))
    kw = dict(min_pixels=84 * 84, max_pixels=84 * 84)
    preset = ROOT / "dopd_vlm" / "presets" / "tiny_dopd.yaml"

    def cfg(data, out):
        return load_config(TrainConfig, preset, [
            f"model.model_name_or_path={tiny_ckpt('qwen2_5_vl', seed=1, **kw)}",
            f"model.teacher_model_name_or_path={tiny_ckpt('qwen2_5_vl', seed=2, layers=3, **kw)}",
            f"data.dataset_path={data}", f"run.output_dir={out}", "data.privileged_kinds=[captions]",
            "prompts_per_step=2", "num_generations=2", "max_new_tokens=4", "max_steps=1", "data.shuffle=false",
            "run.sample_every=1"])

    with pytest.raises(EmptyPrivilegeError, match="empty in 4 of 4 rows"):
        train(cfg(bare, tmp_path / "refused"))
    annotated = tmp_path / "annotated"
    assert main(_annotate(server, bare, annotated, "--kind", "captions", "--recheck", "off",
                          "--leak-policy", "keep")) == 0
    data = load_from_disk(str(annotated))["train"]
    assert len(data) == 4 and all(r["meta"]["privileged_kinds"] == ["captions"] for r in data)
    summary = json.loads((annotated / "build_summary.json").read_text())["splits"][0]
    assert summary["privileged_empty"]["empty_all"] == 0
    out = tmp_path / "run"
    train(cfg(annotated, out))
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["privileged"] for s in samples] == ["Caption: " + r["privileged"]["captions"][0] for r in data.select([0, 1])]
