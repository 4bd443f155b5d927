"""Rollouts for every adapter family: batched sampling, EOS masks, prompt-major order, and the
student's log-probs at generation equal to those at scoring (temperature 1)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from _views_helpers import ALL_FAMILIES, VL_FAMILIES, ckpt_factory, force_early_eos, load, record

from dopd_vlm.collate import collate
from dopd_vlm.rollout import sample_rollouts
from dopd_vlm.scoring import sampled_logprobs, score


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt, tmp_path_factory):
    return ckpt_factory(tiny_ckpt, tmp_path_factory)


def _two_prompts(family):
    return [record(0, family), record(1, family, size=(56, 112), question="What color is the circle?")]


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_rollouts_mask_order_and_logprobs_match_scoring(family, ckpt):
    adapter, model, processor = load(ckpt(family))
    force_early_eos(model)
    eos_ids = adapter.eos_token_ids(model, processor)
    plain = collate(_two_prompts(family), processor, adapter, views=("plain",))["plain"]
    G, max_new = 3, 8
    torch.manual_seed(0)
    model.train()
    ro = sample_rollouts(model, processor, adapter, plain, G, max_new, return_logprobs=True)
    assert model.training  # sampling ran in eval mode and restored the mode
    model.eval()
    ids, mask = ro.response_ids_B_R, ro.response_mask_B_R
    assert ids.shape[0] == 2 * G and ids.shape[1] <= max_new and mask.dtype == torch.bool
    assert ro.prompt_index_B.tolist() == [0, 0, 0, 1, 1, 1]
    is_eos = torch.isin(ids, torch.tensor(eos_ids))
    lengths = mask.sum(-1)
    ended = ~ro.truncated_B
    assert ended.any()  # some responses stopped at an EOS before max_new_tokens
    for b in range(2 * G):
        n = int(lengths[b])
        assert mask[b, :n].all() and not mask[b, n:].any()
        if ended[b]:
            assert is_eos[b, n - 1] and not is_eos[b, :n - 1].any()  # mask includes the first EOS
        else:
            assert n == ids.shape[1] and not is_eos[b].any()
        assert (ids[b, n:] == plain.pad_token_id).all()
    with torch.no_grad():
        logits = score(model, adapter, plain.repeat_interleave(G), ids, mask)
        wrong_order = score(model, adapter, plain.select([0, 1, 0, 1, 0, 1]), ids, mask)
    lp = sampled_logprobs(logits, ids)
    torch.testing.assert_close(lp[mask], ro.logprobs_B_R[mask], atol=1e-5, rtol=0)
    assert (ro.logprobs_B_R[~mask] == 0).all()
    # the check is sensitive to the prompt of each row (prompt-major order matters)
    assert (sampled_logprobs(wrong_order, ids) - lp)[mask].abs().max() > 1e-3


@pytest.mark.parametrize("family", VL_FAMILIES)
def test_image_placeholders_are_never_sampled_and_never_scored(family, ckpt):
    adapter, model, processor = load(ckpt(family))
    plain = collate([record(0, family)], processor, adapter, views=("plain",))["plain"]
    placeholder = adapter.placeholder_token_ids(processor)[0]
    probe = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():  # make the placeholder by far the likeliest next token everywhere
        hidden = score(model, adapter, plain, probe, torch.ones_like(probe, dtype=torch.bool), output="hidden")
        model.get_output_embeddings().weight[placeholder] = 100 * hidden.mean((0, 1))
        logits = score(model, adapter, plain, probe, torch.ones_like(probe, dtype=torch.bool))
    assert (logits.argmax(-1) == placeholder).all()
    torch.manual_seed(0)
    ro = sample_rollouts(model, processor, adapter, plain, 2, 6)
    assert not (ro.response_ids_B_R == placeholder).any()
    bad = ro.response_ids_B_R.clone()
    bad[0, 1] = placeholder
    with pytest.raises(ValueError, match="placeholder"):
        score(model, adapter, plain.repeat_interleave(2), bad, ro.response_mask_B_R)


def test_sampling_ignores_checkpoint_generation_defaults(ckpt):
    adapter, model, processor = load(ckpt("qwen3_vl"))
    plain = collate(_two_prompts("qwen3_vl"), processor, adapter, views=("plain",))["plain"]
    torch.manual_seed(7)
    ref = sample_rollouts(model, processor, adapter, plain, 2, 6)
    # defaults a real checkpoint might ship (Qwen2.5-VL ships repetition_penalty 1.05)
    model.generation_config.repetition_penalty = 5.0
    model.generation_config.top_k = 2
    model.generation_config.temperature = 0.1
    torch.manual_seed(7)
    got = sample_rollouts(model, processor, adapter, plain, 2, 6)
    assert torch.equal(got.response_ids_B_R, ref.response_ids_B_R)
    torch.manual_seed(7)
    asked = sample_rollouts(model, processor, adapter, plain, 2, 6, top_k=2)  # asked for: it is used
    assert not torch.equal(asked.response_ids_B_R, ref.response_ids_B_R)


def test_sampling_arguments_are_checked(ckpt):
    adapter, model, processor = load(ckpt("qwen3"))
    plain = collate([record(0, "qwen3")], processor, adapter, views=("plain",))["plain"]
    for kw in ({"temperature": 0.0}, {"top_p": 0.0}, {"top_k": -1}, {"engine": "sglang"}):
        with pytest.raises(ValueError):
            sample_rollouts(model, processor, adapter, plain, 2, 4, **kw)
    with pytest.raises(ValueError, match="num_generations"):
        sample_rollouts(model, processor, adapter, plain, 0, 4)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_engine_without_vllm_says_so(ckpt):
    adapter, model, processor = load(ckpt("qwen3"))
    plain = collate([record(0, "qwen3")], processor, adapter, views=("plain",))["plain"]
    with pytest.raises(RuntimeError, match=r"engine='vllm' needs the optional vLLM package.*engine='hf'"):
        sample_rollouts(model, processor, adapter, plain, 2, 4, engine="vllm")
