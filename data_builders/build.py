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
import re
import shutil
import socket
import sys
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
    # rows whose rendered privileged context is empty, per kind (dopd_vlm.privilege_check; issue 13)
    privileged_empty: dict | None = None
    duplicates: dict | None = None  # {policy, ids, rows_dropped} (resolve_duplicate_ids; issue 16)

    def as_dict(self) -> dict:
        reasons: dict[str, int] = {}
        for s in self.skipped:
            reasons[s["category"]] = reasons.get(s["category"], 0) + 1
        return {"split": self.split, "rows_in": self.rows_in, "kept": self.kept, "skipped": len(self.skipped),
                "skip_reasons": reasons, "skipped_rows": self.skipped[:1000], "leak": self.leak,
                "contamination_dropped": self.contamination_dropped, "privileged_empty": self.privileged_empty,
                "duplicates": self.duplicates}

    def text(self) -> str:
        lines = [f"[{self.split}] rows {self.rows_in}: kept {self.kept}, skipped {len(self.skipped)}"
                 + (f", dropped as eval-contaminated {self.contamination_dropped}" if self.contamination_dropped else "")]
        if self.leak:
            lines.append(f"[{self.split}] privileged text states the answer in {self.leak['leaked']} of "
                         f"{self.leak['checked']} rows (policy {self.leak['policy']}, dropped {self.leak['dropped']})")
        if self.duplicates and self.duplicates.get("ids"):
            lines.append(f"[{self.split}] {self.duplicates['ids']} record id(s) occur more than once "
                         f"(--duplicates {self.duplicates['policy']}: dropped {self.duplicates['rows_dropped']} later rows)")
        if self.privileged_empty is not None:
            from dopd_vlm.privilege_check import describe_counts

            lines.append(describe_counts(self.privileged_empty, f"[{self.split}] "))
        for s in self.skipped[:20]:
            lines.append(f"  skipped row {s['index']} ({s['id']}): {s['reason']}")
        if len(self.skipped) > 20:
            lines.append(f"  ... {len(self.skipped) - 20} more in build_summary.json")
        return "\n".join(lines)


# ------------------------------------------------------------------------------ finalising
class DuplicateIdError(ValueError):
    """Records share an id under ``--duplicates error`` (the message names the first id and the count)."""


class DatasetWriteError(OSError, ValueError):
    """Writing the dataset failed (disk full, permissions, ...): the message names the path and the cause.

    An ``OSError`` (what it wraps) and a ``ValueError`` (the CLI prints the project's ValueErrors as one line)."""


# Defaults of the build-time image checks (``--max-aspect-ratio``, ``--min-image-side``): the
# strictest limits of the supported processors (dopd_vlm.images.MAX_ASPECT_RATIO: Qwen-VL's
# smart_resize refuses a ratio above 200; transformers 5 upsamples images smaller than a patch,
# so any side of at least 1 px is taken).
DEFAULT_IMAGE_LIMITS = {"max_aspect_ratio": 200.0, "min_side": 1}


def _image_size_of(im) -> tuple[int, int]:
    from PIL import Image

    if isinstance(im, Image.Image):
        return im.size
    with Image.open(io.BytesIO(im["bytes"])) if im.get("bytes") else Image.open(im["path"]) as pim:
        return pim.size  # the header alone: images were decoded and converted by resolve_image


def check_images(rec: dict, limits: dict | None = None) -> None:
    """Refuse (``SkipRow``) a record whose images a model processor cannot take, and a record whose
    ``meta.image_size`` is not the size of ``images[0]`` as stored (``RecordError``)."""
    from dopd_vlm.images import processor_refusal

    lim = {**DEFAULT_IMAGE_LIMITS, **(limits or {})}
    for i, im in enumerate(rec["images"]):
        size = _image_size_of(im)
        if i == 0 and list(size) != list(rec["meta"]["image_size"]):
            raise RecordError(rec["id"], "meta.image_size", f"{rec['meta']['image_size']} but images[0] is "
                                                             f"{size[0]}x{size[1]}")
        why = processor_refusal(size, lim["max_aspect_ratio"], lim["min_side"])
        if why:
            raise SkipRow(f"image unsupported by the model processors: images[{i}] {why}")


