"""A run folder (``run.output_dir``) belongs to one run; these guards keep it whole (RELIABILITY.md).

Used by ``train`` and ``sft`` alike::

    with RunFolder(cfg, "train") as folder:
        folder.open(accelerator)            # lock, fresh/resume checks, Ctrl-C handler
        ... per step: if folder.should_stop(accelerator, step): break
        return folder.done(final_checkpoint)   # exits 130 with one line after a Ctrl-C

- **Fresh run into a folder that holds a run** (a ``config.yaml``, a checkpoint, logged steps):
  refused, naming ``run.resume_from=latest`` (continue it) and ``run.overwrite=true`` (delete that
  run's checkpoints, logs and plots first; other files in the folder, such as the ``models/`` and
  ``data/`` caches of ``tiny:`` / ``synthetic:`` specs, are kept).
- **One process per folder**: an exclusive ``flock`` on ``run.lock``, taken by the main process.
  The kernel drops it when the holder dies, so the lock of a killed run is never stale; the file
  keeps the holder's pid, host and start time for the message of a second process, which refuses
  at once. Under DDP every rank gets the main process's verdict.
- **Resume with a changed config**: the resolved config is compared with the saved
  ``config.yaml``. A change that alters what the run computes (table, data, optimiser, schedule,
  models, routing, rollouts, precision) is refused with the differences, unless
  ``run.allow_config_change=true``; the accepted change is then appended to
  ``config_changes.jsonl``. Keys in ``UNCHECKED`` (where and how often a run saves and reports)
  may change freely; the memory knobs in ``LOGGED`` (same arithmetic, other rounding) are logged.
- **Stale temporary folders** of a killed checkpoint write are removed when the folder is opened.
- **Ctrl-C**: the first SIGINT lets the current step finish; the caller then saves a checkpoint
  (``train`` also writes its plots and HTML) and ``done`` exits with status 130 and one line. A
  second SIGINT exits at once (status 130; the last complete checkpoint is kept). SIGTERM (a
  scheduler's pre-emption notice) is handled like the first Ctrl-C and exits 143.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

LOCK_NAME = "run.lock"
CHANGES_NAME = "config_changes.jsonl"
RUN_FILES = ("config.yaml", "metrics.jsonl", "samples.jsonl", "tokens.html", CHANGES_NAME)
RUN_DIRS = ("plots",)
INTERRUPT_EXIT = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C

# dotted keys that change where, how often or how verbosely a run saves and reports, not what it
# computes: they may differ on resume without a word [D]
UNCHECKED = frozenset({
    "run.output_dir", "run.resume_from", "run.overwrite", "run.allow_config_change", "run.log_every",
    "run.save_every", "run.save_total_limit", "run.stop_after_step", "run.plots", "run.report_to",
    "run.sample_every", "run.max_bad_steps", "optim.time_budget_s",
})
# memory / placement knobs: the same arithmetic with other rounding (micro-batch sums, recompute,
# the teacher's device); a resume after an out-of-memory error needs them, so they are allowed and
# logged [D]
LOGGED = frozenset({"optim.micro_batch_size", "model.gradient_checkpointing", "model.teacher_device"})


class RunFolderError(ValueError):
    """A run folder cannot be used as asked; the message names the folder and what to do."""


# --------------------------------------------------------------------------------- inspection
def run_contents(out: str | os.PathLike) -> list[str]:
    """Names in ``out`` that show it holds a run (empty list: a fresh or only-cache folder)."""
    root = Path(out)
    if not root.is_dir():
        return []
    found = [p.name for p in sorted(root.glob("checkpoint-*")) if p.is_dir()]
    if (root / "config.yaml").is_file():
        found.insert(0, "config.yaml")
    for name in ("metrics.jsonl", "samples.jsonl"):
        if (root / name).is_file() and (root / name).stat().st_size > 0:
            found.append(name)
    return found


def clear_run(out: str | os.PathLike) -> list[str]:
    """Delete the run in ``out`` (checkpoints, temporary checkpoint folders, logs, plots, HTML);
    other files stay. Returns what was removed."""
    root = Path(out)
    removed = []
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        is_ckpt = p.is_dir() and (p.name.startswith("checkpoint-") or p.name.startswith(".checkpoint-"))
        if is_ckpt or (p.name in RUN_DIRS and p.is_dir()):
            shutil.rmtree(p)
        elif p.name in RUN_FILES or p.name in {f"{n}.tmp" for n in RUN_FILES}:
            p.unlink()
        else:
            continue
        removed.append(p.name)
    return removed


def remove_stale_temporaries(out: str | os.PathLike) -> list[str]:
    """Remove ``.checkpoint-N.tmp`` folders (and half-written ``config.yaml.tmp``, ``metrics.jsonl.tmp``,
    ...) left by a killed process. Only safe while holding the folder's lock."""
    root = Path(out)
    removed = []
    for p in sorted(root.glob(".checkpoint-*.tmp")) + [root / f"{n}.tmp" for n in RUN_FILES]:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()
        else:
            continue
        removed.append(p.name)
    from dopd_vlm.checkpoint import list_checkpoints

    list_checkpoints(root)  # recovers a re-save interrupted between its two renames (.checkpoint-N.old)
    return removed


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}


