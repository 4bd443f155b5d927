"""DOPD token routing: per-token statistics, thresholds and regime masks (docs/method.md §2–§4).

Pure torch. The flow for one optimiser step (docs/method.md §6 step 3):

    stats  = token_stats(teacher_priv_logits_B_R_V, student_priv_logits_B_R_V, response_ids_B_R, response_mask_B_R)
    thr    = thresholds_for_scope([stats of every micro-batch of the step], routing)   # step | micro_batch | global
    masks  = route("dopd4", response_mask_B_R, stats, thr)   # {"LH","LL","HT","HS"} -> bool [B, R]

Shape legend: B sequences, R response tokens, V vocabulary, N valid (non-pad) response tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from dopd_vlm.divergences import TOPK_SUPPORTS, TOPK_TAILS, log_prob_at
from dopd_vlm.fields import opt

ROUTERS = ("all", "dopd4")
ROUTER_REGIMES = {"all": ("ALL",), "dopd4": ("LH", "LL", "HT", "HS")}
NORMALIZATIONS = ("none", "zscore", "minmax")
THRESHOLD_SCOPES = ("step", "micro_batch", "global")
LEAN_BACKWARDS = ("fused", "checkpoint")
OPD_SUPPORTS = ("sampled", "full")  # docs/method.md §8: the supports vanilla OPD is defined with


@dataclass
class RoutingConfig:
    """Routing and loss options (docs/method.md §3–§5, §8); the training config's ``routing`` section.

    Every field is a plain str/int/float so ``routing.key=value`` overrides work. [P] = stated in
    the DOPD paper, [D] = project decision (docs/method.md marks these; the paper is silent).
    """

    outlier_quantile: float = opt(0.95, "each statistic's mean drops values above this quantile (\"discard the top 5% of outliers\"); 1.0 keeps all [D docs/method.md §3]")
    normalization: str = opt("none", "per-statistic normalisation before the comparisons: none | zscore | minmax [D docs/method.md §3]")
    threshold_scope: str = opt("step", "tokens the thresholds are computed over: step (the whole optimiser step on this rank) | micro_batch | global (all ranks) [D docs/method.md §3]")
    topk: int = opt(128, "K of the top-K support of the LH / LL / HS regimes [P §4: K = 128]")
    topk_support: str = opt("target", "whose top-K indices form the support: target | student | union [D docs/method.md §4]")
    topk_tail: str = opt("renorm", "mass outside the support: renorm (log-softmax over K) | bucket (one tail bucket) [D docs/method.md §4]")
    loss_temperature: float = opt(1.0, "both logits are divided by this before the divergence (not the routing statistics) [D docs/method.md §4]")
    beta_w: float = opt(0.3, "β_w, weight of the LL (\"weak self\") regime; must be < beta_l [P §4]")
    beta_l: float = opt(0.6, "β_l, weight of the LH and HS regimes [P §4]")
    opd_support: str = opt("sampled", "support of the one-regime reverse-KL baselines vanilla_opd and opd_priv_teacher: sampled (one sampled token per position, score-function gradient) | full (exact over the vocabulary) [P docs/method.md §8: sampled by default, full as the option]")
    jsd_beta: float = opt(0.5, "β of the generalised JSD of jsd regimes (OPSD 0.5 [P]; GKD reuses it [D]) [docs/method.md §8]")
    vocab_size: int = opt(0, "slice logits to this many entries (embedding padding makes lm_head wider than the tokenizer); 0 = as they are [D docs/method.md known traps]")
    lean_chunk_size: int = opt(128, "response tokens per lm_head projection chunk of the lean loss (run.loss_impl=lean) [D measured in BENCHMARKS.md §1]")
    lean_subchunk_size: int = opt(4, "rows per divergence graph inside a lean chunk (fused backward); bounds the [rows, V] temporaries [D measured in BENCHMARKS.md §1]")
    lean_backward: str = opt("fused", "lean backward: fused (gradients formed chunk by chunk, no recompute) | checkpoint (torch.utils.checkpoint per chunk) [D docs/method.md §5]")

    def __post_init__(self) -> None:
        def fail(field: str, why: str) -> None:
            raise ValueError(f"routing.{field}={getattr(self, field)!r}: {why}")

        for f in fields(self):
            value = getattr(self, f.name)
            expected = {"float": (int, float), "int": (int,), "str": (str,)}[f.type]
            if isinstance(value, bool) or not isinstance(value, expected):
                fail(f.name, f"expected {f.type}")
        if not 0.0 < self.outlier_quantile <= 1.0:
            fail("outlier_quantile", "must lie in (0, 1]")
        if self.normalization not in NORMALIZATIONS:
            fail("normalization", f"expected one of {NORMALIZATIONS}")
        if self.threshold_scope not in THRESHOLD_SCOPES:
            fail("threshold_scope", f"expected one of {THRESHOLD_SCOPES}")
        if self.topk < 1:
            fail("topk", "must be ≥ 1")
        if self.topk_support not in TOPK_SUPPORTS:
            fail("topk_support", f"expected one of {TOPK_SUPPORTS}")
        if self.topk_tail not in TOPK_TAILS:
            fail("topk_tail", f"expected one of {TOPK_TAILS}")
        if not self.loss_temperature > 0.0:
            fail("loss_temperature", "must be > 0")
        for name in ("beta_w", "beta_l"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                fail(name, "must lie in [0, 1]")
        if not self.beta_w < self.beta_l:
            fail("beta_w", f"the paper requires beta_w < beta_l (beta_l={self.beta_l}), docs/method.md §4")
        if self.opd_support not in OPD_SUPPORTS:
            fail("opd_support", f"expected one of {OPD_SUPPORTS}")
        if not 0.0 <= self.jsd_beta <= 1.0:
            fail("jsd_beta", "must lie in [0, 1]")
        if self.vocab_size < 0:
            fail("vocab_size", "must be ≥ 0 (0 = no slicing)")
        if self.lean_chunk_size < 1:
            fail("lean_chunk_size", "must be ≥ 1")
        if self.lean_subchunk_size < 1:
            fail("lean_subchunk_size", "must be ≥ 1")
        if self.lean_backward not in LEAN_BACKWARDS:
            fail("lean_backward", f"expected one of {LEAN_BACKWARDS}")


def slice_vocab(logits_B_R_Vpad: Tensor, vocab_size: int) -> Tensor:
    """Drop embedding-padding columns: ``[..., :vocab_size]`` (0 = keep all) (docs/method.md §11 "Known traps")."""
    if vocab_size == 0:
        return logits_B_R_Vpad
    if logits_B_R_Vpad.shape[-1] < vocab_size:
        raise ValueError(
            f"logits have {logits_B_R_Vpad.shape[-1]} vocabulary entries, fewer than routing.vocab_size={vocab_size}"
        )
    return logits_B_R_Vpad[..., :vocab_size]


@dataclass(frozen=True)
class TokenStats:
    """Per-token statistics at the sampled token (docs/method.md §2), float32, ``[B, R]``.

    ``logq_T_B_R = log π_T(y_n | x, p, y_<n)`` (teacher_priv), ``logq_S_B_R = log π_S(y_n | x, p,
    y_<n)`` (student_priv); ``mask_B_R`` the valid response tokens. Values at padding are ignored.
    """

    logq_T_B_R: Tensor
    logq_S_B_R: Tensor
    mask_B_R: Tensor

    def __post_init__(self) -> None:
        if not (self.logq_T_B_R.shape == self.logq_S_B_R.shape == self.mask_B_R.shape):
            raise ValueError(
                f"TokenStats shapes differ: logq_T {tuple(self.logq_T_B_R.shape)}, "
                f"logq_S {tuple(self.logq_S_B_R.shape)}, mask {tuple(self.mask_B_R.shape)}"
            )
        if self.mask_B_R.dtype != torch.bool:
            raise ValueError(f"TokenStats.mask_B_R must be bool, got {self.mask_B_R.dtype}")

    @property
    def gap_B_R(self) -> Tensor:
        """Privilege advantage gap ``A_n = |log q_T − log q_S|`` (docs/method.md §2)."""
        return (self.logq_T_B_R - self.logq_S_B_R).abs()

    def valid_values(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(A_N, q_S_N, q_T_N)`` over the valid tokens: what thresholds are computed from."""
        return (
            self.gap_B_R[self.mask_B_R],
            self.logq_S_B_R[self.mask_B_R].exp(),
            self.logq_T_B_R[self.mask_B_R].exp(),
        )


