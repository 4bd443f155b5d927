"""Loading a source dataset (Hub id or local files) and running one builder over it.

A builder is a ``SourceBuilder``: its Hub ids, the columns it needs, and a row converter
``convert(row, ctx, index) -> record`` (raising ``SkipRow`` / ``RecordError`` for rows it cannot
use). Images in the source are read undecoded (``datasets.Image(decode=False)``) so encoded bytes
pass through unchanged.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


class SourceError(RuntimeError):
    """The source cannot be loaded or does not have the expected columns."""


@dataclass(frozen=True)
class SourceBuilder:
    name: str
    hub_ids: tuple[str, ...]  # accepted Hub ids; the first is the default --source
    required: tuple[str, ...]  # columns a source must have (checked against dataset.features)
    convert: Callable  # (row: dict, ctx: BuildContext, index: int) -> record
    default_kinds: tuple[str, ...] | None  # kinds rendered without --privileged (None: the record's own)
    default_split: str = "train"
    default_config: str | None = None
    json_field: str | None = None  # JSON files whose rows sit under one key ({"questions": [...]})
    dedupe_key: Callable | None = None  # question -> key; later duplicates are skipped (DAPO-Math)
    doc: str = ""
    options: dict = field(default_factory=dict)
    # Local layouts that are not one table (CLEVR): (path, split) -> (Dataset, options, default image root)
    load_local: Callable | None = None


# ---------------------------------------------------------------------------------- loading
DATA_SUFFIXES = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


def _files_revision(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()[:16]


SPLIT_NAMES = ("train", "validation", "val", "test", "dev")


def _file_split(f: Path) -> str | None:
    """The split a file belongs to in Hub layouts (data/train-00000-of-00001.parquet, test.jsonl, val/...)."""
    for name in SPLIT_NAMES:
        if re.match(rf"{name}(?![a-z])", f.name) or name in f.parent.parts[-1:]:
            return name
    return None


def _split_files(files: list[Path], split: str | None) -> list[Path]:
    """The files of ``split`` when the files are named by split; all files when none is."""
    if split is None or len(files) == 1:
        return files
    tags = {f: _file_split(f) for f in files}
    if not any(tags.values()):
        return files
    chosen = [f for f, t in tags.items() if t == split]
    if not chosen:
        raise SourceError(f"no files of split {split!r} among {[f.name for f in files]} "
                          f"(splits found: {sorted({t for t in tags.values() if t})})")
    return chosen


def load_local(path: str | os.PathLike, split: str | None, json_field: str | None = None) -> dict:
    """Local files -> {split name: Dataset}. ``split=None`` returns every split found."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    p = Path(path)
    if p.is_dir() and ((p / "dataset_dict.json").exists() or (p / "state.json").exists()):
        obj = load_from_disk(str(p))
        splits = dict(obj) if isinstance(obj, DatasetDict) else {split or "train": obj}
    else:
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix in DATA_SUFFIXES and f.is_file())
        else:
            files = [p]
        if not files:
            raise SourceError(f"{p}: no parquet / json / jsonl / csv files and not a save_to_disk folder")
        kinds = {DATA_SUFFIXES.get(f.suffix) for f in files}
        if None in kinds or len(kinds) != 1:
            raise SourceError(f"{p}: expected files of one kind among {sorted(DATA_SUFFIXES)}, got "
                              f"{sorted({f.suffix for f in files})}")
        files = _split_files(files, split)
        kw = {"field": json_field} if json_field and kinds == {"json"} else {}
        try:
            ds = load_dataset(kinds.pop(), data_files=[str(f) for f in files], split="train", **kw)
        except Exception as e:  # datasets raises several types for unreadable files
            raise SourceError(f"cannot read {p} ({type(e).__name__}: {e})") from e
        splits = {split or "train": ds}
    if split is not None and split not in splits:
        raise SourceError(f"{p}: no split {split!r}; found {sorted(splits)}")
    return {split: splits[split]} if split is not None else splits


def local_revision(path: str | os.PathLike) -> str:
    p = Path(path)
    files = [f for f in p.rglob("*") if f.is_file() and f.suffix in (".parquet", ".json", ".jsonl", ".csv", ".arrow")] \
        if p.is_dir() else [p]
    return _files_revision(files)


