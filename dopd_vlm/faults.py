"""Fault injection for the reliability tests (RELIABILITY.md): one environment variable, read here only.

``DOPD_FAULT_AT=POINT:STEP`` makes the process kill itself with SIGKILL (no cleanup, no ``finally``,
no flushing of Python buffers beyond what is done below: the same as an OOM kill or a pre-empted
node) when it reaches ``POINT`` while handling optimiser step ``STEP``. Unset, ``fault_point`` is
one dictionary lookup. Points (called by the training recipe and ``checkpoint.save_checkpoint``):

- ``checkpoint.after_model``: the weights are in ``.checkpoint-N.tmp/``, the trainer state is not;
- ``checkpoint.before_rename``: the temporary folder is complete, not yet renamed into place.

Project decision: a test hook in production code, because "killed during a checkpoint write" cannot
be hit deterministically from outside the process.
"""

from __future__ import annotations

import os
import signal
import sys

ENV = "DOPD_FAULT_AT"
POINTS = ("checkpoint.after_model", "checkpoint.before_rename")


class FaultSpecError(ValueError):
    """``DOPD_FAULT_AT`` is malformed; the message names the variable and the valid points."""


def parse_fault_spec(spec: str) -> tuple[str, int]:
    """``"POINT:STEP"`` -> (point, step)."""
    point, sep, step = spec.partition(":")
    if not sep or point not in POINTS or not step.isdigit():
        raise FaultSpecError(f"{ENV}={spec!r}: expected POINT:STEP with POINT one of {POINTS} and STEP an integer")
    return point, int(step)


def fault_point(point: str, step: int) -> None:
    """SIGKILL this process if ``DOPD_FAULT_AT`` names ``point`` at ``step``."""
    if point not in POINTS:
        raise FaultSpecError(f"unknown fault point {point!r}; known: {POINTS}")
    spec = os.environ.get(ENV)
    if not spec:
        return
    if parse_fault_spec(spec) == (point, step):
        sys.stdout.flush()
        sys.stderr.write(f"{ENV}: killing process {os.getpid()} at {point} of step {step}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
