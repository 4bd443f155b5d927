"""Importers: rows in the formats users already train with -> records (the inverse of ``exporters``).

- ``trl``: TRL prompt-completion rows: ``prompt`` (messages), ``completion`` (messages), ``images``.
- ``trl_messages``: TRL conversational rows: ``messages`` (user then assistant) and ``images``.
- ``llava``: LLaVA JSON: ``id``, ``image`` (path or list of paths under ``--image-root``; absent for
  text-only rows), ``conversations`` [{from: human|gpt, value}] with ``<image>`` tags.
- ``llamafactory``: LLaMA-Factory ShareGPT style: ``messages`` [{role, content}], ``images`` (paths);
  the number of ``<image>`` tags must equal the number of images.
- ``qwen_messages``: JSON lines ``{"id", "messages", "answer"}`` whose image parts carry ``image``
  (a ``file://`` path under ``--image-root``), as ``exporters.export_qwen_messages`` writes them.
- ``records``: this project's own records (parquet, or the JSON lines of ``--jsonl`` with image paths
  relative to the file's folder), or a file a user writes in the same schema (``RECORDS_SCHEMA``).

Only the first user/assistant exchange becomes the record's question and answer; the prompt keeps
the user's text exactly (instructions included), so ``question`` is that text without image tags.

Privileged information in the user's rows is kept (issue 13): a ``privileged`` dict column, or
top-level columns named after the privileged fields (``regions``/``boxes``, ``captions``/``caption``,
``hints``, ``rationale``, ``solution``, ``lecture``, ``ocr``, ``scene_graph``, ``program``). Boxes are
absolute pixels on the first image, ``[x1, y1, x2, y2]`` (``--option box_format=xywh`` for COCO
``[x, y, w, h]``); a region is ``{"bbox": [...], "label": "..."}`` (``box`` is accepted for ``bbox``).
A string caption or hint becomes a one-item list (hints: one per line). Unless ``--privileged`` says
otherwise, the kinds rendered into ``privileged_context`` are the ones the row carries.
"""

from __future__ import annotations

from .build import SkipRow
from .parsing import IMAGE_TAG, interleave, strip_image_tags
from .records import (
    PRIVILEGED_FIELDS,
    ImageSize,
    RecordError,
    build_prompt,
    canonical_box,
    make_record,
    resolve_image,
)
from .sources import SourceBuilder

RECORDS_SCHEMA = """\
records schema (one JSON object per line, or parquet / save_to_disk columns):
  id          str, required, unique
  question    str, required (the raw question, no options)
  images      list of image paths (under --image-root, default the file's folder), data URIs or bytes;
              optional for text-only rows (default [])
  answer      str or null: the canonical final answer (scoring; the leak guard's reference)
  choices     list of 2-26 option strings, or absent/null for open questions (optional)
  prompt      chat messages [{role, content: [{type: image|text, text}]}]; optional: built from
              question + choices (images first) when absent
  privileged  optional dict of: regions [{bbox: [x1,y1,x2,y2] absolute pixels on images[0], label}],
              captions [str], hints [str], hints_exec [str], hints_summary [str], rationale [str], solution str,
              lecture str, ocr [{text, bbox}], scene_graph dict, program [dict], answer str
  source      optional {dataset, config, split, revision} (default: the file and --split)
  meta        optional dict (image_size is recomputed from the image; privileged_kinds = kinds to render)"""

# user column name -> privileged field (the field names themselves are accepted too)
_PRIV_ALIASES = {"boxes": "regions", "caption": "captions", "hint": "hints", "trace": "rationale"}
# field -> the kind that renders it
_KIND_OF_FIELD = {"regions": "regions", "captions": "captions", "hints": "hints", "hints_exec": "hints_exec",
                  "hints_summary": "hints_summary", "rationale": "rationale", "solution": "solution",
                  "lecture": "lecture", "ocr": "ocr", "scene_graph": "scene_graph", "program": "program"}


def _as_str_list(v, split_lines: bool = False) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        items = v.splitlines() if split_lines else [v]
        return [x.strip() for x in items if x.strip()]
    return [str(x).strip() for x in v if x is not None and str(x).strip()]


