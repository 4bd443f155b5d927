"""Privileged text: render a record's structured signals for a teacher, and guard against answer leaks.

Pure Python (no torch, no transformers). Where the text goes in the prompt (after the question, in
the user turn) is the views' business; this module only turns ``record["privileged"]`` into text.

Stable API (model adapters call it with their own ``box_format``)::

    render_privileged(privileged: dict, kinds: list[str], templates: dict | None = None,
                      box_format: str = "abs_xyxy", image_size: tuple[int, int] | None = None,
                      target_size: tuple[int, int] | None = None) -> str

- ``privileged``: the record's ``privileged`` dict (canonical boxes: absolute xyxy on an image of
  ``image_size = (w, h)``, i.e. ``record["meta"]["image_size"]``).
- ``kinds``: signal kinds in the order they are rendered, from ``KINDS``: ``regions`` (boxes with
  labels, the paper's best VLM privilege, Table 5), ``boxes`` (boxes without labels), ``captions``,
  ``hints`` (step-wise, without the answer: the paper's LLM privilege, Table 4), ``rationale``,
  ``solution``, ``lecture``, ``ocr``, ``scene_graph``, ``program``, ``answer`` (the final answer, the
  paper's worst privilege, kept for ablations). Aliases: ``caption`` -> captions,
  ``trace`` -> rationale, ``labels`` -> regions. A kind whose field is empty renders nothing.
- ``templates``: overrides of ``DEFAULT_TEMPLATES`` (one section template per kind with an
  ``{items}`` or ``{text}`` slot, plus item templates ``region_item``, ``box_item``, ``ocr_item``,
  ``program_step``, ``box`` and the joiners ``item_sep`` / ``section_sep``).
- ``box_format``: ``"abs_xyxy"`` absolute pixels (with ``target_size`` = the model's resized input
  size, boxes are rescaled to it), ``"grid1000"`` integers 0-1000 relative to the image,
  ``"rel01"`` floats 0-1 with 3 decimals.

Leak guard: ``contains_answer`` finds the final answer in text (word boundaries, case-insensitive,
numbers normalised: "3" = "3.0" = "three" = "1,000"-style commas removed), ``LeakGuard`` applies a
policy ``error | drop | keep`` and counts, ``hints_from_trace`` derives hints without the answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

KINDS = ("regions", "boxes", "captions", "hints", "rationale", "solution", "lecture", "ocr",
         "scene_graph", "program", "answer")
ALIASES = {"caption": "captions", "trace": "rationale", "labels": "regions", "region": "regions",
           "hint": "hints"}
BOX_FORMATS = ("abs_xyxy", "grid1000", "rel01")

# Project decision: short English section headers in words of the tiny tokenizer's corpus.
DEFAULT_TEMPLATES: dict[str, str] = {
    "regions": "Objects: {items}.",
    "boxes": "Boxes: {items}.",
    "captions": "Caption: {items}",
    "hints": "Hints: {items}",
    "rationale": "Steps: {items}",
    "solution": "Solution: {text}",
    "lecture": "Background: {text}",
    "ocr": "Text: {items}.",
    "scene_graph": "Scene: {text}",
    "program": "Program: {items}.",
    "answer": "Answer: {text}",
    "region_item": "{label} {box}",
    "box_item": "{box}",
    "ocr_item": '"{text}" {box}',
    "program_step": "{function}{values}",
    "box": "[{x1}, {y1}, {x2}, {y2}]",
    "item_sep": "; ",
    "section_sep": "\n",
}
_ITEM_SEP_BY_KIND = {"captions": " ", "hints": " ", "rationale": " ", "program": ", "}


def canonical_kind(kind: str) -> str:
    k = ALIASES.get(kind, kind)
    if k not in KINDS:
        raise ValueError(f"unknown privileged kind {kind!r}; known: {KINDS} (aliases {sorted(ALIASES)})")
    return k


def format_box(bbox, box_format: str, image_size, target_size=None, template: str = DEFAULT_TEMPLATES["box"]) -> str:
    """One canonical absolute-xyxy box in a model's coordinate convention."""
    if image_size is None:
        raise ValueError("rendering boxes needs image_size=(w, h) (record['meta']['image_size'])")
    w, h = image_size
    x1, y1, x2, y2 = bbox
    if box_format == "abs_xyxy":
        sx, sy = (target_size[0] / w, target_size[1] / h) if target_size is not None else (1.0, 1.0)
        v = [round(x1 * sx), round(y1 * sy), round(x2 * sx), round(y2 * sy)]
    elif box_format == "grid1000":
        v = [min(1000, max(0, round(c / s * 1000))) for c, s in ((x1, w), (y1, h), (x2, w), (y2, h))]
    elif box_format == "rel01":
        v = [f"{min(1.0, max(0.0, c / s)):.3f}" for c, s in ((x1, w), (y1, h), (x2, w), (y2, h))]
    else:
        raise ValueError(f"unknown box_format {box_format!r}; known: {BOX_FORMATS}")
    return template.format(x1=v[0], y1=v[1], x2=v[2], y2=v[3])


