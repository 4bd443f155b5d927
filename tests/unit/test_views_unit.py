"""Views (pure parts): plain vs privileged messages, placement, record validation."""

from __future__ import annotations

import copy

import pytest

from dopd_vlm.views import RecordError, privileged_text, render_views


class _Img:
    size = (200, 100)


def _record(privileged=None, content=None, images=None, **extra):
    content = content if content is not None else [{"type": "image"}, {"type": "text", "text": "How many objects?"}]
    return {"id": "src/cfg/train/7", "images": [_Img()] if images is None else images,
            "prompt": [{"role": "user", "content": content}], "privileged": privileged or {},
            "meta": {"image_size": [200, 100]}, **extra}


class _GridAdapter:
    box_format = "grid1000"

    def box_target_size(self, processor, image_size):
        return None


class _ResizedAbsAdapter:
    box_format = "abs_xyxy"

    def box_target_size(self, processor, image_size):
        return (image_size[0] // 2, image_size[1] // 2)


REGIONS = {"regions": [{"bbox": [20, 10, 60, 50], "label": "red circle"}]}


def test_empty_privileged_gives_identical_views():
    rec = _record()
    plain, priv, images = render_views(rec, ["regions", "hints"])
    assert plain == priv == rec["prompt"]
    assert images == rec["images"]
    plain, priv, _ = render_views(_record(REGIONS), [])  # no kinds asked: no privileged text either
    assert plain == priv


def test_privileged_text_goes_after_the_question_in_the_last_user_turn():
    rec = _record(REGIONS)
    before = copy.deepcopy(rec["prompt"])
    plain, priv, _ = render_views(rec, ["regions"])
    assert rec["prompt"] == before  # the record is not mutated
    assert plain == before
    assert priv[0]["content"][:2] == before[0]["content"]
    assert priv[0]["content"][2] == {"type": "text", "text": "\nObjects: red circle [20, 10, 60, 50]."}


def test_string_content_and_pre_rendered_context():
    rec = _record(content="How many objects?", images=[], privileged_context="Hints: look left")
    rec["meta"] = {}
    plain, priv, images = render_views(rec, "context")
    assert plain[0]["content"] == "How many objects?"
    assert priv[0]["content"] == "How many objects?\nHints: look left"
    assert images == []
    with pytest.raises(ValueError, match="'context'"):
        render_views(rec, "regions")


def test_boxes_follow_the_adapter_convention():
    rec = _record(REGIONS)
    assert privileged_text(rec, ["regions"], adapter=_GridAdapter()) == "Objects: red circle [100, 100, 300, 500]."
    assert privileged_text(rec, ["regions"], adapter=_ResizedAbsAdapter()) == "Objects: red circle [10, 5, 30, 25]."
    assert privileged_text(rec, ["regions"]) == "Objects: red circle [20, 10, 60, 50]."


def test_templates_are_configurable():
    rec = _record(REGIONS)
    text = privileged_text(rec, ["regions"], templates={"regions": "Boxes with labels: {items}"})
    assert text == "Boxes with labels: red circle [20, 10, 60, 50]"


def test_record_errors_name_the_record_and_field():
    with pytest.raises(RecordError, match=r"src/cfg/train/7.*'images'.*2 images for 1"):
        render_views(_record(images=[_Img(), _Img()]), [])
    bad = _record()
    bad["prompt"].append({"role": "assistant", "content": "x"})
    with pytest.raises(RecordError, match=r"src/cfg/train/7.*last message must be the user turn"):
        render_views(bad, [])
    with pytest.raises(RecordError, match=r"'prompt'"):
        render_views({"id": "r1", "prompt": []}, [])
    with pytest.raises(RecordError, match=r"src/cfg/train/7.*'privileged'"):
        render_views(_record({"regions": [{"label": "no box"}]}), ["regions"])
