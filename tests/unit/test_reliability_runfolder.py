"""Run folders (dopd_vlm/runfolder.py), checkpoint write failures and unsafe weight files, without
training: a folder that holds a run is never reused silently, one process holds a folder at a
time, a resume with a changed config is refused with the differences, a failed checkpoint write
names the path and the cause. RELIABILITY.md, "Run folders"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from dopd_vlm.config import SFTConfig, TrainConfig, load_config, save_config
from dopd_vlm.runfolder import (
    CHANGES_NAME,
    LOCK_NAME,
    RunFolder,
    RunFolderError,
    config_differences,
    run_contents,
)


def _cfg(out: Path, *overrides: str, cls=TrainConfig):
    return load_config(cls, None, [f"run.output_dir={out}", *overrides])


def _fake_run(out: Path, cfg) -> None:
    """What a finished run leaves: config.yaml, logged steps, a checkpoint, plots; plus caches."""
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    (out / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    (out / "checkpoint-000002" / "trainer_state").mkdir(parents=True)
    (out / "checkpoint-000002" / "trainer_state" / "state.json").write_text('{"step": 2}')
    (out / "plots").mkdir()
    (out / "models" / "abc").mkdir(parents=True)  # a tiny: spec's cache, not part of the run


# ------------------------------------------------------------------------------- fresh runs
def test_fresh_run_into_a_folder_holding_a_run_is_refused_with_both_ways_out(tmp_path):
    out = tmp_path / "run"
    _fake_run(out, _cfg(out))
    with pytest.raises(RunFolderError) as e:
        RunFolder(_cfg(out), "train").open()
    msg = str(e.value)
    assert "\n" not in msg and str(out) in msg
    assert "run.resume_from=latest" in msg and "run.overwrite=true" in msg
    assert "checkpoint-000002" in msg
    assert (out / "metrics.jsonl").read_text().count("step") == 2  # nothing was touched


def test_overwrite_removes_the_earlier_run_and_keeps_caches(tmp_path):
    out = tmp_path / "run"
    _fake_run(out, _cfg(out))
    with RunFolder(_cfg(out, "run.overwrite=true"), "train") as folder:
        folder.open()
    assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_NAME, "models"])
    assert run_contents(out) == []


def test_folder_without_checkpoint_says_there_is_nothing_to_resume(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    save_config(_cfg(out), out / "config.yaml")
    with pytest.raises(RunFolderError, match=r"no checkpoint to continue from .*run.overwrite=true"):
        RunFolder(_cfg(out), "sft").open()


def test_empty_or_cache_only_folder_is_a_fresh_run(tmp_path):
    out = tmp_path / "run"
    (out / "data" / "x").mkdir(parents=True)
    (out / "metrics.jsonl").write_text("")  # an empty log is no run
    with RunFolder(_cfg(out), "train") as folder:
        folder.open()


# ----------------------------------------------------------------------------------- locking
def test_second_holder_is_refused_at_once_naming_the_first_pid(tmp_path):
    out = tmp_path / "run"
    with RunFolder(_cfg(out), "train") as first:
        first.open(install_sigint=False)
        t0 = time.monotonic()
        with pytest.raises(RunFolderError, match=rf"in use by another run \(pid {os.getpid()} on .*train started"):
            RunFolder(_cfg(out), "train").open(install_sigint=False)
        assert time.monotonic() - t0 < 5
    with RunFolder(_cfg(out), "train") as again:  # released on close
        again.open(install_sigint=False)


def test_lock_held_by_another_process_is_refused_and_freed_when_it_dies(tmp_path):
    out = tmp_path / "run"
    code = ("import sys, time; from dopd_vlm.config import TrainConfig, load_config; "
            "from dopd_vlm.runfolder import RunFolder; "
            "RunFolder(load_config(TrainConfig, None, ['run.output_dir=' + sys.argv[1]]), 'train').open(); "
            "print('locked', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match=rf"pid {holder.pid} "):
            RunFolder(_cfg(out), "train").open(install_sigint=False)
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleanup: its pid is still in the file, but the kernel dropped the lock
    assert f"pid {holder.pid}" in (out / LOCK_NAME).read_text()
    with RunFolder(_cfg(out), "train") as folder:
        folder.open(install_sigint=False)
        assert f"pid {os.getpid()}" in (out / LOCK_NAME).read_text()


# ------------------------------------------------------------------------------ resume checks
def test_resume_with_a_changed_run_is_refused_with_the_differences(tmp_path):
    out = tmp_path / "run"
    _fake_run(out, _cfg(out, "optim.lr=0.001", "optim.max_steps=6"))
    cfg = _cfg(out, "optim.lr=0.002", "optim.max_steps=8", "table=vanilla_opd", "run.resume_from=latest")
    with pytest.raises(RunFolderError) as e:
        RunFolder(cfg, "train").open(install_sigint=False)
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("optim.lr: 0.001 -> 0.002", "optim.max_steps: 6 -> 8", "table: 'dopd' -> 'vanilla_opd'",
                 "run.allow_config_change=true"):
        assert part in msg, part
    assert not (out / CHANGES_NAME).exists()


def test_allowed_config_change_is_logged_in_the_run_folder(tmp_path):
    out = tmp_path / "run"
    _fake_run(out, _cfg(out, "optim.lr=0.001"))
    cfg = _cfg(out, "optim.lr=0.002", "run.resume_from=latest", "run.allow_config_change=true")
    with RunFolder(cfg, "train") as folder:
        folder.open(install_sigint=False)
    (entry,) = [json.loads(line) for line in (out / CHANGES_NAME).read_text().splitlines()]
    assert entry["changes"] == {"optim.lr": {"saved": 0.001, "now": 0.002}}
    assert entry["step"] == 2 and entry["resumed_from"].endswith("checkpoint-000002")


def test_keys_that_do_not_alter_the_run_may_change_on_resume(tmp_path):
    out = tmp_path / "run"
    _fake_run(out, _cfg(out))
    cfg = _cfg(out, "run.resume_from=latest", "run.log_every=5", "run.save_every=2", "run.stop_after_step=4",
               "run.plots=false", "run.save_total_limit=9", "run.sample_every=0")
    with RunFolder(cfg, "train") as folder:
        folder.open(install_sigint=False)
    assert not (out / CHANGES_NAME).exists()


def test_memory_knobs_are_allowed_but_logged():
    saved = yaml.safe_load(yaml.safe_dump(json.loads(json.dumps(TrainConfig().__dict__, default=vars))))
    altering, logged = config_differences(saved, load_config(TrainConfig, None, ["optim.micro_batch_size=2"]))
    assert altering == {} and logged == {"optim.micro_batch_size": (0, 2)}


def test_a_key_missing_from_an_older_saved_config_counts_only_if_not_default():
    saved = json.loads(json.dumps(TrainConfig().__dict__, default=vars))
    del saved["routing"]["beta_w"]
    assert config_differences(saved, TrainConfig()) == ({}, {})
    altering, _ = config_differences(saved, load_config(TrainConfig, None, ["routing.beta_w=0.2"]))
    assert altering == {"routing.beta_w": (0.3, 0.2)}


def test_sft_config_is_checked_the_same_way(tmp_path):
    out = tmp_path / "sft"
    _fake_run(out, _cfg(out, cls=SFTConfig))
    with pytest.raises(RunFolderError, match=r"data.view: 'plain' -> 'privileged'"):
        RunFolder(_cfg(out, "data.view=privileged", "run.resume_from=latest", cls=SFTConfig), "sft").open(
            install_sigint=False)


def test_stale_temporary_checkpoint_folders_are_removed_on_open(tmp_path):
    out = tmp_path / "run"
    _fake_run(out, _cfg(out))
    (out / ".checkpoint-000003.tmp").mkdir()
    (out / ".checkpoint-000003.tmp" / "model.safetensors").write_bytes(b"half")
    (out / ".checkpoint-000007.tmp").mkdir()
    with RunFolder(_cfg(out, "run.resume_from=latest"), "train") as folder:
        folder.open(install_sigint=False)
    assert not list(out.glob(".checkpoint-*"))
    assert (out / "checkpoint-000002").is_dir()


# -------------------------------------------------------------------- checkpoint write failures
def _linear_save_fn(m, folder):
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(folder / "model.safetensors"))


def test_enospc_during_a_checkpoint_write_is_one_line_and_keeps_the_previous(tmp_path, monkeypatch):
    from dopd_vlm.checkpoint import CheckpointWriteError, TrainerState, latest_checkpoint, save_checkpoint

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    good = save_checkpoint(tmp_path, 1, model, None, opt, None, TrainerState(1, 1, {}), save_fn=_linear_save_fn)
    before = load_file(str(good / "model.safetensors"))
    monkeypatch.setenv("DOPD_FAULT_AT", "checkpoint.after_model:2:enospc")
    with pytest.raises(CheckpointWriteError) as e:
        save_checkpoint(tmp_path, 2, model, None, opt, None, TrainerState(2, 2, {}), save_fn=_linear_save_fn)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(tmp_path / "checkpoint-000002") in msg and "disk full" in msg and "No space left on device" in msg
    assert f"previous checkpoint {good} is intact" in msg
    assert latest_checkpoint(tmp_path) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-000001"]  # no temporary folder left
    after = load_file(str(good / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_read_only_folder_is_named_with_its_cause(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    from dopd_vlm.checkpoint import CheckpointWriteError, save_checkpoint

    tmp_path.chmod(0o500)
    try:
        with pytest.raises(CheckpointWriteError, match="Permission denied"):
            save_checkpoint(tmp_path, 1, torch.nn.Linear(2, 2), None, save_fn=_linear_save_fn)
    finally:
        tmp_path.chmod(0o700)


def test_write_error_cause_reads_safetensors_and_errno_messages(tmp_path):
    from dopd_vlm.checkpoint import write_error_cause

    rust = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert write_error_cause(rust, tmp_path).startswith("disk full (No space left on device;")
    assert "Read-only file system" in write_error_cause(OSError(30, "Read-only file system"), tmp_path)
    assert write_error_cause(RuntimeError("shapes do not match"), tmp_path) is None  # not a write failure
    torch_msg = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    # space is left here, so the cause stays torch's own words plus the free space, never "disk full"
    text = write_error_cause(torch_msg, tmp_path)
    assert text.startswith("torch's writer failed ([enforce fail at inline_container.cc:672]") and "free" in text


def test_fault_spec_with_an_action():
    from dopd_vlm.faults import FaultSpecError, parse_fault_action

    assert parse_fault_action("checkpoint.after_model:3:enospc") == ("checkpoint.after_model", 3, "enospc")
    assert parse_fault_action("checkpoint.before_rename:2") == ("checkpoint.before_rename", 2, "kill")
    with pytest.raises(FaultSpecError, match="ACTION one of"):
        parse_fault_action("checkpoint.after_model:3:explode")


# ------------------------------------------------------------------------------ unsafe files
def test_weights_that_are_no_safetensors_are_named_with_the_reason(tmp_path):
    from dopd_vlm.adapters.base import AdapterError, _check_safetensors, _not_safetensors

    good = tmp_path / "good.safetensors"
    save_file({"w": torch.zeros(2)}, str(good))
    assert _not_safetensors(good) == ""
    zipped = tmp_path / "zip.safetensors"
    torch.save({"w": torch.zeros(2)}, zipped)
    assert "zip archive" in _not_safetensors(zipped)
    raw = tmp_path / "raw.safetensors"
    torch.save({"w": torch.zeros(2)}, raw, _use_new_zipfile_serialization=False)
    assert _not_safetensors(raw) == "a pickle"
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 64)
    assert "header claims" in _not_safetensors(junk)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    os.replace(zipped, ckpt / "model.safetensors")
    with pytest.raises(AdapterError, match=r"model.safetensors: not a safetensors file \(a zip archive.*refused"):
        _check_safetensors(ckpt)


def test_metrics_are_cut_back_to_the_checkpoint_atomically_and_a_cut_line_is_dropped(tmp_path):
    from dopd_vlm.train import _truncate_jsonl

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "lo')  # killed mid-line
    _truncate_jsonl(path, 2)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temporary file left


def test_an_output_dir_that_cannot_be_made_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RunFolderError, match=r"file/run: cannot use as run.output_dir \(Not a directory\)"):
        RunFolder(_cfg(blocker / "run"), "train").open(install_sigint=False)