def finalize_record(rec: dict, kinds: list[str] | None, templates: dict | None = None,
                    image_limits: dict | None = None) -> tuple[dict, bool]:
    """Validate, check images, render ``privileged_context`` (canonical absolute boxes) -> (record, leaks answer).

    ``kinds=None`` keeps the kinds the record was built with (``meta.privileged_kinds``; re-imports).
    ``image_limits``: ``{max_aspect_ratio, min_side}`` over ``DEFAULT_IMAGE_LIMITS`` (``check_images``).
    """
    validate_record(rec)
    check_images(rec, image_limits)
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
                    work_dir: str | os.PathLike | None = None, image_limits: dict | None = None):
    """Map source rows to records -> (records Dataset with _leak column, skipped [{index, id, reason}]).

    ``work_dir``: where ``datasets.map`` writes its Arrow file (instead of the shared HF cache).
    ``image_limits``: see ``finalize_record``.
    """
    import uuid

    from datasets import Features, Value

    if on_error not in ("skip", "stop"):
        raise ValueError(f"on_error must be 'skip' or 'stop', got {on_error!r}")

    def fn(row, idx):
        rec = None
        try:
            rec = convert(row, ctx, idx)
            rec, leak = finalize_record(rec, kinds, templates, image_limits)
            return {**rec, "_skip": None, "_cat": None, "_index": idx, "_leak": leak}
        except (SkipRow, RecordError, KeyError, TypeError, ValueError, IndexError, OSError) as e:
            # OSError: a file the converter reads (scene JSON, image) that cannot be read
            # KeyError / TypeError / ...: a row whose nested values do not have the documented shape
            if on_error == "stop":
                raise RecordError(ctx.record_id(f"row{idx}"), "<row>", f"source row {idx}: {type(e).__name__}: {e} "
                                                                       "(--on-error stop)") from e
            if isinstance(e, RecordError):
                category = f"invalid {e.field}"
            elif isinstance(e, SkipRow):
                category = str(e).split(":")[0]
            elif isinstance(e, OSError):
                category, e = "unreadable file", SkipRow(f"unreadable file: {type(e).__name__}: {e}")
            else:
                category, e = "malformed row", SkipRow(f"malformed row: {type(e).__name__}: {e}")
            rid = e.record_id if isinstance(e, RecordError) and e.record_id else None
            if rid is None and isinstance(rec, dict) and isinstance(rec.get("id"), str):
                rid = rec["id"]  # a record that was built, then refused (e.g. its image by the processor limits)
            rid = rid or ctx.record_id(f"row{idx}")
            return {**_empty_row(rid), "_skip": str(e) or type(e).__name__, "_cat": category, "_index": idx,
                    "_leak": False}

    feats = Features({**record_features(), "_skip": Value("string"), "_cat": Value("string"),
                      "_index": Value("int64"), "_leak": Value("bool")})
    # A fresh fingerprint: nothing is reused from a cache, and datasets does not hash the converter's
    # closure (which can hold a whole CLEVR scene file).
    try:
        out = ds.map(fn, with_indices=True, remove_columns=ds.column_names, features=feats,
                     num_proc=num_proc if num_proc and num_proc > 1 else None, desc=desc, load_from_cache_file=False,
                     new_fingerprint=uuid.uuid4().hex,
                     cache_file_name=str(Path(work_dir) / "converted.arrow") if work_dir is not None else None)
    except OSError as e:  # the rows' own file errors are skips (above): this is the conversion cache's write
        if isinstance(e, DatasetWriteError):
            raise
        raise _write_error(e, None, Path(work_dir) if work_dir is not None else Path("<datasets cache>")) from e
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


# ------------------------------------------------------------------------------- duplicate ids
DUPLICATE_POLICIES = ("error", "drop-later")