def user_privileged(row: dict, rid: str, image_size, options: dict | None = None,
                    default_frame: str | None = None) -> tuple[dict, list[str]]:
    """Privileged fields a user's row carries -> (privileged dict, kinds to render, in field order)."""
    fmt = (options or {}).get("box_format", "xyxy")
    frame = (options or {}).get("box_frame", default_frame)  # EXIF-rotated images (records.canonical_box)
    raw: dict = {}
    nested = row.get("privileged")
    if isinstance(nested, dict):
        raw.update({k: v for k, v in nested.items() if v is not None})
    for col, v in row.items():
        f = _PRIV_ALIASES.get(col, col)
        if f in _KIND_OF_FIELD and f not in raw and v is not None and col != "privileged":
            raw[f] = v
    priv: dict = {}
    for f, v in raw.items():
        f = _PRIV_ALIASES.get(f, f)
        if f not in PRIVILEGED_FIELDS:
            continue
        if f == "regions":
            regs = []
            for i, r in enumerate(v or []):
                if not isinstance(r, dict) or ("bbox" not in r and "box" not in r):
                    raise RecordError(rid, f"privileged.regions[{i}]", "a region is {bbox: [x1, y1, x2, y2], label}")
                if image_size is None:
                    raise RecordError(rid, f"privileged.regions[{i}]", "regions need an image (boxes refer to images[0])")
                box = r.get("bbox") if r.get("bbox") is not None else r.get("box")
                label = r.get("label") if r.get("label") is not None else (r.get("caption") or r.get("name"))
                regs.append({"bbox": canonical_box(box, fmt, image_size, rid, f"privileged.regions[{i}].bbox", frame),
                             "label": None if label is None else str(label)})
            priv[f] = regs
        elif f in ("captions", "rationale", "hints", "hints_exec", "hints_summary"):
            priv[f] = _as_str_list(v, split_lines=f != "captions")
        elif f in ("solution", "lecture", "answer"):
            priv[f] = None if v is None else str(v)
        elif f == "ocr":
            items = []
            for i, o in enumerate(v or []):
                if not isinstance(o, dict) or not isinstance(o.get("text"), str):
                    raise RecordError(rid, f"privileged.ocr[{i}]", "an OCR item is {text: str, bbox: [x1, y1, x2, y2] | None}")
                bb = o.get("bbox")
                items.append({"text": o["text"], "bbox": None if bb is None else
                              canonical_box(bb, fmt, image_size, rid, f"privileged.ocr[{i}].bbox", frame)})
            priv[f] = items
        else:
            priv[f] = v
    kinds = [_KIND_OF_FIELD[f] for f in PRIVILEGED_FIELDS if f in _KIND_OF_FIELD and priv.get(f)]
    return priv, kinds


def _with_user_privileged(rec: dict, row: dict, ctx) -> dict:
    size = rec["meta"].get("image_size")
    orientation = int(rec["meta"].get("exif_orientation") or 1)
    if size is not None and orientation != 1:  # the build applied it: --option box_frame says which pixels
        size = ImageSize(size, orientation, (size[1], size[0]) if orientation >= 5 else size)
    # default "displayed": boxes of a user's rows are taken as given unless box_frame=stored says otherwise
    priv, kinds = user_privileged(row, rec["id"], size, ctx.options, default_frame="displayed")
    for k, v in priv.items():
        rec["privileged"][k] = v
    if kinds and "privileged_kinds" not in rec["meta"]:
        rec["meta"]["privileged_kinds"] = kinds  # rendered unless --privileged names others
    return rec


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(IMAGE_TAG if p["type"] == "image" else (p.get("text") or "") for p in content)


def _from_turns(ctx, rid, user_text: str, answer: str | None, images: list, field: str, meta: dict | None = None):
    resolved = [resolve_image(im, ctx.image_root, rid, f"{field}[{k}]") for k, im in enumerate(images)]
    try:
        parts = interleave(user_text, len(resolved))
    except ValueError as e:
        raise RecordError(rid, field, str(e)) from e
    question = strip_image_tags(user_text)
    if not question:
        raise SkipRow("empty user turn")
    return make_record(id=rid, source=ctx.source(), images=[r[0] for r in resolved],
                       image_size=resolved[0][1] if resolved else None, question=question, answer=answer,
                       prompt=[{"role": "user", "content": parts}], meta=meta or {})


