"""Typed configuration: dataclasses, YAML presets, ``key=value`` overrides.

Configs are dataclasses at most two levels deep (a top-level config whose fields are scalars or
section dataclasses of scalars). Every value is checked against its field's type when it is
loaded, whether from YAML or from the command line; unknown keys are rejected with the closest
valid name; every run writes its resolved config next to its outputs (``save_config``).

Overrides: ``section.field=value`` or, when the field name is unique across sections, just
``field=value``. Values are parsed as YAML scalars (``1e-5``, ``true``, ``[a, b]``, ``null``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

C = TypeVar("C")


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the key."""


def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f"; did you mean {match[0]!r}?" if match else f"; valid keys: {', '.join(sorted(options))}"


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (converting int -> float, str paths)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} does not match {tp}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):  # a comma-separated list from the shell
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `5e-6` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            # YAML turns `name=123` into an int; a string field accepts its text form
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {tp}")


def _hints(cls) -> dict[str, Any]:
    return get_type_hints(cls)


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def from_dict(cls: type[C], data: dict[str, Any], prefix: str = "") -> C:
    """Build ``cls`` from a (nested) mapping, checking every key and value."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {full!r}{_closest(key, names)}")
        tp = hints[key]
        kwargs[key] = from_dict(tp, value, f"{full}.") if _is_section(tp) else _coerce(value, tp, full)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from e


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _leaf_paths(cls) -> dict[str, list[str]]:
    """Map each leaf field name to the dotted paths that end in it."""
    out: dict[str, list[str]] = {}
    for name, tp in _hints(cls).items():
        if _is_section(tp):
            for sub in _hints(tp):
                out.setdefault(sub, []).append(f"{name}.{sub}")
        out.setdefault(name, []).append(name)
    return out


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(cfg: C, overrides: list[str] | tuple[str, ...]) -> C:
    """Return a new config with ``key=value`` overrides applied and re-validated."""
    data = to_dict(cfg)
    cls = type(cfg)
    leaves = _leaf_paths(cls)
    all_paths = sorted({p for ps in leaves.values() for p in ps})
    for text in overrides:
        key, value = parse_override(text)
        if "." not in key:
            paths = leaves.get(key)
            if not paths:
                raise ConfigError(f"unknown config key {key!r}{_closest(key, all_paths + list(leaves))}")
            if len(paths) > 1:
                raise ConfigError(f"config key {key!r} is ambiguous: use one of {paths}")
            key = paths[0]
        if key not in all_paths:
            raise ConfigError(f"unknown config key {key!r}{_closest(key, all_paths)}")
        parts = key.split(".")
        target = data
        for p in parts[:-1]:
            target = target[p]
        target[parts[-1]] = value
    return from_dict(cls, data)


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> C:
    """Defaults, then the YAML file (if any), then the overrides; all type-checked."""
    cfg = cls()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
        try:
            cfg = from_dict(cls, data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from e
    return apply_overrides(cfg, list(overrides))


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)
    tmp.replace(path)
    return path


def field_help(cls) -> str:
    """One line per field ``key: type = default`` for --help texts."""
    lines = []
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        if _is_section(tp):
            for sf in dataclasses.fields(tp):
                lines.append(f"  {f.name}.{sf.name} = {sf.default!r}")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            lines.append(f"  {f.name} = {default!r}")
    return "\n".join(lines)


__all__ = ["ConfigError", "apply_overrides", "field_help", "from_dict", "load_config", "save_config",
           "to_dict"]
