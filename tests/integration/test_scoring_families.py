"""Scoring the same response under each view, for every adapter family (tiny models, fp32)."""

from __future__ import annotations

import pytest
import torch
from _views_helpers import (
    ALL_FAMILIES,
    IMAGE_TOKEN,
    QWEN_VL_FAMILIES,
    REGIONS,
    VL_FAMILIES,
    cached_loader,
    ckpt_factory,
    kinds_for,
    load,
    record,
)

from dopd_vlm.collate import collate
from dopd_vlm.scoring import assert_same_responses, lm_head_weight, logits_from_hidden, score

ATOL = 1e-5  # fp32 tolerance for padding / batch-composition invariance


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt, tmp_path_factory):
    return ckpt_factory(tiny_ckpt, tmp_path_factory)


@pytest.fixture(scope="module")
def loaded(ckpt):
    return cached_loader(ckpt)


def _responses(B, R, seed=0, vocab=3000):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, R), generator=g)
    return ids, torch.ones(B, R, dtype=torch.bool)


def reference_logits(model, adapter, batch, i, response_ids_R):
    """Row ``i`` scored alone, unpadded, through the model's own forward (its own position
    computation, no cached rope_deltas)."""
    keep = batch.attention_mask_B_T[i].bool()
    ids = torch.cat([batch.input_ids_B_T[i][keep], response_ids_R[:-1]])[None]
    kwargs = {}
    for k, v in batch.token_extras.items():
        kwargs[k] = torch.cat([v[i][keep], torch.zeros(len(response_ids_R) - 1, dtype=v.dtype)])[None]
    kwargs.update(adapter.split_vision(batch.vision, batch.images_per_sample)[i])
    if "rope_deltas" in model.model.__dict__:
        model.model.rope_deltas = None
    with torch.no_grad():
        logits = model(input_ids=ids, **kwargs).logits[0]
    T = int(keep.sum())
    return logits[T - 1:, :batch.vocab_size]


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_empty_privileged_info_gives_identical_logits(family, loaded):
    adapter, model, processor = loaded(family)
    recs = [record(0, family), record(1, family, REGIONS)]
    views = collate(recs, processor, adapter, kinds_for(family))
    assert views["plain"].texts[0] == views["priv"].texts[0]
    assert views["plain"].texts[1] != views["priv"].texts[1]
    ids, mask = _responses(2, 7)
    with torch.no_grad():
        plain = score(model, adapter, views["plain"], ids, mask)
        priv = score(model, adapter, views["priv"], ids, mask)
    assert plain.shape == priv.shape == (2, 7, adapter.vocab_size(processor))
    torch.testing.assert_close(priv[0], plain[0], atol=ATOL, rtol=0)
    assert (priv[1] - plain[1]).abs().max() > 1e-3  # the privileged text does change the scores


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_padding_and_batch_composition_do_not_change_a_samples_logits(family, loaded):
    adapter, model, processor = loaded(family)
    target = record(0, family, REGIONS)
    long = record(1, family, REGIONS, size=(112, 140),
                  question="Is the red circle left of the blue square? Answer with a single word. " * 3)
    other = record(2, family, size=(56, 56), question="What color is the circle?")
    ids, mask = _responses(3, 6, seed=1)
    with torch.no_grad():
        alone = score(model, adapter, collate([target], processor, adapter, kinds_for(family))["priv"],
                      ids[1:2], mask[1:2])
        batch = collate([long, target, other], processor, adapter, kinds_for(family))["priv"]
        mixed = score(model, adapter, batch, ids, mask)
        ref = reference_logits(model, adapter, batch, 1, ids[1])
    assert batch.attention_mask_B_T[1].sum() < batch.prompt_len  # the target row is left padded here
    torch.testing.assert_close(mixed[1], alone[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(mixed[1], ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", VL_FAMILIES)
def test_teacher_with_other_image_resolution_aligns_the_response(family, loaded):
    adapter, student, s_proc = loaded(family)
    t_adapter, teacher, t_proc = loaded(family, hi_res=True, seed=3)
    recs = [record(0, family, REGIONS), record(1, family, REGIONS, size=(56, 112))]
    s_batch = collate(recs, s_proc, adapter, kinds_for(family))["priv"]
    t_batch = collate(recs, t_proc, t_adapter, kinds_for(family))["priv"]
    image_pad = s_proc.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN[family])
    n_s = (s_batch.input_ids_B_T == image_pad).sum(-1)
    n_t = (t_batch.input_ids_B_T == image_pad).sum(-1)
    assert (n_t > n_s).all()  # the teacher sees more visual tokens: prompt offsets differ
    ids, mask = _responses(2, 5, seed=2)
    with torch.no_grad():
        t_logits = score(teacher, t_adapter, t_batch, ids, mask)
        s_logits = score(student, adapter, s_batch, ids, mask)
        for i in range(2):
            torch.testing.assert_close(t_logits[i], reference_logits(teacher, t_adapter, t_batch, i, ids[i]),
                                       atol=ATOL, rtol=0)
    assert t_logits.shape == s_logits.shape


@pytest.mark.parametrize("family", QWEN_VL_FAMILIES)
def test_scoring_recomputes_positions_instead_of_stale_rope_deltas(family, loaded):
    adapter, model, processor = loaded(family)
    batch = collate([record(0, family), record(1, family, size=(56, 112))], processor, adapter)["plain"]
    ids, mask = _responses(2, 5, seed=4)
    with torch.no_grad():
        model.model.rope_deltas = None
        fresh = score(model, adapter, batch, ids, mask)
        model.model.rope_deltas = torch.full((2, 1), 37)  # what a previous generate could leave behind
        stale = score(model, adapter, batch, ids, mask)
        model.model.rope_deltas = None
    torch.testing.assert_close(stale, fresh, atol=0, rtol=0)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_logits_wider_than_the_tokenizer_are_sliced(family, ckpt):
    adapter, model, processor = load(ckpt(family))
    V = adapter.vocab_size(processor)
    batch = collate([record(0, family)], processor, adapter)["plain"]
    ids, mask = _responses(1, 4, seed=5)
    with torch.no_grad():
        before = score(model, adapter, batch, ids, mask)
        model.resize_token_embeddings(V + 64)  # embedding padding, as real checkpoints have
        assert lm_head_weight(model, adapter).shape[0] == V + 64
        after = score(model, adapter, batch, ids, mask)
        hidden = score(model, adapter, batch, ids, mask, output="hidden")
    assert after.shape == (1, 4, V)
    torch.testing.assert_close(after, before, atol=ATOL, rtol=0)
    assert hidden.shape == (1, 4, model.get_output_embeddings().weight.shape[1])
    torch.testing.assert_close(logits_from_hidden(hidden, lm_head_weight(model, adapter), V), after,
                               atol=ATOL, rtol=0)


def test_score_checks_rows_and_ids(loaded):
    adapter, model, processor = loaded("qwen3_vl")
    batch = collate([record(0, "qwen3_vl"), record(1, "qwen3_vl")], processor, adapter)["plain"]
    ids, mask = _responses(4, 3)
    with pytest.raises(ValueError, match=r"repeat_interleave"):
        score(model, adapter, batch, ids, mask)
    bad = ids[:2].clone()
    bad[0, 1] = adapter.vocab_size(processor)
    with pytest.raises(ValueError, match="outside the tokenizer vocabulary"):
        score(model, adapter, batch, bad, mask[:2])
    with pytest.raises(ValueError, match="output must be one of"):
        score(model, adapter, batch, ids[:2], mask[:2], output="probs")
    assert_same_responses(ids, ids.clone())
    with pytest.raises(AssertionError, match="view 1 differ"):
        assert_same_responses(ids, ids.flip(0))

