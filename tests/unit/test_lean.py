"""The memory-lean path equals the dense path: loss, gradients, metrics (docs/method.md §5.1 "Memory at real sizes")."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dopd_vlm.lean import lean_routed_loss, lean_token_stats
from dopd_vlm.loss import routed_loss
from dopd_vlm.routing import RoutingConfig, compute_thresholds

B, R, H, V, VPAD = 3, 8, 12, 40, 48
POLICIES = ("teacher_priv", "student_priv", "teacher_plain")


def _setup(seed: int, dtype=torch.float64, b: int = B, hidden_sizes=None):
    g = torch.Generator().manual_seed(seed)
    hidden_sizes = hidden_sizes or {"student_plain": H, "teacher_priv": H + 4, "student_priv": H, "teacher_plain": H + 4}
    hidden = {p: torch.randn(b, R, h, generator=g, dtype=torch.float64).to(dtype) for p, h in hidden_sizes.items()}
    heads = {p: (torch.randn(VPAD, h, generator=g, dtype=torch.float64) * 0.7).to(dtype) for p, h in hidden_sizes.items()}
    ids = torch.randint(0, V, (b, R), generator=g)
    mask = torch.ones(b, R, dtype=torch.bool)
    mask[0, 5:] = False
    mask[2, 7:] = False
    return hidden, heads, ids, mask


def _dense(hidden, heads, ids, mask, table, routing, **kw):
    h = hidden["student_plain"].detach().clone().requires_grad_(True)
    w = heads["student_plain"].detach().clone().requires_grad_(True)
    targets = {p: (hidden[p] @ heads[p].T).detach() for p in POLICIES}
    loss, metrics = routed_loss(h @ w.T, targets, ids, mask, table, routing, **kw)
    loss.backward()
    return loss, metrics, h.grad, w.grad


def _lean(hidden, heads, ids, mask, table, routing, **kw):
    h = hidden["student_plain"].detach().clone().requires_grad_(True)
    w = heads["student_plain"].detach().clone().requires_grad_(True)
    targets = {p: hidden[p] for p in POLICIES}
    loss, metrics = lean_routed_loss(h, w, targets, {p: heads[p] for p in POLICIES}, ids, mask, table, routing, **kw)
    loss.backward()
    return loss, metrics, h.grad, w.grad


@pytest.mark.parametrize("backward", ["fused", "checkpoint"])
@pytest.mark.parametrize("table", ["dopd", "vanilla_opd", "opsd", "dopd_no_student"])
def test_lean_equals_dense_in_float64(backward, table):
    routing = RoutingConfig(topk=6, vocab_size=V, lean_chunk_size=4, lean_subchunk_size=3, lean_backward=backward)
    hidden, heads, ids, mask = _setup(seed=1)
    d_loss, d_metrics, d_gh, d_gw = _dense(hidden, heads, ids, mask, table, routing)
    l_loss, l_metrics, l_gh, l_gw = _lean(hidden, heads, ids, mask, table, routing)
    assert l_loss.item() == pytest.approx(d_loss.item(), rel=1e-12)
    torch.testing.assert_close(l_gh, d_gh, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(l_gw, d_gw, rtol=1e-10, atol=1e-13)
    assert torch.all(l_gw[V:] == 0)  # padded lm_head rows are never used
    assert set(l_metrics) == set(d_metrics)
    for key, value in d_metrics.items():
        assert l_metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), key


@pytest.mark.parametrize("backward", ["fused", "checkpoint"])
def test_lean_equals_dense_in_float32_with_options(backward):
    routing = RoutingConfig(topk=6, vocab_size=V, lean_chunk_size=4, lean_subchunk_size=3, lean_backward=backward, topk_tail="bucket",
                            topk_support="union", normalization="minmax", loss_temperature=0.8)
    hidden, heads, ids, mask = _setup(seed=2, dtype=torch.float32)
    d_loss, _, d_gh, d_gw = _dense(hidden, heads, ids, mask, "dopd", routing)
    l_loss, _, l_gh, l_gw = _lean(hidden, heads, ids, mask, "dopd", routing)
    assert l_loss.item() == pytest.approx(d_loss.item(), rel=1e-5)
    torch.testing.assert_close(l_gh, d_gh, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(l_gw, d_gw, rtol=1e-4, atol=1e-6)


def test_lean_gradient_accumulation_with_step_stats_equals_whole_batch():
    routing = RoutingConfig(topk=6, vocab_size=V, lean_chunk_size=5)
    hidden, heads, ids, mask = _setup(seed=3, b=4)
    _, _, whole_gh, whole_gw = _dense(hidden, heads, ids, mask, "dopd", routing)
    splits = [slice(0, 1), slice(1, 4)]
    priv = ("teacher_priv", "student_priv")
    stats = [lean_token_stats({p: hidden[p][s] for p in priv}, heads, ids[s], mask[s], routing) for s in splits]
    thresholds = compute_thresholds(stats, routing)
    h = hidden["student_plain"].detach().clone().requires_grad_(True)
    w = heads["student_plain"].detach().clone().requires_grad_(True)
    for s, st in zip(splits, stats):
        loss, _ = lean_routed_loss(h[s], w, {p: hidden[p][s] for p in POLICIES}, heads, ids[s], mask[s], "dopd",
                                   routing, stats=st, thresholds=thresholds, step_num_sequences=4)
        loss.backward()
    torch.testing.assert_close(h.grad, whole_gh, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(w.grad, whole_gw, rtol=1e-10, atol=1e-13)


class _WidestLogits(TorchDispatchMode):
    """Records the largest number of rows of any newly allocated op output whose last dimension is
    the vocabulary (views such as ``lm_head.T`` share their input's storage and are skipped)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.rows = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(t, torch.Tensor) or t.untyped_storage().data_ptr() in inputs:
                continue
            if t.dim() >= 1 and t.shape[-1] == self.vocab:
                self.rows = max(self.rows, t.numel() // self.vocab)
        return out


@pytest.mark.parametrize("backward", ["fused", "checkpoint"])
def test_lean_never_materialises_more_than_one_chunk_of_logits(backward):
    chunk = 4
    routing = RoutingConfig(topk=6, vocab_size=V, lean_chunk_size=chunk, lean_backward=backward)
    hidden, heads, ids, mask = _setup(seed=4, dtype=torch.float32)
    with _WidestLogits(V) as lean_probe:
        _lean(hidden, heads, ids, mask, "dopd", routing)
    with _WidestLogits(V) as dense_probe:
        _dense(hidden, heads, ids, mask, "dopd", routing)
    assert lean_probe.rows <= chunk
    assert dense_probe.rows >= B * R  # the probe does see full logits


def test_lean_bf16_is_finite_and_close_to_float32():
    routing = RoutingConfig(topk=6, vocab_size=V, lean_chunk_size=5)
    hidden, heads, ids, mask = _setup(seed=5, dtype=torch.float32)
    ref_loss, _, _, ref_gw = _lean(hidden, heads, ids, mask, "dopd", routing)
    bf = {k: v.bfloat16() for k, v in hidden.items()}
    bw = {k: v.bfloat16() for k, v in heads.items()}
    loss, metrics, gh, gw = _lean(bf, bw, ids, mask, "dopd", routing)
    assert loss.dtype == torch.float32 and gw.dtype == torch.bfloat16 and gh.dtype == torch.bfloat16
    assert math.isfinite(loss.item()) and loss.item() >= 0
    assert loss.item() == pytest.approx(ref_loss.item(), rel=0.1)


def test_lean_boundary_errors():
    hidden, heads, ids, mask = _setup(seed=6, dtype=torch.float32)
    h, w = hidden["student_plain"], heads["student_plain"]
    with pytest.raises(ValueError, match=r"needs hidden states and lm_head for \['student_priv'\]"):
        lean_routed_loss(h, w, {"teacher_priv": hidden["teacher_priv"]}, heads, ids, mask, "dopd")
    with pytest.raises(ValueError, match="hidden size"):
        lean_routed_loss(h, heads["teacher_priv"], hidden, heads, ids, mask, "dopd")
    with pytest.raises(ValueError, match="vocab_size"):
        lean_routed_loss(h, w, hidden, heads, ids, mask, "dopd", RoutingConfig(vocab_size=VPAD + 1))
    short = dict(heads, teacher_priv=heads["teacher_priv"][:V])
    with pytest.raises(ValueError, match="lm_head widths differ"):
        lean_routed_loss(h, w, hidden, short, ids, mask, "dopd")


def test_student_priv_may_share_the_student_lm_head():
    """The privileged student uses the current student weights (docs/method.md §1): the trainer passes
    the same lm_head Parameter; only the student_plain projection may carry its gradient."""
    routing = RoutingConfig(topk=6, lean_chunk_size=5, lean_subchunk_size=2)
    hidden, heads, ids, mask = _setup(seed=7, hidden_sizes={"student_plain": H, "teacher_priv": H, "student_priv": H})
    heads = {p: w[:V] for p, w in heads.items()}
    w_dense = heads["student_plain"].clone().requires_grad_(True)
    targets = {"teacher_priv": (hidden["teacher_priv"] @ heads["teacher_priv"].T),
               "student_priv": (hidden["student_priv"] @ w_dense.T).detach()}
    loss, _ = routed_loss(hidden["student_plain"] @ w_dense.T, targets, ids, mask, "dopd", routing)
    loss.backward()
    w = heads["student_plain"].clone().requires_grad_(True)
    lean_loss, _ = lean_routed_loss(hidden["student_plain"], w, hidden, {"teacher_priv": heads["teacher_priv"],
                                    "student_priv": w}, ids, mask, "dopd", routing)
    lean_loss.backward()
    assert lean_loss.item() == pytest.approx(loss.item(), rel=1e-12)
    torch.testing.assert_close(w.grad, w_dense.grad, rtol=1e-10, atol=1e-13)
