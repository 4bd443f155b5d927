"""Views and processor-aware collation with real tiny processors."""

from __future__ import annotations

import pytest
import torch
from _views_helpers import (
    ALL_FAMILIES,
    QWEN_VL_FAMILIES,
    REGIONS,
    ckpt_factory,
    kinds_for,
    load,
    record,
)

from dopd_vlm.adapters import AdapterError, get_adapter
from dopd_vlm.collate import collate
from dopd_vlm.views import privileged_text, render_views

BOX = {"regions": [{"bbox": [10, 6, 50, 30], "label": "red circle"}]}


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt, tmp_path_factory):
    return ckpt_factory(tiny_ckpt, tmp_path_factory)


@pytest.mark.parametrize("family, expected", [
    ("qwen2_vl", "Objects: red circle [100, 100, 500, 500]."),  # 0-1000 grid
    ("qwen3_vl", "Objects: red circle [100, 100, 500, 500]."),  # relative 0-1000
    # absolute pixels of the resized input: smart_resize(60, 100, factor 28) = 56 x 112
    ("qwen2_5_vl", "Objects: red circle [11, 6, 56, 28]."),
    ("idefics3", "Objects: red circle [0.100, 0.100, 0.500, 0.500]."),  # relative 0-1 (project decision)
])
def test_boxes_are_rendered_in_each_models_convention(family, expected, ckpt):
    path = ckpt(family)
    adapter = get_adapter(path)
    _, processor = adapter.load(path)
    rec = record(0, family, BOX, size=(100, 60))
    assert privileged_text(rec, ["regions"], adapter=adapter, processor=processor) == expected


def test_resized_absolute_boxes_need_the_processor(ckpt):
    adapter = get_adapter(ckpt("qwen2_5_vl"))
    rec = record(0, "qwen2_5_vl", BOX, size=(100, 60))
    with pytest.raises(AdapterError, match="pass the processor"):
        render_views(rec, ["regions"], adapter=adapter)
    plain, priv, _ = render_views(record(0, "qwen2_5_vl"), ["regions"], adapter=adapter)  # no boxes: fine
    assert plain == priv


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_views_share_images_and_differ_only_by_the_privileged_text(family, ckpt):
    adapter, _, processor = load(ckpt(family))
    recs = [record(0, family, REGIONS), record(1, family, size=(56, 112), question="What color is the circle?")]
    views = collate(recs, processor, adapter, kinds_for(family))
    plain, priv = views["plain"], views["priv"]
    assert set(plain.vision) == set(priv.vision)
    for k in plain.vision:
        assert torch.equal(plain.vision[k], priv.vision[k])
    assert plain.images_per_sample == priv.images_per_sample == [len(r["images"]) for r in recs]
    assert "Hints: count the red objects" in priv.texts[0] and "Hints" not in plain.texts[0]
    assert priv.texts[1] == plain.texts[1]
    # left padding: every row's last column is a real token, the shorter rows start with padding
    for b in (plain, priv):
        assert b.attention_mask_B_T[:, -1].all()
        assert b.attention_mask_B_T.sum(-1).min() < b.prompt_len
    if family in QWEN_VL_FAMILIES:
        assert set(plain.token_extras) == {"mm_token_type_ids"}


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_expand_and_select_match_collating_the_rows_directly(family, ckpt):
    adapter, _, processor = load(ckpt(family))
    r0, r1, r2 = record(0, family), record(1, family, size=(56, 112)), record(2, family, size=(112, 56))
    batch = collate([r0, r1, r2], processor, adapter, views=("plain",))["plain"]

    def same(a, b):
        assert torch.equal(a.input_ids_B_T, b.input_ids_B_T)
        assert torch.equal(a.attention_mask_B_T, b.attention_mask_B_T)
        assert a.token_extras.keys() == b.token_extras.keys() and a.vision.keys() == b.vision.keys()
        for k in a.token_extras:
            assert torch.equal(a.token_extras[k], b.token_extras[k])
        for k in a.vision:
            assert torch.equal(a.vision[k], b.vision[k])
        assert a.images_per_sample == b.images_per_sample

    same(batch.repeat_interleave(2), collate([r0, r0, r1, r1, r2, r2], processor, adapter, views=("plain",))["plain"])
    same(batch.select([2, 0]), collate([r2, r0], processor, adapter, views=("plain",))["plain"])
    same(batch.select([1]), collate([r1], processor, adapter, views=("plain",))["plain"])


def test_teacher_processor_with_other_resolution_gets_its_own_tokens(ckpt):
    s_adapter, _, s_proc = load(ckpt("qwen2_vl"))
    t_adapter, _, t_proc = load(ckpt("qwen2_vl", hi_res=True))
    recs = [record(0, "qwen2_vl", REGIONS)]
    s = collate(recs, s_proc, s_adapter, ["regions"])["priv"]
    t = collate(recs, t_proc, t_adapter, ["regions"])["priv"]
    assert t.prompt_len > s.prompt_len
    assert t.vision["pixel_values"].shape[0] > s.vision["pixel_values"].shape[0]
    # grid1000 boxes do not depend on the resolution: the same privileged text for both
    assert s.texts == t.texts


def test_collate_errors_name_the_record(ckpt):
    adapter, _, tok = load(ckpt("qwen3"))
    vl_rec = record(5, "qwen3_vl")
    with pytest.raises(ValueError, match=r"test/default/train/5.*takes no images"):
        collate([vl_rec], tok, adapter)
    with pytest.raises(ValueError, match="unknown views"):
        collate([record(0, "qwen3")], tok, adapter, views=("teacher",))
