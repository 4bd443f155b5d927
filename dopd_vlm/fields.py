"""``opt``: a dataclass field with a one-line description, for every config key.

The description is what ``--help`` and the generated configuration reference (docs/config.md)
show, so it lives next to the default and cannot drift from it. Write the source of the default
in brackets: ``[P §5]`` for the DOPD paper, ``[D]`` for a project decision.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


def opt(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None) -> Any:
    """``field(default=...)`` (or ``default_factory`` for lists/dicts) carrying ``metadata["help"]``."""
    if not help:
        raise ValueError("every config key needs a one-line description")
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def describe(f: dataclasses.Field) -> str:
    """The description of a field made with ``opt`` ("" for one that has none yet)."""
    return str(f.metadata.get("help", ""))