def _program_step(step: dict, tpl: str) -> str:
    vals = step.get("value_inputs") or []
    return tpl.format(function=step["function"], values=f"[{', '.join(str(v) for v in vals)}]" if vals else "")


def render_privileged(privileged: dict, kinds: list[str], templates: dict | None = None,
                      box_format: str = "abs_xyxy", image_size=None, target_size=None,
                      _boxes: bool = True) -> str:
    """Render ``privileged`` signals of ``kinds`` as teacher-only text (see the module docstring)."""
    t = dict(DEFAULT_TEMPLATES)
    if templates:
        unknown = set(templates) - set(DEFAULT_TEMPLATES)
        if unknown:
            raise ValueError(f"unknown template keys {sorted(unknown)}; known: {sorted(DEFAULT_TEMPLATES)}")
        t.update(templates)
    if box_format not in BOX_FORMATS:
        raise ValueError(f"unknown box_format {box_format!r}; known: {BOX_FORMATS}")

    def box(b) -> str:
        return format_box(b, box_format, image_size, target_size, t["box"]) if _boxes else ""

    def sep(kind: str) -> str:
        return t["item_sep"] if templates and "item_sep" in templates else _ITEM_SEP_BY_KIND.get(kind, t["item_sep"])

    sections = []
    for raw in kinds:
        kind = canonical_kind(raw)
        items: list[str] | None = None
        text: str | None = None
        if kind in ("regions", "boxes"):
            regs = privileged.get("regions") or []
            if kind == "regions":
                items = [t["region_item"].format(label=r.get("label") or "object", box=box(r["bbox"])).strip()
                         for r in regs]
            else:
                items = [t["box_item"].format(box=box(r["bbox"])).strip() for r in regs]
            items = [i for i in items if i]
        elif kind in ("captions", "hints", "rationale"):
            items = list(privileged.get(kind) or [])
        elif kind in ("solution", "lecture", "answer"):
            text = privileged.get(kind)
        elif kind == "ocr":
            items = [t["ocr_item"].format(text=o["text"], box=box(o["bbox"]) if o.get("bbox") else "").strip()
                     for o in privileged.get("ocr") or []]
        elif kind == "scene_graph":
            sg = privileged.get("scene_graph")
            text = json.dumps(sg, separators=(", ", ": "), sort_keys=True) if sg else None
        elif kind == "program":
            items = [_program_step(s, t["program_step"]) for s in privileged.get("program") or []]
        if items:
            sections.append(t[kind].format(items=sep(kind).join(items)))
        elif text:
            sections.append(t[kind].format(text=text))
    return t["section_sep"].join(sections)


def privileged_text_for_leak_check(privileged: dict, kinds: list[str], templates: dict | None = None) -> str:
    """The rendered text without box coordinates: numbers inside boxes are not answers."""
    return render_privileged(privileged, kinds, templates, _boxes=False)


# ------------------------------------------------------------------------------ answer matching
_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_NUM_RE = re.compile(r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?(?![\w])|\b(?:" + "|".join(_NUMBER_WORDS) + r")\b",
                     re.IGNORECASE)
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _as_number(s: str) -> float | None:
    s = s.strip().lower()
    if s in _NUMBER_WORDS:
        return float(_NUMBER_WORDS[s])
    s2 = s.replace(",", "")
    if re.fullmatch(r"[-+]?\d+(?:\.\d+)?", s2):
        return float(s2)
    if re.fullmatch(r"[-+]?\d+/\d+", s2):
        a, b = s2.split("/")
        return float(a) / float(b) if float(b) else None
    return None


