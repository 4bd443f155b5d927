"""Scoring of built-dataset tasks (dopd_vlm/lmms_task_utils.py) and make-task's answer handling."""

from __future__ import annotations

import pytest
from PIL import Image

from dopd_vlm import lmms_task_utils as U
from dopd_vlm.evaluate import EvalError, scoring_columns

CHOICES = ["red circle", "blue square", "green triangle"]


@pytest.mark.parametrize("prediction,expected", [
    ("B", "B"), ("(B)", "B"), ("B.", "B"), ("B) blue square", "B"), ("C: green", "C"),
    ("blue square", "B"), ("The blue square.", "B"), ("The answer is C.", "C"), ("Answer: A", "A"),
    ("A blue square", "B"),  # "A" is an article here, not option A
    ("D", None),  # out of range for three options
    ("b", None),  # lower-case letters are words, not option letters
    ("purple", None), ("", None),
])
def test_extract_choice(prediction, expected):
    assert U.extract_choice(prediction, CHOICES) == expected


@pytest.mark.parametrize("prediction,expected", [
    ("3", 3.0), (" 3 objects", 3.0), ("three", 3.0), ("There are twelve.", 12.0), ("-2.5", -2.5),
    # no stated answer: the last digit number (number words only when there are no digits)
    ("1,234", 1234.0), ("72.0", 72.0), ("2 or three", 2.0), ("seven 8", 8.0), ("none", None), ("", None),
    ("\\boxed{72}", 72.0), ("\\boxed{\\frac{3}{4}}", 0.75), ("it is 3/4", 0.75), ("$\\boxed{1,000}$.", 1000.0),
])
def test_extract_number(prediction, expected):
    assert U.extract_number(prediction) == expected


# Chain-of-thought replies as an instruction-tuned model writes them for "... put the final answer
# in \boxed{}": intermediate numbers everywhere, the answer last (the issue's failing case: the
# first number of the reply was scored).
COT_NUMERIC = [
    ("There are 4 rows of objects. Each row has 18 objects, so 4 x 18 = 72.\n\nTherefore, the total "
     "number of objects is \\boxed{72}.", "72", 1.0),
    ("Let me count step by step.\n1. Red cubes: 3\n2. Blue spheres: 5\n3. Green cylinders: 2\n"
     "Total: 3 + 5 + 2 = 10\n\n**Final Answer**\n\\[\n\\boxed{10}\n\\]", "10", 1.0),
    ("The price went from $1,250 to $2,250, an increase of $1,000. The answer is 1,000.", "1000", 1.0),
    ("First, 144 / 2 = 72.0 so the result is 72.0", "72", 1.0),
    ("We have 12 apples and give away 5, leaving 7 apples.", "7", 1.0),  # no stated answer: last number
    ("I think it is \\boxed{8}. Wait, recounting: \\boxed{9}", "9", 1.0),  # the last box counts
    ("<think>\n3 and 4 make 7? no, 3 + 5 = 8\n</think>\n\nThe answer is 8.", "8", 1.0),
    ("There are 4 rows of 18 objects, so \\boxed{72}.", "4", 0.0),
    ("Counting the cubes gives \\boxed{\\dfrac{1}{2}}", "0.5", 1.0),
    # a stated answer that opens with a worked equation gives its result, not its first operand
    ("She keeps what is left, so the answer is 12 - 4 = 8.", "8", 1.0),
    ("She keeps what is left, so the answer is 12 - 4 = 8.", "12", 0.0),
    ("So \\boxed{3 \\times 4 = 12}", "12", 1.0),
    ("The answer is 4 x 18 = 72", "72", 1.0),
    ("The answer is 5 because x = 2 fails", "5", 1.0),  # words before "=": no equation chain
]


@pytest.mark.parametrize("reply,target,expected", COT_NUMERIC)
def test_numeric_scoring_of_chain_of_thought(reply, target, expected):
    assert U.score(reply, target, "numeric") == expected


COT_CHOICE = [
    ("Looking at the image, the shape on the left is red and round. Option A describes a red "
     "circle, but the question asks for the shape on the right, which is blue with four equal "
     "sides.\n\nThe answer is (B).", "B"),
    ("Let's analyze each option:\n(A) red circle - not present\n(B) blue square - present but small\n"
     "(C) green triangle - largest\n\nAnswer: C", "C"),
    ("The largest object is the green triangle, so the correct option is C.", "C"),
    ("Comparing the sizes, the answer is \\boxed{B}.", "B"),
    ("The object in the top-left corner is a blue square.\nFinal answer: blue square", "B"),
    ("A careful look shows the red circle overlaps the others; therefore the answer is \\boxed{\\text{A}}", "A"),
    ("<think>\nMaybe (A)? No.\n</think>\n\n(C)", "C"),
]


