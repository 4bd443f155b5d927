"""The trainer's scoring sequence end to end on tiny models: gradients flow only through the plain
student, and every view scores the identical rollout ids."""

from __future__ import annotations

import pytest
import torch
from _views_helpers import REGIONS, VL_FAMILIES, cached_loader, ckpt_factory, kinds_for, load, record

from dopd_vlm.collate import collate
from dopd_vlm.scoring import lm_head_weight, score


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt, tmp_path_factory):
    return ckpt_factory(tiny_ckpt, tmp_path_factory)


@pytest.fixture(scope="module")
def loaded(ckpt):
    return cached_loader(ckpt)


def _responses(B, R, seed=0, vocab=3000):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, R), generator=g), torch.ones(B, R, dtype=torch.bool)


@pytest.mark.parametrize("family", ["qwen3_vl", "idefics3", "qwen3"])
def test_student_plain_scores_carry_gradient_to_the_lm_and_the_vision_tower(family, ckpt):
    adapter, model, processor = load(ckpt(family))
    batch = collate([record(0, family), record(1, family, size=(56, 112))], processor, adapter)["plain"]
    ids, mask = _responses(2, 4, seed=6)
    model.zero_grad()
    with torch.no_grad():
        frozen = score(model, adapter, batch, ids, mask)
    assert not frozen.requires_grad
    logits = score(model, adapter, batch, ids, mask)
    logits.logsumexp(-1).mean().backward()
    assert lm_head_weight(model, adapter).grad.abs().sum() > 0
    if family in VL_FAMILIES:
        vision = [p for n, p in model.named_parameters() if "visual" in n or "vision" in n]
        assert vision and any(p.grad is not None and p.grad.abs().sum() > 0 for p in vision)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "idefics3", "qwen3"])
def test_one_dopd_step_of_views_rollouts_and_three_scorings(family, loaded):
    """The trainer's sequence: collate (student plain + priv, teacher priv with its own resolution)
    -> rollouts from the student on the plain view -> teacher / privileged-student scores without
    gradient, the plain student's with gradient, all on the identical response ids."""
    from dopd_vlm.rollout import sample_rollouts

    s_adapter, student, s_proc = loaded(family)
    t_adapter, teacher, t_proc = loaded(family, hi_res=True, seed=3)
    recs = [record(0, family, REGIONS), record(1, family, size=(56, 112))]
    kinds = kinds_for(family)
    s_views = collate(recs, s_proc, s_adapter, kinds)
    t_priv = collate(recs, t_proc, t_adapter, kinds, views=("priv",))["priv"]
    G = 2
    torch.manual_seed(0)
    ro = sample_rollouts(student, s_proc, s_adapter, s_views["plain"], G, 5)
    ids, mask = ro.response_ids_B_R, ro.response_mask_B_R
    with torch.no_grad():
        q_teacher = score(teacher, t_adapter, t_priv.repeat_interleave(G), ids, mask)
        q_student_priv = score(student, s_adapter, s_views["priv"].repeat_interleave(G), ids, mask)
    p_student = score(student, s_adapter, s_views["plain"].repeat_interleave(G), ids, mask)
    assert q_teacher.shape == q_student_priv.shape == p_student.shape == (2 * G, ids.shape[1], s_views["plain"].vocab_size)
    assert p_student.requires_grad and not q_teacher.requires_grad and not q_student_priv.requires_grad
    assert torch.isfinite(q_teacher).all() and torch.isfinite(p_student).all()
    # the privileged view changes the student's scores of its own samples
    assert (q_student_priv - p_student.detach())[mask].abs().max() > 1e-3
