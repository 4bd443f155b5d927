"""The training recipe end to end on tiny models (issue 5 acceptance)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dopd_vlm.config import TrainConfig, load_config
from dopd_vlm.tables import TABLES
from dopd_vlm.train import train

PRESET = Path(__file__).resolve().parents[2] / "dopd_vlm" / "presets" / "tiny_dopd.yaml"


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_ckpt):
    """Tiny student/teacher checkpoints and a small synthetic dataset, built once."""
    from data_builders.synthetic import build_synthetic

    root = tmp_path_factory.mktemp("train_shared")
    data = root / "scenes"
    build_synthetic(data, n_train=16, n_test=4, seed=0, layout="grid", quiet=True)
    kw = dict(min_pixels=84 * 84, max_pixels=84 * 84)
    return {"student": tiny_ckpt("qwen2_5_vl", seed=1, **kw), "teacher": tiny_ckpt("qwen2_5_vl", seed=2, layers=3, **kw),
            "data": str(data)}


def _cfg(shared, out, *overrides):
    return load_config(TrainConfig, PRESET, [
        f"model.model_name_or_path={shared['student']}", f"model.teacher_model_name_or_path={shared['teacher']}",
        f"data.dataset_path={shared['data']}", f"run.output_dir={out}", "prompts_per_step=2",
        "num_generations=2", "max_new_tokens=4", *overrides])


def _metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_tiny_preset_writes_metrics_plots_html_and_loadable_checkpoint(tmp_path, shared):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = tmp_path / "run"
    final = train(_cfg(shared, out, "max_steps=3"))
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    fracs = sum(rows[0][f"regime/{g}/frac"] for g in ("LH", "LL", "HT", "HS"))
    assert fracs == pytest.approx(1.0)  # the regimes partition the valid tokens
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    for png in ("regime_fractions.png", "regime_losses.png", "gap.png", "entropy.png"):
        assert (out / "plots" / png).stat().st_size > 1000
    html = (out / "tokens.html").read_text()
    assert html.count('class="t"') > 4 and "HT" in html
    assert (out / "config.yaml").exists()
    assert final.name == "checkpoint-000003"
    model = AutoModelForImageTextToText.from_pretrained(final)
    AutoProcessor.from_pretrained(final)
    assert model.config.model_type == "qwen2_5_vl"


def test_stop_and_resume_reproduces_step_three_exactly(tmp_path, shared):
    full, part = tmp_path / "full", tmp_path / "part"
    train(_cfg(shared, full, "max_steps=3", "run.plots=false"))
    train(_cfg(shared, part, "max_steps=3", "run.plots=false", "run.stop_after_step=2"))
    assert (part / "checkpoint-000002").exists() and not (part / "checkpoint-000003").exists()
    train(_cfg(shared, part, "max_steps=3", "run.plots=false", "run.resume_from=latest"))
    a, b = _metrics(full), _metrics(part)
    assert [r["step"] for r in b] == [1, 2, 3]
    for key in ("loss", "regime/HT/frac", "gap/mean", "student/entropy", "response/length"):
        assert a[2][key] == b[2][key], key
    wa = load_file(str(full / "checkpoint-000003" / "model.safetensors"))
    wb = load_file(str(part / "checkpoint-000003" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_gradient_accumulation_matches_whole_step(tmp_path, shared):
    one = tmp_path / "one"
    acc = tmp_path / "acc"
    train(_cfg(shared, one, "max_steps=1", "run.plots=false"))
    train(_cfg(shared, acc, "max_steps=1", "run.plots=false", "micro_batch_size=1"))
    a, b = _metrics(one)[0], _metrics(acc)[0]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert a["regime/HT/frac"] == b["regime/HT/frac"]  # step-scoped thresholds: same routing


@pytest.mark.parametrize("table", sorted(TABLES))
def test_every_routing_table_trains_one_step(tmp_path, shared, table):
    out = tmp_path / table
    train(_cfg(shared, out, f"table={table}", "max_steps=1", "run.plots=false", "run.sample_every=0"))
    row = _metrics(out)[0]
    assert row["step"] == 1 and torch.isfinite(torch.tensor(row["loss"]))
    assert row["grad_norm"] > 0  # the student received a gradient


def test_two_process_ddp_on_cpu(tmp_path, shared):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "dopd_vlm.train", str(PRESET),
           f"model.model_name_or_path={shared['student']}", f"model.teacher_model_name_or_path={shared['teacher']}",
           f"data.dataset_path={shared['data']}", f"run.output_dir={out}", "prompts_per_step=2",
           "num_generations=2", "max_new_tokens=4", "max_steps=2", "run.plots=false"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert (out / "checkpoint-000002" / "model.safetensors").exists()


def test_lora_run_saves_merged_checkpoint_and_resumes(tmp_path, shared):
    pytest.importorskip("peft")
    from transformers import AutoModelForImageTextToText

    out = tmp_path / "lora"
    lora = ["model.use_peft=true", "model.lora_r=4", "model.lora_target_modules=q_proj,v_proj", "run.plots=false"]
    train(_cfg(shared, out, "max_steps=2", "run.stop_after_step=1", *lora))
    ckpt = out / "checkpoint-000001"
    assert (ckpt / "adapter" / "adapter_model.safetensors").exists()
    merged = AutoModelForImageTextToText.from_pretrained(ckpt)  # loadable without peft
    assert not any("lora" in n for n, _ in merged.named_parameters())
    train(_cfg(shared, out, "max_steps=2", "run.resume_from=latest", *lora))
    assert [r["step"] for r in _metrics(out)] == [1, 2]


@pytest.mark.parametrize("table", ["dopd", "vanilla_opd", "opsd"])
def test_lean_loss_path_matches_dense_in_training(tmp_path, shared, table):
    dense, lean = tmp_path / "dense", tmp_path / "lean"
    common = [f"table={table}", "max_steps=1", "run.plots=false", "micro_batch_size=2"]
    train(_cfg(shared, dense, *common))
    train(_cfg(shared, lean, *common, "run.loss_impl=lean", "routing.lean_chunk_size=3"))
    a, b = _metrics(dense)[0], _metrics(lean)[0]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-7)
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3, abs=1e-7)
    for key in a:
        if key.startswith("regime/") and key.endswith("/frac"):
            assert a[key] == b[key], key
