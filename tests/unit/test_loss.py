"""routed_loss (Eq. 10 / Eq. 11, docs/method.md §5) against the float64 reference and its invariants."""

from __future__ import annotations

import math

import pytest
import torch
from _reference64 import routed_loss64, thresholds64

from dopd_vlm.loss import routed_loss
from dopd_vlm.routing import RoutingConfig, Thresholds, TokenStats, compute_thresholds, token_stats
from dopd_vlm.tables import STUDENT, TABLES, get_table

B, R, V = 3, 6, 24
POLICIES = ("teacher_priv", "student_priv", "teacher_plain")


def _batch(seed: int, dtype=torch.float64, b: int = B):
    g = torch.Generator().manual_seed(seed)
    student = (torch.randn(b, R, V, generator=g, dtype=torch.float64) * 2).to(dtype)
    targets = {p: (torch.randn(b, R, V, generator=g, dtype=torch.float64) * 2).to(dtype) for p in POLICIES}
    ids = torch.randint(0, V, (b, R), generator=g)
    mask = torch.ones(b, R, dtype=torch.bool)
    mask[0, 4:] = False  # right padding
    mask[1, 5:] = False
    return student, targets, ids, mask


@pytest.mark.parametrize("name", sorted(TABLES))
def test_matches_float64_reference_for_every_table(name):
    routing = RoutingConfig(topk=5)
    student, targets, ids, mask = _batch(seed=1)
    loss, metrics = routed_loss(student.requires_grad_(True), targets, ids, mask, name, routing)
    want, regimes, _ = routed_loss64(student, targets, ids, mask, get_table(name), routing)
    if get_table(name).regimes[0].resolve_support(routing) == "sampled":
        assert metrics["loss/objective"] == pytest.approx(want, rel=1e-9, abs=1e-12)
    else:
        assert loss.item() == pytest.approx(want, rel=1e-9, abs=1e-12)
        assert metrics["loss/objective"] == pytest.approx(want, rel=1e-9, abs=1e-12)
    counts = {n: sum(1 for v in regimes.values() if v == n) for n in set(regimes.values())}
    for regime in get_table(name).regimes:
        assert metrics[f"regime/{regime.name}/frac"] == pytest.approx(counts.get(regime.name, 0) / len(regimes))
    # float32 inputs (computed in float32) stay within 1e-5 of the float64 truth
    loss32, metrics32 = routed_loss(student.detach().float(), {k: v.float() for k, v in targets.items()}, ids, mask, name, routing)
    assert metrics32["loss/objective"] == pytest.approx(want, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("normalization,tail,support", [("zscore", "bucket", "union"), ("minmax", "renorm", "student")])
def test_dopd_options_match_reference(normalization, tail, support):
    routing = RoutingConfig(topk=4, normalization=normalization, topk_tail=tail, topk_support=support,
                            loss_temperature=0.7, outlier_quantile=0.8, beta_w=0.2, beta_l=0.5)
    student, targets, ids, mask = _batch(seed=2)
    loss, _ = routed_loss(student, targets, ids, mask, "dopd", routing)
    want, _, _ = routed_loss64(student, targets, ids, mask, get_table("dopd"), routing)
    assert loss.item() == pytest.approx(want, rel=1e-9)


def test_metrics_cover_regimes_thresholds_entropy_and_topk():
    student, targets, ids, mask = _batch(seed=3, dtype=torch.float32)
    _, metrics = routed_loss(student, targets, ids, mask, "dopd", RoutingConfig(topk=5))
    fracs = [metrics[f"regime/{n}/frac"] for n in ("LH", "LL", "HT", "HS")]
    assert sum(fracs) == pytest.approx(1.0)
    assert metrics["tokens/valid"] == mask.sum().item()
    for key in ("gap/mean", "threshold/A", "threshold/q_S", "threshold/q_T", "threshold/qsum", "student/entropy",
                "topk/covered_mass_student", "topk/covered_mass_target"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert 0 < metrics["topk/covered_mass_student"] < 1 and 0 < metrics["topk/covered_mass_target"] < 1
    logp = student[mask].double().log_softmax(-1)
    assert metrics["student/entropy"] == pytest.approx(-(logp.exp() * logp).sum(-1).mean().item(), rel=1e-5)


@pytest.mark.parametrize("name", ["dopd", "vanilla_opd", "opsd", "gkd"])
def test_only_student_plain_gets_gradients_and_none_at_padding(name):
    student, targets, ids, mask = _batch(seed=4, dtype=torch.float32)
    student.requires_grad_(True)
    loss, _ = routed_loss(student, targets, ids, mask, name, RoutingConfig(topk=5))
    loss.backward()
    assert student.grad[mask].abs().sum() > 0
    assert torch.all(student.grad[~mask] == 0)
    assert all(t.grad is None for t in targets.values())
    needed = get_table(name).policies() - {STUDENT}
    grad_target = {k: (v.clone().requires_grad_(True) if k in needed else v) for k, v in targets.items()}
    with pytest.raises(ValueError, match="stop-grad"):
        routed_loss(student, grad_target, ids, mask, name)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_identical_student_and_targets_give_zero_loss(name):
    student, _, ids, mask = _batch(seed=5, dtype=torch.float32)
    student.requires_grad_(True)
    targets = {p: student.detach().clone() for p in POLICIES}
    loss, metrics = routed_loss(student, targets, ids, mask, name, RoutingConfig(topk=5))
    assert metrics["loss/objective"] == pytest.approx(0.0, abs=1e-6)
    (grad,) = torch.autograd.grad(loss, student)
    assert grad.abs().max() < 1e-6


def test_hand_built_example_routes_and_weights():
    """One sequence of four tokens built so that each regime gets one token (see test_routing);
    the loss is the mean of the four weighted divergences, computed by the reference."""
    q_T = [0.9, 0.1, 0.5, 0.02]
    q_S = [0.8, 0.09, 0.05, 0.4]
    vocab = 4

    def logits_with(q: float) -> torch.Tensor:  # token 0 has probability q, the rest split 1 − q unevenly
        p = torch.tensor([q] + [(1 - q) * share for share in (0.5, 0.3, 0.2)], dtype=torch.float64)
        return p.log()

    teacher = torch.stack([logits_with(q) for q in q_T]).unsqueeze(0)
    priv_student = torch.stack([logits_with(q) for q in q_S]).unsqueeze(0)
    g = torch.Generator().manual_seed(6)
    student = torch.randn(1, 4, vocab, generator=g, dtype=torch.float64)
    ids = torch.zeros(1, 4, dtype=torch.long)
    mask = torch.ones(1, 4, dtype=torch.bool)
    routing = RoutingConfig(outlier_quantile=1.0, topk=2)
    targets = {"teacher_priv": teacher, "student_priv": priv_student}
    loss, metrics = routed_loss(student, targets, ids, mask, "dopd", routing)
    for name in ("LH", "LL", "HT", "HS"):
        assert metrics[f"regime/{name}/frac"] == 0.25
    assert metrics["threshold/qsum"] == pytest.approx(0.715)
    want, regimes, _ = routed_loss64(student, targets, ids, mask, get_table("dopd"), routing)
    assert [regimes[(0, n)] for n in range(4)] == ["LH", "LL", "HT", "HS"]
    assert loss.item() == pytest.approx(want, rel=1e-10)
    # the weights matter: β_l = 0.6 on LH / HS, β_w = 0.3 on LL, 1.0 on HT
    d = {n: metrics[f"regime/{n}/loss"] for n in ("LH", "LL", "HT", "HS")}
    assert loss.item() == pytest.approx((0.6 * d["LH"] + 0.3 * d["LL"] + d["HT"] + 0.6 * d["HS"]) / 4, rel=1e-10)


@pytest.mark.parametrize("name", ["dopd", "vanilla_opd", "opsd"])
def test_gradient_accumulation_with_step_thresholds_equals_whole_batch(name):
    routing = RoutingConfig(topk=5)
    student, targets, ids, mask = _batch(seed=7, b=5)
    mask[3, 2:] = False
    mask[4, :] = False  # a sequence with no valid token still counts in the mean over sequences
    whole = student.clone().requires_grad_(True)
    loss, _ = routed_loss(whole, targets, ids, mask, name, routing)
    loss.backward()

    splits = [slice(0, 2), slice(2, 3), slice(3, 5)]
    stats = [token_stats(targets["teacher_priv"][s], targets["student_priv"][s], ids[s], mask[s]) for s in splits]
    thresholds = compute_thresholds(stats, routing)  # threshold_scope "step": once for the whole step
    acc = student.clone().requires_grad_(True)
    total = 0.0
    for s in splits:
        part, _ = routed_loss(acc[s], {k: v[s] for k, v in targets.items()}, ids[s], mask[s], name, routing,
                              thresholds=thresholds, step_num_sequences=5)
        part.backward()
        total += part.item()
    assert total == pytest.approx(loss.item(), rel=1e-12)
    torch.testing.assert_close(acc.grad, whole.grad, rtol=1e-10, atol=1e-14)
    if name == "dopd":  # without step thresholds, routing (hence the gradient) would change
        acc.grad = None
        for s in splits:
            part, _ = routed_loss(acc[s], {k: v[s] for k, v in targets.items()}, ids[s], mask[s], name, routing,
                                  step_num_sequences=5)
            part.backward()
        assert not torch.allclose(acc.grad, whole.grad)


def test_reference_thresholds_are_the_production_thresholds():
    student, targets, ids, mask = _batch(seed=8)
    routing = RoutingConfig(normalization="zscore")
    stats = token_stats(targets["teacher_priv"], targets["student_priv"], ids, mask)
    thr = compute_thresholds(stats, routing)
    ref = thresholds64(stats.logq_T_B_R[mask].tolist(), stats.logq_S_B_R[mask].tolist(), routing)
    assert thr.gap == pytest.approx(ref["A"]) and thr.qsum == pytest.approx(ref["qsum"], abs=1e-12)


def test_vocab_slicing_drops_padding_columns():
    student, targets, ids, mask = _batch(seed=9, dtype=torch.float32)
    pad = lambda x, w: torch.cat([x, torch.full((*x.shape[:2], w), 30.0)], dim=-1)  # noqa: E731
    routing = RoutingConfig(topk=5)
    plain, _ = routed_loss(student, targets, ids, mask, "dopd", routing)
    sliced, _ = routed_loss(pad(student, 8), {k: pad(v, 4) for k, v in targets.items()}, ids, mask, "dopd",
                            RoutingConfig(topk=5, vocab_size=V))
    assert sliced.item() == pytest.approx(plain.item(), rel=1e-6)
    with pytest.raises(ValueError, match="vocab_size"):
        routed_loss(pad(student, 8), {k: pad(v, 4) for k, v in targets.items()}, ids, mask, "dopd", routing)


def test_no_valid_tokens_give_zero_loss_that_backpropagates():
    student, targets, ids, _ = _batch(seed=10, dtype=torch.float32)
    student.requires_grad_(True)
    mask = torch.zeros(B, R, dtype=torch.bool)
    loss, metrics = routed_loss(student, targets, ids, mask, "dopd")
    loss.backward()
    assert loss.item() == 0.0 and torch.all(student.grad == 0)
    assert math.isnan(metrics["regime/LH/loss"])


def test_boundary_errors_name_the_problem():
    student, targets, ids, mask = _batch(seed=11, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"needs target logits for \['student_priv'\]"):
        routed_loss(student, {"teacher_priv": targets["teacher_priv"]}, ids, mask, "dopd")
    with pytest.raises(ValueError, match="response_mask"):
        routed_loss(student, targets, ids, mask.int(), "dopd")
    with pytest.raises(ValueError, match="step_num_sequences"):
        routed_loss(student, targets, ids, mask, "dopd", step_num_sequences=1)
    with pytest.raises(ValueError, match="response_ids outside"):
        routed_loss(student, targets, ids + V, mask, "dopd")
    with pytest.raises(ValueError, match="did you mean"):
        routed_loss(student, targets, ids, mask, "dopd4")


def test_bf16_logits_give_finite_nonnegative_loss():
    student, targets, ids, mask = _batch(seed=12)
    near = {k: (student + 1e-3 * v).bfloat16() for k, v in targets.items()}
    loss, metrics = routed_loss(student.bfloat16().requires_grad_(True), near, ids, mask, "dopd", RoutingConfig(topk=5))
    assert loss.dtype == torch.float32 and math.isfinite(loss.item()) and loss.item() >= 0
    assert all(metrics[f"regime/{n}/loss"] >= 0 for n in ("LH", "LL", "HT", "HS") if metrics[f"regime/{n}/frac"] > 0)


def test_thresholds_type_is_passed_through():
    student, targets, ids, mask = _batch(seed=13)
    stats = TokenStats(torch.zeros(B, R), torch.zeros(B, R), mask)
    thr = compute_thresholds(stats)
    assert isinstance(thr, Thresholds)
    _, metrics = routed_loss(student, targets, ids, mask, "dopd", thresholds=thr)
    assert metrics["threshold/A"] == 0.0 == thr.gap


def test_opd_support_full_makes_vanilla_opd_the_exact_table():
    """routing.opd_support=full (docs/method.md §8 option): vanilla_opd gives vanilla_opd_full's loss and
    gradient; the default (sampled) gives a different one."""
    student, targets, ids, mask = _batch(seed=3)
    grads = {}
    for key, name, routing in (("full_table", "vanilla_opd_full", RoutingConfig()),
                               ("opd_full", "vanilla_opd", RoutingConfig(opd_support="full")),
                               ("opd_sampled", "vanilla_opd", RoutingConfig())):
        s = student.clone().requires_grad_(True)
        loss, _ = routed_loss(s, targets, ids, mask, name, routing)
        loss.backward()
        grads[key] = (loss.item(), s.grad)
    assert grads["opd_full"][0] == pytest.approx(grads["full_table"][0], rel=1e-12)
    torch.testing.assert_close(grads["opd_full"][1], grads["full_table"][1], rtol=0, atol=0)
    assert not torch.allclose(grads["opd_sampled"][1], grads["full_table"][1])
