"""Exports of records to the formats users train with, and the matching importers.

- TRL conversational vision rows: ``{"prompt": [...], "completion": [...], "images": [...]}``.
- LLaVA JSON: ``{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n..."},
  {"from": "gpt", "value": ...}]}`` with image files next to the JSON.
- LLaMA-Factory (ShareGPT style): ``{"messages": [{"role", "content"}], "images": [paths]}`` where the
  number of ``<image>`` tags equals ``len(images)``, plus the ``dataset_info.json`` entry.
- qwen-vl-utils messages: ``[{"role": "user", "content": [{"type": "image", "image": <PIL or
  file:// path>}, {"type": "text", "text": ...}]}]``, what ``process_vision_info`` reads.
- Record JSON lines: the record itself with images as files (``write_records_jsonl``).

``view="teacher"`` appends ``privileged_context`` after the question in the user turn (docs/method.md
Sec. 7: teacher and privileged student read the identical text); ``view="student"`` is the plain prompt.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

IMAGE_TAG = "<image>"


def _prompt_text(rec: dict) -> str:
    return "\n".join(p["text"] for m in rec["prompt"] if m["role"] == "user" for p in m["content"]
                     if p["type"] == "text" and p.get("text"))


def view_prompt(rec: dict, view: str = "student") -> list[dict]:
    """The record's prompt, with the privileged text appended to the last user turn for the teacher."""
    if view not in ("student", "teacher"):
        raise ValueError(f"view must be 'student' or 'teacher', got {view!r}")
    msgs = [{"role": m["role"], "content": [dict(p) for p in m["content"]]} for m in rec["prompt"]]
    if view == "teacher" and rec["privileged_context"]:
        msgs[-1]["content"].append({"type": "text", "text": "\n" + rec["privileged_context"]})
    for m in msgs:  # drop the null "text" that datasets stores in image parts
        m["content"] = [{"type": "image"} if p["type"] == "image" else {"type": "text", "text": p["text"]}
                        for p in m["content"]]
    return msgs


def _flat_text(msg: dict) -> str:
    return "".join(IMAGE_TAG if p["type"] == "image" else p["text"] for p in msg["content"])


# ------------------------------------------------------------------------------------- images
def image_bytes(im) -> tuple[bytes, str]:
    """A record image (PIL or {bytes, path}) -> (encoded bytes, file extension)."""
    from PIL import Image

    if isinstance(im, Image.Image):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue(), ".png"
    data = im["bytes"] if im.get("bytes") is not None else Path(im["path"]).read_bytes()
    with Image.open(io.BytesIO(data)) as pim:
        fmt = (pim.format or "PNG").lower()
    return data, {"jpeg": ".jpg"}.get(fmt, "." + fmt)


def _safe_name(rid: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in rid)[-120:]


def _write_images(rec: dict, out_dir: Path, sub: str) -> list[str]:
    paths = []
    for k, im in enumerate(rec["images"]):
        data, ext = image_bytes(im)
        rel = Path(sub) / f"{_safe_name(rec['id'])}_{k}{ext}"
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / rel).write_bytes(data)
        paths.append(rel.as_posix())
    return paths


def _undecoded(ds):
    from datasets import Image, List

    return ds.cast_column("images", List(Image(decode=False)))


