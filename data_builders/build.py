"""The build pipeline shared by every source: convert rows, render privileged text, guard, write.

Steps (``run_build``):
1. load the source (``sources.load_source``: a Hub id or local parquet / json / jsonl / a
   ``save_to_disk`` folder) and check its columns against the builder's expectation;
2. convert each row to a record with ``datasets.map`` (``--num-proc``; its progress bar); a row that
   cannot be converted is skipped with its reason (``--on-error skip``) or stops the build;
3. render ``privileged_context`` with the chosen kinds (canonical absolute boxes) and flag rows whose
   privileged text states the answer; apply the leak policy (``error | drop | keep``);
4. drop rows whose image (by pixel-content hash) appears in a given evaluation set;
5. write to a temporary folder next to ``--out`` and rename it into place at the end, so a failed
   build never leaves a half dataset: a ``datasets`` folder (``load_from_disk``) plus optional
   ``parquet/`` and ``jsonl/`` copies and ``build_summary.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from dopd_vlm.privileged import (
    LEAK_POLICIES,
    AnswerLeakError,
    contains_answer,
    privileged_text_for_leak_check,
    render_privileged,
)

from .records import RecordError, record_features, validate_record


class SkipRow(Exception):
    """A source row that is valid but cannot become a record (the reason is reported)."""


@dataclass
class BuildContext:
    """What a row converter needs besides the row."""

    dataset: str  # Hub id or local path, as given
    config: str | None
    split: str
    revision: str | None
    image_root: str | None = None
    options: dict = field(default_factory=dict)  # builder-specific options

    def source(self) -> dict:
        return {"dataset": self.dataset, "config": self.config, "split": self.split, "revision": self.revision}

    def record_id(self, native_id) -> str:
        return f"{self.dataset}/{self.config or 'default'}/{self.split}/{native_id}"


@dataclass
class Summary:
    """Counts and reasons of one split's build (written to build_summary.json)."""

    split: str
    rows_in: int = 0
    kept: int = 0
    skipped: list[dict] = field(default_factory=list)  # {index, id, category, reason}
    leak: dict = field(default_factory=dict)
    contamination_dropped: int = 0

    def as_dict(self) -> dict:
        reasons: dict[str, int] = {}
        for s in self.skipped:
            reasons[s["category"]] = reasons.get(s["category"], 0) + 1
        return {"split": self.split, "rows_in": self.rows_in, "kept": self.kept, "skipped": len(self.skipped),
                "skip_reasons": reasons, "skipped_rows": self.skipped[:1000], "leak": self.leak,
                "contamination_dropped": self.contamination_dropped}

    def text(self) -> str:
        lines = [f"[{self.split}] rows {self.rows_in}: kept {self.kept}, skipped {len(self.skipped)}"
                 + (f", dropped as eval-contaminated {self.contamination_dropped}" if self.contamination_dropped else "")]
        if self.leak:
            lines.append(f"[{self.split}] privileged text states the answer in {self.leak['leaked']} of "
                         f"{self.leak['checked']} rows (policy {self.leak['policy']}, dropped {self.leak['dropped']})")
        for s in self.skipped[:20]:
            lines.append(f"  skipped row {s['index']} ({s['id']}): {s['reason']}")
        if len(self.skipped) > 20:
            lines.append(f"  ... {len(self.skipped) - 20} more in build_summary.json")
        return "\n".join(lines)


# ------------------------------------------------------------------------------ finalising
def finalize_record(rec: dict, kinds: list[str] | None, templates: dict | None = None) -> tuple[dict, bool]:
    """Validate, render ``privileged_context`` (canonical absolute boxes) -> (record, leaks answer).

    ``kinds=None`` keeps the kinds the record was built with (``meta.privileged_kinds``; re-imports).
    """
    validate_record(rec)
    if kinds is None:
        kinds = list(rec["meta"].get("privileged_kinds") or [])
    size = rec["meta"].get("image_size")
    rec["privileged_context"] = render_privileged(rec["privileged"], kinds, templates, "abs_xyxy", size)
    leak = contains_answer(privileged_text_for_leak_check(rec["privileged"], kinds, templates),
                           rec["answer"], rec["choices"])
    rec["meta"]["privileged_kinds"] = list(kinds)
    rec["meta"]["privileged_states_answer"] = leak
    return rec, leak