@torch.no_grad()
def token_stats(
    teacher_priv_logits_B_R_V: Tensor,
    student_priv_logits_B_R_V: Tensor,
    response_ids_B_R: Tensor,
    response_mask_B_R: Tensor,
    vocab_size: int = 0,
) -> TokenStats:
    """``log q_T`` and ``log q_S`` at the sampled tokens from dense logits (docs/method.md §2), no grad.

    Statistics use the policies themselves (temperature 1), not the loss temperature [D].
    """
    teacher_B_R_V = slice_vocab(teacher_priv_logits_B_R_V, vocab_size)
    student_B_R_V = slice_vocab(student_priv_logits_B_R_V, vocab_size)
    return TokenStats(
        logq_T_B_R=log_prob_at(teacher_B_R_V, response_ids_B_R),
        logq_S_B_R=log_prob_at(student_B_R_V, response_ids_B_R),
        mask_B_R=response_mask_B_R,
    )


@dataclass(frozen=True)
class Thresholds:
    """Batch thresholds of docs/method.md §3, as Python floats (one host sync per optimiser step).

    ``gap``, ``q_S``, ``q_T``: outlier-trimmed means of ``A``, ``q_S``, ``q_T`` (raw scale).
    Normalisation maps ``x ↦ (x − shift) / scale`` per statistic (identity for ``none``);
    ``qsum`` is the LH/LL threshold ``q̄_S' + q̄_T'`` in normalised space. ``num_tokens`` = tokens
    the thresholds were computed over (0 → all NaN; nothing is routed then).
    """

    gap: float
    q_S: float
    q_T: float
    q_S_shift: float
    q_S_scale: float
    q_T_shift: float
    q_T_scale: float
    num_tokens: int

    @property
    def qsum(self) -> float:
        return (self.q_S - self.q_S_shift) / self.q_S_scale + (self.q_T - self.q_T_shift) / self.q_T_scale


