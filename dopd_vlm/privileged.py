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
  paper's worst privilege, kept for ablations), ``hints_exec`` (step-wise hints with execution, i.e.
  with computed results) and ``hints_summary`` (summarized hints), the other rows of Table 4.
  Hints render one step per line. Aliases: ``caption`` -> captions,
  ``trace`` -> rationale, ``labels`` -> regions. A kind whose field is empty renders nothing.
- ``templates``: overrides of ``DEFAULT_TEMPLATES`` (one section template per kind with an
  ``{items}`` or ``{text}`` slot, plus item templates ``region_item``, ``box_item``, ``ocr_item``,
  ``program_step``, ``box`` and the joiners ``item_sep`` / ``section_sep``).
- ``box_format``: ``"abs_xyxy"`` absolute pixels (with ``target_size`` = the model's resized input
  size, boxes are rescaled to it), ``"grid1000"`` integers 0-1000 relative to the image,
  ``"rel01"`` floats 0-1 with 3 decimals.

Leak guard: ``contains_answer`` finds the final answer in text after normalisation (case, Unicode
NFKC, accents, whitespace and punctuation; numbers "1,000" = "1000.0" = "one thousand", "0.5" =
".5" = "1/2"; an option letter stated as the answer, "(B)" / "option B" / "the answer is b", and its
option text), while coordinates, positions ("row 2") and the pronoun "one" do not count;
``LeakGuard`` applies a policy ``error | drop | keep`` and counts, ``hints_from_trace`` derives hints
without the answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

KINDS = ("regions", "boxes", "captions", "hints", "rationale", "solution", "lecture", "ocr",
         "scene_graph", "program", "answer", "hints_exec", "hints_summary")
ALIASES = {"caption": "captions", "trace": "rationale", "labels": "regions", "region": "regions",
           "hint": "hints"}
BOX_FORMATS = ("abs_xyxy", "grid1000", "rel01")

# Project decision: short English section headers in words of the tiny tokenizer's corpus.
DEFAULT_TEMPLATES: dict[str, str] = {
    "regions": "Objects: {items}.",
    "boxes": "Boxes: {items}.",
    "captions": "Caption: {items}",
    "hints": "Hints: {items}",
    "hints_exec": "Hints: {items}",
    "hints_summary": "Hint: {items}",
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
# hints: one step per line (issue 13; the paper's step-wise hints, Table 4)
_ITEM_SEP_BY_KIND = {"captions": " ", "hints": "\n", "hints_exec": "\n", "hints_summary": " ", "rationale": " ",
                     "program": ", "}


class UnknownKindError(ValueError):
    """A privileged kind that does not exist; the CLI prints it as one line."""


def canonical_kind(kind: str) -> str:
    k = ALIASES.get(kind, kind)
    if k not in KINDS:
        raise UnknownKindError(f"unknown privileged kind {kind!r}; valid kinds: {', '.join(KINDS)} "
                               f"(aliases: {', '.join(sorted(ALIASES))})")
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
        elif kind in ("captions", "hints", "rationale", "hints_exec", "hints_summary"):
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
        # whitespace-only items render nothing: a bare "Hints:" header is an empty privileged context
        items = [i for i in items if str(i).strip()] if items else items
        text = text if text is None or str(text).strip() else None
        if items:
            sections.append(t[kind].format(items=sep(kind).join(items)))
        elif text:
            sections.append(t[kind].format(text=text))
    return t["section_sep"].join(sections)


def privileged_text_for_leak_check(privileged: dict, kinds: list[str], templates: dict | None = None) -> str:
    """The rendered text without coordinates: numbers inside boxes are not answers, and a scene graph
    contributes only its string values (attributes, relation names), not its ids, rows or indices."""
    kinds = [canonical_kind(k) for k in kinds]
    text = render_privileged(privileged, [k for k in kinds if k != "scene_graph"], templates, _boxes=False)
    sg = privileged.get("scene_graph") if "scene_graph" in kinds else None
    if sg:
        words = " ".join(_string_leaves(sg))
        text = f"{text}\n{words}" if text else words
    return text


def _string_leaves(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _string_leaves(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _string_leaves(v)]
    return []


# ------------------------------------------------------------------------------ answer matching
# Matching happens on normalised text (NFKC, case-folded, whitespace collapsed; for words also
# without punctuation and accents), with a map back to the original characters so that
# ``redact_answer`` masks the original spans.
_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
          "sixteen seventeen eighteen nineteen").split()
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if i >= 2}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_NUMBER_WORDS = {**{w: i for i, w in enumerate(_UNITS)}, **_TENS}
_NUMWORD = "|".join(sorted([*_NUMBER_WORDS, *_SCALES], key=len, reverse=True))
_WORD_NUM_RE = re.compile(rf"(?<![\w-])(?:a\s+(?=hundred|thousand|million))?(?:{_NUMWORD})"
                          rf"(?:(?:\s+and\s+|\s+|-)(?:{_NUMWORD}))*(?![\w-])")