# ------------------------------------------------------------------------------------ record jsonl
def write_records_jsonl(ds, out_dir: str | os.PathLike, split: str) -> Path:
    """``out_dir/<split>.jsonl`` with images as files under ``out_dir/images/<split>/`` (relative paths)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{split}.jsonl"
    with open(path, "w") as f:
        for rec in _undecoded(ds):
            row = dict(rec)
            row["images"] = _write_images(rec, out, f"images/{split}")
            f.write(json.dumps(row) + "\n")
    return path


# ------------------------------------------------------------------------------------------ TRL
def to_trl(rec: dict, view: str = "student") -> dict:
    """TRL conversational vision row (prompt-completion; images in prompt order)."""
    return {"prompt": view_prompt(rec, view),
            "completion": [{"role": "assistant", "content": [{"type": "text", "text": rec["answer"] or ""}]}],
            "images": list(rec["images"])}


def export_trl(ds, out_dir: str | os.PathLike, view: str = "student") -> Path:
    """A ``datasets`` folder of TRL rows (``prompt``, ``completion``, ``images``)."""
    from datasets import Dataset, Features, Image, List, Value

    s = Value("string")
    part = {"type": s, "text": s}
    feats = Features({"prompt": List({"role": s, "content": List(part)}),
                      "completion": List({"role": s, "content": List(part)}), "images": List(Image())})
    rows = [to_trl(r, view) for r in _undecoded(ds)]
    Dataset.from_list(rows, features=feats).save_to_disk(str(out_dir))
    return Path(out_dir)


# ---------------------------------------------------------------------------------------- LLaVA
def export_llava(ds, out_dir: str | os.PathLike, view: str = "student", file_name: str = "data.json") -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for rec in _undecoded(ds):
        paths = _write_images(rec, out, "images")
        human = _flat_text(view_prompt(rec, view)[-1])
        # LLaVA puts the image tag first followed by a newline.
        human = human.replace(IMAGE_TAG, "").lstrip("\n") if len(paths) == 1 else human
        if len(paths) == 1:
            human = f"{IMAGE_TAG}\n{human}"
        row = {"id": rec["id"], "conversations": [{"from": "human", "value": human},
                                                  {"from": "gpt", "value": rec["answer"] or ""}]}
        if paths:
            row["image"] = paths[0] if len(paths) == 1 else paths
        rows.append(row)
    (out / file_name).write_text(json.dumps(rows, indent=1))
    return out / file_name


# ---------------------------------------------------------------------------------- LLaMA-Factory
def export_llamafactory(ds, out_dir: str | os.PathLike, view: str = "student", name: str = "dopd_vlm",
                        file_name: str = "data.json") -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for rec in _undecoded(ds):
        paths = _write_images(rec, out, "images")
        msgs = [{"role": m["role"], "content": _flat_text(m)} for m in view_prompt(rec, view)]
        msgs.append({"role": "assistant", "content": rec["answer"] or ""})
        n_tags = sum(m["content"].count(IMAGE_TAG) for m in msgs)
        if n_tags != len(paths):
            raise ValueError(f"record {rec['id']!r}: {n_tags} {IMAGE_TAG} tags for {len(paths)} images")
        rows.append({"messages": msgs, "images": paths})
    (out / file_name).write_text(json.dumps(rows, indent=1))
    info = {name: {"file_name": file_name, "formatting": "sharegpt",
                   "columns": {"messages": "messages", "images": "images"},
                   "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                            "assistant_tag": "assistant", "system_tag": "system"}}}
    (out / "dataset_info.json").write_text(json.dumps(info, indent=1))
    return out / file_name


# ---------------------------------------------------------------------------------- qwen-vl-utils
def to_qwen_messages(rec: dict, view: str = "student", image_paths: list[str] | None = None) -> list[dict]:
    """Messages for ``qwen_vl_utils.process_vision_info``: image parts carry the PIL image (or a
    ``file://`` path when ``image_paths`` is given)."""
    from PIL import Image

    msgs = view_prompt(rec, view)
    k = 0
    for m in msgs:
        for p in m["content"]:
            if p["type"] == "image":
                if image_paths is not None:
                    p["image"] = "file://" + str(Path(image_paths[k]).resolve())
                else:
                    im = rec["images"][k]
                    p["image"] = im if isinstance(im, Image.Image) else Image.open(io.BytesIO(image_bytes(im)[0]))
                k += 1
    return msgs


def export_qwen_messages(ds, out_dir: str | os.PathLike, view: str = "student",
                         file_name: str = "messages.jsonl") -> Path:
    """JSON lines ``{"id", "messages", "answer"}`` with ``file://`` image paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / file_name, "w") as f:
        for rec in _undecoded(ds):
            paths = [str(out / p) for p in _write_images(rec, out, "images")]
            f.write(json.dumps({"id": rec["id"], "messages": to_qwen_messages(rec, view, paths),
                                "answer": rec["answer"]}) + "\n")
    return out / file_name


EXPORTERS = {"trl": export_trl, "llava": export_llava, "llamafactory": export_llamafactory,
             "qwen": export_qwen_messages}
