"""Box parsing and coordinate conversion for `dopd-vlm annotate` (issue 13, point 3).

The replies below are written in the published output formats of each annotator family: Qwen2.5-VL
grounding JSON in a fenced block with absolute pixels of its resized input, Qwen3-VL JSON in 0-1000
coordinates, Qwen2-VL's box special tokens, plain lists, and the usual damage (truncation at
max_tokens, text around the JSON, garbage). Every parsed box is converted to the record's canonical
absolute xyxy and rendered back in the annotator's own convention, which must give the numbers back.
"""

from __future__ import annotations

import pytest

from data_builders.annotate import KINDS, parse_reply, parse_verdict
from data_builders.boxparse import BoxParseError, canonical_regions, input_size, parse_boxes, to_canonical
from dopd_vlm.privileged import render_privileged

SIZE = (640, 427)  # a COCO-sized photo: Qwen2.5-VL resizes it to a multiple of 28

QWEN25_FENCED = """```json
[
\t{"bbox_2d": [28, 55, 308, 392], "label": "brown dog"},
\t{"bbox_2d": [392, 140, 616, 420], "label": "red frisbee"}
]
```"""
QWEN3_PLAIN = '[{"bbox_2d": [44, 129, 481, 918], "label": "brown dog"}, {"bbox_2d": [612, 328, 962, 983], "label": "red frisbee"}]'
QWEN2_TOKENS = ("<|object_ref_start|>brown dog<|object_ref_end|><|box_start|>(44,129),(481,918)<|box_end|> and "
                "<|object_ref_start|>red frisbee<|object_ref_end|><|box_start|>(612,328),(962,983)<|box_end|>")
TRUNCATED = '```json\n[\n\t{"bbox_2d": [28, 55, 308, 392], "label": "brown dog"},\n\t{"bbox_2d": [392, 140, 6'
TRAILING = ('Sure! Here are the objects:\n[{"bbox_2d": [28, 55, 308, 392], "label": "brown dog"}]\n'
            "The dog is on the left of the frisbee.")
PLAIN_LISTS = "brown dog: [18, 34, 196, 245]\nred frisbee: [250, 87, 393, 262]"
GARBAGE = ["", "   ", "I cannot see any objects in this image.", "configmented initial\ufffdvidefuncbox operation",
           '{"objects": "none"}', "[1, 2, 3]"]


def _roundtrip(regions, box_format, target_size=None) -> str:
    return render_privileged({"regions": regions}, ["regions"], box_format=box_format, image_size=SIZE,
                             target_size=target_size)


def test_qwen2_5_vl_absolute_pixels_of_the_resized_input():
    w_in, h_in = input_size(SIZE)
    assert (w_in % 28, h_in % 28) == (0, 0) and (w_in, h_in) == (644, 420)
    regs = canonical_regions(QWEN25_FENCED, "qwen2_5_vl", SIZE)
    assert [r["label"] for r in regs] == ["brown dog", "red frisbee"]
    # canonical: pixels of the original 640x427 image (x * 640/644, y * 427/420), clipped to the image
    assert regs[0]["bbox"] == pytest.approx([28 * 640 / 644, 55 * 427 / 420, 308 * 640 / 644, 392 * 427 / 420], abs=0.01)
    assert regs[1]["bbox"][2] <= 640 and regs[1]["bbox"][3] <= 427
    # rendered back for a Qwen2.5-VL model with the same processor: the annotator's numbers again
    assert _roundtrip(regs, "abs_xyxy", (w_in, h_in)) == \
        "Objects: brown dog [28, 55, 308, 392]; red frisbee [392, 140, 616, 420]."


def test_qwen3_vl_and_qwen2_vl_grid_1000():
    a = canonical_regions(QWEN3_PLAIN, "qwen3_vl", SIZE)
    b = canonical_regions(QWEN2_TOKENS, "qwen2_vl", SIZE)
    assert a == b
    assert a[0]["bbox"] == pytest.approx([44 * 0.64, 129 * 0.427, 481 * 0.64, 918 * 0.427], abs=0.01)
    assert _roundtrip(a, "grid1000") == "Objects: brown dog [44, 129, 481, 918]; red frisbee [612, 328, 962, 983]."


