"""Tiny checkpoints: written by `dopd-vlm tiny-models`, loaded like any HF checkpoint."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from PIL import Image

from dopd_vlm.tiny import QWEN_SPECIALS, load_tokenizer


def test_committed_tokenizer_has_qwen_specials_in_qwen_order():
    tok = load_tokenizer()
    ids = tok.convert_tokens_to_ids(QWEN_SPECIALS)
    base = ids[0]
    assert ids == list(range(base, base + len(QWEN_SPECIALS)))  # like the real 151643 + i
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.tokenize(" red circle") == ["Ġred", "Ġcircle"]  # scene words are single tokens
    assert tok.tokenize(" 12") == ["Ġ", "1", "2"]  # Qwen's regex splits digits, as the real one does


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_vl_checkpoint_loads_with_auto_classes_and_runs(family, tiny_ckpt):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny_ckpt(family)
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many objects?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image = Image.new("RGB", (56, 56), (200, 30, 30))
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    n_image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_image_tokens == 4  # 56x56 -> 2x2 merged tokens for patch 14 or 16 after resizing
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.shape[-1] == len(processor.tokenizer)
    assert torch.isfinite(out.logits).all()
    gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] <= inputs["input_ids"].shape[1] + 3


def test_text_only_checkpoint(tiny_ckpt):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_ckpt("qwen3")
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok.apply_chat_template([{"role": "user", "content": "2+2?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    assert model(**ids).logits.shape[-1] == len(tok)


def test_tiny_models_cli_sizes_and_reload_identical_logits(tmp_path):
    from transformers import AutoModelForImageTextToText

    out = tmp_path / "t5m"
    res = subprocess.run([sys.executable, "-m", "dopd_vlm.cli", "tiny-models", str(out), "--family",
                          "qwen2_5_vl", "--size", "5m", "--seed", "1"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    model = AutoModelForImageTextToText.from_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    assert 4e6 < n < 7e6
    ids = torch.tensor([[1, 2, 3, 4]])
    again = AutoModelForImageTextToText.from_pretrained(out)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, again(input_ids=ids).logits)
