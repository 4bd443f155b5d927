"""Run folders under real processes (RELIABILITY.md, "Run folders"): ``sft`` killed with SIGKILL
resumes bit-exactly; a full disk at a checkpoint save is one line with the previous checkpoint
intact; Ctrl-C (a real SIGINT) saves, writes plots and HTML and exits 130, a second one exits at
once; a second process on the same folder refuses at once naming the first's pid; a fresh run or a
changed config into a folder holding a run refuses; unsafe weight files are one line.

Training runs as ``python -m dopd_vlm.cli`` subprocesses with one thread each (as in
test_reliability_faults.py), on tiny Qwen2.5-VL models and synthetic scenes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

PRESET = Path(__file__).resolve().parents[2] / "dopd_vlm" / "presets" / "tiny_dopd.yaml"
SFT_STEPS = 4


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_ckpt):
    from data_builders.synthetic import build_synthetic

    root = tmp_path_factory.mktemp("reliability_runs")
    build_synthetic(root / "scenes", n_train=16, n_test=4, seed=0, layout="grid", quiet=True)
    kw = dict(min_pixels=84 * 84, max_pixels=84 * 84)
    return {"student": tiny_ckpt("qwen2_5_vl", seed=1, **kw), "teacher": tiny_ckpt("qwen2_5_vl", seed=2, layers=3, **kw),
            "data": str(root / "scenes")}


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DOPD_FAULT_AT"}
    env.update({"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "TOKENIZERS_PARALLELISM": "false", **extra})
    return env


def _sft_args(shared, out, *extra) -> list[str]:
    return ["sft", f"model.model_name_or_path={shared['student']}", f"data.dataset_path={shared['data']}",
            f"run.output_dir={out}", f"optim.max_steps={SFT_STEPS}", "optim.batch_size=2", "optim.lr=1e-3",
            "optim.warmup_ratio=0", "run.save_every=1", "run.save_total_limit=2", *extra]


def _train_args(shared, out, *extra) -> list[str]:
    return ["train", str(PRESET), f"model.model_name_or_path={shared['student']}",
            f"model.teacher_model_name_or_path={shared['teacher']}", f"data.dataset_path={shared['data']}",
            f"run.output_dir={out}", "prompts_per_step=2", "num_generations=2", "max_new_tokens=4", *extra]


def _cli(args, env=None, timeout=400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dopd_vlm.cli", *args], capture_output=True, text=True,
                          env=env or _env(), timeout=timeout)


def _popen(args, log: Path, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dopd_vlm.cli", *args], stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, env=env or _env())


def _metrics(out) -> list[dict]:
    path = Path(out) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "model.safetensors"))


def _assert_bit_exact(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def _wait_for(cond, proc: subprocess.Popen, timeout=400, what="condition") -> None:
    t_end = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended (rc {proc.returncode}) before {what}")
        if time.monotonic() > t_end:
            proc.kill()
            raise TimeoutError(what)
        time.sleep(0.05)


# ------------------------------------------------------------------------------------- sft
@pytest.fixture(scope="module")
def sft_reference(shared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft_reference") / "run"
    res = _cli(_sft_args(shared, out))
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_sft_killed_during_a_checkpoint_write_resumes_bit_exactly(tmp_path, shared, sft_reference):
    out = tmp_path / "killed"
    res = _cli(_sft_args(shared, out), env=_env(DOPD_FAULT_AT="checkpoint.after_model:3"))
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert (out / ".checkpoint-000003.tmp").is_dir() and (out / "checkpoint-000002").is_dir()
    assert [r["step"] for r in _metrics(out)] == [1, 2, 3]

    again = _cli(_sft_args(shared, out))  # a fresh run into it is refused, the folder untouched
    assert again.returncode == 2 and "run.resume_from=latest" in again.stderr and "Traceback" not in again.stderr
    assert [r["step"] for r in _metrics(out)] == [1, 2, 3]

    res = _cli(_sft_args(shared, out, "run.resume_from=latest"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stdout + res.stderr and "checkpoint-000002 at step 2" in res.stdout + res.stderr
    final = f"checkpoint-{SFT_STEPS:06d}"
    _assert_bit_exact(sft_reference / final, out / final)
    ref, got = _metrics(sft_reference), _metrics(out)
    assert [r["step"] for r in got] == list(range(1, SFT_STEPS + 1))  # never cut, never mixed
    assert [r["loss"] for r in ref] == [r["loss"] for r in got]
    assert not list(out.glob(".checkpoint-*")), "the stale temporary folder survived the resume"


def test_sft_disk_full_at_a_checkpoint_save_is_one_line_and_keeps_the_previous(tmp_path, shared):
    out = tmp_path / "full"
    res = _cli(_sft_args(shared, out, "optim.max_steps=2"),
               env=_env(DOPD_FAULT_AT="checkpoint.after_model:2:enospc"))
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("dopd-vlm sft: error: cannot write checkpoint ")
    assert str(out / "checkpoint-000002") in line and "disk full" in line
    assert f"previous checkpoint {out / 'checkpoint-000001'} is intact" in line
    assert sorted(p.name for p in out.glob("*checkpoint-*")) == ["checkpoint-000001"]
    _weights(out / "checkpoint-000001")
    res = _cli(_sft_args(shared, out, "optim.max_steps=2", "run.resume_from=latest"))  # space is back
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "checkpoint-000002" / "trainer_state" / "state.json").is_file()


def _signal_sft_after_two_steps(tmp_path, shared, signum) -> tuple[Path, int, str]:
    """(run folder, exit status, log) of a long sft run sent ``signum`` once two steps are logged."""
    out, log = tmp_path / "run", tmp_path / "run.log"
    proc = _popen(_sft_args(shared, out, "optim.max_steps=400", "run.save_every=0"), log)
    try:
        _wait_for(lambda: len(_metrics(out)) >= 2, proc, what="two sft steps")
        proc.send_signal(signum)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return out, rc, log.read_text(errors="replace")


def test_sft_ctrl_c_saves_a_checkpoint_and_the_run_resumes(tmp_path, shared):
    out, rc, text = _signal_sft_after_two_steps(tmp_path, shared, signal.SIGINT)
    assert rc == 130 and "Traceback" not in text, text[-3000:]
    n = _metrics(out)[-1]["step"]
    assert [r["step"] for r in _metrics(out)] == list(range(1, n + 1))
    assert text.strip().splitlines()[-1] == (f"dopd-vlm sft: interrupted after step {n}: saved "
                                             f"{out / f'checkpoint-{n:06d}'}; continue with run.resume_from=latest")
    res = _cli(_sft_args(shared, out, "optim.max_steps=400", "run.save_every=0", "run.resume_from=latest",
                         f"run.stop_after_step={n + 1}"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert [r["step"] for r in _metrics(out)] == list(range(1, n + 2))
    assert (out / f"checkpoint-{n + 1:06d}").is_dir()


def test_sft_sigterm_saves_a_checkpoint_like_ctrl_c(tmp_path, shared):
    """A scheduler's SIGTERM (pre-emption) finishes the step, saves and exits 143 with one line."""
    out, rc, text = _signal_sft_after_two_steps(tmp_path, shared, signal.SIGTERM)
    assert rc == 143 and "Traceback" not in text, text[-3000:]
    assert "sft: SIGTERM: finishing the current step" in text
    n = _metrics(out)[-1]["step"]
    assert text.strip().splitlines()[-1] == (f"dopd-vlm sft: interrupted after step {n}: saved "
                                             f"{out / f'checkpoint-{n:06d}'}; continue with run.resume_from=latest")
    assert (out / f"checkpoint-{n:06d}" / "trainer_state" / "state.json").is_file()