def load_hub(hub_id: str, config: str | None, split: str, revision: str | None):
    """``load_dataset`` from the Hub -> (Dataset, resolved revision)."""
    from datasets import load_dataset

    try:
        ds = load_dataset(hub_id, config, split=split, revision=revision)
    except Exception as e:  # connection, offline mode, missing repo or config: all end the build
        offline = (os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
                   or isinstance(e, ConnectionError) or "ConnectionError" in type(e).__name__)
        hint = (" The Hub is not reachable from here (offline mode or no network): download the dataset on a "
                "machine with network access and pass its local files or save_to_disk folder with --source PATH."
                if offline else " Check the id, --config and --split, or pass local files with --source PATH.")
        raise SourceError(f"cannot load {hub_id!r} (config {config!r}, split {split!r}) from the Hugging Face "
                          f"Hub: {type(e).__name__}: {str(e)[:300]}.{hint}") from e
    resolved = revision
    try:
        from huggingface_hub import HfApi

        resolved = HfApi().dataset_info(hub_id, revision=revision).sha
    except Exception:  # the commit hash is provenance only; the data did load
        resolved = revision or "unknown"
    return ds, resolved


def undecoded_images(ds):
    """Cast Image and list-of-Image columns to ``decode=False`` (bytes/path dicts)."""
    from datasets import Image, List, Sequence

    casts = {}
    for name, f in ds.features.items():
        if isinstance(f, Image):
            casts[name] = Image(decode=False)
        elif isinstance(f, (List, Sequence)) and isinstance(f.feature, Image):
            casts[name] = List(Image(decode=False))
    for name, feature in casts.items():
        ds = ds.cast_column(name, feature)
    return ds


def check_columns(ds, builder: SourceBuilder, source: str) -> None:
    missing = [c for c in builder.required if c not in ds.features]
    if missing:
        raise SourceError(f"{builder.name}: source {source!r} lacks the column(s) {missing}; it has "
                          f"{sorted(ds.features)}. Expected the schema of "
                          f"{builder.hub_ids[0] if builder.hub_ids else f'the {builder.name} format ({builder.doc})'} "
                          "(docs/data.md); the dataset card may have changed.")


def _local_name(p: Path) -> str:
    """Dataset name of a local source in record ids: its folder, or folder/stem for a file."""
    p = p.resolve()
    return f"{p.parent.name}/{p.stem}" if p.is_file() else p.name


def load_source(builder: SourceBuilder, source: str | None, config: str | None, split: str,
                revision: str | None):
    """-> (Dataset with undecoded images, dataset name for ids, revision, options, default image root)."""
    options, image_root = {}, None
    if source is not None and Path(source).exists() and builder.load_local is not None:
        ds, options, image_root = builder.load_local(Path(source), split)
        name, rev = _local_name(Path(source)), local_revision(source)
    elif source is not None and Path(source).exists():
        ds = load_local(source, split, builder.json_field)[split]
        name, rev = _local_name(Path(source)), local_revision(source)
    elif not builder.hub_ids:
        raise SourceError(f"{builder.name} reads local files only: pass --source PATH"
                          + (f" ({source} does not exist)" if source is not None else ""))
    else:
        ids = (source,) if source is not None else builder.hub_ids
        errors = []
        for hub_id in ids:
            try:
                ds, rev = load_hub(hub_id, config or builder.default_config, split, revision)
                name = hub_id
                break
            except SourceError as e:
                errors.append(str(e))
        else:
            if source is not None and ("/" not in source and not source.startswith(".")):
                errors.append(f"(no local file or folder named {source!r} either)")
            raise SourceError("\n".join(errors))
    check_columns(ds, builder, source or name)
    return undecoded_images(ds), name, rev, options, image_root


# ------------------------------------------------------------------------------------ running
# --option keys the builders read (ctx.options): a key no builder reads is a typo, not a no-op
OPTION_VALUES = {"mode": None, "hold_out": (True, False), "box_frame": ("stored", "displayed"),
                 "box_format": ("xyxy", "xywh")}


def check_options(options: dict, builder: SourceBuilder) -> None:
    """Refuse an --option key that no builder reads (e.g. ``box_fram=stored`` would silently keep the
    default) and a value outside the choices of ``OPTION_VALUES``."""
    known = set(OPTION_VALUES) | set(builder.options)
    for key, value in options.items():
        if key not in known:
            raise SourceError(f"--option {key}={value}: unknown option; known: {', '.join(sorted(known))}")
        choices = OPTION_VALUES.get(key)
        if choices is not None and value not in choices:
            shown = ", ".join(str(c).lower() for c in choices)
            raise SourceError(f"--option {key}={value}: expected one of {shown}")


