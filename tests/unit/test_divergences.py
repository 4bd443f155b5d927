"""Divergences and supports against the float64 reference (docs/method.md §4, §5, §8)."""

from __future__ import annotations

import math

import pytest
import torch
from _reference64 import softmax64, token_div64

from dopd_vlm.divergences import (
    covered_mass,
    divergence,
    generalized_jsd,
    js,
    row_terms,
    topk_support,
)
from dopd_vlm.routing import RoutingConfig

V = 40


def _logits(n: int, seed: int, scale: float = 2.0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, V, generator=g, dtype=torch.float64) * scale).to(dtype)


def _terms(s, t, ids, div, support, routing):
    return row_terms(
        s, t, ids, div, support,
        topk=routing.topk, topk_support_name=routing.topk_support, topk_tail=routing.topk_tail,
        temperature=routing.loss_temperature, jsd_beta=routing.jsd_beta,
    )


CASES = [
    (div, support, tsup, tail)
    for div in ("reverse_kl", "forward_kl", "js", "jsd")
    for support, tsup, tail in [
        ("full", "target", "renorm"),
        ("topk", "target", "renorm"),
        ("topk", "target", "bucket"),
        ("topk", "student", "renorm"),
        ("topk", "union", "renorm"),
        ("topk", "union", "bucket"),
    ]
] + [("reverse_kl", "sampled", "target", "renorm")]


@pytest.mark.parametrize("div,support,tsup,tail", CASES)
def test_matches_float64_reference(div, support, tsup, tail):
    routing = RoutingConfig(topk=7, topk_support=tsup, topk_tail=tail, jsd_beta=0.3, loss_temperature=1.5)
    s, t = _logits(6, 1), _logits(6, 2)
    ids = torch.randint(0, V, (6,), generator=torch.Generator().manual_seed(3))
    got = _terms(s, t, ids, div, support, routing).value_N
    want = [token_div64(s[i], t[i], int(ids[i]), div, support, routing) for i in range(6)]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    # float32 inputs are computed in float32 and stay close to the float64 truth
    got32 = _terms(s.float(), t.float(), ids, div, support, routing).value_N
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-4, atol=1e-5)


def test_js_bounded_by_log2_and_equals_jsd_half():
    # disjoint-ish distributions push JS to its log 2 bound
    s = torch.full((3, V), -40.0)
    t = torch.full((3, V), -40.0)
    s[:, 0] = 40.0
    t[:, 1] = 40.0
    ls, lt = s.log_softmax(-1), t.log_softmax(-1)
    value = js(ls, lt)
    assert torch.all(value <= math.log(2) + 1e-6)
    assert torch.all(value > math.log(2) - 1e-4)
    rand_s, rand_t = _logits(50, 4, scale=8.0).log_softmax(-1), _logits(50, 5, scale=8.0).log_softmax(-1)
    assert torch.all(js(rand_s, rand_t) <= math.log(2))
    torch.testing.assert_close(js(rand_s, rand_t), generalized_jsd(rand_s, rand_t, 0.5))


def test_jsd_endpoints_are_explicit_branches():
    ls, lt = _logits(4, 6).log_softmax(-1), _logits(4, 7).log_softmax(-1)
    forward = (lt.exp() * (lt - ls)).sum(-1)
    reverse = (ls.exp() * (ls - lt)).sum(-1)
    torch.testing.assert_close(generalized_jsd(ls, lt, 0.0), forward)
    torch.testing.assert_close(generalized_jsd(ls, lt, 1.0), reverse)
    # the mixture formula itself vanishes at the ends: the branches are not its limit
    assert torch.all(generalized_jsd(ls, lt, 1e-9) < 1e-6)
    assert torch.all(forward > 0.1)
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(ls, lt, 1.5)


@pytest.mark.parametrize("div,support,tsup,tail", CASES)
def test_identical_distributions_give_zero(div, support, tsup, tail):
    routing = RoutingConfig(topk=5, topk_support=tsup, topk_tail=tail)
    s = _logits(5, 8, dtype=torch.float32)
    ids = torch.arange(5)
    terms = _terms(s, s.clone(), ids, div, support, routing)
    torch.testing.assert_close(terms.value_N, torch.zeros(5), atol=1e-6, rtol=0)


@pytest.mark.parametrize("div", ["reverse_kl", "forward_kl", "js", "jsd"])
@pytest.mark.parametrize("support,tail", [("full", "renorm"), ("topk", "renorm"), ("topk", "bucket")])
def test_bf16_inputs_never_negative_and_accurate(div, support, tail):
    """bf16 divergences go negative when computed in bf16 (docs/method.md §11 known trap)."""
    routing = RoutingConfig(topk=16, topk_tail=tail)
    base = _logits(64, 9, scale=3.0)
    near = base + 1e-3 * _logits(64, 10)  # nearly identical: the dangerous case
    s, t = base.bfloat16(), near.bfloat16()
    ids = torch.zeros(64, dtype=torch.long)
    value = _terms(s, t, ids, div, support, routing).value_N
    assert value.dtype == torch.float32
    assert torch.all(value >= 0)
    want = torch.tensor([token_div64(s[i].double(), t[i].double(), 0, div, support, routing) for i in range(64)], dtype=torch.float64)
    torch.testing.assert_close(value.double(), want, atol=2e-6, rtol=1e-3)


