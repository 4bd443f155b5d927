"""lmms-eval task functions for datasets built by dopd-vlm (the ``utils.py`` of a task folder).

``dopd-vlm eval make-task`` copies this file verbatim next to the task YAML, so a task folder runs
under plain lmms-eval with no dopd-vlm installed. It depends on the Python standard library only.

Each row of the task data is the **student view** of a record (``docs/data.md``): ``images``,
``prompt`` (the user turn with ``{"type": "image"}`` placeholders), ``question``, ``choices``,
plus the scoring columns make-task adds: ``target`` (canonical answer: a letter for multiple
choice), ``metric`` (``choice`` | ``numeric`` | ``exact``), ``rel_tol`` and ``family`` (question
family, ``""`` when the dataset has none). No privileged field is ever written.

Metrics: ``accuracy`` over all rows, and ``accuracy_<family>`` over the rows of each family.
"""

from __future__ import annotations

import re
import string

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
METRICS = ("choice", "numeric", "exact")
# Number words up to twenty, so a model answering "three" to a count question is scored as 3.
NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_NUMBER_RE = re.compile(r"[-+]?(?:\d+(?:,\d{3})*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_PUNCT = string.punctuation + "“”‘’"


# ----------------------------------------------------------------------------- what the model sees
def doc_to_visual(doc: dict) -> list:
    return [im.convert("RGB") for im in doc["images"]]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The text of the student's user turn (for simple, non-chat models)."""
    return "\n".join(part["text"] for part in doc["prompt"][-1]["content"] if part["type"] == "text")


def doc_to_messages(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> list[dict]:
    """The record's student prompt as lmms-eval chat messages: image placeholders are replaced, in
    order, by the row's images, so images sit exactly where the record puts them."""
    images = iter(doc_to_visual(doc))
    messages = []
    for message in doc["prompt"]:
        content = []
        for part in message["content"]:
            if part["type"] == "image":
                content.append({"type": "image", "url": next(images)})
            else:
                content.append({"type": "text", "text": part["text"]})
        messages.append({"role": message["role"], "content": content})
    return messages


def doc_to_target(doc: dict) -> str:
    return doc["target"]


# ----------------------------------------------------------------------------- scoring
def normalize(text: str) -> str:
    """Lower case, no surrounding punctuation, single spaces, no leading article."""
    text = " ".join(str(text).strip().lower().split())
    text = text.strip(_PUNCT + " ")
    for article in ("the ", "a ", "an "):
        if text.startswith(article):
            text = text[len(article):]
    return text


def strip_thinking(prediction: str) -> str:
    """The reply after a reasoning block: the text after the last ``</think>`` (Qwen3-style
    thinking output), else the reply unchanged."""
    text = str(prediction)
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    return text.strip()


def last_boxed(prediction: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces balanced;
    None when there is none or it is not closed."""
    text = str(prediction)
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[start:i - 1].strip()
    return None


# "the answer is X", "final answer: X", "Answer = X" (the last one in the reply; up to the line end).
# "answer" must be followed by is / : / = so that "To answer this, ..." states nothing.
_ANSWER_IS_RE = re.compile(r"(?i:\banswer\s*(?:is\b\s*:?|:|=))\s*(?!\s)([^\n]+)")


def final_answer(prediction: str) -> str | None:
    """The span a reply states as its answer: the last ``\\boxed{}``, else the text after the last
    "the answer is" / "answer:" on its line; None when the reply states none."""
    text = strip_thinking(prediction)
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    matches = list(_ANSWER_IS_RE.finditer(text))
    if matches:
        span = matches[-1].group(1).strip()
        return span.strip("*$ ").rstrip(".").strip() or None
    return None


def _letter_in(span: str, valid: str) -> str | None:
    """An option letter stated by a short span: ``B``, ``(B)``, ``B.``, ``B) text``, ``option B``,
    ``\\text{B}``; None otherwise (a capital that starts a word, as in "A red circle", is not one)."""
    span = re.sub(r"\\text\{([^{}]*)\}", r"\1", span).strip().strip("*$").strip()
    m = re.match(r"^(?:(?i:option|choice)\s+)?\(?([A-Z])(?:[).:,]|\s*$|\s+[-–—:(]|\))", span)
    if m and m.group(1) in valid:
        return m.group(1)
    return None


def _stated_lower_letter(span: str, valid: str) -> str | None:
    """A lower-case option letter in a *stated* answer ("the answer is (b)", ``\\boxed{c}``,
    "Answer: c) green"): the letter alone or closed by ")"; "a red circle" stays a phrase."""
    span = re.sub(r"\\text\{([^{}]*)\}", r"\1", span).strip().strip("*$").strip()
    m = re.match(r"^\(?([a-z])(?:\)|\.?$)", span)
    if m and m.group(1).upper() in valid:
        return m.group(1).upper()
    return None


def extract_choice(prediction: str, choices: list[str]) -> str | None:
    """The option letter a free-form prediction (a bare answer or a chain of thought) names, or None.

    In this order: the stated answer (last ``\\boxed{}``, else "the answer is ..." / "Answer: ...")
    read as a letter (``B``, ``(B)``, ``option B``) or as the full text of exactly one option; the
    whole reply as one option's text; a letter at the very start (``B``, ``(B)``, ``B. red``); the
    last "option B" / "choice B" / "(B)" in the reply. "A red circle" is not read as option A, and
    lower-case letters are words, not options.
    """
    valid = LETTERS[:len(choices)]
    text = strip_thinking(prediction)
    by_text = {normalize(c): LETTERS[i] for i, c in enumerate(choices)}
    if len(by_text) < len(choices):  # duplicate option texts cannot be told apart by text
        by_text = {}
    stated = final_answer(text)
    if stated is not None:
        letter = _letter_in(stated, valid) or by_text.get(normalize(stated)) or _stated_lower_letter(stated, valid)
        if letter:
            return letter
    if normalize(text) in by_text:
        return by_text[normalize(text)]
    first = _letter_in(text.split("\n")[0], valid) if text else None
    if first and len(text) <= 80:  # a short reply that starts with its letter
        return first
    found = []
    for m in re.finditer(r"(?:(?i:option|choice)\s*(?:is\s+|:\s*)?\(?([A-Z])\)?(?![A-Za-z]))|\(([A-Z])\)", text):
        letter = m.group(1) or m.group(2)
        if letter in valid:
            found.append(letter)
    if found:
        return found[-1]
    return first


_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*([-+]?\d+(?:\.\d+)?)\s*\}\s*\{\s*([-+]?\d+(?:\.\d+)?)\s*\}")
_SLASH_RE = re.compile(r"(?<![\d.])([-+]?\d+)\s*/\s*(\d+)(?![\d.])")
_WORD_RE = re.compile(r"\b(" + "|".join(NUMBER_WORDS) + r")\b")


def parse_number(token: str) -> float:
    """``1,000`` -> 1000.0, ``72.0`` / ``72.`` -> 72.0, ``-3`` -> -3.0, ``1e3`` -> 1000.0."""
    return float(token.replace(",", "").rstrip("."))


def _numbers(text: str, words: bool = True) -> list[tuple[int, float]]:
    """(position, value) of every number in ``text``, in order: LaTeX ``\\frac{a}{b}`` and ``a/b``
    fractions, digits (thousands separators, decimals, exponents) and, with ``words``, number words
    up to twenty."""
    text = text.lower()
    found: list[tuple[int, float]] = []
    taken: list[tuple[int, int]] = []
    for rx in (_FRAC_RE, _SLASH_RE):
        for m in rx.finditer(text):
            den = float(m.group(2))
            if den != 0 and not any(a < m.end() and m.start() < b for a, b in taken):
                found.append((m.start(), float(m.group(1)) / den))
                taken.append((m.start(), m.end()))
    for m in _NUMBER_RE.finditer(text):
        if not any(a <= m.start() < b for a, b in taken):
            found.append((m.start(), parse_number(m.group(0))))
    if words:
        for m in _WORD_RE.finditer(text):
            found.append((m.start(), float(NUMBER_WORDS[m.group(1)])))
    return sorted(found)


# A stated answer that opens with a worked equation, "12 - 4 = 8" or "3 \times 4 = 12": only digits,
# operators and at least one "="; the result is the chain's last number, not its first.
_EQ_TERM = r"(?:[-+\d\s.,*/×÷^()]|\\times|\\cdot|\\div|(?<=\s)[xX](?=\s))+"
_EQUATION_CHAIN_RE = re.compile(rf"^{_EQ_TERM}(?:={_EQ_TERM})+")


def extract_number(prediction: str) -> float | None:
    """The number a reply gives as its answer, or None: the first number of the stated answer
    (last ``\\boxed{}``, else "the answer is ..."; the result when it opens with a worked equation,
    "the answer is 12 - 4 = 8" gives 8), else the **last** number anywhere in the reply
    (a chain of thought ends with its result; number words count there only when the reply has no
    digits, since prose is full of "one"). Digits with thousands separators and decimals
    (``1,000``, ``72.0``), LaTeX ``\\frac{a}{b}`` and ``a/b`` fractions, number words up to twenty."""
    text = strip_thinking(prediction)
    stated = final_answer(text)
    if stated is not None:
        chain = _EQUATION_CHAIN_RE.match(stated)
        if chain:
            numbers = _numbers(chain.group(0), words=False)
            if numbers:
                return numbers[-1][1]
        numbers = _numbers(stated)
        if numbers:
            return numbers[0][1]
    numbers = _numbers(text, words=False) or _numbers(text)
    return numbers[-1][1] if numbers else None


def score(prediction: str, target: str, metric: str, choices: list[str] | None = None,
          rel_tol: float = 0.0) -> float:
    """1.0 when ``prediction`` answers ``target`` under ``metric``, else 0.0."""
    if metric == "choice":
        return float(extract_choice(prediction, choices or []) == target)
    if metric == "numeric":
        value = extract_number(prediction)
        expected = parse_number(target)
        # Exact for integers at the default rel_tol; the 1e-9 absolute slack absorbs float formatting.
        return float(value is not None and abs(value - expected) <= max(rel_tol * abs(expected), 1e-9))
    if metric == "exact":
        text = strip_thinking(prediction)
        lines = [ln for ln in text.split("\n") if ln.strip()]
        candidates = {normalize(text)}
        if lines:
            candidates |= {normalize(lines[0]), normalize(lines[-1])}
        stated = final_answer(text)
        if stated is not None:
            candidates.add(normalize(re.sub(r"\\text\{([^{}]*)\}", r"\1", stated)))
        return float(normalize(target) in candidates)
    raise ValueError(f"unknown metric {metric!r}; known: {METRICS}")


def family_metric_name(family: str) -> str:
    """``accuracy_<family>`` with the family name reduced to [a-z0-9_]."""
    return "accuracy_" + re.sub(r"[^a-z0-9_]+", "_", family.lower()).strip("_")


def process_results(doc: dict, results: list) -> dict:
    prediction = results[0] if results else ""
    if not isinstance(prediction, str):
        prediction = str(prediction)
    s = score(prediction, doc["target"], doc["metric"], doc["choices"], doc["rel_tol"])
    out = {"accuracy": s}
    if doc["family"]:
        out[family_metric_name(doc["family"])] = s
    return out
