"""Atomic checkpoints: a failed write leaves the previous checkpoint intact; keep-last-N; RNG."""

from __future__ import annotations

import json
import random

import pytest
import torch

from dopd_vlm.checkpoint import (
    TrainerState,
    latest_checkpoint,
    list_checkpoints,
    load_trainer_state,
    save_checkpoint,
)


class TinySaver(torch.nn.Module):
    """A module with save_pretrained, like a transformers model, optionally failing mid-write."""

    def __init__(self, fail: bool = False):
        super().__init__()
        self.w = torch.nn.Parameter(torch.arange(4.0))
        self.fail = fail

    def save_pretrained(self, folder, safe_serialization=True):
        from safetensors.torch import save_file

        save_file({"w": self.w.detach()}, str(folder / "model.safetensors"))
        if self.fail:
            raise OSError("disk full (simulated)")


def _opt(model):
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model.w.grad = torch.ones(4)
    opt.step()
    return opt


def test_save_load_roundtrip_restores_optimizer_and_rng(tmp_path):
    m = TinySaver()
    opt = _opt(m)
    torch.manual_seed(5)
    random.seed(7)
    path = save_checkpoint(tmp_path, 3, m, None, opt, None, TrainerState(3, 12, {"k": 1}))
    expected = (torch.rand(3), random.random())
    torch.manual_seed(0)
    random.seed(0)
    m2 = TinySaver()
    opt2 = torch.optim.AdamW(m2.parameters(), lr=0.1)
    state = load_trainer_state(path, opt2)
    assert (state.step, state.samples_seen, state.extra) == (3, 12, {"k": 1})
    again = (torch.rand(3), random.random())
    assert torch.equal(again[0], expected[0]) and again[1] == expected[1]
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_failed_write_keeps_previous_checkpoint(tmp_path):
    good = save_checkpoint(tmp_path, 1, TinySaver(), None)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 2, TinySaver(fail=True), None)
    assert list_checkpoints(tmp_path) == [good]
    assert latest_checkpoint(tmp_path) == good
    assert json.loads((good / "trainer_state" / "state.json").read_text())["step"] == 1
    # the next save clears the stale temporary folder and succeeds
    assert save_checkpoint(tmp_path, 2, TinySaver(), None).name == "checkpoint-000002"
    assert not list(tmp_path.glob(".checkpoint-*.tmp"))


def test_keep_last(tmp_path):
    for step in range(1, 5):
        save_checkpoint(tmp_path, step, TinySaver(), None, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-000003", "checkpoint-000004"]


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a resumable checkpoint"):
        load_trainer_state(tmp_path)
