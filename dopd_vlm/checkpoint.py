"""Atomic, resumable checkpoints.

A checkpoint is a folder ``checkpoint-{step:06d}`` holding a ``save_pretrained`` model
(safetensors) plus the processor, loadable by transformers and lmms-eval without conversion, and a
``trainer_state/`` folder (optimizer, scheduler, RNG, data position) for ``resume_from``.

Atomicity: everything is written into ``.checkpoint-{step}.tmp`` and renamed into place in one
``os.replace``; a crash mid-write leaves the previous checkpoints intact and only a stale ``.tmp``
folder, which the next save removes. Training state is loaded with ``torch.load(weights_only=True)``
(no pickle of arbitrary objects), and the Python RNG state is stored as JSON.

Write failures (disk full, quota, read-only file system, permissions) end in one
``CheckpointWriteError`` naming the checkpoint and the cause; the temporary folder is removed and
the previous checkpoints are untouched. torch's own writer hides the cause (``RuntimeError:
[enforce fail at inline_container.cc:672] . unexpected pos``): it is found by writing a probe file
next to the checkpoint and, failing that, from the free space left.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dopd_vlm.faults import fault_point

CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
LOW_SPACE_BYTES = 64 << 20  # below this much free space a failed write is put down to a full disk [D]


class CheckpointWriteError(ValueError):
    """A checkpoint could not be written; the message names the folder and the cause (one line)."""


@dataclass
class TrainerState:
    step: int  # optimiser steps completed
    samples_seen: int  # prompts consumed from the data order (the data position)
    extra: dict[str, Any]


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``output_dir``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    for old in root.glob(".checkpoint-*.old"):  # a re-save interrupted between its two renames
        final = root / old.name[1:-len(".old")]
        if final.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, final)
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CKPT_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def save_checkpoint(output_dir: str | os.PathLike, step: int, model, processor, optimizer=None, scheduler=None,
                    state: TrainerState | None = None, keep_last: int | None = None,
                    save_fn=None) -> Path:
    """Write ``checkpoint-{step}`` atomically; keep only the newest ``keep_last`` (None = all).

    ``save_fn(model, folder)`` overrides how the weights are written (accelerate's unwrap/gather);
    by default ``model.save_pretrained(folder)``.
    """
    root = Path(output_dir)
    final = root / f"checkpoint-{step:06d}"
    tmp = root / f".checkpoint-{step:06d}.tmp"
    try:
        return _write_checkpoint(root, final, tmp, step, model, processor, optimizer, scheduler, state, keep_last,
                                 save_fn)
    except Exception as e:
        cause = write_error_cause(e, root)
        shutil.rmtree(tmp, ignore_errors=True)
        list_checkpoints(root)  # a re-save that failed between its renames gets its old copy back
        if cause is None:
            raise  # not a write failure: a programming or library error keeps its traceback
        previous = latest_checkpoint(root)
        kept = f"the previous checkpoint {previous} is intact" if previous else "there is no earlier checkpoint"
        raise CheckpointWriteError(f"cannot write checkpoint {final}: {cause}; {kept}; the temporary folder "
                                   "was removed") from e


def _write_checkpoint(root, final, tmp, step, model, processor, optimizer, scheduler, state, keep_last,
                      save_fn) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    if save_fn is None:
        model.save_pretrained(tmp, safe_serialization=True)
    else:
        save_fn(model, tmp)
    fault_point("checkpoint.after_model", step)
    if processor is not None:
        processor.save_pretrained(tmp)
    ts = tmp / "trainer_state"
    ts.mkdir()
    if optimizer is not None:
        torch.save(optimizer.state_dict(), ts / "optimizer.pt")
    if scheduler is not None:
        torch.save(scheduler.state_dict(), ts / "scheduler.pt")
    rng = rng_state()
    torch.save({"torch": rng["torch"]}, ts / "rng.pt")
    py_state = rng["python"]
    meta = {"step": step, "samples_seen": state.samples_seen if state else 0,
            "extra": state.extra if state else {},
            "python_rng": [py_state[0], list(py_state[1]), py_state[2]]}
    (ts / "state.json").write_text(json.dumps(meta, indent=1))
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fault_point("checkpoint.before_rename", step)
    old = root / f".checkpoint-{step:06d}.old"
    if final.exists():  # re-saving the same step: keep the old copy until the new one is in place
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(root)
    if old.exists():
        shutil.rmtree(old)
    if keep_last is not None and keep_last > 0:
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _describe_errno(code: int, where: Path) -> str:
    text = os.strerror(code)
    if code in (errno.ENOSPC, errno.EDQUOT):
        what = "disk full" if code == errno.ENOSPC else "disk quota exceeded"
        return f"{what} ({text}; {_free(where)} free on the file system of {where})"
    return f"{text} (errno {code}) under {where}"


def _free(where: Path) -> str:
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return "unknown space"
    return f"{free / 2**20:.1f} MiB" if free < 2**30 else f"{free / 2**30:.1f} GiB"


def _probe_errno(where: Path) -> int | None:
    """Write and remove 1 MiB next to the checkpoint: the errno a write gets there now (None: ok)."""
    probe = Path(where) / f".write-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"\0" * (1 << 20))
            fh.flush()
            os.fsync(fh.fileno())
        return None
    except OSError as e:
        return e.errno
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def write_error_cause(exc: BaseException, where: str | os.PathLike) -> str | None:
    """The cause of a failed write in words, or None when ``exc`` is no write failure. Reads an
    ``OSError``'s errno, the ``os error N`` of safetensors' (Rust) messages, and for torch's zip
    writer, which drops the errno, a probe write and the free space."""
    where = Path(where)
    for err in _chain(exc):
        if isinstance(err, OSError) and err.errno:
            return _describe_errno(err.errno, where)
        m = re.search(r"\(os error (\d+)\)", str(err))
        if m:
            return _describe_errno(int(m.group(1)), where)
    for err in _chain(exc):
        text = str(err)
        if "inline_container" in text or "PytorchStreamWriter" in text:
            code = _probe_errno(where)
            if code:
                return _describe_errno(code, where)
            try:
                low = shutil.disk_usage(where).free < LOW_SPACE_BYTES
            except OSError:
                low = False
            if low:
                return _describe_errno(errno.ENOSPC, where)
            return f"torch's writer failed ({text.splitlines()[0][:200]}); {_free(where)} free under {where}"
    return None


def load_trainer_state(ckpt: str | os.PathLike, optimizer=None, scheduler=None, restore_rng: bool = True) -> TrainerState:
    """Restore optimizer / scheduler / RNG from ``ckpt/trainer_state`` (weights are loaded by the caller)."""
    ts = Path(ckpt) / "trainer_state"
    if not (ts / "state.json").is_file():
        raise FileNotFoundError(f"{ckpt} is not a resumable checkpoint (no trainer_state/state.json)")
    meta = json.loads((ts / "state.json").read_text())
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(ts / "optimizer.pt", weights_only=True))
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(ts / "scheduler.pt", weights_only=True))
    if restore_rng:
        torch.set_rng_state(torch.load(ts / "rng.pt", weights_only=True)["torch"])
        v, internal, gauss = meta["python_rng"]
        random.setstate((v, tuple(internal), gauss))
    return TrainerState(step=int(meta["step"]), samples_seen=int(meta["samples_seen"]), extra=meta["extra"])