def resolve_duplicate_ids(ds, policy: str = "error") -> tuple:
    """Records sharing an ``id`` -> (dataset, skipped entries, counts).

    ``error`` (the default, project decision: an id names one example, and two rows under one id
    would be trained, scored and exported as one) raises ``DuplicateIdError``; ``drop-later`` keeps
    the first row of each id and reports every later one as a skip (category "duplicate id").
    """
    if policy not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicates policy must be one of {DUPLICATE_POLICIES}, got {policy!r}")
    ids = ds["id"]
    index = ds["_index"] if "_index" in ds.column_names else list(range(len(ids)))
    first: dict[str, int] = {}
    later: list[int] = []
    for i, rid in enumerate(ids):
        if rid in first:
            later.append(i)
        else:
            first[rid] = i
    n_ids = len({ids[i] for i in later})
    counts = {"policy": policy, "ids": n_ids, "rows_dropped": 0}
    if not later:
        return ds, [], counts
    if policy == "error":
        rid = ids[later[0]]
        raise DuplicateIdError(f"{n_ids} record id(s) occur more than once ({len(later)} extra rows), first {rid!r} "
                               f"(source rows {index[first[rid]]} and {index[later[0]]}); pass --duplicates drop-later "
                               "to keep the first row of each id")
    skipped = [{"index": index[i], "id": ids[i], "category": "duplicate id",
                "reason": f"duplicate id: {ids[i]!r} is also source row {index[first[ids[i]]]} (kept)"} for i in later]
    drop = set(later)
    counts["rows_dropped"] = len(later)
    return ds.select([i for i in range(len(ids)) if i not in drop]), skipped, counts


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
    from dopd_vlm.images import ImageConversionError, normalize_image

    try:  # the pixels the build stores (oriented, 8-bit RGB), so an eval file and its training copy agree
        im, _ = normalize_image(image)
    except ImageConversionError:
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
# Project decision: a temporary folder whose owner is alive (or on another host) is left alone until
# it is this old; no build writes one for two days.
STALE_TEMP_AGE_S = 2 * 24 * 3600
_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _tmp_dir(out: Path, kind: str = "tmp") -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.parent / f".{out.name}.{kind}-{os.getpid()}-{int(time.time() * 1000)}-{_HOST}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temp(out: str | os.PathLike, max_age_s: float = STALE_TEMP_AGE_S) -> list[str]:
    """Remove what killed builds of ``out`` left next to it -> the names removed (each also printed).

    ``.NAME.tmp-PID-MS-HOST`` / ``.NAME.work-PID-MS-HOST`` folders go when PID is not running on this
    host, or when older than ``max_age_s``; a ``.NAME.old-PID`` folder (a kill between the two renames
    of an overwrite) is renamed back to ``NAME`` when ``NAME`` is missing, else removed. Folders of a
    live build are never touched.
    """
    out = Path(out)
    if not out.parent.is_dir():
        return []
    pat = re.compile(rf"^\.{re.escape(out.name)}\.(tmp|work|old)-(\d+)(?:-\d+)?(?:-(.+))?$")
    removed = []
    for entry in sorted(out.parent.iterdir()):
        m = pat.match(entry.name)
        if not m or not entry.is_dir():
            continue
        kind, pid, host = m.group(1), int(m.group(2)), m.group(3)
        try:
            age = time.time() - entry.stat().st_mtime
        except OSError:
            continue
        same_host = host is None or host == _HOST or kind == "old"
        if not ((same_host and pid != os.getpid() and not _pid_alive(pid)) or age > max_age_s):
            continue
        if kind == "old" and not out.exists():
            os.replace(entry, out)
            print(f"restored {out} from {entry.name} (an overwrite was interrupted)", file=sys.stderr)
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry.name)
        print(f"removed stale temporary folder {entry} (left by build process {pid}, which is not running)",
              file=sys.stderr)
    return removed


def make_work_dir(out: str | os.PathLike) -> Path:
    """A fresh work folder next to ``out`` (for ``datasets.map``'s Arrow files), after removing stale ones."""
    out = Path(out)
    remove_stale_temp(out)
    d = _tmp_dir(out, "work")
    d.mkdir()
    return d


def _write_error(e: OSError, out: Path | None, tmp: Path) -> DatasetWriteError:
    import errno

    code = errno.errorcode.get(e.errno, "") if e.errno else ""
    cause = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
             errno.EFBIG: "file too large for this file system or process limit",
             errno.EROFS: "read-only file system", errno.EACCES: "permission denied"}.get(e.errno, e.strerror or str(e))
    where = e.filename or tmp
    if out is None:  # the conversion phase (datasets.map's Arrow file in the work folder)
        return DatasetWriteError(f"cannot write the conversion cache in {tmp}: {cause}{f' ({code})' if code else ''} "
                                 f"while writing {where}; no dataset was written or changed")
    return DatasetWriteError(f"cannot write dataset {out}: {cause}{f' ({code})' if code else ''} while writing {where}; "
                             f"{'the previous dataset is unchanged' if out.exists() else 'nothing was written'} and "
                             "the temporary folder was removed")


def write_outputs(splits: dict, out_dir: str | os.PathLike, summaries: list[Summary], parquet: bool = False,
                  jsonl: bool = False, overwrite: bool = False, extra: dict | None = None,
                  extra_writer=None) -> Path:
    """Write a DatasetDict folder (+ parquet/jsonl copies + build_summary.json) atomically.

    ``extra_writer(tmp_dir)`` may add files (e.g. CLEVR JSON) before the rename.
    """
    from datasets import DatasetDict

    out = Path(out_dir)
    remove_stale_temp(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"output folder {out} exists; pass --overwrite to replace it")
    tmp, old = _tmp_dir(out), None
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
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not out.exists():
            os.replace(old, out)  # the rename of the new folder failed: the previous dataset goes back
        raise _write_error(e, out, tmp) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
