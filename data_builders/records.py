"""The record: one image-question pair with privileged signals (``docs/data.md``).

Schema (a superset of TRL's conversational vision rows)::

    id                  str   "<hub_id>/<config>/<split>/<native_id>"
    source              {dataset, config, split, revision}   (strings; config/revision may be None)
    images              list[image]   in the order of the {"type": "image"} parts of ``prompt``
    prompt              list[message] the student's view: [{"role": "user", "content": [parts]}]
    question            str           raw question (no options, no instructions)
    choices             list[str] | None
    answer              str | None    canonical final answer (for scoring)
    privileged          {captions, regions[{bbox, label}], rationale, solution, lecture, hints,
                         ocr[{text, bbox}], scene_graph, program, answer}   every field optional
    privileged_context  str           the rendered teacher-only text
    meta                {image_size: [w, h], ...}   free-form beyond image_size

Boxes are canonical: absolute pixel ``[x1, y1, x2, y2]`` on ``images[0]`` with
``meta.image_size == [w, h]``; they are rendered per target model only when a prompt is built
(``dopd_vlm.privileged.render_privileged``). ``privileged.answer`` (the final answer given as
privileged information, the paper's worst privilege, Table 5) is a project addition so that the
"answer-only" ablation has a field of its own.

Images arrive as PIL images, bytes, ``{"bytes", "path"}`` dicts (``datasets.Image(decode=False)``),
a path under ``image_root``, or a base64 data URI; URLs are refused (no network on these machines).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
from pathlib import Path
from typing import Any

PRIVILEGED_FIELDS = ("captions", "regions", "rationale", "solution", "lecture", "hints", "ocr",
                     "scene_graph", "program", "answer",
                     "hints_exec", "hints_summary")  # step-wise hints with execution / summarized hints (Table 4)
RECORD_FIELDS = ("id", "source", "images", "prompt", "question", "choices", "answer", "privileged",
                 "privileged_context", "meta")
ROLES = ("system", "user", "assistant")

# Project decision: COCO-style float boxes may overshoot the image border by rounding (x + w =
# w_img + 0.5 occurs in RefCOCO); within this many pixels a box is clipped, beyond it rejected.
BOX_BORDER_TOLERANCE_PX = 1.0


class RecordError(ValueError):
    """A malformed record or source row; the message names the record id and the field."""

    def __init__(self, record_id: str | None, field: str, message: str):
        self.record_id, self.field = record_id, field
        super().__init__(f"record {record_id!r}, field {field!r}: {message}")


# ------------------------------------------------------------------------------------ images
class ImageSize(tuple):
    """``(w, h)`` of an image as the model receives it (EXIF orientation applied), with how it was stored:
    ``orientation`` (the EXIF value applied, 1 = none), ``stored`` ((w, h) in the file) and ``mode``
    (Pillow's mode before the conversion to 8-bit RGB). Behaves as a plain tuple everywhere else."""

    def __new__(cls, size, orientation: int = 1, stored=None, mode: str = "RGB"):
        obj = super().__new__(cls, (int(size[0]), int(size[1])))
        obj.orientation, obj.mode = int(orientation), mode
        obj.stored = tuple(stored) if stored is not None else (int(size[0]), int(size[1]))
        return obj


def _encode_png(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _normalized(im, record_id: str | None, field: str):
    from dopd_vlm.images import ImageConversionError, normalize_image

    try:
        rgb, info = normalize_image(im)
    except ImageConversionError as e:
        raise RecordError(record_id, field, f"image has no 8-bit RGB form: {e}") from e
    return rgb, info, ImageSize(rgb.size, info["orientation"], info["stored_size"], info["mode"])


def _check_image_bytes(data: bytes, record_id: str | None, field: str) -> tuple[bytes, ImageSize]:
    """Decode the file once -> (the bytes to store, its size as the model receives it).

    The stored image is what the model gets: a file that is 8-bit RGB without an EXIF orientation
    keeps its bytes (no JPEG re-encoding); any other (orientation, 16-bit, alpha, palette, grey,
    CMYK, ...) is oriented, converted to 8-bit RGB (``dopd_vlm.images.normalize_image``) and stored
    as PNG, so that pixels, ``meta.image_size`` and boxes describe the same picture.
    """
    from PIL import Image

    try:
        # Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS) stays on: Image.open raises
        # DecompressionBombError above twice the limit; the warning below it is made an error.
        import warnings

        from dopd_vlm.images import strict_decoding

        with warnings.catch_warnings(), strict_decoding():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.verify()
            with Image.open(io.BytesIO(data)) as im:  # verify() decodes nothing for JPEG / GIF / BMP
                rgb, info, size = _normalized(im, record_id, field)
    except RecordError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise RecordError(record_id, field, f"image refused by Pillow's decompression-bomb limit: {e}") from e
    except Exception as e:  # PIL raises many types for corrupt data (UnidentifiedImageError, OSError, SyntaxError)
        raise RecordError(record_id, field, f"cannot decode image ({type(e).__name__}: {e})") from e
    return (_encode_png(rgb) if info["changed"] else data), size


def _safe_path(path: str, image_root: str | os.PathLike | None, record_id: str | None, field: str) -> Path:
    if image_root is None:
        raise RecordError(record_id, field, f"image given as a path ({path!r}) but no image_root was set "
                                            "(pass --image-root DIR)")
    try:
        if ".." in Path(path).parts:
            raise RecordError(record_id, field, f"image path {path!r} contains '..'; paths must stay under image_root")
        root = Path(image_root).resolve()
        full = (root / path).resolve()  # resolve() follows symlinks, so a link escaping the root is caught below
        try:
            full.relative_to(root)
        except ValueError:
            raise RecordError(record_id, field, f"image path {path!r} resolves to {full}, outside image_root {root}") from None
        if not full.exists():
            raise RecordError(record_id, field, f"image file not found: {full} (image_root {root})")
        if not full.is_file():
            raise RecordError(record_id, field, f"image file not found: {full} is not a regular file (image_root {root})")
    except RecordError:
        raise
    except (OSError, RuntimeError, ValueError) as e:  # name too long, symlink loop, NUL byte, permission
        raise RecordError(record_id, field, f"cannot resolve image path {path!r} under image_root {image_root}: "
                                            f"{type(e).__name__}: {e}") from e
    return full


def _read_file(full: Path, record_id: str | None, field: str) -> bytes:
    try:
        return full.read_bytes()
    except OSError as e:
        raise RecordError(record_id, field, f"cannot read image file {full}: {e.strerror or e}") from e


def resolve_image(value: Any, image_root: str | os.PathLike | None = None, record_id: str | None = None,
                  field: str = "images") -> tuple[dict, ImageSize]:
    """Any supported image value -> (``{"bytes": ..., "path": None}``, (w, h) as the model receives it).

    Every image is decoded, oriented and converted once, here (``_check_image_bytes``); 8-bit RGB
    files without an EXIF orientation keep their bytes, PIL images and every other file are stored
    as PNG of the converted pixels.
    """
    from PIL import Image

    if isinstance(value, Image.Image):
        try:
            rgb, _, size = _normalized(value, record_id, field)
        except RecordError:
            raise
        except Exception as e:
            raise RecordError(record_id, field, f"cannot decode image ({type(e).__name__}: {e})") from e
        return {"bytes": _encode_png(rgb), "path": None}, size
    if isinstance(value, (bytes, bytearray)):
        data, size = _check_image_bytes(bytes(value), record_id, field)
        return {"bytes": data, "path": None}, size
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return resolve_image(value["bytes"], image_root, record_id, field)
        if value.get("path"):
            return resolve_image(value["path"], image_root, record_id, field)
        raise RecordError(record_id, field, f"image dict has neither bytes nor path: keys {sorted(value)}")
    if isinstance(value, str):
        if value.startswith(("http://", "https://", "ftp://")):
            raise RecordError(record_id, field, f"image is a URL ({value[:80]}); URLs cannot be fetched offline. "
                                                "Download the images and pass their folder as --image-root")
        if value.startswith("data:"):
            head, _, payload = value.partition(",")
            if ";base64" not in head:
                raise RecordError(record_id, field, "data URI is not base64-encoded")
            try:
                data = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError) as e:
                raise RecordError(record_id, field, f"invalid base64 in data URI: {e}") from e
            return resolve_image(data, image_root, record_id, field)
        full = _safe_path(value, image_root, record_id, field)
        data, size = _check_image_bytes(_read_file(full, record_id, field), record_id, field)
        return {"bytes": data, "path": None}, size
    raise RecordError(record_id, field, f"unsupported image value of type {type(value).__name__}")


def decode_base64_image(s: str, record_id: str | None = None, field: str = "images") -> tuple[dict, tuple[int, int]]:
    """Raw base64 (no data-URI header), as in R1-Onevision."""
    try:
        data = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RecordError(record_id, field, f"invalid base64 image: {e}") from e
    return resolve_image(data, None, record_id, field)


# ------------------------------------------------------------------------------------- boxes
# EXIF orientation -> the point map from the stored pixels (w, h) to the displayed ones (PIL.ImageOps.exif_transpose)
_ORIENT_POINT = {
    2: lambda x, y, w, h: (w - x, y),  # FLIP_LEFT_RIGHT
    3: lambda x, y, w, h: (w - x, h - y),  # ROTATE_180
    4: lambda x, y, w, h: (x, h - y),  # FLIP_TOP_BOTTOM
    5: lambda x, y, w, h: (y, x),  # TRANSPOSE
    6: lambda x, y, w, h: (h - y, x),  # ROTATE_270 (90 degrees clockwise)
    7: lambda x, y, w, h: (h - y, w - x),  # TRANSVERSE
    8: lambda x, y, w, h: (y, w - x),  # ROTATE_90 (90 degrees counter-clockwise)
}
BOX_FRAMES = ("stored", "displayed")


def orient_box(box: list[float], orientation: int, stored_size) -> list[float]:
    """An absolute xyxy box on the stored pixels -> the same box after the EXIF ``orientation``."""
    if orientation == 1:
        return list(box)
    w, h = stored_size
    x1, y1, x2, y2 = box
    (ax, ay), (bx, by) = (_ORIENT_POINT[orientation](x, y, w, h) for x, y in ((x1, y1), (x2, y2)))
    return [min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)]


