"""lmms-eval task functions for AutoLogi (the testing data of the AutoLogi repository,
``testing-data/AutoLogi_en.jsonl`` and ``AutoLogi_cn.jsonl``), scored as its ``evaluation/eval.py``.

Data schema (one puzzle per line): ``idx``, ``prompt`` (the full question: background,
constraints, the required input format and an example input), ``lang`` and ``code`` with
``Inputs_Check_code`` (defines ``inputs_check(inputs)``), ``Constraint_List_code`` (defines the
constraint functions and ``constraint_list``) and ``Traverse_code``.

Scoring: the model's arrangement is the last fenced code block of the reply, else its last
balanced ``{...}``, else its last ``[...]``; ``//`` comments are dropped and the text is read as a
Python literal (``true``/``false`` accepted; ``name = {...}`` accepted; JSON as a fallback). The
puzzle counts as solved when the dataset's ``inputs_check`` and every function of its
``constraint_list`` accept it, run in a separate Python process with a 20-second limit (AutoLogi's
own limit). The checker code comes from the dataset and the arrangement from the model: both run
only in that child process (``python -I``), never in the evaluating process.
Standard library only.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys

TIMEOUT_S = 20  # AutoLogi evaluation/eval.py
VERIFY = """
def verify_function(inputs, inputs_check, constraint_list):
    if not inputs_check(inputs):
        return False
    for constraint in constraint_list:
        if not constraint(inputs):
            return False
    return True
"""


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["prompt"]


def doc_to_visual(doc: dict) -> list:
    return []


def doc_to_messages(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": doc["prompt"]}]}]


def doc_to_target(doc: dict) -> str:
    return ""  # no reference arrangement: the dataset's checker code decides


def _last_balanced(text: str, open_ch: str, close_ch: str) -> str | None:
    depth, start, last = 0, None, None
    for i, ch in enumerate(text):
        if ch == open_ch:
            if depth == 0:
                start = i
            depth += 1
        elif ch == close_ch and depth:
            depth -= 1
            if depth == 0:
                last = text[start:i + 1]
    return last


def extract_arrangement(reply: str) -> str | None:
    """The text of the model's final arrangement, or None."""
    text = reply.rsplit("</think>", 1)[1] if "</think>" in reply else reply
    blocks = re.findall(r"```(?:\s*\w+)?\s*\n(.*?)```", text, re.DOTALL)
    if blocks:
        return blocks[-1]
    found = _last_balanced(text, "{", "}")
    if found is not None:
        return found
    lists = re.findall(r"\[.*?\]", text, re.DOTALL)
    return lists[-1] if lists else None


def parse_arrangement(raw: str):
    """A Python value from the arrangement text; raises ValueError when it is not a literal."""
    raw = re.sub(r"//.*?\n", "", raw + "\n").strip()
    try:
        return ast.literal_eval(re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", raw)))
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        pass
    if "=" in raw:
        try:
            return ast.literal_eval(raw.split("=", 1)[1].strip())
        except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
            pass
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"not a Python or JSON literal: {e.msg}") from None


def check(arrangement, doc: dict, timeout_s: float = TIMEOUT_S) -> bool:
    """True when the dataset's inputs_check and constraint_list accept ``arrangement``."""
    code = doc["code"]
    program = "\n".join([code["Inputs_Check_code"], code["Constraint_List_code"], VERIFY,
                         f"print(verify_function({arrangement!r}, inputs_check, constraint_list))"])
    try:
        proc = subprocess.run([sys.executable, "-I", "-c", program], capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0 and proc.stdout.strip().splitlines()[-1:] == ["True"]


def process_results(doc: dict, results: list) -> dict:
    reply = str(results[0] if results else "")
    raw = extract_arrangement(reply)
    if raw is None:
        return {"accuracy": 0.0, "extraction_failed": 1.0}
    try:
        arrangement = parse_arrangement(raw)
    except ValueError:
        return {"accuracy": 0.0, "extraction_failed": 1.0}
    return {"accuracy": float(check(arrangement, doc)), "extraction_failed": 0.0}
