"""lmms-eval task functions for MATH500 (HuggingFaceH4/MATH-500, split ``test``: the 500-problem
subset of the MATH test set used by "Let's Verify Step by Step"), scored by rules, offline.

Why not lmms-eval's ``openai_math``: in lmms-eval 0.7.3 its ``process_results`` raises
"MATH requires PROCESSOR" unless a GPT-4o-mini judge (``PROCESSOR=gpt-4o-mini`` and an OpenAI key)
decides answer equivalence, so it cannot score without that service.

Data schema: ``problem``, ``solution``, ``answer`` (LaTeX), ``subject``, ``level`` (1-5), ``unique_id``.

Prompt: the problem followed by "Please reason step by step, and put your final answer within
\\boxed{}." (the math instruction recommended for Qwen models). Scoring (``is_equiv``): the last
``\\boxed{}`` of the reply (else the text after the last "answer is" / "Answer:") and the reference
are normalised with the MATH benchmark's rules — spaces, ``\\left``/``\\right``, ``\\!``, degrees,
dollars, percent and trailing units removed; ``\\dfrac``/``\\tfrac`` -> ``\\frac``; ``\\frac12`` ->
``\\frac{1}{2}``; ``\\sqrt2`` -> ``\\sqrt{2}``; ``0.5`` -> ``\\frac{1}{2}``; a leading ``x =``
dropped — and compared as strings, or as numbers when both are plain numbers or fractions.
Metrics: ``exact_match`` (the MATH500 score) and ``accuracy_level_<1..5>``. Standard library only.
"""

from __future__ import annotations

import re
from fractions import Fraction

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return f"{doc['problem']}\n{INSTRUCTION}"


def doc_to_visual(doc: dict) -> list:
    return []


def doc_to_messages(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": doc_to_text(doc)}]}]


def doc_to_target(doc: dict) -> str:
    return doc["answer"]


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (braces balanced), or of a last
    ``\\boxed 5`` without braces; None when there is none."""
    best = None
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            best = (m.start(), text[m.end():i - 1])
    bare = [(m.start(), m.group(1)) for m in re.finditer(r"\\boxed ([^\s$]+)", text)]
    if bare and (best is None or bare[-1][0] > best[0]):
        best = bare[-1]
    return None if best is None else best[1].strip()


def extract_answer(reply: str) -> str | None:
    text = reply.rsplit("</think>", 1)[1] if "</think>" in reply else reply
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    found = re.findall(r"(?i)answer\s*(?:is|:)\s*:?\s*([^\n]+)", text)
    return found[-1].strip().rstrip(".").strip("$ ") if found else None


def _fix_fracs(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{2}`` -> ``\\frac{1}{2}``, ``\\frac{1}2`` -> ``\\frac{1}{2}``."""
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if part.startswith("{"):
            close = _matching(part, 0)
            num, rest = part[:close + 1], part[close + 1:]
        elif part:
            num, rest = "{" + part[0] + "}", part[1:]
        else:
            out += part
            continue
        if rest.startswith("{"):
            out += num + rest
        elif rest:
            out += num + "{" + rest[0] + "}" + rest[1:]
        else:
            out += num
    return out


def _matching(s: str, i: int) -> int:
    depth = 0
    for j in range(i, len(s)):
        depth += {"{": 1, "}": -1}.get(s[j], 0)
        if depth == 0:
            return j
    return len(s) - 1


def _slash_to_frac(s: str) -> str:
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    return f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}" if m else s


def normalize(answer: str) -> str:
    s = str(answer).strip()
    s = s.replace("\n", "").replace("\\!", "")
    s = re.sub(r"\\\\", r"\\", s)
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\\text\{\s*([^{}]*?)\s*\}", r"\1", s) if re.fullmatch(r"\\text\{[^{}]*\}", s) else s
    s = re.sub(r"\\(?:text|mbox|mathrm)\{\s*[a-zA-Z ]+\}$", "", s).strip()  # trailing units
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if s.startswith("."):
        s = "0" + s
    if len(s.split("=")) == 2 and len(s.split("=")[0].strip()) <= 2:  # "x = 5" -> "5"
        s = s.split("=")[1]
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    s = _slash_to_frac(s)
    return s.rstrip(".")


def _as_number(s: str) -> Fraction | None:
    s = s.replace(",", "") if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s) else s
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(\d+)\}", s)
    try:
        if m:
            value = Fraction(int(m.group(2)), int(m.group(3)))
            return -value if m.group(1) else value
        if re.fullmatch(r"-?\d+(\.\d+)?", s):
            return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def is_equiv(prediction: str | None, reference: str) -> bool:
    if prediction is None:
        return False
    a, b = normalize(prediction), normalize(reference)
    if a == b:
        return True
    na, nb = _as_number(a), _as_number(b)
    return na is not None and na == nb


def process_results(doc: dict, results: list) -> dict:
    reply = str(results[0] if results else "")
    score = float(is_equiv(extract_answer(reply), doc["answer"]))
    out = {"exact_match": score}
    level = doc.get("level")
    if level is not None:
        out[f"accuracy_level_{int(level)}"] = score
    return out