_DIGIT_NUM_RE = re.compile(r"(?<![\w.])(?<!\d,)[-+]?(?:\d+/\d+|(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?![\w]|[.,/]\d)")
# "row 2", "step 3", "#4": positions and labels, not quantities
_INDEX_WORDS = {"row", "rows", "column", "columns", "col", "step", "steps", "line", "item", "page", "figure", "fig",
                "table", "cell", "slot", "position", "index", "id", "no", "#", "object", "level"}
_PRONOUN_DETERMINERS = {"the", "this", "that", "which", "each", "every", "another", "any", "no", "other"}
_VERBS = {"is", "are", "was", "were", "be", "equals", "=", ":"}
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ORDINALS = "first second third fourth fifth sixth seventh eighth ninth tenth".split()


_ASCII_PUNCT_TO_SPACE = str.maketrans({c: " " for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"})  # Unicode P* and S*


def _fold(text: str, words: bool) -> tuple[str, list[int]]:
    """-> (normalised text, index of the original character behind each normalised one).

    Always: NFKC, case folding, whitespace runs -> one space, U+2212 minus -> "-". ``words``: also
    accents removed and punctuation / symbols -> space (for matching words and phrases).
    """
    import unicodedata

    out: list[str] = []
    idx: list[int] = []
    if text.isascii():  # fast path (the common case): NFKC and accents change nothing, folding is lower()
        t = (text.translate(_ASCII_PUNCT_TO_SPACE) if words else text).lower()
        for i, c in enumerate(t):
            if c.isspace():
                if not out or out[-1] == " ":
                    continue
                c = " "
            out.append(c)
            idx.append(i)
        return "".join(out), idx
    for i, ch in enumerate(text):
        n = unicodedata.normalize("NFKC", ch).replace("\u2212", "-")
        if words:
            n = "".join(c for c in unicodedata.normalize("NFKD", n) if not unicodedata.combining(c))
        for c in n.casefold():
            if c.isspace() or (words and unicodedata.category(c)[0] in "PS"):
                c = " "
            if c == " " and (not out or out[-1] == " "):
                continue
            out.append(c)
            idx.append(i)
    return "".join(out), idx


def _orig_span(idx: list[int], a: int, b: int, text: str = "") -> tuple[int, int]:
    import unicodedata

    end = idx[b - 1] + 1
    while end < len(text) and unicodedata.combining(text[end]):  # accents dropped by the folding
        end += 1
    return idx[a], end


def _words_value(phrase: str) -> float | None:
    """'twenty-one' / 'one hundred and five' / 'a thousand' -> the number; None if not one number."""
    toks = [t for t in re.split(r"[\s-]+", phrase.strip()) if t and t != "and"]
    if toks and toks[0] == "a":
        toks[0] = "one"
    total, current, last = 0, 0, None  # last: "unit" | "teen" | "tens" | "scale"
    for t in toks:
        if t in _SCALES:
            if last is None:
                return None
            scale = _SCALES[t]
            if scale == 100:
                current = (current or 1) * 100
            else:
                total += (current or 1) * scale
                current = 0
            last = "scale"
        elif t in _TENS:
            if last in ("unit", "teen", "tens"):
                return None
            current += _TENS[t]
            last = "tens"
        elif t in _NUMBER_WORDS:
            v = _NUMBER_WORDS[t]
            if last in ("unit", "teen") or (last == "tens" and v >= 10):
                return None
            current += v
            last = "teen" if v >= 10 else "unit"
        else:
            return None
    return float(total + current) if last is not None else None


# LaTeX fractions, "\frac{1}{2}" / "\dfrac{3}{4}" / "\tfrac12": a number as math answers and hints write it.
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*(?:\{\s*([-+]?\d+(?:\.\d+)?)\s*\}|(\d))\s*(?:\{\s*([-+]?\d+(?:\.\d+)?)\s*\}|(\d))")


def _frac_value(m: re.Match) -> float | None:
    num, den = float(m.group(1) or m.group(2)), float(m.group(3) or m.group(4))
    return num / den if den else None


def _latex_fracs(text: str) -> list[tuple[int, int, float]]:
    """(start, end, value) of every LaTeX fraction with numeric parts in ``text`` (zero denominators skipped)."""
    return [(m.start(), m.end(), v) for m in _LATEX_FRAC_RE.finditer(text) if (v := _frac_value(m)) is not None]


def _as_number(s: str) -> float | None:
    whole = str(s).strip().strip("$").strip()
    frac = _LATEX_FRAC_RE.fullmatch(whole)
    if frac:
        return _frac_value(frac)
    s, _ = _fold(str(s), words=False)
    s = s.strip().rstrip(".").strip()
    v = _words_value(s)
    if v is not None:
        return v
    s2 = s.replace(",", "") if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s) else s
    if re.fullmatch(r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)", s2):
        return float(s2)
    if re.fullmatch(r"[-+]?\d+/\d+", s2):
        a, b = s2.split("/")
        return float(a) / float(b) if float(b) else None
    return None


def _same_number(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def _in_coordinate_list(text: str, a: int, b: int) -> bool:
    """A number inside brackets that hold two or more comma-separated numbers: "(12, 40)", "[3, 4, 5, 6]"."""
    left = max(text.rfind("(", 0, a), text.rfind("[", 0, a))
    if left < 0:
        return False
    close = ")" if text[left] == "(" else "]"
    right = text.find(close, b)
    if right < 0:
        return False
    inner = text[left + 1:right]
    return bool(re.fullmatch(r"\s*[-+]?\d+(?:\.\d+)?(?:\s*,\s*[-+]?\d+(?:\.\d+)?)+\s*", inner))


def _prev_words(text: str, a: int, n: int = 3) -> list[str]:
    return re.findall(r"[\w#=:]+", text[max(0, a - 40):a])[-n:]


def _is_index(text: str, a: int) -> bool:
    prev = _prev_words(text, a, 1)
    return bool(prev) and prev[0] in _INDEX_WORDS or text[max(0, a - 1):a] == "#"


def _is_pronoun_one(text: str, a: int, b: int) -> bool:
    """'the red one', 'this one', 'one of them': the pronoun, not the number 1."""
    if text[a:b] != "one":
        return False
    if re.match(r"\s*(?:of\b|s\b)", text[b:]):
        return True
    for w in reversed(_prev_words(text, a)):
        if w in _VERBS:
            return False
        if w in _PRONOUN_DETERMINERS:
            return True
    return False


def _number_spans(text: str, value: float) -> list[tuple[int, int]]:
    fracs = _latex_fracs(text)
    spans = [(a, b) for a, b, v in fracs if _same_number(v, value)]
    folded, idx = _fold(text, words=False)
    for m in _DIGIT_NUM_RE.finditer(folded):
        v = _as_number(m.group())
        if v is not None and _same_number(v, value) and not _in_coordinate_list(folded, *m.span()) \
                and not _is_index(folded, m.start()):
            a, b = _orig_span(idx, *m.span())
            if not any(fa <= a and b <= fb for fa, fb, _ in fracs):  # the 1 of \frac{1}{2} is not the number 1
                spans.append((a, b))
    for m in _WORD_NUM_RE.finditer(folded):
        phrase = m.group()
        v = _words_value(phrase)
        parts = [(m.start(), m.end(), v)] if v is not None else [
            (m.start() + w.start(), m.start() + w.end(), _words_value(w.group()))
            for w in re.finditer(r"[a-z]+", phrase) if w.group() != "and"]
        for a, b, v in parts:
            if v is not None and _same_number(v, value) and not _is_pronoun_one(folded, a, b) \
                    and not _is_index(folded, a):
                spans.append(_orig_span(idx, a, b))
    return spans


def _phrase_spans(text: str, phrase: str) -> list[tuple[int, int]]:
    target, _ = _fold(phrase, words=True)
    target = target.strip()
    if not target:  # an answer made of punctuation: literal, case-insensitive
        return [m.span() for m in re.finditer(re.escape(phrase.strip()), text, re.IGNORECASE)] if phrase.strip() else []
    folded, idx = _fold(text, words=True)
    return [_orig_span(idx, *m.span(), text) for m in re.finditer(rf"(?<!\w){re.escape(target)}(?!\w)", folded)]


def _letter_spans(text: str, letter: str) -> list[tuple[int, int]]:
    """An option letter stated as the answer: "(B)", "option B", "choice (b)", "the answer is B",
    "Answer: B", "B is correct". A bare "a" / "A" is an ordinary word and is not counted, nor is a
    lowercase "(b)" outside such a phrase (enumerations)."""
    import unicodedata

    nfkc = "".join(unicodedata.normalize("NFKC", c) for c in text)
    if len(nfkc) != len(text):  # a character expanded under NFKC: match on a per-character map
        folded, idx = [], []
        for i, c in enumerate(text):
            for d in unicodedata.normalize("NFKC", c):
                folded.append(d)
                idx.append(i)
        nfkc = "".join(folded)
    else:
        idx = list(range(len(text)))
    L, low = letter.upper(), letter.lower()
    k = _LETTERS.index(L)
    verb = r"(?:\s+(?:is|was|would\s+be|should\s+be|must\s+be))?\s*[:=]?\s*"
    pats = [
        (rf"[(\[]\s*{L}\s*[)\]]", 0),
        (rf"\b(?:answer|letter)\b{verb}[(\[]?\s*(?:{L}|{low})\s*[)\]]?(?!\w)", re.IGNORECASE),
        (rf"(?<!\w)[(\[]?{L}[)\]]?\s+is\s+(?:the\s+)?(?:correct|right|answer|true)\b", 0),
        (rf"\\(?:boxed|fbox)\s*\{{\s*(?:\\text(?:bf)?\s*\{{)?\s*[(\[]?\s*(?:{L}|{low})\s*[)\]]?\s*\}}", 0),
    ]
    # "option B" / "choice (b)" / "option 2" / "the second option", unless the text names several
    # options that way (a listing of the options, not a choice among them)
    kw = r"\b(?:option|choice|alternative)\b"
    named = {m.group(1).upper() for m in re.finditer(rf"{kw}{verb}[(\[]?\s*([A-Za-z])\s*[)\]]?(?!\w)", nfkc,
                                                     re.IGNORECASE)}
    named |= {_LETTERS[int(m.group(1)) - 1] for m in re.finditer(
        rf"{kw}\s*(?:number\s*|no\.?\s*|#\s*)?(\d{{1,2}})(?![\w.])", nfkc, re.IGNORECASE)
        if 1 <= int(m.group(1)) <= len(_LETTERS)}
    if named == {L}:
        pats += [(rf"{kw}{verb}[(\[]?\s*(?:{L}|{low})\s*[)\]]?(?!\w)", re.IGNORECASE),
                 (rf"{kw}\s*(?:number\s*|no\.?\s*|#\s*)?{k + 1}(?![\w.])", re.IGNORECASE)]
    if k < len(_ORDINALS):
        pats.append((rf"\b{_ORDINALS[k]}\s+(?:option|choice|alternative|answer)\b", re.IGNORECASE))
    spans = []
    for pat, flags in pats:
        for m in re.finditer(pat, nfkc, flags):
            s = m.group().rstrip()
            if s[-1] in "aAiI" and s[-1].islower() and re.match(r"\s+\w", nfkc[m.end():]):
                continue  # "the answer is a red cube": the article, not the letter
            spans.append(_orig_span(idx, m.start(), m.end()))
    return spans


def answer_spans(text: str, answer: str, choices: list[str] | None = None) -> list[tuple[int, int]]:
    """Character spans of ``text`` that state ``answer`` (see ``contains_answer``)."""
    if not text or answer is None or not str(answer).strip():
        return []
    answer = str(answer).strip()
    targets = [answer]
    spans: list[tuple[int, int]] = []
    letter = None
    if choices:
        if len(answer) == 1 and answer.upper() in _LETTERS[:len(choices)]:
            letter = answer.upper()  # a letter answer leaks through its option text or the letter stated
            targets = [choices[_LETTERS.index(letter)]]
        else:  # a choice-text answer also leaks through its letter stated as the answer
            key = _fold(answer, words=True)[0].strip()
            hits = [i for i, c in enumerate(choices) if _fold(str(c), words=True)[0].strip() == key]
            if len(hits) == 1 and hits[0] < len(_LETTERS):
                letter = _LETTERS[hits[0]]
    if letter is not None:
        spans += _letter_spans(text, letter)
    for tgt in targets:
        num = _as_number(tgt)
        if num is not None:
            spans += _number_spans(text, num)
        else:
            spans += _phrase_spans(text, tgt)
    return sorted(set(spans))


def contains_answer(text: str, answer: str | None, choices: list[str] | None = None) -> bool:
    """True when ``text`` states ``answer``, after normalisation (see ``answer_spans``):

    - words and phrases: case, Unicode form (NFKC), accents, whitespace and punctuation do not matter
      ("New-York" = "new york"), at word boundaries ("red" is not in "reddish");
    - numbers: "1,000" = "1000" = "1000.0" = "one thousand", "0.5" = ".5" = "1/2", "twenty-one" = 21;
      not counted: digits inside other numbers ("13", "2.5"), coordinate lists ("(12, 2)",
      "[3, 2, 5, 6]"), positions ("row 2", "step 3", "#2") and the pronoun "one" ("the red one");
    - option letters: the letter stated as the answer ("(B)", "option B", "the answer is b",
      "B is correct") and the option's text; a choice-text answer also through its letter.
    """
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