def canonical_box(bbox: Any, fmt: str, image_size: tuple[int, int] | list[int], record_id: str | None = None,
                  field: str = "privileged.regions", frame: str | None = None) -> list[float]:
    """A box in ``fmt`` ("xyxy" or "xywh", absolute pixels) -> validated absolute xyxy.

    ``image_size`` is the size the model receives (``resolve_image``'s ``ImageSize``). When the file
    carried an EXIF orientation, the source's box may refer to the stored or to the displayed pixels
    (annotation tools differ), so ``frame`` must say which: ``"stored"`` maps the box through the
    orientation, ``"displayed"`` keeps it; without it such a box is refused (a counted skip) rather
    than guessed.
    """
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise RecordError(record_id, field, f"box must be 4 numbers, got {bbox!r}")
    try:
        a, b, c, d = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise RecordError(record_id, field, f"box has non-numeric values: {bbox!r}") from None
    if fmt == "xywh":
        x1, y1, x2, y2 = a, b, a + c, b + d
    elif fmt == "xyxy":
        x1, y1, x2, y2 = a, b, c, d
    else:
        raise ValueError(f"unknown box format {fmt!r}; expected 'xyxy' or 'xywh'")
    orientation = getattr(image_size, "orientation", 1)
    if orientation != 1:
        if frame not in BOX_FRAMES:
            raise RecordError(record_id, field, f"the image carries EXIF orientation {orientation} (stored "
                                                f"{image_size.stored[0]}x{image_size.stored[1]}, shown "
                                                f"{image_size[0]}x{image_size[1]}): whether the box refers to the "
                                                f"stored or the displayed pixels is unknown (builder option box_frame="
                                                f"stored|displayed)")
        if frame == "stored":
            x1, y1, x2, y2 = orient_box([x1, y1, x2, y2], orientation, image_size.stored)
    return check_box([x1, y1, x2, y2], image_size, record_id, field)