@pytest.mark.parametrize("reply,target", COT_CHOICE)
def test_choice_scoring_of_chain_of_thought(reply, target):
    assert U.extract_choice(reply, CHOICES) == target


def test_exact_scoring_reads_the_stated_answer():
    assert U.score("The shape is round and red.\nThe answer is \\boxed{\\text{yes}}", "yes", "exact") == 1.0
    assert U.score("Step 1: look.\nStep 2: the cube is behind the sphere.\nAnswer: behind", "behind", "exact") == 1.0
    assert U.score("To answer this, note the colour.\nIt is not red.", "red", "exact") == 0.0


def test_last_boxed_balances_nested_braces():
    assert U.last_boxed("x \\boxed{\\frac{a}{b+{c}}} y") == "\\frac{a}{b+{c}}"
    assert U.last_boxed("\\boxed{1} then \\boxed{2") == "1"  # an unclosed last box is skipped
    assert U.last_boxed("no box") is None


def test_score_by_metric():
    assert U.score("B", "B", "choice", CHOICES) == 1.0
    assert U.score("A", "B", "choice", CHOICES) == 0.0
    assert U.score("three", "3", "numeric") == 1.0
    assert U.score("4", "3", "numeric") == 0.0
    assert U.score("3.02", "3", "numeric", rel_tol=0.01) == 1.0
    assert U.score("3.05", "3", "numeric", rel_tol=0.01) == 0.0
    assert U.score("Red.", "red", "exact") == 1.0
    assert U.score("red\nbecause it is red", "red", "exact") == 1.0  # first line
    assert U.score("reddish", "red", "exact") == 0.0
    with pytest.raises(ValueError, match="unknown metric"):
        U.score("x", "x", "bleu")


def test_process_results_adds_family_metric():
    doc = {"target": "3", "metric": "numeric", "choices": None, "rel_tol": 0.0, "family": "Count / Colour"}
    assert U.process_results(doc, ["3"]) == {"accuracy": 1.0, "accuracy_count_colour": 1.0}
    doc["family"] = ""
    assert U.process_results(doc, ["2"]) == {"accuracy": 0.0}


def test_doc_to_messages_places_images_where_the_prompt_puts_them():
    red, blue = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    doc = {"images": [red, blue], "prompt": [{"role": "user", "content": [
        {"type": "text", "text": "first"}, {"type": "image", "text": None},
        {"type": "text", "text": "second"}, {"type": "image", "text": None}]}]}
    msgs = U.doc_to_messages(doc)
    kinds = [p["type"] for p in msgs[0]["content"]]
    assert kinds == ["text", "image", "text", "image"]
    assert msgs[0]["content"][1]["url"].getpixel((0, 0)) == (255, 0, 0)
    assert msgs[0]["content"][3]["url"].getpixel((0, 0)) == (0, 0, 255)
    assert U.doc_to_text(doc) == "first\nsecond"


def _row(answer, choices=None, meta=None):
    return {"id": "ds/test/7", "answer": answer, "choices": choices, "meta": meta}


def test_scoring_columns_auto_metric_and_letter_targets():
    assert scoring_columns(_row("blue square", CHOICES), "auto", None, 0.0)["target"] == "B"
    assert scoring_columns(_row("C", CHOICES), "auto", None, 0.0) == {
        "target": "C", "metric": "choice", "rel_tol": 0.0, "family": ""}
    assert scoring_columns(_row("4"), "auto", None, 0.0)["metric"] == "numeric"
    assert scoring_columns(_row("yes", meta={"question_family": "exist"}), "auto", "question_family", 0.0) == {
        "target": "yes", "metric": "exact", "rel_tol": 0.0, "family": "exist"}


@pytest.mark.parametrize("row,metric,match", [
    (_row("purple", CHOICES), "auto", "neither an option letter"),
    (_row(""), "auto", "empty"),
    (_row(None), "auto", "empty"),
    (_row("four"), "numeric", "not a number"),
    (_row("red"), "choice", "needs options"),
])
def test_scoring_columns_errors_name_the_record(row, metric, match):
    with pytest.raises(EvalError, match=match) as e:
        scoring_columns(row, metric, None, 0.0)
    assert "ds/test/7" in str(e.value)
