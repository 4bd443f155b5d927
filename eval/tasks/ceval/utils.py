"""lmms-eval task functions for C-Eval (ceval/ceval-exam on the Hugging Face Hub), generation style.

Data schema (one config per subject, splits dev/val/test): ``id`` (int), ``question``, ``A``,
``B``, ``C``, ``D``, ``answer`` (an option letter), ``explanation``. The tasks read the ``val``
split (1,346 questions over 52 subjects; its answers are public).

Prompt: C-Eval's zero-shot instruction (以下是中国关于{科目}考试的单项选择题，请选出其中的正确答案。)
followed by the question and options, and a request to finish with ``答案：X``, so a reasoning
model can think first. Scoring: accuracy of the option letter the reply states (see
``extract_letter``). Standard library only.
"""

from __future__ import annotations

import re

LETTERS = "ABCD"
INSTRUCTION = "以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。"
ANSWER_FORMAT = "请逐步思考，并在回答的最后一行以“答案：X”的格式给出答案，其中 X 是 A、B、C、D 之一。"


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    subject = (lmms_eval_specific_kwargs or {}).get("subject", "")
    options = "\n".join(f"{letter}. {doc[letter]}" for letter in LETTERS)
    return f"{INSTRUCTION.format(subject=subject)}\n\n{doc['question']}\n{options}\n\n{ANSWER_FORMAT}"


def doc_to_visual(doc: dict) -> list:
    return []


def doc_to_messages(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": doc_to_text(doc, lmms_eval_specific_kwargs)}]}]


def doc_to_target(doc: dict) -> str:
    return doc["answer"]


def _strip_thinking(text: str) -> str:
    return text.rsplit("</think>", 1)[1] if "</think>" in text else text


def _last_boxed(text: str) -> str | None:
    starts = [m.end() for m in re.finditer(r"\\boxed\s*\{", text)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[start:i - 1]
    return None


# Stated answers, most explicit first; the last occurrence of the first pattern that matches wins.
_STATED = [
    r"答案\s*(?:是|为|应为|应该是)?\s*[:：]?\s*[（(]?\s*([ABCD])(?![A-Za-z])",
    r"(?i:answer)\s*(?:is|:)\s*[（(]?\s*([ABCD])(?![A-Za-z])",
    r"(?:选|选择|选项)\s*[（(]?\s*([ABCD])(?![A-Za-z])",
    r"([ABCD])\s*(?:选项)?\s*(?:是|为)?(?:正确|对)的?",
]


def extract_letter(reply: str) -> str | None:
    """The option letter a reply states: the last ``\\boxed{X}``; else the last "答案：X" /
    "答案是X" / "answer is X" / "选X" / "X是正确的"; else a reply that is just the letter
    (``B``, ``B.``, ``(B)``); else the last standalone capital A-D. None when nothing names one."""
    text = _strip_thinking(str(reply)).strip()
    boxed = _last_boxed(text)
    if boxed is not None:
        m = re.search(r"([ABCD])", re.sub(r"\\text\{([^{}]*)\}", r"\1", boxed))
        if m:
            return m.group(1)
    for pattern in _STATED:
        found = re.findall(pattern, text)
        if found:
            return found[-1]
    m = re.fullmatch(r"[（(]?\s*([ABCD])\s*[)）.。:：]?", text)
    if m:
        return m.group(1)
    found = re.findall(r"(?<![A-Za-z])([ABCD])(?![A-Za-z])", text)
    return found[-1] if found else None


def process_results(doc: dict, results: list) -> dict:
    reply = results[0] if results else ""
    return {"accuracy": float(extract_letter(str(reply)) == doc["answer"].strip())}
