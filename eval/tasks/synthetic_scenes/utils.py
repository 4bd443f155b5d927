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


def extract_choice(prediction: str, choices: list[str]) -> str | None:
    """The option letter a free-form prediction names, or None.

    Accepted, in this order: the full text of exactly one option (``red circle``); a capital
    letter alone or followed by ``.``, ``)``, ``:`` or ``,`` at the start (``B``, ``(B)``,
    ``B. red``); ``answer is B`` / ``answer: B``. "A red circle" is not read as option A.
    """
    valid = LETTERS[:len(choices)]
    text = prediction.strip()
    norm = normalize(text)
    matches = [LETTERS[i] for i, c in enumerate(choices) if normalize(c) == norm]
    if len(matches) == 1:
        return matches[0]
    m = re.match(r"^\(?([A-Z])(?:[).:,]|$)", text)
    if m and m.group(1) in valid:
        return m.group(1)
    m = re.search(r"(?i:answer)\s*(?i:is|:)\s*\(?([A-Z])(?:[).:,]|$)", text)
    if m and m.group(1) in valid:
        return m.group(1)
    return None


def extract_number(prediction: str) -> float | None:
    """The first number in the prediction (digits, or a number word up to twenty), or None."""
    text = prediction.strip().lower()
    m = _NUMBER_RE.search(text)
    word = re.search(r"\b(" + "|".join(NUMBER_WORDS) + r")\b", text)
    if m and (word is None or m.start() <= word.start()):
        return float(m.group(0).replace(",", ""))
    if word:
        return float(NUMBER_WORDS[word.group(1)])
    return None


def score(prediction: str, target: str, metric: str, choices: list[str] | None = None,
          rel_tol: float = 0.0) -> float:
    """1.0 when ``prediction`` answers ``target`` under ``metric``, else 0.0."""
    if metric == "choice":
        return float(extract_choice(prediction, choices or []) == target)
    if metric == "numeric":
        value = extract_number(prediction)
        expected = float(target.replace(",", ""))
        # Exact for integers at the default rel_tol; the 1e-9 absolute slack absorbs float formatting.
        return float(value is not None and abs(value - expected) <= max(rel_tol * abs(expected), 1e-9))
    if metric == "exact":
        norm = normalize(prediction)
        first_line = normalize(prediction.strip().split("\n")[0]) if prediction.strip() else ""
        return float(normalize(target) in (norm, first_line))
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
