"""Boxes out of a model's reply, converted to the record's canonical boxes (``dopd-vlm annotate``).

Formats understood (``parse_boxes``):
- the grounding JSON Qwen-VL models emit: ``[{"bbox_2d": [x1, y1, x2, y2], "label": "cat"}, ...]``,
  inside or outside a fenced block (```json ... ```), a single object instead of a list, ``bbox`` /
  ``box`` for ``bbox_2d`` and ``caption`` / ``description`` / ``name`` for ``label``;
- truncated JSON (a reply cut by ``max_tokens``): every complete object before the cut is kept;
- text around the JSON (a sentence before, an explanation after);
- plain ``[x1, y1, x2, y2]`` lists, with the label before them (``cat: [1, 2, 3, 4]``) or none;
- Qwen2-VL's special tokens ``<|object_ref_start|>cat<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``.

Coordinate conventions of the annotator (``to_canonical``; ``CONVENTIONS``):
- ``qwen2_5_vl``: absolute pixels of the model's *resized* input (``smart_resize`` of the image with
  the processor's ``min_pixels`` / ``max_pixels``, factor 28), Qwen2.5-VL's grounding convention;
- ``qwen3_vl`` and ``qwen2_vl``: integers 0-1000 relative to the image;
- ``abs``: absolute pixels of the original image; ``rel01``: floats 0-1.

Every box becomes the record's canonical box: absolute ``[x1, y1, x2, y2]`` on the original image,
clipped to the image, and validated (finite, x2 > x1 and y2 > y1 after clipping, at least
``MIN_BOX_PX`` pixels wide and high). ``BoxParseError`` carries the reason of a reply that yields no
usable box.
"""

from __future__ import annotations

import json
import math
import re

CONVENTIONS = ("qwen2_5_vl", "qwen3_vl", "qwen2_vl", "abs", "rel01")
# Qwen2.5-VL's processor defaults (preprocessor_config.json of Qwen/Qwen2.5-VL-7B-Instruct)
QWEN2_5_VL_MIN_PIXELS = 3136
QWEN2_5_VL_MAX_PIXELS = 12845056
QWEN_FACTOR = 28  # patch 14 x merge 2
MIN_BOX_PX = 1.0  # project decision: a box thinner than one pixel of the original image is no box