def check_box(box: list[float], image_size, record_id: str | None = None, field: str = "privileged.regions") -> list[float]:
    """Validate an absolute xyxy box against (w, h); clip overshoot within the tolerance."""
    w, h = image_size
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box):
        raise RecordError(record_id, field, f"box {box} has non-finite values")
    tol = BOX_BORDER_TOLERANCE_PX
    if min(x1, y1) < -tol:
        raise RecordError(record_id, field, f"box {box} has negative coordinates")
    if x2 > w + tol or y2 > h + tol:
        raise RecordError(record_id, field, f"box {box} lies outside the image of size {w}x{h}")
    x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
    if x2 <= x1 or y2 <= y1:
        raise RecordError(record_id, field, f"box {box} is degenerate (x2 <= x1 or y2 <= y1)")
    return [x1, y1, x2, y2]


# ------------------------------------------------------------------------------------ prompts
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Project decision: instructions use words of the tiny tokenizer's corpus (dopd_vlm/tiny.py).
INSTRUCTION_WORD = "Answer with a single word."
INSTRUCTION_LETTER = "Answer with the letter of the correct option."


def format_choices(choices: list[str]) -> str:
    return "Options: " + " ".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))


def build_prompt(question: str, choices: list[str] | None = None, context: str | None = None,
                 n_images: int = 1, instruction: str | None = None) -> list[dict]:
    """The student's user turn: image parts first, then context, question, options, instruction."""
    lines = []
    if context:
        lines.append(f"Context: {context}")
    lines.append(question)
    if choices:
        lines.append(format_choices(choices))
    if instruction is None:
        instruction = INSTRUCTION_LETTER if choices else ""
    if instruction:
        lines.append(instruction)
    content = [{"type": "image", "text": None} for _ in range(n_images)]
    content.append({"type": "text", "text": "\n".join(lines)})
    return [{"role": "user", "content": content}]


