"""dopd_vlm.privileged: renderers per kind and box format, the answer-leak guard, hints without answers."""

from __future__ import annotations

import pytest

from dopd_vlm.privileged import (
    KINDS,
    AnswerLeakError,
    LeakGuard,
    contains_answer,
    format_box,
    hints_from_trace,
    redact_answer,
    render_privileged,
    split_steps,
)

PRIV = {
    "captions": ["A red circle next to a blue square."],
    "regions": [{"bbox": [10.0, 20.0, 50.0, 60.0], "label": "red circle"},
                {"bbox": [100.0, 0.0, 200.0, 100.0], "label": None}],
    "rationale": ["Find the red objects.", "There are 2."],
    "solution": "Count the red objects: 2.",
    "lecture": "Colours name hues.",
    "hints": ["Find the red objects.", "Count them."],
    "ocr": [{"text": "STOP", "bbox": [0.0, 0.0, 20.0, 10.0]}, {"text": "EXIT", "bbox": None}],
    "scene_graph": {"objects": [{"id": 0, "color": "red"}]},
    "program": [{"function": "scene", "inputs": [], "value_inputs": []},
                {"function": "filter_color", "inputs": [0], "value_inputs": ["red"]},
                {"function": "count", "inputs": [1], "value_inputs": []}],
    "answer": "2",
    "hints_exec": ["Find the red objects: 1 + 1 = 2."],
    "hints_summary": ["Count the red objects."],
}
SIZE = (200, 100)


def test_box_formats_convert_canonical_absolute_boxes():
    box = [10, 20, 50, 60]
    assert format_box(box, "abs_xyxy", SIZE) == "[10, 20, 50, 60]"
    # Resized model input (e.g. 400x50): absolute pixels of the resized image.
    assert format_box(box, "abs_xyxy", SIZE, target_size=(400, 50)) == "[20, 10, 100, 30]"
    assert format_box(box, "grid1000", SIZE) == "[50, 200, 250, 600]"
    assert format_box(box, "rel01", SIZE) == "[0.050, 0.200, 0.250, 0.600]"
    assert format_box([0, 0, 200, 100], "grid1000", SIZE) == "[0, 0, 1000, 1000]"
    with pytest.raises(ValueError, match="box_format"):
        format_box(box, "xywh", SIZE)
    with pytest.raises(ValueError, match="image_size"):
        format_box(box, "grid1000", None)


def test_every_kind_renders_its_field():
    for kind in KINDS:
        text = render_privileged(PRIV, [kind], image_size=SIZE)
        assert text, kind
    assert render_privileged(PRIV, ["regions"], image_size=SIZE) == \
        "Objects: red circle [10, 20, 50, 60]; object [100, 0, 200, 100]."
    assert render_privileged(PRIV, ["boxes"], image_size=SIZE) == "Boxes: [10, 20, 50, 60]; [100, 0, 200, 100]."
    assert render_privileged(PRIV, ["program"]) == "Program: scene, filter_color[red], count."
    assert render_privileged(PRIV, ["answer"]) == "Answer: 2"
    assert render_privileged(PRIV, ["ocr"], image_size=SIZE) == 'Text: "STOP" [0, 0, 20, 10]; "EXIT".'


def test_kinds_order_aliases_templates_and_empty_fields():
    text = render_privileged(PRIV, ["caption", "trace"], image_size=SIZE)
    assert text == "Caption: A red circle next to a blue square.\nSteps: Find the red objects. There are 2."
    t = render_privileged(PRIV, ["regions"], templates={"regions": "<{items}>", "box": "({x1},{y1}),({x2},{y2})",
                                                        "region_item": "{label}={box}"},
                          box_format="grid1000", image_size=SIZE)
    assert t == "<red circle=(50,200),(250,600); object=(500,0),(1000,1000)>"
    assert render_privileged({"captions": []}, ["captions", "regions", "answer"], image_size=SIZE) == ""
    with pytest.raises(ValueError, match="unknown privileged kind"):
        render_privileged(PRIV, ["boxes_and_stuff"])
    with pytest.raises(ValueError, match="unknown template keys"):
        render_privileged(PRIV, ["regions"], templates={"region": "x"}, image_size=SIZE)


@pytest.mark.parametrize("text,answer,choices,expected", [
    ("The object is red.", "red", None, True),
    ("The object is reddish.", "red", None, False),  # word boundary
    ("RED circle", "red", None, True),  # case-insensitive
    ("there are three of them", "3", None, True),  # number words
    ("the total is 3.0 dollars", "3", None, True),  # numeric normalisation
    ("1,000 apples", "1000", None, True),
    ("13 apples", "3", None, False),
    ("box [3, 40, 50, 60]", "4", None, False),
    ("a dog and a cat", "B", ["dog", "cat", "bird"], True),  # letter answer leaks through its option
    ("a bird flies", "B", ["dog", "cat", "bird"], False),
    ("so the answer is B", "B", ["dog", "cat", "bird"], True),
    ("b is a letter but the answer (B) is explicit", "B", ["x", "y"], True),
    ("a plain sentence", "A", ["x", "y"], False),  # the article "a" is not the letter A
    ("a large  red\ncircle", "large red circle", None, True),  # whitespace-insensitive
    ("", "red", None, False),
])
def test_contains_answer(text, answer, choices, expected):
    assert contains_answer(text, answer, choices) is expected


def test_leak_guard_policies_and_counts():
    g = LeakGuard("drop")
    assert g.check("a", "Answer: red", "red") == (False, True)
    assert g.check("b", "Objects: blue square", "red") == (True, False)
    assert g.counts() == {"policy": "drop", "checked": 2, "leaked": 1, "dropped": 1, "kept_with_leak": 0}
    k = LeakGuard("keep")
    assert k.check("a", "Answer: red", "red") == (True, True)
    assert k.kept_with_leak == 1 and k.leaked_ids == ["a"]
    with pytest.raises(AnswerLeakError, match="record 'x'"):
        LeakGuard("error").check("x", "it is 4", "four")
    with pytest.raises(ValueError, match="leak policy"):
        LeakGuard("ignore")


def test_hints_from_trace_never_contain_the_answer():
    steps = ["Natalia sold 48/2 = <<48/2=24>>24 clips in May.",
             "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.", "72"]
    hints = hints_from_trace(steps, "72")
    assert hints == ["Natalia sold 48/2 = 24 clips in May.", "Natalia sold 48+24 = ? clips altogether in April and May."]
    steps = ["Count the red objects: there are two.", "Two is more than one.", "So the answer is 2."]
    hints = hints_from_trace(steps, "2")
    assert hints == ["Count the red objects: there are ?.", "? is more than one."]
    assert not any(contains_answer(h, "2") for h in hints)
    assert hints_from_trace(["Look left.", "It is B: the cat."], "B", ["dog", "cat"]) == ["Look left."]


def test_redact_and_split_steps():
    assert redact_answer("red and Red and reddish", "red") == "? and ? and reddish"
    assert split_steps("First add. Then divide.") == ["First add.", "Then divide."]
    assert split_steps("a\n\nb\n") == ["a", "b"]
