"""Statistics, thresholds and the four-regime router against the float64 reference (docs/method.md §2–§4)."""

from __future__ import annotations

import math

import pytest
import torch
from _reference64 import logq64, regime64, thresholds64

from dopd_vlm.routing import (
    RoutingConfig,
    TokenStats,
    compute_thresholds,
    route,
    thresholds_for_scope,
    token_stats,
)


def _stats(seed: int, B: int = 4, R: int = 9, pad: float = 0.25) -> TokenStats:
    g = torch.Generator().manual_seed(seed)
    logq_T = -torch.rand(B, R, generator=g, dtype=torch.float64).mul(4).float()
    logq_S = -torch.rand(B, R, generator=g, dtype=torch.float64).mul(4).float()
    mask = torch.rand(B, R, generator=g) > pad
    mask[0, 0] = True
    return TokenStats(logq_T, logq_S, mask)


def _hand_stats() -> tuple[TokenStats, dict[tuple[int, int], str]]:
    """Four tokens whose regimes follow from the docs/method.md §4 table by hand, plus padding.

    A = |log q_T − log q_S|: (0.118, 0.105, 2.303, 2.996) → Ā = 1.380 (outlier_quantile 1.0)
    q̄_S = 0.335, q̄_T = 0.38 → q̄_S + q̄_T = 0.715
      (0,0) q_T .9  q_S .8   A small, q sum 1.70 ≥ .715 → LH
      (0,1) q_T .1  q_S .09  A small, q sum 0.19 < .715  → LL
      (1,0) q_T .5  q_S .05  A large, q_T ≥ q_S           → HT
      (1,1) q_T .02 q_S .4   A large, q_T < q_S           → HS
    (0,2) and (1,2) are padding with extreme values that must not move the thresholds.
    """
    q_T = torch.tensor([[0.9, 0.1, 1e-9], [0.5, 0.02, 0.999]])
    q_S = torch.tensor([[0.8, 0.09, 0.999], [0.05, 0.4, 1e-9]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    expected = {(0, 0): "LH", (0, 1): "LL", (1, 0): "HT", (1, 1): "HS"}
    return TokenStats(q_T.log(), q_S.log(), mask), expected


def test_hand_built_example_has_known_regimes():
    stats, expected = _hand_stats()
    routing = RoutingConfig(outlier_quantile=1.0)
    thr = compute_thresholds(stats, routing)
    gaps = [abs(math.log(a) - math.log(b)) for a, b in [(0.9, 0.8), (0.1, 0.09), (0.5, 0.05), (0.02, 0.4)]]
    assert thr.gap == pytest.approx(sum(gaps) / 4, rel=1e-6)
    assert thr.gap == pytest.approx(1.3805, abs=1e-3)
    assert thr.qsum == pytest.approx(0.715, rel=1e-6)
    assert thr.num_tokens == 4
    masks = route("dopd4", stats.mask_B_R, stats, thr)
    for name, mask in masks.items():
        got = {tuple(ix) for ix in mask.nonzero().tolist()}
        assert got == {bn for bn, n in expected.items() if n == name}, name


@pytest.mark.parametrize("normalization", ["none", "zscore", "minmax"])
@pytest.mark.parametrize("quantile", [0.95, 0.7, 1.0])
def test_masks_partition_valid_tokens_and_match_reference(normalization, quantile):
    routing = RoutingConfig(normalization=normalization, outlier_quantile=quantile)
    stats = _stats(seed=3)
    masks = route("dopd4", stats.mask_B_R, stats, compute_thresholds(stats, routing))
    stacked = torch.stack(list(masks.values())).int()
    assert torch.equal(stacked.sum(0), stats.mask_B_R.int())  # partition of valid, none on padding
    valid = [tuple(ix) for ix in stats.mask_B_R.nonzero().tolist()]
    thr64 = thresholds64(
        [float(stats.logq_T_B_R[bn]) for bn in valid], [float(stats.logq_S_B_R[bn]) for bn in valid], routing
    )
    for bn in valid:
        want = regime64(float(stats.logq_T_B_R[bn]), float(stats.logq_S_B_R[bn]), thr64)
        assert bool(masks[want][bn]), (bn, want)
    thr = compute_thresholds(stats, routing)
    assert thr.gap == pytest.approx(thr64["A"], rel=1e-6)
    assert thr.qsum == pytest.approx(thr64["qsum"], rel=1e-6, abs=1e-9)


def test_outlier_trim_drops_values_above_quantile():
    # A values 1, 2, 3, 4, 100 (log q_S = 0): linear 0.8-quantile = 23.2 → mean of 1..4 = 2.5
    logq_T = -torch.tensor([[1.0, 2.0, 3.0, 4.0, 100.0]])
    stats = TokenStats(logq_T, torch.zeros_like(logq_T), torch.ones_like(logq_T, dtype=torch.bool))
    assert compute_thresholds(stats, RoutingConfig(outlier_quantile=0.8)).gap == pytest.approx(2.5)
    assert compute_thresholds(stats, RoutingConfig(outlier_quantile=1.0)).gap == pytest.approx(22.0)


def test_normalisation_keeps_gap_test_changes_confidence_test():
    stats = _stats(seed=5, B=8, R=16)
    masks = {n: route("dopd4", stats.mask_B_R, stats, compute_thresholds(stats, RoutingConfig(normalization=n)))
             for n in ("none", "zscore", "minmax")}
    low = {n: m["LH"] | m["LL"] for n, m in masks.items()}
    assert torch.equal(low["none"], low["zscore"]) and torch.equal(low["none"], low["minmax"])
    # z-scored kept values have mean 0: the LH/LL threshold is 0
    assert compute_thresholds(stats, RoutingConfig(normalization="zscore")).qsum == pytest.approx(0.0, abs=1e-9)
    # A sum test on a single scale favours the statistic with the larger spread; z-scoring does not.
    # q_S barely varies, q_T varies a lot (token 4 has a large A and stays HS under both).
    q_S = torch.tensor([[0.50, 0.55, 0.45, 0.50, 0.50]])
    q_T = torch.tensor([[0.45, 0.30, 0.80, 0.50, 0.001]])
    tiny = TokenStats(q_T.log(), q_S.log(), torch.ones(1, 5, dtype=torch.bool))
    plain = route("dopd4", tiny.mask_B_R, tiny, compute_thresholds(tiny, RoutingConfig(outlier_quantile=1.0)))
    z = route("dopd4", tiny.mask_B_R, tiny,
              compute_thresholds(tiny, RoutingConfig(outlier_quantile=1.0, normalization="zscore")))
    assert plain["LH"].tolist() == [[True, False, True, True, False]]
    assert z["LH"].tolist() == [[True, True, False, True, False]]
    assert not torch.equal(plain["LH"], z["LH"])


def test_step_thresholds_over_micro_batches_equal_whole_batch():
    a, b = _stats(seed=7), _stats(seed=8)
    whole = TokenStats(
        torch.cat([a.logq_T_B_R, b.logq_T_B_R]), torch.cat([a.logq_S_B_R, b.logq_S_B_R]),
        torch.cat([a.mask_B_R, b.mask_B_R]),
    )
    routing = RoutingConfig(normalization="minmax")
    assert compute_thresholds([a, b], routing) == compute_thresholds(whole, routing)


def test_token_stats_from_logits_match_reference_and_slice_vocab():
    g = torch.Generator().manual_seed(9)
    t, s = torch.randn(2, 5, 13, generator=g), torch.randn(2, 5, 13, generator=g)
    ids = torch.randint(0, 10, (2, 5), generator=g)
    mask = torch.ones(2, 5, dtype=torch.bool)
    stats = token_stats(t, s, ids, mask, vocab_size=10)
    assert stats.logq_T_B_R[1, 3].item() == pytest.approx(logq64(t[1, 3, :10], int(ids[1, 3])), rel=1e-5)
    assert stats.logq_S_B_R[0, 2].item() == pytest.approx(logq64(s[0, 2, :10], int(ids[0, 2])), rel=1e-5)
    with pytest.raises(ValueError, match="vocab_size"):
        token_stats(t, s, ids, mask, vocab_size=20)


def test_router_all_and_errors():
    mask = torch.tensor([[True, False, True]])
    assert torch.equal(route("all", mask)["ALL"], mask)
    with pytest.raises(ValueError, match="TokenStats"):
        route("dopd4", mask)
    with pytest.raises(ValueError, match="unknown router"):
        route("dopd5", mask)
    with pytest.raises(ValueError, match="bool"):
        route("all", mask.int())


def test_no_valid_tokens_route_nothing():
    stats = TokenStats(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    thr = compute_thresholds(stats)
    assert thr.num_tokens == 0 and math.isnan(thr.gap)
    assert all(not m.any() for m in route("dopd4", stats.mask_B_R, stats, thr).values())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"normalization": "l2"}, "normalization"),
        ({"threshold_scope": "epoch"}, "threshold_scope"),
        ({"beta_w": 0.7}, "beta_w < beta_l"),
        ({"outlier_quantile": 0.0}, "outlier_quantile"),
        ({"topk": 0}, "topk"),
        ({"topk_support": "teacher"}, "topk_support"),
        ({"topk_tail": "drop"}, "topk_tail"),
        ({"loss_temperature": 0.0}, "loss_temperature"),
        ({"topk": 12.5}, "expected int"),
        ({"normalization": True}, "expected str"),
        ({"lean_backward": "fast"}, "lean_backward"),
        ({"lean_subchunk_size": 0}, "lean_subchunk_size"),
        ({"vocab_size": -1}, "vocab_size"),
    ],
)
def test_routing_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RoutingConfig(**kwargs)


