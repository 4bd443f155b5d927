"""Checkpoint writes that fail at the worst moment keep a complete checkpoint on disk (torch only)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from dopd_vlm import checkpoint as ck


def _save_fn(m, folder):
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(folder / "model.safetensors"))


def _save(root, step, model, keep_last=1):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return ck.save_checkpoint(root, step, model, None, opt, None, ck.TrainerState(step, step, {}),
                              keep_last=keep_last, save_fn=_save_fn)


@pytest.mark.parametrize("fail_on", ["model", "rename"])
def test_failed_write_of_a_new_step_keeps_the_previous_one(tmp_path, monkeypatch, fail_on):
    model = torch.nn.Linear(2, 2)
    good = _save(tmp_path, 1, model)
    if fail_on == "model":
        def boom(m, folder):
            raise OSError("disk full")

        with pytest.raises(OSError, match="disk full"):
            ck.save_checkpoint(tmp_path, 2, model, None, None, None, None, keep_last=1, save_fn=boom)
    else:
        def failing_replace(src, dst):
            raise OSError("rename failed")

        monkeypatch.setattr(ck.os, "replace", failing_replace)
        with pytest.raises(OSError, match="rename failed"):
            _save(tmp_path, 2, model)
        monkeypatch.undo()
    assert ck.latest_checkpoint(tmp_path) == good
    assert ck.load_trainer_state(good, restore_rng=False).step == 1


def test_failed_re_save_of_the_same_step_keeps_the_old_copy(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    good = _save(tmp_path, 3, model)
    before = load_file(str(good / "model.safetensors"))
    real_replace = ck.os.replace
    calls = []

    def crash_on_final_rename(src, dst):
        calls.append((src, dst))
        if str(dst).endswith("checkpoint-000003"):
            raise OSError("killed here")
        return real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", crash_on_final_rename)
    with pytest.raises(OSError, match="killed here"):
        _save(tmp_path, 3, model)
    monkeypatch.undo()
    assert ck.latest_checkpoint(tmp_path) is not None, "no checkpoint left on disk"
    after = load_file(str(ck.latest_checkpoint(tmp_path) / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