def empty_privileged() -> dict:
    return {"captions": [], "regions": [], "rationale": [], "solution": None, "lecture": None, "hints": [],
            "ocr": [], "scene_graph": None, "program": None, "answer": None, "hints_exec": [], "hints_summary": []}


def make_record(*, id: str, source: dict, images: list, question: str, answer: str | None,
                choices: list[str] | None = None, privileged: dict | None = None, prompt: list | None = None,
                meta: dict | None = None, image_size: tuple[int, int] | None = None,
                context: str | None = None, instruction: str | None = None) -> dict:
    """Assemble a record with defaults filled in (the prompt is built from question and choices)."""
    priv = empty_privileged()
    for k, v in (privileged or {}).items():
        if k not in priv:
            raise RecordError(id, f"privileged.{k}", f"unknown privileged field; known: {PRIVILEGED_FIELDS}")
        priv[k] = v
    if priv["answer"] is None:
        priv["answer"] = answer  # the "final answer" privilege of the paper's ablation (Table 5), for every source
    m = dict(meta or {})
    if image_size is not None:
        m["image_size"] = [int(image_size[0]), int(image_size[1])]
        if getattr(image_size, "orientation", 1) != 1:  # applied at build time (resolve_image); kept for audits
            m["exif_orientation"] = image_size.orientation
    return {
        "id": id,
        "source": {"dataset": source["dataset"], "config": source.get("config"), "split": source["split"],
                   "revision": source.get("revision")},
        "images": images,
        "prompt": prompt if prompt is not None else build_prompt(question, choices, context, len(images), instruction),
        "question": question,
        "choices": choices,
        "answer": answer,
        "privileged": priv,
        "privileged_context": "",
        "meta": m,
    }