def _images(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def convert_trl(row, ctx, idx):
    rid = ctx.record_id(idx)
    users = [m for m in row["prompt"] if m["role"] == "user"]
    if not users:
        raise RecordError(rid, "prompt", "no user message")
    answer = "".join(_text_of(m["content"]) for m in row["completion"] if m["role"] == "assistant") or None
    return _with_user_privileged(
        _from_turns(ctx, rid, _text_of(users[-1]["content"]), answer, _images(row["images"]), "images"), row, ctx)


def convert_trl_messages(row, ctx, idx):
    rid = ctx.record_id(idx)
    users = [m for m in row["messages"] if m["role"] == "user"]
    assistants = [m for m in row["messages"] if m["role"] == "assistant"]
    if not users:
        raise RecordError(rid, "messages", "no user message")
    answer = _text_of(assistants[0]["content"]) if assistants else None
    return _with_user_privileged(
        _from_turns(ctx, rid, _text_of(users[0]["content"]), answer, _images(row["images"]), "images"), row, ctx)


def convert_llava(row, ctx, idx):
    rid = ctx.record_id(row["id"])
    conv = row["conversations"]
    if not (isinstance(conv, list) and all(isinstance(t, dict) and "from" in t and "value" in t for t in conv)):
        raise RecordError(rid, "conversations", f"must be a list of {{from, value}} turns, got {type(conv).__name__}")
    human = [t["value"] for t in conv if t["from"] == "human"]
    gpt = [t["value"] for t in conv if t["from"] == "gpt"]
    if not human:
        raise RecordError(rid, "conversations", "no human turn")
    images = _images(row["image"]) if "image" in row else []
    return _with_user_privileged(
        _from_turns(ctx, rid, human[0], gpt[0] if gpt else None, images, "image", {"n_turns": len(human)}), row, ctx)


def convert_llamafactory(row, ctx, idx):
    rid = ctx.record_id(idx)
    msgs = row["messages"]
    images = _images(row["images"])
    n_tags = sum(m["content"].count(IMAGE_TAG) for m in msgs)
    if n_tags != len(images):
        raise RecordError(rid, "images", f"{n_tags} {IMAGE_TAG} tags in the messages but {len(images)} images")
    users = [m["content"] for m in msgs if m["role"] == "user"]
    assistants = [m["content"] for m in msgs if m["role"] == "assistant"]
    if not users:
        raise RecordError(rid, "messages", "no user message")
    return _with_user_privileged(
        _from_turns(ctx, rid, users[0], assistants[0] if assistants else None, images, "images"), row, ctx)


def convert_qwen_messages(row, ctx, idx):
    """qwen-vl-utils messages: image parts carry ``image`` (``file://`` path, path or data URI)."""
    rid = ctx.record_id(row["id"] if "id" in row and row["id"] is not None else idx)
    users = [m for m in row["messages"] if m["role"] == "user"]
    if not users:
        raise RecordError(rid, "messages", "no user message")
    content = users[0]["content"]
    if isinstance(content, str):
        text, images = content, []
    else:
        text = "".join(IMAGE_TAG if p["type"] == "image" else (p.get("text") or "") for p in content)
        images = [p["image"].removeprefix("file://") for p in content if p["type"] == "image"]
    answer = row["answer"] if "answer" in row else None
    return _with_user_privileged(_from_turns(ctx, rid, text, answer, images, "messages.image"), row, ctx)


def convert_records(row, ctx, idx):
    """A record row (``RECORDS_SCHEMA``): only ``id`` and ``question`` are required."""
    rid = row.get("id")
    if not isinstance(rid, str) or not rid:
        raise RecordError(None if rid is None else str(rid), "id", f"row {idx}: must be a non-empty string")
    images = [resolve_image(im, ctx.image_root, rid, f"images[{k}]") for k, im in enumerate(row.get("images") or [])]
    size = images[0][1] if images else None
    choices = row.get("choices") or None
    if not isinstance(row.get("question"), str) or not row["question"].strip():
        raise RecordError(rid, "question", "must be a non-empty string")
    answer = row.get("answer")
    prompt = row.get("prompt") or build_prompt(row["question"], choices, None, len(images))
    src = row.get("source") or ctx.source()
    # JSON lines become Arrow structs: keys of other rows arrive as None
    meta = {k: v for k, v in (row.get("meta") or {}).items() if v is not None}
    meta.pop("image_size", None)  # recomputed from the image itself
    priv, carried = user_privileged({"privileged": row.get("privileged") or {}}, rid, size, ctx.options)
    if "privileged_kinds" not in meta and carried:
        meta["privileged_kinds"] = carried  # rendered unless --privileged names others
    rec = make_record(id=rid, source=src, images=[i for i, _ in images], image_size=size,
                      question=row["question"], answer=None if answer is None else str(answer),
                      choices=list(choices) if choices else None, prompt=prompt, privileged=priv, meta=meta)
    return rec


def _load_records_jsonl(path, split):
    """A records ``.jsonl`` (images relative to its folder) -> (Dataset, options, image root)."""
    from .sources import load_local

    ds = load_local(path, split)[split]
    return ds, {}, str(path.parent if path.is_file() else path)


TRL = SourceBuilder(name="trl", hub_ids=(), required=("prompt", "completion", "images"), convert=convert_trl,
                    default_kinds=None, doc="TRL prompt-completion rows (local)")
TRL_MESSAGES = SourceBuilder(name="trl_messages", hub_ids=(), required=("messages", "images"),
                             convert=convert_trl_messages, default_kinds=None, doc="TRL messages rows (local)")
LLAVA = SourceBuilder(name="llava", hub_ids=(), required=("id", "conversations"), convert=convert_llava,
                      default_kinds=None, doc="LLaVA JSON (local; images under --image-root)")
LLAMAFACTORY = SourceBuilder(name="llamafactory", hub_ids=(), required=("messages", "images"),
                             convert=convert_llamafactory, default_kinds=None,
                             doc="LLaMA-Factory ShareGPT JSON (local; images under --image-root)")
QWEN_MESSAGES = SourceBuilder(name="qwen_messages", hub_ids=(), required=("messages",),
                              convert=convert_qwen_messages, default_kinds=None,
                              doc="qwen-vl-utils messages JSON lines (local; images under --image-root)")
RECORDS = SourceBuilder(name="records", hub_ids=(), required=("id", "question"),
                        convert=convert_records, default_kinds=None, load_local=_load_records_jsonl,
                        doc="this project's records (parquet / jsonl export / save_to_disk)")
