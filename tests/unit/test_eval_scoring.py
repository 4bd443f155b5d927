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
    ("1,234", 1234.0), ("2 or three", 2.0), ("seven 8", 7.0), ("none", None), ("", None),
])
def test_extract_number(prediction, expected):
    assert U.extract_number(prediction) == expected


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