_BOX_KEYS = ("bbox_2d", "bbox", "box", "bbox_xyxy")
_LABEL_KEYS = ("label", "caption", "description", "name", "object", "text")
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)(?:```|$)", re.DOTALL)
_NUM = r"-?\d+(?:\.\d+)?"
_LIST4 = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]")
_QWEN2_TOKENS = re.compile(r"(?:<\|object_ref_start\|>(.*?)<\|object_ref_end\|>)?\s*<\|box_start\|>\s*\(\s*("
                           + _NUM + r")\s*,\s*(" + _NUM + r")\s*\)\s*,\s*\(\s*(" + _NUM + r")\s*,\s*(" + _NUM
                           + r")\s*\)\s*<\|box_end\|>", re.DOTALL)


class BoxParseError(ValueError):
    """A reply that yields no usable box (the message is the reason, counted in the summary)."""


def _objects_in(text: str) -> list:
    """JSON values in ``text``: the whole text, else every complete ``{...}`` object (truncated replies)."""
    text = text.strip()
    for candidate in (text, text[text.find("["):] if "[" in text else None):
        if candidate:
            try:
                v = json.loads(candidate)
                return v if isinstance(v, list) else [v]
            except ValueError:
                pass
    # raw_decode every object start: complete objects survive a cut or trailing text
    out, dec, i = [], json.JSONDecoder(), 0
    while True:
        i = text.find("{", i)
        if i < 0:
            return out
        try:
            v, end = dec.raw_decode(text, i)
        except ValueError:
            i += 1
            continue
        out.append(v)
        i = end


def _box_of(obj: dict):
    for k in _BOX_KEYS:
        if k in obj:
            return obj[k]
    return None


def _label_of(obj: dict) -> str | None:
    for k in _LABEL_KEYS:
        v = obj.get(k)
        if isinstance(v, str) and v.strip():
            return v.strip()
    return None


def parse_boxes(text: str) -> list[dict]:
    """``[{"bbox": [x1, y1, x2, y2] (annotator coordinates), "label": str | None}]`` from a reply."""
    if not isinstance(text, str) or not text.strip():
        raise BoxParseError("empty reply")
    found: list[dict] = []
    m = _QWEN2_TOKENS.findall(text)
    if m:
        return [{"bbox": [float(a), float(b), float(c), float(d)], "label": (lab or "").strip() or None}
                for lab, a, b, c, d in m]
    blocks = [b for b in _FENCE.findall(text) if b.strip()] or [text]
    for block in blocks:
        for obj in _objects_in(block):
            if isinstance(obj, dict):
                box = _box_of(obj)
                if box is not None:
                    found.append({"bbox": box, "label": _label_of(obj)})
                elif isinstance(obj.get("objects"), list):  # {"objects": [...]} wrappers
                    found += [{"bbox": _box_of(o), "label": _label_of(o)} for o in obj["objects"]
                              if isinstance(o, dict) and _box_of(o) is not None]
            elif isinstance(obj, list) and len(obj) == 4 and all(isinstance(v, (int, float)) for v in obj):
                found.append({"bbox": obj, "label": None})
    if found:
        return found
    # plain lists, each with the words just before it as its label ("cat: [1, 2, 3, 4]")
    last = 0
    for m in _LIST4.finditer(text):
        before = text[last:m.start()]
        label = re.sub(r"^[\s,;.\-*\d)]*", "", before.strip().splitlines()[-1] if before.strip() else "")
        label = label.strip().rstrip(":=-").strip().strip('"').strip() or None
        found.append({"bbox": [float(v) for v in m.groups()], "label": label})
        last = m.end()
    if not found:
        raise BoxParseError("no box found (expected grounding JSON with bbox_2d, or [x1, y1, x2, y2] lists)")
    return found


def input_size(image_size, min_pixels: int = QWEN2_5_VL_MIN_PIXELS, max_pixels: int = QWEN2_5_VL_MAX_PIXELS,
               factor: int = QWEN_FACTOR) -> tuple[int, int]:
    """``(w, h)`` of the resized input a Qwen2.5-VL processor makes of an image of ``image_size``.

    The Qwen2-VL image processor's rule (both sides multiples of ``factor``, the pixel count within
    [min_pixels, max_pixels], the aspect ratio kept); written here so that parsing needs no
    transformers import (tests/integration/test_annotate_server.py checks it against transformers).
    """
    w, h = image_size
    h_bar = max(factor, round(h / factor) * factor)
    w_bar = max(factor, round(w / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        h_bar = max(factor, math.floor(h / beta / factor) * factor)
        w_bar = max(factor, math.floor(w / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        h_bar = math.ceil(h * beta / factor) * factor
        w_bar = math.ceil(w * beta / factor) * factor
    return w_bar, h_bar


def to_canonical(bbox, convention: str, image_size, min_pixels: int = QWEN2_5_VL_MIN_PIXELS,
                 max_pixels: int = QWEN2_5_VL_MAX_PIXELS) -> list[float]:
    """One annotator box -> canonical absolute xyxy of the original image, clipped and validated."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown coordinate convention {convention!r}; known: {CONVENTIONS}")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise BoxParseError(f"box must be 4 numbers, got {bbox!r}"[:200])
    try:
        x1, y1, x2, y2 = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise BoxParseError(f"box has non-numeric values: {bbox!r}"[:200]) from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise BoxParseError(f"box {list(bbox)} has non-finite values")
    w, h = image_size
    if convention == "qwen2_5_vl":
        iw, ih = input_size(image_size, min_pixels, max_pixels)
        sx, sy = w / iw, h / ih
    elif convention in ("qwen3_vl", "qwen2_vl"):
        sx, sy = w / 1000.0, h / 1000.0
    elif convention == "rel01":
        if max(x1, y1, x2, y2) > 1.5:
            raise BoxParseError(f"box {list(bbox)} is not relative (0-1) coordinates")
        sx, sy = float(w), float(h)
    else:
        sx, sy = 1.0, 1.0
    x1, x2 = x1 * sx, x2 * sx
    y1, y2 = y1 * sy, y2 * sy
    if x2 <= x1 or y2 <= y1:
        raise BoxParseError(f"box {list(bbox)} is degenerate or reversed (x2 <= x1 or y2 <= y1)")
    c = [min(max(x1, 0.0), float(w)), min(max(y1, 0.0), float(h)), min(max(x2, 0.0), float(w)),
         min(max(y2, 0.0), float(h))]
    if c[2] - c[0] < MIN_BOX_PX or c[3] - c[1] < MIN_BOX_PX:
        raise BoxParseError(f"box {list(bbox)} lies outside the {w}x{h} image or is under {MIN_BOX_PX:g} px")
    return [round(v, 2) for v in c]


def canonical_regions(text: str, convention: str, image_size, min_pixels: int = QWEN2_5_VL_MIN_PIXELS,
                      max_pixels: int = QWEN2_5_VL_MAX_PIXELS, need_labels: bool = True,
                      max_boxes: int = 50) -> list[dict]:
    """A reply -> canonical regions ``[{"bbox", "label"}]``; any invalid box makes the reply invalid."""
    boxes = parse_boxes(text)
    if len(boxes) > max_boxes:
        raise BoxParseError(f"{len(boxes)} boxes (more than {max_boxes})")
    out = []
    for i, b in enumerate(boxes):
        try:
            box = to_canonical(b["bbox"], convention, image_size, min_pixels, max_pixels)
        except BoxParseError as e:
            raise BoxParseError(f"box {i}: {e}") from None
        if need_labels and not b["label"]:
            raise BoxParseError(f"box {i} has no label")
        out.append({"bbox": box, "label": b["label"]})
    return out