# --------------------------------------------------------------------------------- validation
def _is_str_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def validate_record(rec: dict) -> dict:
    """Check a record against the schema; raise ``RecordError`` naming the id and the field."""
    if not isinstance(rec, dict):
        raise RecordError(None, "<record>", f"a record is a dict, got {type(rec).__name__}")
    rid = rec.get("id")
    if not isinstance(rid, str) or not rid:
        raise RecordError(rid, "id", "must be a non-empty string")
    missing = [f for f in RECORD_FIELDS if f not in rec]
    if missing:
        raise RecordError(rid, missing[0], f"missing field(s) {missing}")
    extra = sorted(set(rec) - set(RECORD_FIELDS))
    if extra:
        raise RecordError(rid, extra[0], f"unknown field(s) {extra}")

    src = rec["source"]
    if not isinstance(src, dict) or set(src) != {"dataset", "config", "split", "revision"}:
        raise RecordError(rid, "source", "must be a dict with exactly dataset, config, split, revision")
    for k in ("dataset", "split"):
        if not isinstance(src[k], str) or not src[k]:
            raise RecordError(rid, f"source.{k}", "must be a non-empty string")
    for k in ("config", "revision"):
        if src[k] is not None and not isinstance(src[k], str):
            raise RecordError(rid, f"source.{k}", "must be a string or None")

    images = rec["images"]
    if not isinstance(images, list):
        raise RecordError(rid, "images", "must be a list")
    from PIL import Image

    for i, im in enumerate(images):
        if not (isinstance(im, Image.Image) or (isinstance(im, dict) and (im.get("bytes") or im.get("path")))):
            raise RecordError(rid, f"images[{i}]", f"must be a PIL image or a {{bytes, path}} dict, got {type(im).__name__}")

    prompt = rec["prompt"]
    if not isinstance(prompt, list) or not prompt:
        raise RecordError(rid, "prompt", "must be a non-empty list of messages")
    n_image_parts = 0
    for i, msg in enumerate(prompt):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES or not isinstance(msg.get("content"), list):
            raise RecordError(rid, f"prompt[{i}]", f"must be {{role in {ROLES}, content: list of parts}}")
        for j, part in enumerate(msg["content"]):
            t = part.get("type") if isinstance(part, dict) else None
            if t == "image":
                n_image_parts += 1
            elif t == "text":
                if not isinstance(part.get("text"), str):
                    raise RecordError(rid, f"prompt[{i}].content[{j}].text", "text part needs a string")
            else:
                raise RecordError(rid, f"prompt[{i}].content[{j}]", f"part type must be 'image' or 'text', got {t!r}")
    if n_image_parts != len(images):
        raise RecordError(rid, "images", f"{len(images)} images but {n_image_parts} image parts in the prompt")
    if prompt[-1]["role"] != "user":
        raise RecordError(rid, "prompt", "the last message must be the user's turn")

    if not isinstance(rec["question"], str) or not rec["question"].strip():
        raise RecordError(rid, "question", "must be a non-empty string")
    ch = rec["choices"]
    if ch is not None and (not _is_str_list(ch) or len(ch) < 2 or len(ch) > len(LETTERS)):
        raise RecordError(rid, "choices", "must be None or a list of 2-26 strings")
    if rec["answer"] is not None and not isinstance(rec["answer"], str):
        raise RecordError(rid, "answer", "must be a string or None")
    if not isinstance(rec["privileged_context"], str):
        raise RecordError(rid, "privileged_context", "must be a string")

    meta = rec["meta"]
    if not isinstance(meta, dict):
        raise RecordError(rid, "meta", "must be a dict")
    size = meta.get("image_size")
    if images:
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
            raise RecordError(rid, "meta.image_size", f"records with images need [w, h] positive ints, got {size!r}")

    priv = rec["privileged"]
    if not isinstance(priv, dict):
        raise RecordError(rid, "privileged", "must be a dict")
    unknown = sorted(set(priv) - set(PRIVILEGED_FIELDS))
    if unknown:
        raise RecordError(rid, f"privileged.{unknown[0]}", f"unknown privileged field; known: {PRIVILEGED_FIELDS}")
    for k in ("captions", "rationale", "hints", "hints_exec", "hints_summary"):
        if priv.get(k) is not None and not _is_str_list(priv[k]):
            raise RecordError(rid, f"privileged.{k}", "must be a list of strings")
    for k in ("solution", "lecture", "answer"):
        if priv.get(k) is not None and not isinstance(priv[k], str):
            raise RecordError(rid, f"privileged.{k}", "must be a string or None")
    for i, r in enumerate(priv.get("regions") or []):
        f = f"privileged.regions[{i}]"
        if not isinstance(r, dict) or "bbox" not in r:
            raise RecordError(rid, f, "a region is {bbox: [x1, y1, x2, y2], label}")
        if r.get("label") is not None and not isinstance(r["label"], str):
            raise RecordError(rid, f + ".label", "must be a string or None")
        if not images:
            raise RecordError(rid, f, "regions need an image (boxes refer to images[0])")
        _validate_xyxy(r["bbox"], size, rid, f + ".bbox")
    for i, o in enumerate(priv.get("ocr") or []):
        f = f"privileged.ocr[{i}]"
        if not isinstance(o, dict) or not isinstance(o.get("text"), str):
            raise RecordError(rid, f, "an OCR item is {text: str, bbox: [x1, y1, x2, y2] | None}")
        if o.get("bbox") is not None:
            _validate_xyxy(o["bbox"], size, rid, f + ".bbox")
    if priv.get("scene_graph") is not None and not isinstance(priv["scene_graph"], dict):
        raise RecordError(rid, "privileged.scene_graph", "must be a dict or None")
    prog = priv.get("program")
    if prog is not None and not (isinstance(prog, list) and all(isinstance(s, dict) and "function" in s for s in prog)):
        raise RecordError(rid, "privileged.program", "must be a list of {function, inputs, value_inputs} dicts")
    return rec


