"""The answer-leak guard (``dopd_vlm.privileged.contains_answer``) after normalisation: one block of
cases per phrasing class that must be flagged, and one per class of ordinary privileged text that
must not be (a guard that flags everything is as useless as one that flags nothing)."""

from __future__ import annotations

import pytest

from dopd_vlm.privileged import (
    answer_spans,
    contains_answer,
    hints_from_trace,
    privileged_text_for_leak_check,
    redact_answer,
)

CHOICES = ["dog", "cat", "bird"]
NUMBERED = ["x1", "y2", "z3"]  # option texts that never occur in the sentences below

# (text, answer, choices) that state the answer
LEAKS = {
    "case and punctuation": [
        ("Answer: RED.", "red", None), ("it is red!", "Red", None), ("(red)", "red", None),
        ("new-york city", "New York", None), ("a T shirt", "t-shirt", None), ("red,", "red", None),
    ],
    "unicode forms": [
        ("ＲＥＤ circle", "red", None),  # full-width letters (NFKC)
        ("the ﬁsh", "fish", None),  # ligature
        ("a Café", "cafe", None), ("a cafe", "café", None),  # accents
        ("cafe\u0301 au lait", "café", None),  # combining accent
        ("２ cubes", "2", None),  # full-width digit
        ("the\u00a0red\u2003cube", "red cube", None),  # non-breaking and em spaces
    ],
    "whitespace": [
        ("a large  red\ncircle", "large red circle", None), ("large\tred circle", "large red  circle", None),
    ],
    "number formats": [
        ("there are 1,000 of them", "1000", None), ("1000.0 units", "1,000", None), ("1000 units", "1000.0", None),
        ("one thousand dots", "1000", None), ("a hundred dots", "100", None), ("three cubes", "3", None),
        ("twenty-one apples", "21", None), ("twenty one apples", "21", None), ("one hundred and five", "105", None),
        ("it is 21", "twenty-one", None), ("0.5 of it", ".5", None), (".5 of it", "0.5", None),
        ("1/2 of it", "0.5", None), ("0.50", "1/2", None), ("the total is 3.0 dollars", "3", None),
        ("there is one cube", "1", None), ("the answer is one", "1", None), ("it is −4", "-4", None),
        ("2 cubes.", "2", None), ("so 72.", "72", None),
        # LaTeX fractions, as math hints and answers write them
        ("half is $\\frac{1}{2}$", "0.5", None), ("x = \\dfrac{3}{4}", "3/4", None), ("use \\tfrac12", "0.5", None),
        ("we get 0.5", "\\frac{1}{2}", None), ("so $\\frac{1}{2}$", "$\\frac{1}{2}$", None),
    ],
    "option letter in a sentence": [
        ("the answer is (B)", "B", CHOICES), ("option B", "B", CHOICES), ("Option b is right", "B", CHOICES),
        ("choice （Ｂ）", "B", CHOICES), ("B is correct", "B", CHOICES), ("the correct answer is b.", "B", CHOICES),
        ("Answer: A", "A", CHOICES), ("the answer is [C]", "C", CHOICES), ("so it must be (B).", "B", CHOICES),
        ("answer = B", "B", CHOICES), ("\\boxed{B}", "B", CHOICES), ("$\\boxed{\\text{B}}$", "B", CHOICES),
        ("the second option", "B", CHOICES), ("option 2 fits", "B", CHOICES), ("choice no. 2", "B", CHOICES),
        ("option A is wrong, B is right", "B", CHOICES),
    ],
    "option text of a letter answer": [
        ("a cat sat", "B", CHOICES), ("A CAT sat", "B", CHOICES), ("it is a dog", "A", CHOICES),
    ],
    "letter of a choice-text answer": [
        ("option B", "cat", CHOICES), ("the answer is (b)", "Cat", CHOICES),
    ],
}

