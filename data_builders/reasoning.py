"""Reasoning-trace datasets: an image question whose final answer is parsed from the source.

- ``virl39k``: ``TIGER-Lab/ViRL39K`` (the DOPD paper's VLM training set): ``qid``, ``question``
  (with ``<image>`` tags), ``answer`` (``\\boxed{...}``), ``image`` (list of paths under
  ``--image-root``), ``category``, ``source``. No trace: no privileged signal of its own.
- ``geometry3k``: ``hiyouga/geometry3k``: ``images`` (list of images), ``problem`` (with
  ``<image>``), ``answer``. No trace either.
- ``llava_cot``: ``Xkev/LLaVA-CoT-100k`` (LLaVA JSON: ``id``, ``image``, ``conversations``; the
  answer turn is ``<SUMMARY>..</SUMMARY><CAPTION>..</CAPTION><REASONING>..</REASONING>
  <CONCLUSION>..</CONCLUSION>``): answer = CONCLUSION; privileged caption, reasoning steps, summary
  (as ``solution``) and hints without the answer. Only the first question-answer pair is used.
  Hints: ``hints`` = step-wise hints without execution (computed results removed, one step per
  line, as for the math builders), ``hints_exec`` = the steps with their results (DOPD Table 4).
- ``r1_onevision``: ``Fancy-MLLM/R1-Onevision``: ``id``, ``image`` (base64), ``conversations``
  whose answer turn is ``<think>trace</think> final``: answer = the last ``\\boxed{}`` of the final
  part (else the final part); privileged trace steps and hints.
"""

from __future__ import annotations

from dopd_vlm.privileged import hints_from_trace, split_steps

from .build import SkipRow
from .parsing import interleave, last_boxed, split_think, strip_image_tags, tagged
from .records import RecordError, decode_base64_image, make_record, resolve_image
from .sources import SourceBuilder
from .textmath import hints_without_execution


def _image_question(ctx, rid, text: str, images: list, field: str, answer: str | None, privileged: dict, meta: dict):
    resolved = [resolve_image(im, ctx.image_root, rid, f"{field}[{k}]") for k, im in enumerate(images)]
    try:
        parts = interleave(text, len(resolved))
    except ValueError as e:
        raise RecordError(rid, field, str(e)) from e
    if answer is None or not answer.strip():
        raise SkipRow("no final answer")
    return make_record(id=rid, source=ctx.source(), images=[r[0] for r in resolved],
                       image_size=resolved[0][1] if resolved else None, question=strip_image_tags(text),
                       answer=answer.strip(), prompt=[{"role": "user", "content": parts}],
                       privileged=privileged, meta=meta)


def convert_virl(row, ctx, idx):
    rid = ctx.record_id(row["qid"])
    ans = last_boxed(row["answer"]) or row["answer"]
    images = row["image"] if isinstance(row["image"], list) else [row["image"]]
    return _image_question(ctx, rid, row["question"], images, "image", ans, {},
                           {"category": row.get("category"), "origin": row.get("source")})


def convert_geo(row, ctx, idx):
    rid = ctx.record_id(idx)
    return _image_question(ctx, rid, row["problem"], list(row["images"]), "images", row["answer"], {}, {})


def _first_turns(conversations, rid) -> tuple[str, str, int]:
    human = [t["value"] for t in conversations if t["from"] == "human"]
    gpt = [t["value"] for t in conversations if t["from"] == "gpt"]
    if not human or not gpt:
        raise RecordError(rid, "conversations", "needs a human turn and a gpt turn")
    return human[0], gpt[0], len(human)


def convert_llava_cot(row, ctx, idx):
    rid = ctx.record_id(row["id"])
    q, a, n_turns = _first_turns(row["conversations"], rid)
    answer = tagged(a, "CONCLUSION")
    if answer is None:
        raise SkipRow("no <CONCLUSION> in the answer turn")
    reasoning = tagged(a, "REASONING")
    steps = split_steps(reasoning) if reasoning else []
    caption = tagged(a, "CAPTION")
    images = row["image"] if isinstance(row["image"], list) else ([row["image"]] if row["image"] else [])
    priv = {"captions": [caption] if caption else [], "rationale": steps, "solution": tagged(a, "SUMMARY"),
            "hints": hints_without_execution(steps, strip_image_tags(q), answer),
            "hints_exec": hints_from_trace(steps, answer)}
    return _image_question(ctx, rid, q, images, "image", answer, priv, {"n_turns": n_turns})


def convert_r1(row, ctx, idx):
    rid = ctx.record_id(row["id"])
    q, a, n_turns = _first_turns(row["conversations"], rid)
    trace, final = split_think(a)
    answer = last_boxed(final) or final
    steps = split_steps(trace) if trace else []
    img, size = decode_base64_image(row["image"], rid, "image")
    priv = {"rationale": steps, "hints": hints_without_execution(steps, strip_image_tags(q), answer),
            "hints_exec": hints_from_trace(steps, answer)}
    return _image_question(ctx, rid, q, [img], "image", answer, priv, {"n_turns": n_turns})


VIRL39K = SourceBuilder(name="virl39k", hub_ids=("TIGER-Lab/ViRL39K",), required=("qid", "question", "answer", "image"),
                        convert=convert_virl, default_kinds=(), default_split="train",
                        doc="ViRL39K (DOPD's VLM set): boxed answers; images under --image-root")
GEOMETRY3K = SourceBuilder(name="geometry3k", hub_ids=("hiyouga/geometry3k",), required=("images", "problem", "answer"),
                           convert=convert_geo, default_kinds=(), default_split="train", doc="Geometry3K")
LLAVA_COT = SourceBuilder(name="llava_cot", hub_ids=("Xkev/LLaVA-CoT-100k",), required=("id", "image", "conversations"),
                          convert=convert_llava_cot, default_kinds=("hints",), default_split="train",
                          doc="LLaVA-CoT: caption, reasoning, hints; answer from <CONCLUSION>")
R1_ONEVISION = SourceBuilder(name="r1_onevision", hub_ids=("Fancy-MLLM/R1-Onevision",),
                             required=("id", "image", "conversations"), convert=convert_r1, default_kinds=("hints",),
                             default_split="train", doc="R1-Onevision: base64 images, <think> traces")