# ------------------------------------------------------------------------ train: Ctrl-C, lock
def test_train_ctrl_c_saves_plots_and_html_and_a_second_process_is_refused(tmp_path, shared):
    out, log = tmp_path / "run", tmp_path / "run.log"
    proc = _popen(_train_args(shared, out, "max_steps=40", "run.sample_every=1"), log)
    try:
        _wait_for(lambda: len(_metrics(out)) >= 1, proc, what="the first step")
        # a second process on the same folder refuses at once, naming the first
        t0 = time.monotonic()
        second = _cli(_train_args(shared, out, "max_steps=40"), timeout=200)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"is in use by another run (pid {proc.pid} on " in second.stderr
        assert "Traceback" not in second.stderr
        print(f"second process refused in {time.monotonic() - t0:.1f} s (imports included)")
        assert proc.poll() is None  # the first one is unharmed

        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text(errors="replace")
    assert rc == 130, text[-3000:]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    last = text.strip().splitlines()[-1]
    steps = [r["step"] for r in _metrics(out)]
    n = steps[-1]
    assert steps == list(range(1, n + 1)) and n < 40
    assert last == (f"dopd-vlm train: interrupted after step {n}: saved {out / f'checkpoint-{n:06d}'}, plots and "
                    "tokens.html; continue with run.resume_from=latest")
    assert (out / f"checkpoint-{n:06d}" / "trainer_state" / "state.json").is_file()
    assert (out / "plots" / "regime_fractions.png").stat().st_size > 1000
    assert 'class="t"' in (out / "tokens.html").read_text()

    # a resumed run stops at once on a second Ctrl-C, keeping the last complete checkpoint
    log2 = tmp_path / "resume.log"
    proc = _popen(_train_args(shared, out, "max_steps=40", "run.sample_every=1", "run.resume_from=latest"), log2)
    try:
        _wait_for(lambda: len(_metrics(out)) >= n + 1, proc, what="the first resumed step")
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
        waited = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log2.read_text(errors="replace")
    assert rc == 130, text[-3000:]
    assert "second interrupt: exiting at once" in text and "Traceback" not in text
    assert waited < 10, f"the second Ctrl-C took {waited:.1f} s"
    from dopd_vlm.checkpoint import latest_checkpoint

    last_ckpt = latest_checkpoint(out)
    assert last_ckpt is not None and (last_ckpt / "trainer_state" / "state.json").is_file()
    _weights(last_ckpt)


