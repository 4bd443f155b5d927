"""lmms-eval task functions for ZebraLogic (allenai/ZebraLogicBench-private, config ``grid_mode``,
split ``test``: 1,000 puzzles), scored as ZeroEval scores it.

Data schema: ``id``, ``size`` (``"houses*features"``, e.g. ``"3*4"``), ``puzzle`` (the text),
``solution`` (``{"header": ["House", "Name", ...], "rows": [["1", "Arnold", ...], ...]}``),
``created_at``.

Prompt: ZeroEval's zebra-grid template (``PROMPT`` below, from ZeroEval's
``src/templates/ZEBRA_GRID.py``) with the puzzle and a JSON answer skeleton built from the
solution header (house names and feature columns only, never the values).

Scoring (ZeroEval ``src/evaluation/zebra_grid_eval.py``, single-output mode): the answer is the
last complete ``{...}`` of the reply (raw newlines removed before ``json.loads``); a puzzle is
solved when every cell matches case- and space-insensitively (a list answer counts by its first
element); ``puzzle_acc`` = solved puzzles / puzzles (ZeroEval's "Puzzle Acc", the headline number),
``cell_acc`` = correct cells / cells, ``easy_puzzle_acc`` / ``hard_puzzle_acc`` over ZeroEval's
easy sizes (2*2 .. 2*6, 3*2, 3*3) and the rest, ``no_answer`` = share of replies without a parsable
solution. Standard library only.
"""

from __future__ import annotations

import json
import math

PROMPT = """
# Example Puzzle 

There are 3 houses, numbered 1 to 3 from left to right, as seen from across the street. Each house is occupied by a different person. Each house has a unique attribute for each of the following characteristics:
 - Each person has a unique name: `Peter`, `Eric`, `Arnold`.
 - Each person has a unique favorite drink: `tea`, `water`, `milk`

## Clues for the Example Puzzle

1. Peter is in the second house.
2. Arnold is directly left of the one who only drinks water.
3. The one who only drinks water is directly left of the person who likes milk.

## Answer to the Example Puzzle

{
    "reasoning": "Given Clue 1, we know Peter is in House 2. According to Clue 2, Arnold is directly left of the one who only drinks water. The person in House 3 cannot be on the left of anyone, so Arnold must be in House 1. Thus, Peter drinks water, and Eric lives in House 3. Then, according to Clue 3, Eric drinks milk. Therefore, Arnold drinks tea.",
    "solution": {
        "House 1": {
            "Name": "Arnold",
            "Drink": "tea"
        },
        "House 2": {
            "Name": "Peter",
            "Drink": "water"
        },
        "House 3": {
            "Name": "Eric",
            "Drink": "milk"
        }
    }
}

# Puzzle to Solve 

{puzzle}


# Instruction

Now please solve the above puzzle. Present your reasoning and solution in the following json format:

{json_template}

"""
EASY_SIZES = frozenset(["2*2", "2*3", "2*4", "2*5", "2*6", "3*2", "3*3"])  # ZeroEval's easy split


def _solution(doc: dict) -> dict:
    sol = doc["solution"]
    return json.loads(sol) if isinstance(sol, str) else sol


def answer_template(doc: dict) -> str:
    sol = _solution(doc)
    columns = sol["header"]
    if not columns or columns[0] != "House":
        raise ValueError(f"ZebraLogic puzzle {doc.get('id')!r}: solution header {columns!r} does not start with 'House'")
    skeleton = {"reasoning": "___", "solution": {
        f"House {i + 1}": {c: "___" for c in columns[1:]} for i in range(len(sol["rows"]))}}
    return json.dumps(skeleton, indent=4)


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return PROMPT.replace("{puzzle}", doc["puzzle"]).replace("{json_template}", answer_template(doc))


def doc_to_visual(doc: dict) -> list:
    return []


def doc_to_messages(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": doc_to_text(doc)}]}]


def doc_to_target(doc: dict) -> str:
    return json.dumps(_solution(doc))


def last_json_object(text: str):
    """The last complete top-level ``{...}`` of ``text`` parsed as JSON (raw newlines dropped
    first, as ZeroEval does), or None when there is none or it does not parse."""
    depth, start, last = 0, None, None
    for i, ch in enumerate(text):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                last = text[start:i + 1]
    if last is None:
        return None
    try:
        return json.loads(last.replace("\n", ""))
    except json.JSONDecodeError:
        return None


def _cell(value) -> str | None:
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        return None
    return str(value).lower().strip() or None


def grade(reply: str, doc: dict) -> dict:
    """{solved, correct_cells, total_cells, parsed} for one reply."""
    sol = _solution(doc)
    columns, rows = sol["header"], sol["rows"]
    truth = {f"House {i + 1}": {columns[j]: rows[i][j] for j in range(1, len(columns))} for i in range(len(rows))}
    total = sum(len(v) for v in truth.values())
    answer = last_json_object(str(reply))
    table = answer.get("solution") if isinstance(answer, dict) else None
    if not isinstance(table, dict):
        return {"solved": 0.0, "correct_cells": 0, "total_cells": total, "parsed": False}
    correct = 0
    for house, cells in truth.items():
        got = table.get(house)
        if not isinstance(got, dict):
            continue
        for column, value in cells.items():
            if _cell(got.get(column)) == str(value).lower().strip():
                correct += 1
    return {"solved": float(correct == total), "correct_cells": correct, "total_cells": total, "parsed": True}


def process_results(doc: dict, results: list) -> dict:
    g = grade(results[0] if results else "", doc)
    easy = doc["size"] in EASY_SIZES
    return {
        "puzzle_acc": g["solved"],
        "cell_acc": (g["correct_cells"], g["total_cells"]),
        "easy_puzzle_acc": (g["solved"] if easy else 0.0, 1 if easy else 0),
        "hard_puzzle_acc": (0.0 if easy else g["solved"], 0 if easy else 1),
        "no_answer": 0.0 if g["parsed"] else 1.0,
    }


def ratio(items: list) -> float:
    """Aggregation of (numerator, denominator) pairs: sum / sum (NaN when no denominator)."""
    num = sum(float(n) for n, _ in items)
    den = sum(float(d) for _, d in items)
    return num / den if den else math.nan
