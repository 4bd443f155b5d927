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
  relative to the file's folder).

Only the first user/assistant exchange becomes the record's question and answer; the prompt keeps
the user's text exactly (instructions included), so ``question`` is that text without image tags.
"""

from __future__ import annotations

from .build import SkipRow
from .parsing import IMAGE_TAG, interleave, strip_image_tags
from .records import PRIVILEGED_FIELDS, RecordError, make_record, resolve_image
from .sources import SourceBuilder


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
    return _from_turns(ctx, rid, _text_of(users[-1]["content"]), answer, _images(row["images"]), "images")


def convert_trl_messages(row, ctx, idx):
    rid = ctx.record_id(idx)
    users = [m for m in row["messages"] if m["role"] == "user"]
    assistants = [m for m in row["messages"] if m["role"] == "assistant"]
    if not users:
        raise RecordError(rid, "messages", "no user message")
    answer = _text_of(assistants[0]["content"]) if assistants else None
    return _from_turns(ctx, rid, _text_of(users[0]["content"]), answer, _images(row["images"]), "images")


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
    return _from_turns(ctx, rid, human[0], gpt[0] if gpt else None, images, "image", {"n_turns": len(human)})


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
    return _from_turns(ctx, rid, users[0], assistants[0] if assistants else None, images, "images")


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
    return _from_turns(ctx, rid, text, answer, images, "messages.image")


def convert_records(row, ctx, idx):
    rid = row["id"]
    images = [resolve_image(im, ctx.image_root, rid, f"images[{k}]") for k, im in enumerate(row["images"])]
    priv = {k: v for k, v in row["privileged"].items() if k in PRIVILEGED_FIELDS}
    rec = make_record(id=rid, source=row["source"], images=[i for i, _ in images],
                      image_size=images[0][1] if images else None, question=row["question"],
                      answer=row["answer"], choices=row["choices"], prompt=row["prompt"], privileged=priv,
                      meta=dict(row["meta"] or {}))
    return rec


def _load_records_jsonl(path, split):
    """A records ``.jsonl`` (images relative to its folder) -> (Dataset, options, image root)."""
    from .sources import load_local

    ds = load_local(path, split)[split]
    return ds, {}, str(path.parent if path.is_file() else path)


TRL = SourceBuilder(name="trl", hub_ids=(), required=("prompt", "completion", "images"), convert=convert_trl,
                    default_kinds=(), doc="TRL prompt-completion rows (local)")
TRL_MESSAGES = SourceBuilder(name="trl_messages", hub_ids=(), required=("messages", "images"),
                             convert=convert_trl_messages, default_kinds=(), doc="TRL messages rows (local)")
LLAVA = SourceBuilder(name="llava", hub_ids=(), required=("id", "conversations"), convert=convert_llava,
                      default_kinds=(), doc="LLaVA JSON (local; images under --image-root)")
LLAMAFACTORY = SourceBuilder(name="llamafactory", hub_ids=(), required=("messages", "images"),
                             convert=convert_llamafactory, default_kinds=(),
                             doc="LLaMA-Factory ShareGPT JSON (local; images under --image-root)")
QWEN_MESSAGES = SourceBuilder(name="qwen_messages", hub_ids=(), required=("messages",),
                              convert=convert_qwen_messages, default_kinds=(),
                              doc="qwen-vl-utils messages JSON lines (local; images under --image-root)")
RECORDS = SourceBuilder(name="records", hub_ids=(), required=("id", "source", "images", "prompt", "question",
                                                              "privileged", "meta"),
                        convert=convert_records, default_kinds=None, load_local=_load_records_jsonl,
                        doc="this project's records (parquet / jsonl export / save_to_disk)")
