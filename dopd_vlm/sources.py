"""Resolve model and dataset specs used by presets, tests and the demo.

Besides ordinary paths and Hub ids, two spec schemes make the tiny CPU presets self-contained
(project decision):

* ``tiny:FAMILY?size=tiny&seed=0&layers=3&hidden=96`` — a tiny random-init checkpoint written by
  ``dopd_vlm.tiny.write_tiny_checkpoint`` into ``{cache_dir}/models/<spec hash>`` (once).
* ``synthetic:LAYOUT?n=64&n_test=32&seed=0`` — synthetic scenes from
  ``data_builders.synthetic`` written with ``save_to_disk`` into ``{cache_dir}/data/<spec hash>``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit


class SpecError(ValueError):
    pass


def _parse(spec: str, scheme: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(spec)
    if parts.scheme != scheme or not parts.path:
        raise SpecError(f"bad {scheme}: spec {spec!r}; expected {scheme}:NAME?key=value&...")
    return parts.path, dict(parse_qsl(parts.query, strict_parsing=bool(parts.query)))


def _slot(cache_dir: str | Path, kind: str, spec: str) -> Path:
    return Path(cache_dir) / kind / hashlib.sha1(spec.encode()).hexdigest()[:12]


def resolve_model(spec: str, cache_dir: str | Path) -> str:
    """A loadable checkpoint folder (or Hub id) for ``spec``."""
    if not spec:
        raise SpecError("no model given (model.model_name_or_path / model.teacher_model_name_or_path)")
    if not spec.startswith("tiny:"):
        return spec
    from dopd_vlm.tiny import write_tiny_checkpoint

    family, q = _parse(spec, "tiny")
    allowed = {"size", "seed", "layers", "hidden", "min_pixels", "max_pixels"}
    if set(q) - allowed:
        raise SpecError(f"{spec}: unknown keys {sorted(set(q) - allowed)}; allowed {sorted(allowed)}")
    out = _slot(cache_dir, "models", spec)
    if not (out / "config.json").exists():
        kw = {k: int(v) for k, v in q.items() if k != "size"}
        tmp = out.with_name(out.name + ".tmp")
        write_tiny_checkpoint(tmp, family=family, size=q.get("size", "tiny"), **kw)
        tmp.replace(out)
    return str(out)


def resolve_dataset(spec: str, cache_dir: str | Path) -> str:
    """A ``save_to_disk`` folder for ``spec`` (a path is returned unchanged)."""
    if not spec:
        raise SpecError("no dataset given (data.dataset_path)")
    if not spec.startswith("synthetic:"):
        if not Path(spec).exists():
            raise SpecError(f"dataset folder not found: {spec} (build one with `dopd-vlm build`)")
        if not ((Path(spec) / "dataset_dict.json").exists() or (Path(spec) / "state.json").exists()):
            raise SpecError(f"{spec} is not a datasets save_to_disk folder (no dataset_dict.json / state.json); "
                            "build one with `dopd-vlm build`")
        return spec
    from data_builders.synthetic import build_synthetic

    layout, q = _parse(spec, "synthetic")
    allowed = {"n", "n_test", "seed", "privileged"}
    if set(q) - allowed:
        raise SpecError(f"{spec}: unknown keys {sorted(set(q) - allowed)}; allowed {sorted(allowed)}")
    out = _slot(cache_dir, "data", spec)
    if not out.exists():
        build_synthetic(out, n_train=int(q.get("n", 64)), n_test=int(q.get("n_test", 32)),
                        seed=int(q.get("seed", 0)), layout=layout, quiet=True)
    return str(out)
