"""Grounding and region datasets: boxes (COCO xywh -> canonical xyxy) with their phrases.

- ``refcoco``: ``jxu124/refcoco``, ``jxu124/refcocog`` (train): ``bbox`` (xywh, absolute),
  ``file_name`` (RefCOCO's ``COCO_train2014_<id>_<ann>.jpg``; the image is
  ``COCO_train2014_<id>.jpg``), ``sentences`` (list of {raw, sent, ...}), ``ref_id``, ``category_id``;
  images under ``--image-root`` (``image_path`` is used instead when the copy has it).
- ``refcoco_lmms``: ``lmms-lab/RefCOCO`` (also ``-encoder`` and RefCOCO+ / RefCOCOg via --source),
  val/test: ``image``, ``question_id``, ``answer`` (referring expressions), ``bbox`` (xywh).
- ``vg_regions``: Visual Genome region descriptions: an ``image`` column (Hub copies) or local JSON
  with ``id`` and images under ``--image-root/<id>.jpg``, and ``regions`` =
  [{region_id, phrase, x, y, width, height}].

Referring records ask where the expression is; the answer is the canonical box as text
``[x1, y1, x2, y2]`` (absolute pixels; ``meta.answer_box`` keeps the numbers so that a model adapter
can re-render it). Privileged: the other expressions of the same object as ``captions`` (the box
itself would be the answer: rendering ``regions`` for these records gives the answer away).
Visual Genome records: a description question; privileged ``regions`` = every region with its phrase.
"""

from __future__ import annotations

import re

from .build import SkipRow
from .records import RecordError, canonical_box, make_record, resolve_image
from .sources import SourceBuilder

GROUND_QUESTION = 'Where is "{expr}" in the image? Answer with a box [x1, y1, x2, y2].'
VG_QUESTION = "Describe the regions of the image."
# Project decision: cap the regions per Visual Genome image (they have ~50 on average, some >200).
VG_MAX_REGIONS = 50
_COCO_REF_NAME = re.compile(r"^(COCO_[a-z]+\d{4}_\d{12})_\d+(\.\w+)$")


def _box_text(box) -> str:
    return "[" + ", ".join(str(round(v)) for v in box) + "]"


def _ground(ctx, native_id, image, field, exprs: list[str], bbox_xywh, meta) -> dict:
    rid = ctx.record_id(native_id)
    exprs = [e.strip() for e in exprs if e and e.strip()]
    if not exprs:
        raise SkipRow("no referring expression")
    img, size = resolve_image(image, ctx.image_root, rid, field)
    box = canonical_box(bbox_xywh, "xywh", size, rid, "bbox", frame=ctx.options.get("box_frame"))
    return make_record(
        id=rid, source=ctx.source(), images=[img], image_size=size, question=GROUND_QUESTION.format(expr=exprs[0]),
        answer=_box_text(box), instruction="",
        privileged={"captions": exprs[1:], "regions": [{"bbox": box, "label": exprs[0]}]},
        meta={**meta, "answer_box": box, "expressions": exprs},
    )


def convert_refcoco(row, ctx, idx):
    if "image_path" in row and row["image_path"]:
        image = row["image_path"]
    else:
        m = _COCO_REF_NAME.match(row["file_name"])
        image = m.group(1) + m.group(2) if m else row["file_name"]
    exprs = [s["sent"] if isinstance(s, dict) else str(s) for s in row["sentences"]]
    return _ground(ctx, row["ref_id"], image, "file_name", exprs, row["bbox"],
                   {"category_id": row.get("category_id"), "image_id": row.get("image_id")})


def convert_refcoco_lmms(row, ctx, idx):
    return _ground(ctx, row["question_id"], row["image"], "image", list(row["answer"]), row["bbox"],
                   {"file_name": row.get("file_name")})


def convert_vg(row, ctx, idx):
    image_id = row["image_id"] if "image_id" in row else row["id"]
    rid = ctx.record_id(image_id)
    image = row["image"] if "image" in row else f"{image_id}.jpg"
    img, size = resolve_image(image, ctx.image_root, rid, "image")
    regions = []
    for k, r in enumerate((row["regions"] or [])[:VG_MAX_REGIONS]):
        try:
            box = canonical_box([r["x"], r["y"], r["width"], r["height"]], "xywh", size, rid, f"regions[{k}]",
                                frame=ctx.options.get("box_frame"))
        except RecordError:
            continue  # VG has some boxes outside their images; a bad region is dropped, not the image
        regions.append({"bbox": box, "label": (r["phrase"] or "").strip() or None})
    if not regions:
        raise SkipRow("no valid region")
    return make_record(id=rid, source=ctx.source(), images=[img], image_size=size, question=VG_QUESTION,
                       answer=None, privileged={"regions": regions},
                       meta={"image_id": image_id, "coco_id": row.get("coco_id"),
                             "n_regions_source": len(row["regions"])})


REFCOCO = SourceBuilder(
    name="refcoco", hub_ids=("jxu124/refcoco", "jxu124/refcocog"), required=("bbox", "file_name", "sentences", "ref_id"),
    convert=convert_refcoco, default_kinds=("captions",), default_split="train",
    doc="RefCOCO/RefCOCOg train (jxu124): grounding; images under --image-root")
REFCOCO_LMMS = SourceBuilder(
    name="refcoco_lmms", hub_ids=("lmms-lab-encoder/RefCOCO", "lmms-lab/RefCOCO"),
    required=("image", "question_id", "answer", "bbox"), convert=convert_refcoco_lmms,
    default_kinds=("captions",), default_split="val", doc="RefCOCO* lmms-eval copies (val/test): grounding")
VG_REGIONS = SourceBuilder(
    name="vg_regions", hub_ids=("ranjaykrishna/visual_genome",), required=("regions",), convert=convert_vg,
    default_kinds=("regions",), default_split="train", default_config="region_descriptions_v1.2.0",
    doc="Visual Genome region descriptions: regions with phrases")