def apply_leak_policy(records: list[dict], leaks: list[bool], policy: str) -> tuple[list[dict], dict]:
    if policy not in LEAK_POLICIES:
        raise ValueError(f"leak policy must be one of {LEAK_POLICIES}, got {policy!r}")
    n_leak = sum(leaks)
    if policy == "error" and n_leak:
        first = next(r["id"] for r, lk in zip(records, leaks) if lk)
        raise AnswerLeakError(f"{n_leak} record(s) have privileged text stating the final answer, first {first!r} "
                              "(leak policy 'error'; use --leak-policy drop or keep)")
    kept = [r for r, lk in zip(records, leaks) if not (lk and policy == "drop")]
    return kept, {"policy": policy, "checked": len(records), "leaked": n_leak,
                  "dropped": n_leak if policy == "drop" else 0,
                  "kept_with_leak": n_leak if policy == "keep" else 0}


# ------------------------------------------------------------------------------ conversion
_PRIVATE = ("_skip", "_cat", "_index", "_leak")


def _empty_row(rid: str) -> dict:
    from .records import empty_privileged

    return {"id": rid, "source": {"dataset": "", "config": None, "split": "", "revision": None}, "images": [],
            "prompt": [], "question": "", "choices": None, "answer": None, "privileged": empty_privileged(),
            "privileged_context": "", "meta": {}}


def convert_dataset(ds, convert, ctx: BuildContext, kinds: list[str], templates: dict | None = None,
                    on_error: str = "skip", num_proc: int | None = None, desc: str = "converting",
                    work_dir: str | os.PathLike | None = None):
    """Map source rows to records -> (records Dataset with _leak column, skipped [{index, id, reason}]).

    ``work_dir``: where ``datasets.map`` writes its Arrow file (instead of the shared HF cache).
    """
    import uuid

    from datasets import Features, Value

    if on_error not in ("skip", "stop"):
        raise ValueError(f"on_error must be 'skip' or 'stop', got {on_error!r}")

    def fn(row, idx):
        try:
            rec = convert(row, ctx, idx)
            rec, leak = finalize_record(rec, kinds, templates)
            return {**rec, "_skip": None, "_cat": None, "_index": idx, "_leak": leak}
        except (SkipRow, RecordError, KeyError, TypeError, ValueError, IndexError) as e:
            # KeyError / TypeError / ...: a row whose nested values do not have the documented shape
            if on_error == "stop":
                raise RecordError(ctx.record_id(f"row{idx}"), "<row>", f"source row {idx}: {type(e).__name__}: {e} "
                                                                       "(--on-error stop)") from e
            if isinstance(e, RecordError):
                category = f"invalid {e.field}"
            elif isinstance(e, SkipRow):
                category = str(e).split(":")[0]
            else:
                category, e = "malformed row", SkipRow(f"malformed row: {type(e).__name__}: {e}")
            rid = e.record_id if isinstance(e, RecordError) and e.record_id else ctx.record_id(f"row{idx}")
            return {**_empty_row(rid), "_skip": str(e) or type(e).__name__, "_cat": category, "_index": idx,
                    "_leak": False}

    feats = Features({**record_features(), "_skip": Value("string"), "_cat": Value("string"),
                      "_index": Value("int64"), "_leak": Value("bool")})
    # A fresh fingerprint: nothing is reused from a cache, and datasets does not hash the converter's
    # closure (which can hold a whole CLEVR scene file).
    out = ds.map(fn, with_indices=True, remove_columns=ds.column_names, features=feats,
                 num_proc=num_proc if num_proc and num_proc > 1 else None, desc=desc, load_from_cache_file=False,
                 new_fingerprint=uuid.uuid4().hex,
                 cache_file_name=str(Path(work_dir) / "converted.arrow") if work_dir is not None else None)
    skip_col = out["_skip"]
    skipped_idx = [i for i, s in enumerate(skip_col) if s is not None]
    skipped = []
    if skipped_idx:
        sub = out.select(skipped_idx).select_columns(["_index", "id", "_cat", "_skip"])
        skipped = [{"index": r["_index"], "id": r["id"], "category": r["_cat"], "reason": r["_skip"]} for r in sub]
    kept_idx = [i for i, s in enumerate(skip_col) if s is None]
    return out.select(kept_idx), skipped


