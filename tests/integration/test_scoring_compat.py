"""Teacher/student compatibility checks: tokenizers and chat templates, with clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
from _views_helpers import ckpt_factory, load

from dopd_vlm.scoring import TokenizerMismatchError, check_tokenizer_compat
from dopd_vlm.tiny import QWEN_VL_CHAT_TEMPLATE


@pytest.fixture(scope="module")
def pair(tiny_ckpt):
    s_adapter, _, s_proc = load(tiny_ckpt("qwen3_vl"))
    t_adapter, _, t_proc = load(tiny_ckpt("qwen3_vl", layers=3, min_pixels=128 * 128, max_pixels=160 * 160))
    return s_adapter, s_proc, t_adapter, t_proc


def _set_template(proc, template):
    proc.chat_template = template
    proc.tokenizer.chat_template = template


def test_same_tokenizer_family_with_other_resolution_is_compatible(pair):
    s_adapter, s_proc, t_adapter, t_proc = pair
    check_tokenizer_compat(s_proc, s_adapter, t_proc, t_adapter)


@pytest.mark.parametrize("family", ["qwen3", "idefics3"])
def test_text_only_and_idefics3_pairs_are_compatible(family, tiny_ckpt, tmp_path_factory):
    ckpt = ckpt_factory(tiny_ckpt, tmp_path_factory)
    s_adapter, _, s_proc = load(ckpt(family))
    t_adapter, _, t_proc = load(ckpt(family, seed=1, layers=3, hi_res=True))
    check_tokenizer_compat(s_proc, s_adapter, t_proc, t_adapter)


def test_a_tokenizer_with_other_ids_is_refused(pair, tiny_ckpt, tmp_path):
    s_adapter, s_proc, t_adapter, _ = pair
    dst = tmp_path / "swapped"
    shutil.copytree(tiny_ckpt("qwen3_vl"), dst)
    tj = json.loads((dst / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    vocab["Ġred"], vocab["Ġblue"] = vocab["Ġblue"], vocab["Ġred"]  # same size, two ids swapped
    (dst / "tokenizer.json").write_text(json.dumps(tj))
    t_proc = t_adapter.load_processor(dst)
    with pytest.raises(TokenizerMismatchError, match=r"tokenizers differ.*'Ġ(red|blue)'"):
        check_tokenizer_compat(s_proc, s_adapter, t_proc, t_adapter)


def test_a_different_eos_token_is_refused(pair):
    s_adapter, s_proc, t_adapter, t_proc = pair
    eos = t_proc.tokenizer.eos_token
    try:
        t_proc.tokenizer.eos_token = "<|endoftext|>"
        with pytest.raises(TokenizerMismatchError, match="eos_token differ"):
            check_tokenizer_compat(s_proc, s_adapter, t_proc, t_adapter)
    finally:
        t_proc.tokenizer.eos_token = eos


@pytest.mark.parametrize("old, new, message", [
    # the teacher's assistant header differs (in the history and the generation prompt alike)
    ("<|im_start|>assistant\n{% endif %}", "<|im_start|>assistant:\n{% endif %}",
     "differ after the user turn"),
    # the teacher renders assistant text with a leading space: same header, other response ids
    ("{% elif 'text' in content %}{{ content['text'] }}",
     "{% elif 'text' in content %}{% if message['role'] == 'assistant' %} {% endif %}{{ content['text'] }}",
     "tokenize the same response differently"),
])
def test_chat_templates_that_change_the_response_are_refused(pair, old, new, message):
    s_adapter, s_proc, t_adapter, t_proc = pair
    assert old in QWEN_VL_CHAT_TEMPLATE
    template = QWEN_VL_CHAT_TEMPLATE.replace(old, new)
    if "assistant:" in new:
        template = template.replace("<|im_start|>{{ message['role'] }}\n",
                                    "<|im_start|>{{ message['role'] }}{{ ':' if message['role'] == 'assistant' }}\n")
    try:
        _set_template(t_proc, template)
        with pytest.raises(TokenizerMismatchError, match=message):
            check_tokenizer_compat(s_proc, s_adapter, t_proc, t_adapter)
    finally:
        _set_template(t_proc, QWEN_VL_CHAT_TEMPLATE)


def test_a_template_whose_history_drops_the_generation_header_is_refused(pair):
    # the generation prompt adds a think block that the rendered history does not contain
    s_adapter, s_proc, t_adapter, t_proc = pair
    template = QWEN_VL_CHAT_TEMPLATE.replace(
        "<|im_start|>assistant\n{% endif %}", "<|im_start|>assistant\n<think>\n\n</think>\n\n{% endif %}")
    try:
        _set_template(s_proc, template)
        with pytest.raises(TokenizerMismatchError, match="renders the assistant turn differently"):
            check_tokenizer_compat(s_proc, s_adapter, t_proc, t_adapter)
    finally:
        _set_template(s_proc, QWEN_VL_CHAT_TEMPLATE)