def test_routing_config_defaults_follow_method_md():
    r = RoutingConfig()
    assert (r.outlier_quantile, r.normalization, r.threshold_scope) == (0.95, "none", "step")
    assert (r.topk, r.topk_support, r.topk_tail, r.loss_temperature) == (128, "target", "renorm", 1.0)
    assert (r.beta_w, r.beta_l, r.jsd_beta) == (0.3, 0.6, 0.5)


def test_thresholds_for_scope():
    a, b, other_rank = _stats(seed=11), _stats(seed=12), _stats(seed=13)
    step = RoutingConfig(threshold_scope="step")
    assert thresholds_for_scope([a, b], step) == compute_thresholds([a, b], step)
    assert thresholds_for_scope([a, b], RoutingConfig(threshold_scope="micro_batch")) is None
    glob = RoutingConfig(threshold_scope="global")

    def gather(values_N: torch.Tensor) -> torch.Tensor:
        # rank 0 holds [a, b]; the fake rank 1 holds other_rank. Which statistic is asked for is told
        # apart by matching this rank's values.
        mine_T = torch.cat([a.logq_T_B_R[a.mask_B_R], b.logq_T_B_R[b.mask_B_R]])
        theirs = other_rank.logq_T_B_R if torch.equal(values_N, mine_T) else other_rank.logq_S_B_R
        return torch.cat([values_N, theirs[other_rank.mask_B_R]])

    assert thresholds_for_scope([a, b], glob, gather) == compute_thresholds([a, b, other_rank], glob)
    with pytest.raises(ValueError, match="gather"):
        thresholds_for_scope([a], glob)