@pytest.mark.parametrize("div", ["reverse_kl", "js", "jsd"])
@pytest.mark.parametrize("tsup", ["target", "student", "union"])
@pytest.mark.parametrize("tail", ["renorm", "bucket"])
def test_topk_with_k_equal_v_equals_full(div, tsup, tail):
    routing = RoutingConfig(topk=V, topk_support=tsup, topk_tail=tail)
    s, t = _logits(4, 11, dtype=torch.float32), _logits(4, 12, dtype=torch.float32)
    s.requires_grad_(True)
    ids = torch.zeros(4, dtype=torch.long)
    top = _terms(s, t, ids, div, "topk", routing)
    (g_top,) = torch.autograd.grad(top.loss_N.sum(), s)
    full = _terms(s, t, ids, div, "full", routing)
    (g_full,) = torch.autograd.grad(full.loss_N.sum(), s)
    torch.testing.assert_close(top.value_N, full.value_N, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_top, g_full, rtol=1e-4, atol=1e-6)
    assert torch.isfinite(g_top).all()
    torch.testing.assert_close(top.covered_student_N, torch.ones(4), rtol=0, atol=1e-5)


def test_union_support_and_covered_mass():
    s, t = _logits(3, 13), _logits(3, 14)
    idx, valid = topk_support(s, t, 6, "union")
    assert idx.shape == (3, 12)
    for i in range(3):
        kept = {int(j) for j, ok in zip(idx[i], valid[i]) if ok}
        want = set(t[i].topk(6).indices.tolist()) | set(s[i].topk(6).indices.tolist())
        assert kept == want
        mass = covered_mass(s, idx, valid)[i].item()
        assert mass == pytest.approx(float(softmax64(s[i])[sorted(want)].sum()), rel=1e-10)


def test_temperature_divides_both_logits():
    s, t = _logits(4, 15), _logits(4, 16)
    ids = torch.zeros(4, dtype=torch.long)
    hot = _terms(s, t, ids, "js", "full", RoutingConfig(loss_temperature=2.0)).value_N
    scaled = _terms(s / 2.0, t / 2.0, ids, "js", "full", RoutingConfig()).value_N
    torch.testing.assert_close(hot, scaled)


def test_target_gets_no_gradient():
    s = _logits(4, 17, dtype=torch.float32).requires_grad_(True)
    t = _logits(4, 18, dtype=torch.float32).requires_grad_(True)
    terms = _terms(s, t, torch.zeros(4, dtype=torch.long), "js", "full", RoutingConfig())
    terms.loss_N.sum().backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_sampled_token_gradient_is_reverse_kl_gradient_in_expectation():
    """Method.md §8: the score-function surrogate's expected gradient is ∇ KL(π_S ‖ π_T);
    the naive loss log π_S(y) − log π_T(y) has expected gradient 0 (E[∇ log π_S] = 0)."""
    v = 6
    g = torch.Generator().manual_seed(19)
    theta = torch.randn(v, generator=g, dtype=torch.float64).requires_grad_(True)
    target = torch.randn(v, generator=g, dtype=torch.float64)
    n = 200_000
    ids = torch.multinomial(theta.detach().softmax(-1), n, replacement=True, generator=g)
    s_rows, t_rows = theta.expand(n, v), target.expand(n, v)
    terms = row_terms(s_rows, t_rows, ids, "reverse_kl", "sampled", topk=1, topk_support_name="target",
                      topk_tail="renorm", temperature=1.0, jsd_beta=0.5)
    (g_surrogate,) = torch.autograd.grad(terms.loss_N.mean(), theta)
    ls, lt = theta.log_softmax(-1), target.log_softmax(-1)
    (g_exact,) = torch.autograd.grad((ls.exp() * (ls - lt)).sum(), theta)
    ls = theta.log_softmax(-1)
    naive = ls[ids] - lt[ids]
    (g_naive,) = torch.autograd.grad(naive.mean(), theta)
    assert g_exact.norm() > 0.2
    assert (g_surrogate - g_exact).norm() < 0.05 * g_exact.norm() + 0.01
    assert (g_naive - g_exact).norm() > 0.5 * g_exact.norm()
    # the reported value is the unbiased one-sample estimate of the reverse KL
    exact_kl = (ls.exp() * (ls - lt)).sum().item()
    assert terms.value_N.mean().item() == pytest.approx(exact_kl, abs=0.02)


def test_unknown_names_raise():
    s = _logits(2, 20)
    with pytest.raises(ValueError, match="divergence"):
        divergence("kl", s.log_softmax(-1), s.log_softmax(-1))
    with pytest.raises(ValueError, match="sampled"):
        _terms(s, s, torch.zeros(2, dtype=torch.long), "js", "sampled", RoutingConfig())
