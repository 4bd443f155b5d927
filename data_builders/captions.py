"""Caption datasets: the student gets a captioning question, the teacher the reference captions.

- ``coco_caption``: ``lmms-lab/COCO-Caption`` (``lmms-lab-encoder/COCO-Caption``): ``image``,
  ``question_id``, ``answer`` (list of captions), ``file_name``, ...
- ``textcaps``: ``lmms-lab/TextCaps``: ``image``, ``question_id``, ``caption_str`` (list), ...
- ``coco_karpathy``: ``yerevann/coco-karpathy``: ``filepath`` (e.g. ``val2014``), ``filename``,
  ``sentences`` (list), ``cocoid``; images read from ``IMAGE_ROOT/filepath/filename``.
- ``pixmo_cap``: ``allenai/pixmo-cap``: ``image_url``, ``caption``, ``transcripts`` (list). Images are
  URLs: download them keeping their file names and pass the folder as ``--image-root``
  (``IMAGE_ROOT/<last URL path component>``).

Answer: one held-out reference caption (the first; option ``hold_out=False`` gives no answer);
privileged ``captions``: the other references (so the privileged text does not contain the answer).
The question is drawn from ``QUESTIONS`` by a hash of the row id (deterministic).
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlparse

from .build import SkipRow
from .records import make_record, resolve_image
from .sources import SourceBuilder

# Project decision: a small pool of captioning prompts in plain words.
QUESTIONS = ("Describe the image.", "What is in the picture?", "Write a caption for the image.",
             "Describe this picture in one sentence.")


def _question(native_id) -> str:
    h = int(hashlib.sha256(str(native_id).encode()).hexdigest(), 16)
    return QUESTIONS[h % len(QUESTIONS)]


def _record(ctx, native_id, image, captions: list[str], meta: dict, field: str) -> dict:
    rid = ctx.record_id(native_id)
    captions = [c.strip() for c in captions if c and c.strip()]
    if not captions:
        raise SkipRow("no reference caption")
    img, size = resolve_image(image, ctx.image_root, rid, field)
    if ctx.options.get("hold_out", True):
        answer, refs = captions[0], captions[1:]
    else:
        answer, refs = None, captions
    return make_record(id=rid, source=ctx.source(), images=[img], image_size=size, question=_question(rid),
                       answer=answer, privileged={"captions": refs}, meta=meta)


def convert_coco(row, ctx, idx):
    return _record(ctx, row["question_id"], row["image"], list(row["answer"]),
                   {"file_name": row.get("file_name")}, "image")


def convert_textcaps(row, ctx, idx):
    return _record(ctx, row["question_id"], row["image"], list(row["caption_str"]),
                   {"image_id": row.get("image_id")}, "image")


def convert_karpathy(row, ctx, idx):
    path = f"{row['filepath']}/{row['filename']}" if row["filepath"] else row["filename"]
    return _record(ctx, row["cocoid"], path, list(row["sentences"]),
                   {"cocoid": row["cocoid"], "karpathy_split": row.get("split"), "file_name": row["filename"]},
                   "filename")


def convert_pixmo(row, ctx, idx):
    url = row["image_url"]
    name = urlparse(url).path.rsplit("/", 1)[-1]
    # Without an image root the resolver refuses the URL with its offline message.
    image = name if ctx.image_root is not None else url
    return _record(ctx, hashlib.sha256(url.encode()).hexdigest()[:16], image,
                   [row["caption"], *list(row["transcripts"] or [])], {"image_url": url}, "image_url")


COCO_CAPTION = SourceBuilder(
    name="coco_caption", hub_ids=("lmms-lab-encoder/COCO-Caption", "lmms-lab/COCO-Caption"),
    required=("image", "question_id", "answer"), convert=convert_coco, default_kinds=("captions",),
    default_split="val", doc="COCO captions (lmms-eval copy): references as privileged captions")
TEXTCAPS = SourceBuilder(
    name="textcaps", hub_ids=("lmms-lab-encoder/TextCaps", "lmms-lab/TextCaps"),
    required=("image", "question_id", "caption_str"), convert=convert_textcaps, default_kinds=("captions",),
    default_split="train", doc="TextCaps: references as privileged captions")
COCO_KARPATHY = SourceBuilder(
    name="coco_karpathy", hub_ids=("yerevann/coco-karpathy",),
    required=("filepath", "filename", "sentences", "cocoid"), convert=convert_karpathy,
    default_kinds=("captions",), default_split="train",
    doc="COCO Karpathy splits: images under --image-root/filepath/filename")
PIXMO_CAP = SourceBuilder(
    name="pixmo_cap", hub_ids=("allenai/pixmo-cap",), required=("image_url", "caption", "transcripts"),
    convert=convert_pixmo, default_kinds=("captions",), default_split="train",
    doc="PixMo-Cap: dense caption as answer, transcripts privileged; images downloaded under --image-root")