def answer_spans(text: str, answer: str, choices: list[str] | None = None) -> list[tuple[int, int]]:
    """Character spans of ``text`` that state ``answer`` (see ``contains_answer``)."""
    if not text or answer is None or not str(answer).strip():
        return []
    answer = str(answer).strip()
    targets = [answer]
    spans: list[tuple[int, int]] = []
    if choices and len(answer) == 1 and answer.upper() in _LETTERS[:len(choices)]:
        # A letter answer leaks through its option text or an explicit "(B)" / "option B" / "answer is B";
        # a bare "a" / "A" is an ordinary word and is not counted.
        letter = answer.upper()
        targets = [choices[_LETTERS.index(letter)]]
        pat = rf"\({letter}\)|\b(?:option|choice|answer is|answer:)\s*\(?{letter}\b"
        spans += [m.span() for m in re.finditer(pat, text, re.IGNORECASE)]
    for tgt in targets:
        num = _as_number(tgt)
        if num is not None:
            spans += [m.span() for m in _NUM_RE.finditer(text) if _as_number(m.group()) == num]
        words = re.escape(" ".join(tgt.split())).replace(r"\ ", r"\s+")
        spans += [m.span() for m in re.finditer(rf"(?<!\w){words}(?!\w)", text, re.IGNORECASE)]
    return sorted(set(spans))


def contains_answer(text: str, answer: str | None, choices: list[str] | None = None) -> bool:
    """True when ``text`` states ``answer``: word-boundary, case-insensitive, numbers normalised."""
    return bool(answer_spans(text, answer, choices)) if answer is not None else False


def redact_answer(text: str, answer: str, choices: list[str] | None = None, mask: str = "?") -> str:
    spans = answer_spans(text, answer, choices)
    out, last = [], 0
    for a, b in spans:
        if a < last:
            continue
        out += [text[last:a], mask]
        last = b
    return "".join(out) + text[last:]


class AnswerLeakError(ValueError):
    """Privileged text states the final answer under policy ``error``."""


LEAK_POLICIES = ("error", "drop", "keep")


@dataclass
class LeakGuard:
    """Apply the leak policy to rendered privileged text and count what happened.

    ``error`` raises, ``drop`` asks the caller to drop the row, ``keep`` keeps it (flagged).
    """

    policy: str = "keep"
    checked: int = 0
    leaked: int = 0
    dropped: int = 0
    kept_with_leak: int = 0
    leaked_ids: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.policy not in LEAK_POLICIES:
            raise ValueError(f"leak policy must be one of {LEAK_POLICIES}, got {self.policy!r}")

    def check(self, record_id: str, text: str, answer: str | None, choices: list[str] | None = None) -> tuple[bool, bool]:
        """-> (keep the row, the text leaks the answer)."""
        self.checked += 1
        leak = contains_answer(text, answer, choices)
        if not leak:
            return True, False
        self.leaked += 1
        self.leaked_ids.append(record_id)
        if self.policy == "error":
            raise AnswerLeakError(f"record {record_id!r}, field 'privileged_context': the privileged text states "
                                  f"the final answer {answer!r} (leak policy 'error'; use 'drop' or 'keep')")
        if self.policy == "drop":
            self.dropped += 1
            return False, True
        self.kept_with_leak += 1
        return True, True

    def counts(self) -> dict:
        return {"policy": self.policy, "checked": self.checked, "leaked": self.leaked, "dropped": self.dropped,
                "kept_with_leak": self.kept_with_leak}


# ---------------------------------------------------------------------------------------- hints
_CALC_RE = re.compile(r"<<[^>]*>>")  # GSM8K calculator annotations: the executed arithmetic


def hints_from_trace(steps: list[str], answer: str | None, choices: list[str] | None = None,
                     mask: str = "?") -> list[str]:
    """Step-wise hints from a worked solution, without the final answer (DOPD Table 4's LLM privilege).

    Drops empty steps and the final step when it states the answer (the conclusion), strips calculator
    annotations, and masks any remaining mention of the answer, so the result never contains it.
    """
    out = [_CALC_RE.sub("", s).strip() for s in steps]
    out = [s for s in out if s]
    if out and answer is not None and contains_answer(out[-1], answer, choices):
        out.pop()  # the conclusion
    if answer is not None:
        out = [redact_answer(s, answer, choices, mask) for s in out]
    return out


def split_steps(solution: str) -> list[str]:
    """A worked solution -> steps (lines, else sentences)."""
    lines = [ln.strip() for ln in solution.splitlines() if ln.strip()]
    if len(lines) > 1:
        return lines
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", solution) if s.strip()]