def run_source_build(builder_name: str, out: str, source: str | None = None, config: str | None = None,
                     split: str | None = None, revision: str | None = None, image_root: str | None = None,
                     kinds: list[str] | None = None, limit: int | None = None, num_proc: int = 1,
                     on_error: str = "skip", leak_policy: str = "keep", exclude_images: list[str] = (),
                     parquet: bool = False, jsonl: bool = False, overwrite: bool = False, options: dict | None = None,
                     quiet: bool = False, duplicates: str = "error", image_limits: dict | None = None):
    """Build one split of one source into ``out`` -> the written DatasetDict (reloaded).

    ``duplicates``: rows sharing a record id, ``error`` or ``drop-later`` (``build.resolve_duplicate_ids``);
    ``image_limits``: ``{max_aspect_ratio, min_side}`` (``build.check_images``).
    """
    from datasets import load_from_disk

    from dopd_vlm.privileged import LEAK_POLICIES, AnswerLeakError

    from .build import (
        BuildContext,
        Summary,
        convert_dataset,
        drop_contaminated,
        eval_image_hashes,
        make_work_dir,
        resolve_duplicate_ids,
        write_outputs,
    )
    from .registry import get_builder

    b = get_builder(builder_name)
    split = split or b.default_split
    if kinds is None and b.default_kinds is not None:
        kinds = list(b.default_kinds)
    if leak_policy not in LEAK_POLICIES:
        raise ValueError(f"leak policy must be one of {LEAK_POLICIES}, got {leak_policy!r}")
    if Path(out).exists() and not overwrite:
        raise FileExistsError(f"output folder {out} exists; pass --overwrite to replace it")
    if image_root is not None and not Path(image_root).is_dir():
        raise SourceError(f"--image-root {image_root} is not a folder")
    check_options(options or {}, b)
    ds, name, rev, src_options, src_image_root = load_source(b, source, config, split, revision)
    rows_in = len(ds)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    ctx = BuildContext(dataset=name, config=config or b.default_config, split=split, revision=rev,
                       image_root=image_root if image_root is not None else src_image_root,
                       options={**b.options, **src_options, **(options or {})})
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    # map's Arrow files go to a work folder next to the output (not the shared HF cache), removed at the end
    work = make_work_dir(out)  # named by pid: a killed build's folder is removed by the next one
    try:
        recs, skipped = convert_dataset(ds, b.convert, ctx, kinds, on_error=on_error, num_proc=num_proc,
                                        desc=f"{b.name} {split}", work_dir=work, image_limits=image_limits)
        recs, dup_skipped, dup_counts = resolve_duplicate_ids(recs, duplicates)
        skipped += dup_skipped
        if b.dedupe_key is not None:
            recs, dups = dedupe(recs, b.dedupe_key)
            skipped += dups
        leaks = recs["_leak"]
        n_leak = sum(leaks)
        if leak_policy == "error" and n_leak:
            first = recs[leaks.index(True)]["id"]
            raise AnswerLeakError(f"{n_leak} record(s) have privileged text stating the final answer, first "
                                  f"{first!r} (leak policy 'error'; use --leak-policy drop or keep)")
        if leak_policy == "drop" and n_leak:
            recs = recs.select([i for i, lk in enumerate(leaks) if not lk])
        leak = {"policy": leak_policy, "checked": len(leaks), "leaked": n_leak,
                "dropped": n_leak if leak_policy == "drop" else 0,
                "kept_with_leak": n_leak if leak_policy == "keep" else 0}
        n_cont = 0
        if exclude_images:
            hashes: set[str] = set()
            for p in exclude_images:
                hashes |= eval_image_hashes(p)
            recs, n_cont = drop_contaminated(recs, hashes)
        from dopd_vlm.privilege_check import empty_privilege_counts

        summ = Summary(split=split, rows_in=len(ds), kept=len(recs), skipped=skipped, leak=leak,
                       contamination_dropped=n_cont, privileged_empty=empty_privilege_counts(recs, kinds),
                       duplicates=dup_counts)
        if not quiet:
            print(summ.text())
        write_outputs({split: recs}, out, [summ], parquet=parquet, jsonl=jsonl, overwrite=overwrite,
                      extra={"builder": b.name, "source": {"dataset": name, "config": ctx.config, "split": split,
                                                           "revision": rev, "given": source},
                             "rows_in_source": rows_in, "limit": limit, "privileged_kinds": kinds,
                             "image_root": ctx.image_root, "exclude_images": list(exclude_images)})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return load_from_disk(out)


def dedupe(ds, key: Callable) -> tuple:
    """Keep the first record of each key -> (dataset, skipped entries for the later duplicates)."""
    seen: dict = {}
    keep, skipped = [], []
    for i, (rid, q, src_idx) in enumerate(zip(ds["id"], ds["question"], ds["_index"])):
        k = key(q)
        if k in seen:
            skipped.append({"index": src_idx, "id": rid, "category": "duplicate",
                            "reason": f"duplicate of {seen[k]}"})
        else:
            seen[k] = rid
            keep.append(i)
    return ds.select(keep), skipped
