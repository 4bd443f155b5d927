"""Security defaults with real tiny checkpoints: nothing from a checkpoint or dataset folder is
executed unless the user asks. Each trap writes a marker file when its code runs; the tests assert
the marker never appears under the defaults (and does appear when the user opts in, so the trap
itself is known to work)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dopd_vlm.adapters import AdapterError, get_adapter

KW = dict(min_pixels=84 * 84, max_pixels=84 * 84)


class _OpensMarker:
    """Unpickling this object calls ``open(marker, "w")``: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def ckpt_copy(tiny_ckpt, tmp_path):
    def make(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(tiny_ckpt("qwen2_5_vl", seed=1, **KW), dst)
        return dst

    return make


# ----------------------------------------------------------------------------- safetensors only
def test_pickle_only_checkpoint_is_refused_and_never_unpickled(ckpt_copy, tmp_path):
    from dopd_vlm.train import load_policy

    ckpt = ckpt_copy("pickle_only")
    marker = tmp_path / "unpickled"
    (ckpt / "model.safetensors").unlink()
    torch.save({"weights": _OpensMarker(marker)}, ckpt / "pytorch_model.bin")
    with pytest.raises(AdapterError, match=r"no \*\.safetensors weights found; this project loads safetensors only"):
        get_adapter(str(ckpt)).load(str(ckpt))
    with pytest.raises(AdapterError, match=str(ckpt)):
        load_policy(str(ckpt), "float32", False, "", "cpu")
    assert not marker.exists()


def test_safetensors_win_over_a_pickle_next_to_them(ckpt_copy, tmp_path):
    ckpt = ckpt_copy("both")
    marker = tmp_path / "unpickled"
    torch.save({"weights": _OpensMarker(marker)}, ckpt / "pytorch_model.bin")
    model, _ = get_adapter(str(ckpt)).load(str(ckpt))
    assert model.config.model_type == "qwen2_5_vl"
    assert not marker.exists()


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng.pt"])
def test_trainer_state_is_loaded_with_weights_only(tmp_path, name):
    from safetensors.torch import save_file

    from dopd_vlm.checkpoint import TrainerState, load_trainer_state, save_checkpoint

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ckpt = save_checkpoint(tmp_path / "run", 1, model, None, opt, sched, TrainerState(1, 1, {}),
                           save_fn=lambda m, f: save_file(m.state_dict(), str(f / "model.safetensors")))
    marker = tmp_path / "unpickled"
    torch.save({"state": _OpensMarker(marker)}, ckpt / "trainer_state" / name)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_trainer_state(ckpt, opt, sched)
    assert not marker.exists()


# -------------------------------------------------------------------------- trust_remote_code
def _remote_code_checkpoint(ckpt: Path, marker: Path) -> None:
    """Give a checkpoint an ``auto_map`` pointing at code in the folder that writes ``marker``."""
    (ckpt / "evil.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('remote code ran')\n"
        "from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor\n"
        "class EvilConfig(Qwen2_5_VLConfig):\n    pass\n"
        "class EvilModel(Qwen2_5_VLForConditionalGeneration):\n    config_class = EvilConfig\n"
        "class EvilProcessor(Qwen2_5_VLProcessor):\n    pass\n")
    for fname, amap in (("config.json", {"AutoConfig": "evil.EvilConfig",
                                         "AutoModelForImageTextToText": "evil.EvilModel"}),
                        ("processor_config.json", {"AutoProcessor": "evil.EvilProcessor"}),
                        ("tokenizer_config.json", {"AutoProcessor": "evil.EvilProcessor"})):
        cfg = json.loads((ckpt / fname).read_text())
        cfg["auto_map"] = amap
        (ckpt / fname).write_text(json.dumps(cfg))


def test_remote_code_is_not_run_unless_asked(ckpt_copy, tmp_path):
    from dopd_vlm.config import TrainConfig
    from dopd_vlm.train import load_policy

    ckpt = ckpt_copy("remote_code")
    marker = tmp_path / "remote_code_ran"
    _remote_code_checkpoint(ckpt, marker)
    model, processor = get_adapter(str(ckpt)).load(str(ckpt))
    assert type(processor).__name__ == "Qwen2_5_VLProcessor" and not marker.exists()
    pol = load_policy(str(ckpt), "float32", TrainConfig().model.trust_remote_code, "", "cpu")
    assert type(pol.processor).__name__ == "Qwen2_5_VLProcessor" and not marker.exists()

    # control: the trap works when the user opts in (own process and module cache: nothing leaks here)
    code = ("import sys; from dopd_vlm.adapters import get_adapter; "
            "m, p = get_adapter(sys.argv[1]).load(sys.argv[1], trust_remote_code=True); print(type(p).__name__)")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code, str(ckpt)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "EvilProcessor" in res.stdout and marker.exists()


# ------------------------------------------------------------------------ dataset folders
def test_training_data_is_read_without_pickle(tmp_path):
    """A ``save_to_disk`` folder is Arrow + JSON: a pickle dropped next to it is never opened."""
    from datasets import load_from_disk

    from data_builders.synthetic import build_synthetic

    out = tmp_path / "scenes"
    build_synthetic(out, n_train=2, n_test=0, seed=0, layout="grid", quiet=True)
    marker = tmp_path / "unpickled"
    for split_dir in [p for p in out.iterdir() if p.is_dir()]:
        with open(split_dir / "extra.pkl", "wb") as fh:
            pickle.dump(_OpensMarker(marker), fh)
    ds = load_from_disk(str(out))
    assert len(ds["train"]) == 2 and not marker.exists()
