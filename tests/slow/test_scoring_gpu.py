"""GPU check of rollouts and scoring (opt-in: ``--run-slow`` on a CUDA machine): every family, fp32
and bf16, on CUDA. Seen passing on one H200 (torch 2.11, transformers 5.24), 2026-11-28: fp32
generation-vs-scoring log-probs within 1e-6, bf16 equal."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from _views_helpers import ALL_FAMILIES, REGIONS, ckpt_factory, force_early_eos, kinds_for, load, record  # noqa: E402

from dopd_vlm.collate import collate  # noqa: E402
from dopd_vlm.rollout import sample_rollouts  # noqa: E402
from dopd_vlm.scoring import lm_head_weight, logits_from_hidden, sampled_logprobs, score  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
TOL = {"float32": 1e-4, "bfloat16": 5e-2}  # project decision: bf16 keeps ~3 significant digits


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt, tmp_path_factory):
    return ckpt_factory(tiny_ckpt, tmp_path_factory)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_rollouts_and_scores_agree_on_cuda(family, dtype, ckpt):
    torch.backends.cuda.matmul.allow_tf32 = False
    adapter, _, _ = load(ckpt(family))
    model, processor = adapter.load(ckpt(family), dtype=dtype, device="cuda")
    force_early_eos(model)
    recs = [record(0, family, REGIONS), record(1, family, size=(56, 112), question="What color is the circle?")]
    views = {k: v.to("cuda") for k, v in collate(recs, processor, adapter, kinds_for(family)).items()}
    torch.manual_seed(0)
    ro = sample_rollouts(model, processor, adapter, views["plain"], 3, 10, return_logprobs=True)
    ids, mask = ro.response_ids_B_R, ro.response_mask_B_R
    assert ids.is_cuda and mask.is_cuda
    with torch.no_grad():
        lp = sampled_logprobs(score(model, adapter, views["plain"].repeat_interleave(3), ids, mask), ids)
        torch.testing.assert_close(lp[mask], ro.logprobs_B_R[mask], atol=TOL[dtype], rtol=0)
        alone = score(model, adapter, views["priv"].select([1]), ids[:1], mask[:1])
        both = score(model, adapter, views["priv"], ids[[0, 0]], mask[[0, 0]])
        torch.testing.assert_close(alone[0].float(), both[1].float(), atol=TOL[dtype], rtol=0)
        hidden = score(model, adapter, views["priv"], ids[[0, 0]], mask[[0, 0]], output="hidden")
        proj = logits_from_hidden(hidden, lm_head_weight(model, adapter), views["priv"].vocab_size)
        torch.testing.assert_close(proj.float(), both.float(), atol=TOL[dtype], rtol=0)