def test_ddp_ranks_agree_on_a_refusal_and_do_not_hang(tmp_path, shared):
    from dopd_vlm.config import TrainConfig, load_config, save_config

    out = tmp_path / "ddp"
    out.mkdir()
    save_config(load_config(TrainConfig, PRESET, [f"run.output_dir={out}"]), out / "config.yaml")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "dopd_vlm.train",
           *_train_args(shared, out, "max_steps=2")[1:]]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert res.returncode != 0
    refusals = [line for line in (res.stdout + res.stderr).splitlines()
                if line.startswith("dopd_vlm.train: error: ") and "already holds a run" in line]
    # one verdict (the launcher may stop the other rank before it prints its identical line)
    assert refusals and len(set(refusals)) == 1, res.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "run.lock"]  # nothing else written


# --------------------------------------------------------------------- train: run folder checks
def test_train_fresh_run_changed_config_and_overwrite(tmp_path, shared):
    from dopd_vlm.config import TrainConfig, load_config
    from dopd_vlm.runfolder import CHANGES_NAME, RunFolderError
    from dopd_vlm.train import train

    def cfg(*extra):
        return load_config(TrainConfig, PRESET, _train_args(shared, out, "run.plots=false", *extra)[2:])

    out = tmp_path / "run"
    train(cfg("max_steps=2", "run.stop_after_step=1"))
    metrics = (out / "metrics.jsonl").read_text()
    with pytest.raises(RunFolderError, match=r"already holds a run .*run.resume_from=latest.*run.overwrite=true"):
        train(cfg("max_steps=2"))
    with pytest.raises(RunFolderError) as e:
        train(cfg("max_steps=2", "optim.lr=0.002", f"data.dataset_path={tmp_path}", "run.resume_from=latest"))
    assert "optim.lr: 0.001 -> 0.002" in str(e.value) and f"data.dataset_path: {shared['data']!r} -> " in str(e.value)
    assert (out / "metrics.jsonl").read_text() == metrics  # refusals touch nothing
    train(cfg("max_steps=2", "optim.lr=0.002", "run.resume_from=latest", "run.allow_config_change=true"))
    assert [r["step"] for r in _metrics(out)] == [1, 2]
    (entry,) = [json.loads(line) for line in (out / CHANGES_NAME).read_text().splitlines()]
    assert entry["changes"] == {"optim.lr": {"saved": 0.001, "now": 0.002}} and entry["step"] == 1
    # the accepted lr is the one the run follows (the restored optimiser state would bring back 0.001)
    sched = torch.load(out / "checkpoint-000002" / "trainer_state" / "scheduler.pt", weights_only=True)
    opt = torch.load(out / "checkpoint-000002" / "trainer_state" / "optimizer.pt", weights_only=True)
    assert sched["base_lrs"] == [0.002] and [g["initial_lr"] for g in opt["param_groups"]] == [0.002]
    # overwrite: the earlier run is gone before the new one starts
    train(cfg("max_steps=1", "run.overwrite=true"))
    assert [r["step"] for r in _metrics(out)] == [1]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-000001"]
    assert not (out / CHANGES_NAME).exists()


