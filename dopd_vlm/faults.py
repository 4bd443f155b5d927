"""Fault injection for the reliability tests (RELIABILITY.md): one environment variable, read here only.

``DOPD_FAULT_AT=POINT:STEP`` makes the process kill itself with SIGKILL (no cleanup, no ``finally``,
no flushing of Python buffers beyond what is done below: the same as an OOM kill or a pre-empted
node) when it reaches ``POINT`` while handling optimiser step ``STEP``. Unset, ``fault_point`` is
one dictionary lookup. Points (called by the training recipe and ``checkpoint.save_checkpoint``):

- ``checkpoint.after_model``: the weights are in ``.checkpoint-N.tmp/``, the trainer state is not;
- ``checkpoint.before_rename``: the temporary folder is complete, not yet renamed into place.

``DOPD_FAULT_AT=POINT:STEP:enospc`` raises ``OSError(ENOSPC)`` there instead (a disk that fills up
during the write; the checkpoint code must name the path and the cause, keep the previous
checkpoint and remove its temporary folder).

Project decision: a test hook in production code, because "killed during a checkpoint write" cannot
be hit deterministically from outside the process.
"""

from __future__ import annotations

import errno
import os
import signal
import sys

ENV = "DOPD_FAULT_AT"
POINTS = ("checkpoint.after_model", "checkpoint.before_rename")
ACTIONS = ("kill", "enospc")


class FaultSpecError(ValueError):
    """``DOPD_FAULT_AT`` is malformed; the message names the variable and the valid points."""


def parse_fault_spec(spec: str) -> tuple[str, int]:
    """``"POINT:STEP[:ACTION]"`` -> (point, step)."""
    return parse_fault_action(spec)[:2]


def parse_fault_action(spec: str) -> tuple[str, int, str]:
    """``"POINT:STEP[:ACTION]"`` -> (point, step, action); the action defaults to ``kill``."""
    point, sep, rest = spec.partition(":")
    step, _, action = rest.partition(":")
    action = action or "kill"
    if not sep or point not in POINTS or not step.isdigit() or action not in ACTIONS:
        raise FaultSpecError(f"{ENV}={spec!r}: expected POINT:STEP[:ACTION] with POINT one of {POINTS}, STEP an "
                             f"integer and ACTION one of {ACTIONS}")
    return point, int(step), action


def fault_point(point: str, step: int) -> None:
    """SIGKILL this process (or raise ENOSPC) if ``DOPD_FAULT_AT`` names ``point`` at ``step``."""
    if point not in POINTS:
        raise FaultSpecError(f"unknown fault point {point!r}; known: {POINTS}")
    spec = os.environ.get(ENV)
    if not spec:
        return
    at_point, at_step, action = parse_fault_action(spec)
    if (at_point, at_step) != (point, step):
        return
    if action == "enospc":
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({ENV} at {point} of step {step})")
    sys.stdout.flush()
    sys.stderr.write(f"{ENV}: killing process {os.getpid()} at {point} of step {step}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
