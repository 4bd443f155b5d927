"""A-OKVQA (``HuggingFaceM4/A-OKVQA``).

Columns: ``image``, ``question_id``, ``question``, ``choices`` (4 strings), ``correct_choice_idx``
(None on the test split), ``direct_answers`` (10 strings; some copies store the list's repr string),
``difficult_direct_answer``, ``rationales`` (3 strings).
Answer: ``choices[correct_choice_idx]`` (multiple choice, options shown), or with option
``mode="direct"`` the most frequent of ``direct_answers`` (no options). Privileged: the rationales,
and as hints the rationales with the answer masked.
"""

from __future__ import annotations

from collections import Counter

from dopd_vlm.privileged import redact_answer

from .build import SkipRow
from .parsing import parse_list
from .records import RecordError, make_record, resolve_image
from .sources import SourceBuilder

INSTRUCTION_MC = "Answer with the text of the correct option."
INSTRUCTION_DIRECT = "Answer with a single word or phrase."


def convert(row: dict, ctx, idx: int) -> dict:
    rid = ctx.record_id(row["question_id"])
    img, size = resolve_image(row["image"], ctx.image_root, rid, "image")
    mode = ctx.options.get("mode", "mc")
    choices = [str(c) for c in row["choices"]]
    try:
        direct = [str(a) for a in parse_list(row["direct_answers"] or [])]
    except (ValueError, SyntaxError) as e:
        raise RecordError(rid, "direct_answers", f"not a list: {e}") from e
    if mode == "mc":
        k = row["correct_choice_idx"]
        if k is None:
            raise SkipRow("no answer: correct_choice_idx is null (test split)")
        if not 0 <= int(k) < len(choices):
            raise RecordError(rid, "correct_choice_idx", f"{k} outside the {len(choices)} choices")
        answer, shown = choices[int(k)], choices
    elif mode == "direct":
        if not direct:
            raise SkipRow("no answer: direct_answers is empty (test split)")
        answer, shown = Counter(direct).most_common(1)[0][0], None
    else:
        raise ValueError(f"A-OKVQA mode must be 'mc' or 'direct', got {mode!r}")
    rationales = [str(r) for r in row["rationales"] or []]
    return make_record(
        id=rid, source=ctx.source(), images=[img], image_size=size, question=row["question"], choices=shown,
        answer=answer, instruction=INSTRUCTION_MC if shown else INSTRUCTION_DIRECT,
        privileged={"rationale": rationales, "hints": [redact_answer(r, answer, None) for r in rationales]},
        meta={"direct_answers": direct, "difficult_direct_answer": row.get("difficult_direct_answer"),
              "question_id": row["question_id"]},
    )


AOKVQA = SourceBuilder(
    name="aokvqa", hub_ids=("HuggingFaceM4/A-OKVQA",),
    required=("image", "question_id", "question", "choices", "correct_choice_idx", "direct_answers", "rationales"),
    convert=convert, default_kinds=("hints",), default_split="train",
    doc="A-OKVQA: multiple choice (or direct answers); privileged rationales")