def _validate_xyxy(box, size, rid, field) -> None:
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        raise RecordError(rid, field, f"must be 4 numbers [x1, y1, x2, y2], got {box!r}")
    w, h = size
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box):
        raise RecordError(rid, field, f"box {list(box)} has non-finite values")
    if min(box) < 0:
        raise RecordError(rid, field, f"box {list(box)} has negative coordinates")
    if x2 > w or y2 > h:
        raise RecordError(rid, field, f"box {list(box)} lies outside the image of size {w}x{h}")
    if x2 <= x1 or y2 <= y1:
        raise RecordError(rid, field, f"box {list(box)} is degenerate (x2 <= x1 or y2 <= y1)")


# ----------------------------------------------------------------------------------- features
def record_features():
    """The ``datasets.Features`` records are written with (images embedded as bytes)."""
    from datasets import Features, Image, Json, List, Value

    s = Value("string")
    return Features({
        "id": s,
        "source": {"dataset": s, "config": s, "split": s, "revision": s},
        "images": List(Image()),
        "prompt": List({"role": s, "content": List({"type": s, "text": s})}),
        "question": s,
        "choices": List(s),
        "answer": s,
        "privileged": {
            "captions": List(s),
            "regions": List({"bbox": List(Value("float64")), "label": s}),
            "rationale": List(s),
            "solution": s,
            "lecture": s,
            "hints": List(s),
            "ocr": List({"text": s, "bbox": List(Value("float64"))}),
            "scene_graph": Json(),
            "program": Json(),
            "answer": s,
            "hints_exec": List(s),
            "hints_summary": List(s),
        },
        "privileged_context": s,
        "meta": Json(),
    })