# (text, answer, choices) that do not state the answer
CLEAN = {
    "other words": [
        ("The object is reddish.", "red", None), ("a bored cat", "red", None), ("", "red", None),
        ("Objects: blue square", "red", None),
    ],
    "numbers inside other numbers": [
        ("13 apples", "3", None), ("2.5 cm", "2", None), ("12 cubes", "2", None), ("v2 model", "2", None),
        ("1,200 dots", "200", None), ("0.25", "2", None), ("take \\frac{1}{2} of it", "1", None),
        ("take \\frac{1}{2} of it", "2", None),
    ],
    "coordinates": [
        ("box [3, 2, 50, 60]", "2", None), ("at (12, 2)", "2", None), ("point (2.0, 7.5)", "2", None),
        ("box [3, 40, 50, 60]", "4", None),
    ],
    "positions and labels": [
        ("red circle at row 2 column 3", "2", None), ("step 2: filter the cubes", "2", None), ("object #2", "2", None),
        ("see figure 2", "2", None),
    ],
    "the pronoun one": [
        ("keep the red one", "1", None), ("the large red one is left", "1", None), ("one of them is red", "1", None),
        ("this one", "1", None),
    ],
    "letters that are words or enumerations": [
        ("a plain sentence", "A", ["x", "y"]), ("the answer is a red cube", "A", ["x", "y"]),
        ("(a) look left (b) look right", "B", CHOICES), ("Be careful", "B", CHOICES), ("a bird flies", "B", CHOICES),
        ("option A is ruled out first", "cat", CHOICES), ("I think so", "I", [f"colour {k}" for k in range(10)]),
    ],
    "a listing of the options": [
        ("Options: A, B, C", "B", NUMBERED), ("option A or option B", "B", NUMBERED),
        ("options A and B", "A", NUMBERED), ("option 1 or option 2", "B", NUMBERED), ("the first step", "A", NUMBERED),
    ],
}


def _flat(groups):
    return [pytest.param(*case, id=f"{name}: {case[0][:30]}") for name, cases in groups.items() for case in cases]


@pytest.mark.parametrize("text,answer,choices", _flat(LEAKS))
def test_guard_flags_every_phrasing_class(text, answer, choices):
    assert contains_answer(text, answer, choices), (text, answer)


@pytest.mark.parametrize("text,answer,choices", _flat(CLEAN))
def test_guard_does_not_flag_ordinary_privileged_text(text, answer, choices):
    assert not contains_answer(text, answer, choices), (text, answer, answer_spans(text, answer, choices))


def test_spans_and_redaction_map_back_to_the_original_characters():
    text = "There are twenty-one cubes, ２ boxes and ＲＥＤ paint"
    assert redact_answer(text, "21") == "There are ? cubes, ２ boxes and ＲＥＤ paint"
    assert redact_answer(text, "2") == "There are twenty-one cubes, ? boxes and ＲＥＤ paint"
    assert redact_answer(text, "red") == "There are twenty-one cubes, ２ boxes and ? paint"
    assert redact_answer("So the answer is (B): the cat.", "B", CHOICES) == "So the ?: the ?."
    assert redact_answer("cafe\u0301 noir", "café") == "? noir"


def test_hints_from_trace_redacts_new_phrasings():
    hints = hints_from_trace(["There are 1,000 dots.", "Half of 2,000 is one thousand.", "So 1000."], "1000")
    assert hints == ["There are ? dots.", "Half of 2,000 is ?."]
    assert hints_from_trace(["Look at the cat.", "Option B fits."], "B", CHOICES) == ["Look at the ?."]


def test_leak_check_text_ignores_box_coordinates_and_scene_graph_numbers():
    """A count answer "2" is not flagged by box coordinates, object ids, rows or relation indices."""
    priv = {"regions": [{"bbox": [2.0, 12.0, 22.0, 30.0], "label": "red cube"}],
            "scene_graph": {"objects": [{"id": 2, "color": "red", "shape": "cube", "row": 2, "column": 1}],
                            "relations": [[0, "left of", 2]]}}
    text = privileged_text_for_leak_check(priv, ["regions", "scene_graph"])
    assert not contains_answer(text, "2")
    assert contains_answer(text, "red") and contains_answer(text, "cube")  # attributes still count
    assert not contains_answer(privileged_text_for_leak_check(priv, ["boxes"]), "2")
