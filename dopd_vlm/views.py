"""Views of one record: the plain prompt the deployed student sees and the privileged prompt.

DOPD scores one student-sampled response under a plain context ``x`` and a privileged context
``(x, p)`` (docs/method.md Sec. 1). Both views hold the same images; the privileged text ``p`` is
appended after the question in the last user turn, as one extra text part (docs/method.md Sec. 7: the
place of ``p`` in the prompt is a project decision, [D]). Boxes are rendered in the target model's
coordinate convention (``adapter.box_format``; for absolute formats the size comes from
``adapter.box_target_size(processor, image_size)``) from the canonical absolute-xyxy boxes of the
record (docs/data.md).

Stable API::

    render_views(record, privileged_kinds, templates=None, adapter=None, processor=None)
        -> (plain_messages, priv_messages, images)

- ``privileged_kinds``: kinds understood by ``dopd_vlm.privileged.render_privileged`` (e.g.
  ``["regions"]``; the training configs' ``data.privileged_kinds`` is always such a list). Python
  callers may instead pass the string ``"context"`` to use the record's pre-rendered
  ``privileged_context`` verbatim; the config does not accept it. Empty kinds (or empty
  privileged fields) give a privileged view identical to the plain one.
- ``adapter`` (optional): supplies ``box_format`` / ``box_target_size``; without it boxes are
  absolute pixels of the original image.
- ``processor``: needed only when the adapter's absolute boxes refer to the resized input.

Pure Python: no torch, no transformers.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from dopd_vlm.privileged import canonical_kind, render_privileged

# Project decision [D]: the privileged text is separated from the question by one newline.
PRIVILEGED_SEPARATOR = "\n"


class RecordError(ValueError):
    """A record does not follow docs/data.md; the message names the record id and the field."""


def record_id(record: dict) -> str:
    return str(record.get("id", "<record without id>"))


def count_image_parts(messages: list[dict]) -> int:
    n = 0
    for m in messages:
        if isinstance(m["content"], list):
            n += sum(1 for part in m["content"] if part.get("type") == "image")
    return n


def validate_record(record: dict) -> None:
    """Check the fields views need: ``prompt`` (messages, a user turn last) and ``images``."""
    rid = record_id(record)
    prompt = record.get("prompt")
    if not isinstance(prompt, list) or not prompt:
        raise RecordError(f"record {rid!r}, field 'prompt': expected a non-empty list of messages, got {prompt!r}")
    for i, m in enumerate(prompt):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RecordError(f"record {rid!r}, field 'prompt[{i}]': a message needs 'role' and 'content'")
        if not isinstance(m["content"], (str, list)):
            raise RecordError(f"record {rid!r}, field 'prompt[{i}].content': expected str or list of parts")
    if prompt[-1]["role"] != "user":
        raise RecordError(f"record {rid!r}, field 'prompt': the last message must be the user turn, "
                          f"got role {prompt[-1]['role']!r}")
    images = record.get("images") or []
    n_parts = count_image_parts(prompt)
    if n_parts != len(images):
        raise RecordError(f"record {rid!r}, field 'images': {len(images)} images for {n_parts} "
                          "{'type': 'image'} parts in 'prompt'")


def record_image_size(record: dict) -> tuple[int, int] | None:
    """``(w, h)`` the canonical boxes refer to: ``meta.image_size``, else the first image's size."""
    meta = record.get("meta") or {}
    if meta.get("image_size") is not None:
        w, h = meta["image_size"]
        return int(w), int(h)
    images = record.get("images") or []
    if images:
        return tuple(images[0].size)
    return None


def privileged_text(record: dict, privileged_kinds: str | Sequence[str], templates: dict | None = None,
                    adapter=None, processor=None) -> str:
    """The rendered privileged text of ``record`` for the model of ``adapter`` ("" when none)."""
    if isinstance(privileged_kinds, str):
        if privileged_kinds != "context":
            raise ValueError(f"privileged_kinds must be a list of kinds or 'context', got {privileged_kinds!r}")
        return record.get("privileged_context") or ""
    if not privileged_kinds:
        return ""
    kinds = [canonical_kind(k) for k in privileged_kinds]
    privileged = record.get("privileged") or {}
    box_format = adapter.box_format if adapter is not None else "abs_xyxy"
    image_size = target_size = None
    if _has_boxes(privileged, kinds):
        image_size = record_image_size(record)
        if image_size is not None and box_format == "abs_xyxy" and adapter is not None:
            target_size = adapter.box_target_size(processor, image_size)
    try:
        return render_privileged(privileged, kinds, templates, box_format=box_format,
                                 image_size=image_size, target_size=target_size)
    except (KeyError, ValueError, TypeError) as e:
        raise RecordError(f"record {record_id(record)!r}, field 'privileged': {e}") from e


def _has_boxes(privileged: dict, kinds: list[str]) -> bool:
    if ("regions" in kinds or "boxes" in kinds) and privileged.get("regions"):
        return True
    return "ocr" in kinds and any(o.get("bbox") for o in privileged.get("ocr") or [])


def append_to_last_user_turn(messages: list[dict], text: str) -> list[dict]:
    """A copy of ``messages`` with ``text`` appended to the last user turn (after the question)."""
    out = copy.deepcopy(messages)
    last = out[-1]
    if isinstance(last["content"], str):
        last["content"] = last["content"] + PRIVILEGED_SEPARATOR + text
    else:
        last["content"].append({"type": "text", "text": PRIVILEGED_SEPARATOR + text})
    return out


def render_views(record: dict, privileged_kinds: str | Sequence[str], templates: dict | None = None,
                 adapter=None, processor=None) -> tuple[list[dict], list[dict], list]:
    """``(plain_messages, priv_messages, images)`` of ``record`` (see the module docstring)."""
    validate_record(record)
    plain = copy.deepcopy(record["prompt"])
    text = privileged_text(record, privileged_kinds, templates, adapter, processor)
    priv = append_to_last_user_turn(plain, text) if text else copy.deepcopy(plain)
    return plain, priv, list(record.get("images") or [])