def records_dataset(records: list[dict]):
    from datasets import Dataset

    feats = record_features()
    if not records:  # from_list([]) would drop the schema
        return Dataset.from_dict({k: [] for k in feats}, features=feats)
    return Dataset.from_list(records, features=feats)


# ---------------------------------------------------------------------------- contamination
def image_content_hash(image) -> str:
    """sha256 of the decoded pixels (mode RGB) and size: the same picture in another file format hashes equal."""
    from PIL import Image

    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    if isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    elif isinstance(image, (str, os.PathLike)):
        image = Image.open(image)
    im = image.convert("RGB")
    h = hashlib.sha256(f"{im.size[0]}x{im.size[1]}:".encode())
    h.update(im.tobytes())
    return h.hexdigest()


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def eval_image_hashes(path: str | os.PathLike) -> set[str]:
    """Content hashes of every image in an evaluation set: a folder of image files, a ``datasets``
    folder, or a parquet / json / jsonl file (every Image-typed column is read)."""
    from datasets import Image, List

    from .sources import load_local

    p = Path(path)
    if p.is_dir() and not (p / "dataset_dict.json").exists() and not (p / "state.json").exists() \
            and not any(p.glob("*.parquet")):
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"evaluation set {p}: no images, dataset folder or data files found")
        return {image_content_hash(f) for f in files}
    hashes: set[str] = set()
    for ds in load_local(p, split=None).values():
        cols = [c for c, f in ds.features.items() if isinstance(f, Image)
                or (isinstance(f, List) and isinstance(f.feature, Image))]
        if not cols:
            raise ValueError(f"evaluation set {p}: no Image columns in features {list(ds.features)}")
        for c in cols:
            ds = ds.cast_column(c, Image(decode=False) if isinstance(ds.features[c], Image) else List(Image(decode=False)))
        for batch in ds.select_columns(cols).iter(batch_size=256):  # batches: eval sets can be GBs of images
            for c in cols:
                for v in batch[c]:
                    for im in (v if isinstance(v, list) else [v]):
                        if im is not None:
                            hashes.add(image_content_hash(im))
    return hashes


def drop_contaminated(ds, eval_hashes: set[str]):
    """-> (dataset without rows that share an image with the eval set, number dropped)."""
    from datasets import Image, List

    if not eval_hashes or len(ds) == 0:
        return ds, 0
    raw = ds.select_columns(["images"]).cast_column("images", List(Image(decode=False)))
    keep, i = [], 0
    for batch in raw.iter(batch_size=256):
        for ims in batch["images"]:
            if not any(image_content_hash(im) in eval_hashes for im in ims):
                keep.append(i)
            i += 1
    return ds.select(keep), len(ds) - len(keep)


# ----------------------------------------------------------------------------------- writing
def _tmp_dir(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.parent / f".{out.name}.tmp-{os.getpid()}-{int(time.time() * 1000)}"


def write_outputs(splits: dict, out_dir: str | os.PathLike, summaries: list[Summary], parquet: bool = False,
                  jsonl: bool = False, overwrite: bool = False, extra: dict | None = None,
                  extra_writer=None) -> Path:
    """Write a DatasetDict folder (+ parquet/jsonl copies + build_summary.json) atomically.

    ``extra_writer(tmp_dir)`` may add files (e.g. CLEVR JSON) before the rename.
    """
    from datasets import DatasetDict

    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"output folder {out} exists; pass --overwrite to replace it")
    tmp = _tmp_dir(out)
    try:
        dd = DatasetDict({name: ds.remove_columns([c for c in _PRIVATE if c in ds.column_names])
                          for name, ds in splits.items()})
        # An empty split saved with the default 0 shards cannot be loaded back (datasets 5.2).
        dd.save_to_disk(str(tmp), num_shards={k: 1 for k, v in dd.items() if len(v) == 0} or None)
        if parquet:
            (tmp / "parquet").mkdir()
            for name, ds in dd.items():
                ds.to_parquet(str(tmp / "parquet" / f"{name}.parquet"))
        if jsonl:
            from .exporters import write_records_jsonl

            for name, ds in dd.items():
                write_records_jsonl(ds, tmp / "jsonl", name)
        if extra_writer is not None:
            extra_writer(tmp)
        with open(tmp / "build_summary.json", "w") as f:
            json.dump({**(extra or {}), "splits": [s.as_dict() for s in summaries]}, f, indent=1)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