def _trim(values_N: Tensor, quantile: float) -> Tensor:
    """Values at or below their ``quantile`` (docs/method.md §3 [D]: "discard the top 5% of outliers")."""
    if quantile >= 1.0:
        return values_N
    cutoff = torch.quantile(values_N, quantile)
    return values_N[values_N <= cutoff]


def _affine(kept_N: Tensor, normalization: str) -> tuple[float, float]:
    """``(shift, scale)`` of the per-statistic normalisation, fitted on the kept values [D] §3.

    The paper discards outliers, then normalises, then averages; a zero spread keeps scale 1.
    """
    if normalization == "none":
        return 0.0, 1.0
    if normalization == "zscore":
        shift, spread = kept_N.mean().item(), kept_N.std(unbiased=False).item()
    elif normalization == "minmax":
        shift, spread = kept_N.min().item(), (kept_N.max() - kept_N.min()).item()
    else:
        raise ValueError(f"unknown normalization {normalization!r}; expected one of {NORMALIZATIONS}")
    return shift, (spread if spread > 0.0 else 1.0)


@torch.no_grad()
def compute_thresholds(stats: TokenStats | Sequence[TokenStats], routing: RoutingConfig | None = None) -> Thresholds:
    """Thresholds ``Ā, q̄_S, q̄_T`` over the valid tokens of ``stats`` (docs/method.md §3).

    Pass the stats of every micro-batch of the optimiser step (``threshold_scope: step``), or of one
    micro-batch (``micro_batch``), or the all-gathered values of every rank (``global``: build one
    ``TokenStats`` from the gathered tensors). Each statistic is trimmed at its own
    ``outlier_quantile`` before averaging; every token is still routed and trained.
    """
    routing = RoutingConfig() if routing is None else routing
    stats_list = [stats] if isinstance(stats, TokenStats) else list(stats)
    if not stats_list:
        raise ValueError("compute_thresholds: no TokenStats given")
    parts = [s.valid_values() for s in stats_list]
    gap_N, q_S_N, q_T_N = (torch.cat([p[i].double() for p in parts]) for i in range(3))
    if gap_N.numel() == 0:
        nan = float("nan")
        return Thresholds(nan, nan, nan, 0.0, 1.0, 0.0, 1.0, num_tokens=0)
    q = routing.outlier_quantile
    kept_q_S, kept_q_T = _trim(q_S_N, q), _trim(q_T_N, q)
    q_S_shift, q_S_scale = _affine(kept_q_S, routing.normalization)
    q_T_shift, q_T_scale = _affine(kept_q_T, routing.normalization)
    return Thresholds(
        gap=_trim(gap_N, q).mean().item(),
        q_S=kept_q_S.mean().item(),
        q_T=kept_q_T.mean().item(),
        q_S_shift=q_S_shift,
        q_S_scale=q_S_scale,
        q_T_shift=q_T_shift,
        q_T_scale=q_T_scale,
        num_tokens=int(gap_N.numel()),
    )


