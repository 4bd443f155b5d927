"""Builder names -> ``SourceBuilder`` objects (modules are imported on demand)."""

from __future__ import annotations

import importlib

from .sources import SourceBuilder

# name -> (module, attribute). synthetic_scenes is handled by data_builders.synthetic directly.
BUILDERS: dict[str, tuple[str, str]] = {}
_MODULES = ("scienceqa", "aokvqa", "captions", "regions", "reasoning", "clevr", "textmath", "importers")


def _load_all() -> None:
    if BUILDERS:
        return
    for m in _MODULES:
        mod = importlib.import_module(f"data_builders.{m}")
        for attr, obj in vars(mod).items():
            if isinstance(obj, SourceBuilder):
                BUILDERS[obj.name] = (f"data_builders.{m}", attr)


def builder_names() -> list[str]:
    _load_all()
    return ["synthetic_scenes", *sorted(BUILDERS)]


def get_builder(name: str):
    _load_all()
    if name not in BUILDERS:
        raise KeyError(f"unknown builder {name!r}; known: {builder_names()}")
    module, attr = BUILDERS[name]
    return getattr(importlib.import_module(module), attr)


def describe_builders() -> str:
    lines = ["synthetic_scenes  (offline generator; no --source)"]
    for name in builder_names()[1:]:
        b = get_builder(name)
        lines.append(f"{name:18s} {', '.join(b.hub_ids) or '(local files)'}  -- {b.doc}")
    return "\n".join(lines)