def _plain(cfg_or_dict: Any) -> dict[str, Any]:
    """A config (dataclass or mapping) as YAML would give it back: tuples as lists, and so on."""
    import dataclasses

    import yaml

    data = dataclasses.asdict(cfg_or_dict) if dataclasses.is_dataclass(cfg_or_dict) else cfg_or_dict
    return yaml.safe_load(yaml.safe_dump(data, sort_keys=False)) or {}


def config_differences(saved: dict[str, Any], current: Any) -> tuple[dict, dict]:
    """``(altering, logged)``: dotted key -> (saved, current) for the keys that differ, split into
    changes that alter the run and memory knobs (``LOGGED``); ``UNCHECKED`` keys are left out. A
    key the saved config lacks (written by an older version) counts only if the current value is
    not the field's default."""
    cur = _flatten(_plain(current))
    old = _flatten(_plain(saved))
    defaults = _flatten(_plain(type(current)())) if not isinstance(current, dict) else {}
    altering, logged = {}, {}
    for key, value in cur.items():
        if key in UNCHECKED:
            continue
        before = old[key] if key in old else defaults.get(key, value)
        if before != value:
            (logged if key in LOGGED else altering)[key] = (before, value)
    return altering, logged


def format_differences(diffs: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in diffs.items()))


# --------------------------------------------------------------------------------- the guard
class RunFolder:
    """The guards of one run folder for one process (see the module docstring)."""

    def __init__(self, cfg: Any, kind: str):
        self.cfg, self.kind = cfg, kind
        self.out = Path(cfg.run.output_dir)
        self.main = True
        self.stopped_at: int | None = None
        self._lock_fd: int | None = None
        self._created = False  # this process made the folder: a failed start leaves nothing behind
        self._opened = False
        self.accepted: dict[str, tuple[Any, Any]] = {}  # run-altering changes allowed on resume
        self._interrupts = 0
        self._prev_handler = None
        self._prev_term_handler = None
        self._signum = signal.SIGINT

    # -- context
    def __enter__(self) -> RunFolder:
        """A single process locks and checks the folder here, before the heavy imports and model
        loading of the command, so that a refusal comes at once; under DDP ``open(accelerator)``
        does it (the ranks need the process group to agree)."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            self.open(install_sigint=False)
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def close(self) -> None:
        if self._prev_handler is not None:
            try:
                signal.signal(signal.SIGINT, self._prev_handler)
                signal.signal(signal.SIGTERM, self._prev_term_handler)
            except ValueError:
                pass
            self._prev_handler = self._prev_term_handler = None
        if self._lock_fd is not None:
            import fcntl

            try:
                os.ftruncate(self._lock_fd, 0)
                if self._created and [p.name for p in self.out.iterdir()] == [LOCK_NAME]:
                    (self.out / LOCK_NAME).unlink()  # still locked: a newcomer re-checks the inode (lock())
                    self.out.rmdir()
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    # -- opening
    def open(self, accelerator=None, install_sigint: bool = True) -> RunFolder:
        """Lock the folder and check it against the config (main process); every rank raises the
        same ``RunFolderError`` if that failed. Installs the Ctrl-C handler."""
        if self._opened:  # locked and checked on entry (single process): only the handler is left
            if install_sigint:
                self._install_sigint()
            return self
        self.main = accelerator is None or accelerator.is_main_process
        error = ""
        if self.main:
            try:
                self.lock()
                self.check()
            except RunFolderError as e:
                error = str(e)
            except OSError as e:  # the folder cannot be made, locked or read: one line, like the rest
                error = f"{e.filename or self.out}: cannot use as run.output_dir ({e.strerror or e})"
            except BaseException:
                self.close()
                raise
        error = _same_on_all_ranks(error, accelerator)
        if error:
            self.close()
            raise RunFolderError(error)
        self._opened = True
        if install_sigint:
            self._install_sigint()
        return self

    def lock(self) -> None:
        """Take the exclusive lock of the folder or refuse at once, naming the holder."""
        import fcntl

        path = self.out / LOCK_NAME
        for _ in range(10):
            self._created = self._created or not self.out.exists()
            self.out.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "a process that has not written its pid yet"
                os.close(fd)
                raise RunFolderError(f"{self.out} is in use by another run ({holder}); wait for it to end or choose "
                                     f"another run.output_dir") from None
            try:
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break  # the file locked is the one in the folder (not one removed meanwhile)
            except FileNotFoundError:
                pass
            os.close(fd)
        else:
            raise RunFolderError(f"{path}: the lock file keeps being replaced; is another run starting and stopping here?")
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, {self.kind} started {stamp}\n".encode(), 0)
        self._lock_fd = fd

    def check(self) -> None:
        """Fresh run: refuse (or clear with ``run.overwrite``) a folder that holds a run. Resume:
        compare the config with the saved one. Both: remove stale temporary folders."""
        run = self.cfg.run
        remove_stale_temporaries(self.out)
        found = run_contents(self.out)
        if not run.resume_from:
            if not found:
                return
            if not getattr(run, "overwrite", False):
                what = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
                if any(n.startswith("checkpoint-") for n in found):
                    raise RunFolderError(f"{self.out} already holds a run ({what}); continue it with "
                                         "run.resume_from=latest, or start over with run.overwrite=true (deletes its "
                                         "checkpoints, logs and plots), or choose another run.output_dir")
                raise RunFolderError(f"{self.out} already holds a run ({what}) with no checkpoint to continue from "
                                     "(run.resume_from=latest needs one); start over with run.overwrite=true (deletes "
                                     "its logs and plots), or choose another run.output_dir")
            removed = clear_run(self.out)
            print(f"{self.kind}: run.overwrite=true: removed the earlier run in {self.out} ({len(removed)} entries)",
                  file=sys.stderr)
            return
        self.check_resume()

    def resume_checkpoint(self) -> Path | None:
        from dopd_vlm.checkpoint import latest_checkpoint

        rf = self.cfg.run.resume_from
        return latest_checkpoint(self.out) if rf == "latest" else Path(rf)

    def check_resume(self) -> None:
        import yaml

        ckpt = self.resume_checkpoint()
        saved_path = self.out / "config.yaml"
        if not saved_path.is_file() and ckpt is not None and (ckpt.parent / "config.yaml").is_file():
            saved_path = ckpt.parent / "config.yaml"  # resuming another folder's checkpoint
        if not saved_path.is_file():
            return
        try:
            saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
        except (UnicodeDecodeError, yaml.YAMLError) as e:
            raise RunFolderError(f"{saved_path}: not a readable config ({type(e).__name__}); cannot check that "
                                 "the resumed run is the same run") from None
        altering, logged = config_differences(saved, self.cfg)
        allowed = getattr(self.cfg.run, "allow_config_change", False)
        if altering and not allowed:
            raise RunFolderError(
                f"{self.out}: resuming with a config that differs from the run's {saved_path.name} in keys that "
                f"change the run: {format_differences(altering)}. Resume with the saved values, or pass "
                f"run.allow_config_change=true to go on with the new ones (logged in {CHANGES_NAME})")
        self.accepted = dict(altering)
        changes = {**altering, **logged}
        if changes:
            step = None
            if ckpt is not None and (ckpt / "trainer_state" / "state.json").is_file():
                step = json.loads((ckpt / "trainer_state" / "state.json").read_text()).get("step")
            entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "command": self.kind, "resumed_from": str(ckpt) if ckpt else None, "step": step,
                     "allowed_by": "run.allow_config_change" if altering else "memory knobs",
                     "changes": {k: {"saved": a, "now": b} for k, (a, b) in changes.items()}}
            with open(self.out / CHANGES_NAME, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")
            print(f"{self.kind}: config changed on resume (logged in {self.out / CHANGES_NAME}): "
                  f"{format_differences(changes)}", file=sys.stderr)

    def load_state(self, load_trainer_state, ckpt, optimizer, scheduler):
        """``load_trainer_state(ckpt, optimizer, scheduler)``; after an accepted change of an
        optimiser key (``run.allow_config_change``), the new learning rates, betas and weight decay
        replace the saved ones (the optimiser state would restore them), the schedule's position
        kept. Without such a change the restored state is left bit for bit as saved."""
        fresh = [{k: g[k] for k in ("lr", "betas", "weight_decay") if k in g} for g in optimizer.param_groups]
        state = load_trainer_state(ckpt, optimizer, scheduler)
        changed = {k for k in self.accepted if k.startswith("optim.") or k == "model.vision_lr_scale"}
        if changed and len(fresh) == len(optimizer.param_groups):
            inner = getattr(scheduler, "scheduler", scheduler)  # accelerate wraps the LambdaLR
            base = [f["lr"] for f in fresh]
            for g, f in zip(optimizer.param_groups, fresh):
                g.update({k: v for k, v in f.items() if k != "lr"}, initial_lr=f["lr"])
            inner.base_lrs = base
            lrs = [b * lam(inner.last_epoch) for b, lam in zip(base, inner.lr_lambdas)]
            for g, lr in zip(optimizer.param_groups, lrs):
                g["lr"] = lr
            inner._last_lr = lrs
            print(f"{self.kind}: optimiser hyperparameters from the new config ({', '.join(sorted(changed))}); "
                  f"learning rates now {lrs}", file=sys.stderr)
        return state

    # -- Ctrl-C
    def _install_sigint(self) -> None:
        if threading.current_thread() is not threading.main_thread() or self._prev_handler is not None:
            return
        self._prev_handler = signal.signal(signal.SIGINT, self._on_sigint)
        # SIGTERM (a scheduler's pre-emption notice, `kill`, a launcher stopping its workers) is
        # handled like the first Ctrl-C: finish the step, save, exit 143 [D]
        self._prev_term_handler = signal.signal(signal.SIGTERM, self._on_sigint)

    def _on_sigint(self, signum, frame) -> None:
        # os.write, not print: the handler may run while the main thread is inside a buffered write
        self._interrupts += 1
        if self._interrupts == 1:
            self._signum = signum
            what = "interrupt" if signum == signal.SIGINT else signal.Signals(signum).name
            os.write(2, f"\n{self.kind}: {what}: finishing the current step, then saving a checkpoint "
                        "(press Ctrl-C again to exit at once)\n".encode())
            return
        from dopd_vlm.checkpoint import CKPT_RE

        done = sorted(p.name for p in self.out.glob("checkpoint-*") if CKPT_RE.match(p.name)) if self.main else []
        last = self.out / done[-1] if done else "none"
        os.write(2, f"{self.kind}: second interrupt: exiting at once; the last complete checkpoint is {last}\n".encode())
        os._exit(INTERRUPT_EXIT)

    @property
    def interrupted(self) -> bool:
        return self._interrupts > 0

    def should_stop(self, accelerator=None, step: int | None = None) -> bool:
        """True once a Ctrl-C arrived on any rank (all ranks agree, so they stop at the same step)."""
        flag = self._interrupts > 0
        if accelerator is not None and accelerator.num_processes > 1:
            import torch

            t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
            flag = bool(accelerator.reduce(t, reduction="sum").item() > 0)
        if flag and self.stopped_at is None:
            self.stopped_at = step
        return flag

    def done(self, final: Path, extra: str = "") -> Path:
        """``final`` after a complete run; after a Ctrl-C, one line and ``SystemExit(130)``."""
        if self.stopped_at is None:
            return final
        if self.main:
            print(f"dopd-vlm {self.kind}: interrupted after step {self.stopped_at}: saved {final}{extra}; "
                  f"continue with run.resume_from=latest", file=sys.stderr, flush=True)
        raise SystemExit(128 + int(self._signum))  # 130 after Ctrl-C, 143 after SIGTERM, as a shell reports


def _same_on_all_ranks(message: str, accelerator) -> str:
    """The main process's ``message`` on every rank (a fixed-size byte tensor broadcast)."""
    if accelerator is None or accelerator.num_processes <= 1:
        return message
    import torch
    from accelerate.utils import broadcast

    size = 4096
    buf = torch.zeros(size, dtype=torch.int32, device=accelerator.device)
    if accelerator.is_main_process:
        data = message.encode()[:size]
        if data:
            buf[:len(data)] = torch.tensor(list(data), dtype=torch.int32)
    buf = broadcast(buf, from_process=0)
    return bytes(v for v in buf.cpu().tolist() if v).decode(errors="replace")