def thresholds_for_scope(
    step_stats: Sequence[TokenStats],
    routing: RoutingConfig,
    gather: Callable[[Tensor], Tensor] | None = None,
) -> Thresholds | None:
    """Thresholds for ``routing.threshold_scope`` (docs/method.md §3 [D]), called once per optimiser step.

    ``step_stats``: the pass-1 statistics of every micro-batch of the step on this rank.
      * ``step`` (default): thresholds over all of them; pass the result to every micro-batch.
      * ``micro_batch``: returns None, so each ``routed_loss`` call computes its own.
      * ``global``: ``gather`` maps a 1-D tensor to the concatenation of that tensor over all
        ranks (variable lengths are the caller's concern, e.g. pad-and-trim around
        ``accelerate``'s gather); thresholds over every rank's valid tokens.
    """
    if routing.threshold_scope == "micro_batch":
        return None
    if routing.threshold_scope == "step":
        return compute_thresholds(step_stats, routing)
    if gather is None:
        raise ValueError("routing.threshold_scope='global' needs a gather function over ranks")
    logq_T_N = torch.cat([s.logq_T_B_R[s.mask_B_R] for s in step_stats])
    logq_S_N = torch.cat([s.logq_S_B_R[s.mask_B_R] for s in step_stats])
    all_T_N, all_S_N = gather(logq_T_N), gather(logq_S_N)
    if all_T_N.shape != all_S_N.shape or all_T_N.dim() != 1:
        raise ValueError(f"gather returned {tuple(all_T_N.shape)} and {tuple(all_S_N.shape)}; expected equal 1-D")
    every = TokenStats(all_T_N[None], all_S_N[None], torch.ones_like(all_T_N[None], dtype=torch.bool))
    return compute_thresholds(every, routing)


@torch.no_grad()
def route(
    router: str,
    response_mask_B_R: Tensor,
    stats: TokenStats | None = None,
    thresholds: Thresholds | None = None,
) -> dict[str, Tensor]:
    """Boolean masks ``[B, R]`` by regime name; they partition the valid tokens (docs/method.md §4).

    ``all``: ``{"ALL": response_mask}``. ``dopd4`` (needs ``stats``; ``thresholds`` default to the
    thresholds of ``stats`` alone):
      LH: ``A < Ā`` and ``q_S' + q_T' ≥ q̄_S' + q̄_T'``;  LL: ``A < Ā`` and ``q_S' + q_T' < q̄_S' + q̄_T'``;
      HT: ``A ≥ Ā`` and ``q_T ≥ q_S``;                  HS: ``A ≥ Ā`` and ``q_T < q_S``
    (``'`` = the configured normalisation; ``q_T ≥ q_S`` is compared in log space, same order).
    """
    if response_mask_B_R.dtype != torch.bool:
        raise ValueError(f"response_mask must be bool, got {response_mask_B_R.dtype}")
    if router == "all":
        return {"ALL": response_mask_B_R.clone()}
    if router != "dopd4":
        raise ValueError(f"unknown router {router!r}; expected one of {ROUTERS}")
    if stats is None:
        raise ValueError("router 'dopd4' needs TokenStats (teacher_priv and student_priv log-probs)")
    if stats.mask_B_R.shape != response_mask_B_R.shape:
        raise ValueError(
            f"stats are {tuple(stats.mask_B_R.shape)} but response_mask is {tuple(response_mask_B_R.shape)}"
        )
    thr = compute_thresholds(stats) if thresholds is None else thresholds
    low_gap_B_R = stats.gap_B_R.double() < thr.gap
    q_S_B_R, q_T_B_R = stats.logq_S_B_R.double().exp(), stats.logq_T_B_R.double().exp()
    qsum_B_R = (q_S_B_R - thr.q_S_shift) / thr.q_S_scale + (q_T_B_R - thr.q_T_shift) / thr.q_T_scale
    confident_B_R = qsum_B_R >= thr.qsum
    teacher_ahead_B_R = stats.logq_T_B_R >= stats.logq_S_B_R
    valid_B_R = response_mask_B_R
    return {
        "LH": valid_B_R & low_gap_B_R & confident_B_R,
        "LL": valid_B_R & low_gap_B_R & ~confident_B_R,
        "HT": valid_B_R & ~low_gap_B_R & teacher_ahead_B_R,
        "HS": valid_B_R & ~low_gap_B_R & ~teacher_ahead_B_R,
    }