# ----------------------------------------------------------------------------- unsafe files
def test_unsafe_checkpoints_are_refused_in_one_line(tmp_path, shared):
    pickled = tmp_path / "pickled"
    shutil.copytree(shared["student"], pickled)
    state = {k: v.clone() for k, v in load_file(str(Path(shared["student"]) / "model.safetensors")).items()}
    torch.save(state, pickled / "model.safetensors")  # a pickle under a safetensors name
    custom = tmp_path / "custom"
    shutil.copytree(shared["student"], custom)
    cfg = json.loads((custom / "config.json").read_text())
    cfg.update(model_type="evil_vl", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"})
    (custom / "config.json").write_text(json.dumps(cfg))
    (custom / "evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w')\n")
    for ckpt, reason in ((pickled, "not a safetensors file (a zip archive"),
                         (custom, "model_type 'evil_vl' exists only as custom code")):
        res = _cli(_sft_args(shared, tmp_path / f"out-{ckpt.name}", f"model.model_name_or_path={ckpt}"))
        assert res.returncode == 2, res.stderr[-2000:]
        assert "Traceback" not in res.stderr
        line = res.stderr.strip().splitlines()[-1]
        assert line.startswith("dopd-vlm sft: error: ") and reason in line and str(ckpt) in line, line
    assert not (tmp_path / "ran").exists()


def test_real_disk_full_on_a_small_tmpfs(tmp_path):
    """The real thing where mounting is allowed (root): torch's writer and safetensors' writer on a
    full file system, each named as a full disk; the previous checkpoint stays whole."""
    from dopd_vlm.checkpoint import CheckpointWriteError, TrainerState, latest_checkpoint, save_checkpoint

    mnt = tmp_path / "small"
    mnt.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        model = torch.nn.Linear(2500, 10, bias=False)  # 100 KB of weights, 200 KB of AdamW state
        opt = torch.optim.AdamW(model.parameters())
        model(torch.ones(1, 2500)).sum().backward()
        opt.step()

        def save_fn(m, folder):
            save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(folder / "model.safetensors"))

        good = save_checkpoint(mnt, 1, model, None, opt, None, TrainerState(1, 1, {}), save_fn=save_fn)
        before = {k: v.clone() for k, v in _weights(good).items()}  # no mmap of the file kept open
        free = shutil.disk_usage(mnt).free
        for leave, writer in ((150_000, "torch (optimizer.pt)"), (50_000, "safetensors (model.safetensors)")):
            filler = mnt / "filler"
            with open(filler, "wb") as fh:
                fh.write(b"\0" * (shutil.disk_usage(mnt).free - leave))
            with pytest.raises(CheckpointWriteError) as e:
                save_checkpoint(mnt, 2, model, None, opt, None, TrainerState(2, 2, {}), save_fn=save_fn)
            msg = str(e.value)
            print(writer, "->", msg)
            assert "disk full (No space left on device" in msg and str(mnt / "checkpoint-000002") in msg
            assert latest_checkpoint(mnt) == good and not list(mnt.glob(".checkpoint-*"))
            filler.unlink()
            assert all(torch.equal(before[k], v) for k, v in _weights(good).items())
        assert shutil.disk_usage(mnt).free == free  # nothing half-written is left behind
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
