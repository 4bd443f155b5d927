"""ScienceQA (``derek-thomas/ScienceQA``; lmms-eval copy ``lmms-lab/ScienceQA`` config ``ScienceQA-IMG``).

Columns: ``image`` (Image or None), ``question``, ``choices`` (list[str]), ``answer`` (int index),
``hint`` (context shown to the student), ``lecture``, ``solution``, plus ``subject`` / ``grade`` ....
Answer: the letter of ``choices[answer]``. Privileged: ``lecture``, ``solution``, the solution's
sentences as ``rationale`` and step-wise ``hints`` without the answer.
"""

from __future__ import annotations

from dopd_vlm.privileged import hints_from_trace, split_steps

from .build import SkipRow
from .records import LETTERS, RecordError, make_record, resolve_image
from .sources import SourceBuilder

META = ("subject", "topic", "category", "skill", "grade", "task")


def convert(row: dict, ctx, idx: int) -> dict:
    rid = ctx.record_id(idx)
    if row["image"] is None:
        raise SkipRow("no image: text-only question")
    img, size = resolve_image(row["image"], ctx.image_root, rid, "image")
    choices = [str(c) for c in row["choices"]]
    ans = row["answer"]
    if not isinstance(ans, int) or not 0 <= ans < len(choices):
        raise RecordError(rid, "answer", f"answer index {ans!r} outside the {len(choices)} choices")
    letter = LETTERS[ans]
    solution = (row["solution"] or "").strip() or None
    steps = split_steps(solution) if solution else []
    return make_record(
        id=rid, source=ctx.source(), images=[img], image_size=size, question=row["question"], choices=choices,
        answer=letter, context=(row["hint"] or "").strip() or None,
        privileged={"lecture": (row["lecture"] or "").strip() or None, "solution": solution, "rationale": steps,
                    "hints": hints_from_trace(steps, letter, choices)},
        meta={k: row[k] for k in META if k in row},
    )


REQUIRED = ("image", "question", "choices", "answer", "hint", "lecture", "solution")
DOC = "ScienceQA: lettered choices; privileged lecture, solution, hints"

SCIENCEQA = SourceBuilder(name="scienceqa", hub_ids=("derek-thomas/ScienceQA",), required=REQUIRED,
                          convert=convert, default_kinds=("hints",), default_split="train", doc=DOC)
SCIENCEQA_EVAL = SourceBuilder(name="scienceqa_lmms", hub_ids=("lmms-lab-encoder/ScienceQA", "lmms-lab/ScienceQA"),
                               required=REQUIRED, convert=convert, default_kinds=("hints",), default_split="test",
                               default_config="ScienceQA-IMG", doc=DOC + " (lmms-eval copy)")
