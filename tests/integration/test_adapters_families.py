"""Adapter selection, loading rules and prompt encoding for every family."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from _views_helpers import ALL_FAMILIES, IMAGE_TOKEN, QWEN_VL_FAMILIES, ckpt_factory, load, record

from dopd_vlm.adapters import (
    AdapterError,
    CausalLMAdapter,
    Idefics3Adapter,
    Qwen2_5_VLAdapter,
    Qwen2VLAdapter,
    Qwen3VLAdapter,
    get_adapter,
)
from dopd_vlm.views import render_views

EXPECTED = {"qwen2_vl": (Qwen2VLAdapter, "grid1000"), "qwen2_5_vl": (Qwen2_5_VLAdapter, "abs_xyxy"),
            "qwen3_vl": (Qwen3VLAdapter, "grid1000"), "qwen3": (CausalLMAdapter, "abs_xyxy"),
            "idefics3": (Idefics3Adapter, "rel01")}


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt, tmp_path_factory):
    return ckpt_factory(tiny_ckpt, tmp_path_factory)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_adapter_is_chosen_from_the_checkpoint_model_type(family, ckpt):
    from transformers import AutoConfig

    path = ckpt(family)
    cls, box_format = EXPECTED[family]
    cfg = AutoConfig.from_pretrained(path)
    for source in (path, cfg, json.loads((Path(path) / "config.json").read_text())):
        adapter = get_adapter(source)
        assert type(adapter) is cls and adapter.box_format == box_format
    assert type(get_adapter(cls.family)) is cls


def test_other_causal_lms_get_the_text_adapter_and_unknown_types_fail():
    assert type(get_adapter({"model_type": "llama"})) is CausalLMAdapter
    with pytest.raises(AdapterError, match=r"no adapter for model_type 'vit'"):
        get_adapter({"model_type": "vit"})
    with pytest.raises(AdapterError, match="no 'model_type'"):
        get_adapter({"architectures": ["X"]})


def test_only_safetensors_weights_are_loaded(ckpt, tmp_path):
    src = ckpt("qwen3")
    dst = tmp_path / "pickled"
    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        f.unlink()
    (dst / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(AdapterError, match=r"no \*.safetensors weights"):
        get_adapter(str(dst)).load(str(dst))
    with pytest.raises(AdapterError, match="dtype"):
        get_adapter(src).load(src, dtype="float8")


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_encode_prompts_left_pads_and_counts_visual_tokens(family, ckpt):
    adapter, model, processor = load(ckpt(family))
    recs = [record(0, family, size=(84, 84)), record(1, family, size=(56, 28), question="Is there a blue square?")]
    msgs, imgs = zip(*[(render_views(r, [])[0], r["images"]) for r in recs])
    enc = adapter.encode_prompts(processor, list(msgs), list(imgs))
    mask = enc["attention_mask"]
    assert mask[:, -1].all() and not mask[:, 0].all()  # left padding
    pad = adapter.pad_token_id(processor)
    assert (enc["input_ids"][mask == 0] == pad).all()
    assert adapter.vocab_size(processor) == len(adapter.tokenizer(processor))
    tok = adapter.tokenizer(processor)
    last = tok.decode(enc["input_ids"][0, -8:])
    assert last.endswith("Assistant:" if family == "idefics3" else "assistant\n")  # the generation prompt
    n_image_tokens = (enc["input_ids"] == tok.convert_tokens_to_ids(IMAGE_TOKEN.get(family, "<|image_pad|>"))).sum(-1)
    if family in QWEN_VL_FAMILIES:
        mm = enc["mm_token_type_ids"]
        assert torch.equal(mm == 1, enc["input_ids"] == tok.convert_tokens_to_ids("<|image_pad|>"))
        merge = processor.image_processor.merge_size
        per_image = enc["image_grid_thw"].prod(-1) // merge**2
        assert n_image_tokens.tolist() == per_image.tolist()
    elif family == "idefics3":
        from dopd_vlm.adapters._tiny_idefics3 import IMAGE_SEQ_LEN

        tiles = enc["pixel_attention_mask"].flatten(2).any(-1).sum(-1)  # real (non-padding) tiles per row
        assert n_image_tokens.tolist() == (tiles * IMAGE_SEQ_LEN).tolist()
        assert tiles[0] > tiles[1]  # the larger image is split into more tiles
    else:
        assert set(enc) == {"input_ids", "attention_mask"}


def test_text_only_adapter_refuses_images(ckpt):
    adapter, _, tok = load(ckpt("qwen3"))
    rec = record(0, "qwen3_vl")
    with pytest.raises(AdapterError, match="text-only model got a 'image' part"):
        adapter.encode_prompts(tok, [rec["prompt"]], [[]])


def test_a_tokenizer_wider_than_the_lm_head_is_refused(ckpt):
    adapter, model, processor = load(ckpt("qwen3"))
    model.resize_token_embeddings(adapter.vocab_size(processor) - 10)
    with pytest.raises(AdapterError, match="LM head has .* rows but the tokenizer has"):
        adapter.validate(model, processor, "tiny")