def test_truncated_and_trailing_text_and_plain_lists():
    regs = canonical_regions(TRUNCATED, "qwen2_5_vl", SIZE)  # the cut second object is dropped, the first kept
    assert [r["label"] for r in regs] == ["brown dog"]
    assert canonical_regions(TRAILING, "qwen2_5_vl", SIZE) == regs
    plain = canonical_regions(PLAIN_LISTS, "abs", SIZE)
    assert plain == [{"bbox": [18.0, 34.0, 196.0, 245.0], "label": "brown dog"},
                     {"bbox": [250.0, 87.0, 393.0, 262.0], "label": "red frisbee"}]
    assert _roundtrip(plain, "abs_xyxy") == "Objects: brown dog [18, 34, 196, 245]; red frisbee [250, 87, 393, 262]."
    rel = canonical_regions('[{"bbox_2d": [0.1, 0.2, 0.5, 0.9], "label": "dog"}]', "rel01", SIZE)
    assert rel[0]["bbox"] == pytest.approx([64.0, 85.4, 320.0, 384.3], abs=0.01)
    assert _roundtrip(rel, "rel01") == "Objects: dog [0.100, 0.200, 0.500, 0.900]."


def test_garbage_and_invalid_boxes_are_reasons_not_rows():
    for text in GARBAGE:
        with pytest.raises(BoxParseError):
            canonical_regions(text, "qwen2_5_vl", SIZE)
    bad = {
        '[{"bbox_2d": [300, 50, 100, 200], "label": "x"}]': "reversed",
        '[{"bbox_2d": [700, 450, 900, 600], "label": "x"}]': "outside",
        '[{"bbox_2d": [10, 10, "a", 20], "label": "x"}]': "non-numeric",
        '[{"bbox_2d": [10, 10, 20], "label": "x"}]': "4 numbers",
        '[{"bbox_2d": [10, 10, 50, 50]}]': "no label",
        '[{"bbox_2d": [0.1, 0.2, 0.5, 0.9], "label": "x"}, {"bbox_2d": [5, 5, 90, 90], "label": "y"}]': "relative",
    }
    for text, why in bad.items():
        conv = "rel01" if why == "relative" else "abs"
        with pytest.raises(BoxParseError, match=why):
            canonical_regions(text, conv, SIZE)
    # overshoot past the border (models round up) is clipped, not refused
    assert to_canonical([600, 400, 660, 440], "abs", SIZE) == [600.0, 400.0, 640.0, 427.0]


def test_kind_parsers_and_recheck_verdicts():
    hints = parse_reply(KINDS["hints"], "1. Find the red cubes.\n2. Count them.\n", "stop", None, "abs", 0, 0)
    assert hints == ["Find the red cubes.", "Count them."]
    with pytest.raises(BoxParseError, match="computed result"):
        parse_reply(KINDS["hints"], "Step 1: 48/2 = 24 clips.", "stop", None, "abs", 0, 0)
    assert parse_reply(KINDS["hints_exec"], "- 48/2 = 24 clips.", "stop", None, "abs", 0, 0) == ["48/2 = 24 clips."]
    with pytest.raises(BoxParseError, match="cut at"):
        parse_reply(KINDS["captions"], "A red cube next to", "length", None, "abs", 0, 0)
    assert parse_reply(KINDS["captions"], " A red cube.\n", "stop", None, "abs", 0, 0) == ["A red cube."]
    assert parse_verdict('{"correct": true, "reveals_answer": false, "reason": "ok"}') == (True, "ok")
    assert parse_verdict('```json\n{"correct": true, "reveals_answer": true}\n```')[0] is False
    assert parse_verdict('{"correct": false, "reason": "the box misses the dog"}') == \
        (False, "incorrect: the box misses the dog")
    assert parse_verdict("Yes, all correct.")[0] is True
    with pytest.raises(ValueError):
        parse_verdict("circle")
    assert parse_boxes(QWEN2_TOKENS)[1] == {"bbox": [612.0, 328.0, 962.0, 983.0], "label": "red frisbee"}
