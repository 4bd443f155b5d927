"""Token-level divergences between the trained student and a target distribution (docs/method.md §4, §5, §8).

Pure torch. Every function takes logits or log-probabilities whose last dimension is the vocabulary
(or a support drawn from it) and returns one value per row. All arithmetic runs in float32 whatever
the input dtype (float64 inputs stay float64, which the float64 reference tests rely on): bf16
divergences come out negative (docs/method.md §11, "Known traps").

Direction convention (the student ``P_S`` is always the trained ``student_plain`` distribution and
``P_T`` the routing-table target):
  * reverse KL  ``KL(P_S ‖ P_T)``  (docs/method.md §4, LH / LL / HS regimes; vanilla OPD)
  * forward KL  ``KL(P_T ‖ P_S)``
  * JS          ``½ KL(P_S ‖ M) + ½ KL(P_T ‖ M)``, ``M = ½ (P_S + P_T)`` (docs/method.md §5, HT regime)
  * JSD(β)      ``β KL(P_T ‖ M) + (1 − β) KL(P_S ‖ M)``, ``M = β P_T + (1 − β) P_S`` (docs/method.md §8,
    GKD/OPSD); β = 0 is forward KL and β = 1 reverse KL, as explicit branches.

Supports (docs/method.md §4 "Top-K details"): ``full`` vocabulary, ``topk`` (indices from the
``target`` | ``student`` | ``union`` top-K, tail ``renorm`` | ``bucket``) and ``sampled`` (the sampled
token only, reverse KL with the score-function gradient of docs/method.md §8).

Shape legend: N rows (flattened response tokens), V vocabulary, K support size (K, or ≤ 2K for
``union``), S support size after the optional tail bucket (K or K + 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

DIVERGENCES = ("reverse_kl", "forward_kl", "js", "jsd")
SUPPORTS = ("full", "topk", "sampled")
TOPK_SUPPORTS = ("target", "student", "union")
TOPK_TAILS = ("renorm", "bucket")

# Finite stand-in for log(0) on masked support entries (union duplicates, an empty tail bucket).
# A real -inf would turn 0 · (−inf − −inf) into NaN in the forward or backward pass; exp(-1e30) is
# exactly 0 in float32/64, so the entry carries no mass and no gradient.
_LOG_ZERO = -1e30


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype divergences are computed in: float32, or float64 for float64 inputs (docs/method.md §5)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _upcast(x: Tensor) -> Tensor:
    """``x`` in the compute dtype (float32, or float64), docs/method.md §5 "compute in float32"."""
    return x.to(compute_dtype(x.dtype))


def kl(logp_N_S: Tensor, logq_N_S: Tensor, valid_N_S: Tensor | None = None) -> Tensor:
    """``KL(P ‖ Q) = Σ_v p_v (log p_v − log q_v)`` per row, from log-probabilities (docs/method.md §5).

    ``valid_N_S`` marks support entries that exist (False for union duplicates); invalid entries
    contribute exactly 0. Inputs are upcast to float32.
    """
    logp_N_S, logq_N_S = _upcast(logp_N_S), _upcast(logq_N_S)
    term_N_S = logp_N_S.exp() * (logp_N_S - logq_N_S)
    if valid_N_S is not None:
        term_N_S = torch.where(valid_N_S, term_N_S, torch.zeros_like(term_N_S))
    return term_N_S.sum(-1)


def reverse_kl(student_logp_N_S: Tensor, target_logp_N_S: Tensor, valid_N_S: Tensor | None = None) -> Tensor:
    """Reverse KL ``KL(P_S ‖ P_T)``: the LH / LL / HS objective of DOPD (docs/method.md §4 table)."""
    return kl(student_logp_N_S, target_logp_N_S, valid_N_S)


def forward_kl(student_logp_N_S: Tensor, target_logp_N_S: Tensor, valid_N_S: Tensor | None = None) -> Tensor:
    """Forward KL ``KL(P_T ‖ P_S)``: JSD(β = 0) (docs/method.md §8)."""
    return kl(target_logp_N_S, student_logp_N_S, valid_N_S)


def generalized_jsd(
    student_logp_N_S: Tensor, target_logp_N_S: Tensor, beta: float, valid_N_S: Tensor | None = None
) -> Tensor:
    """Generalised JSD(β) of docs/method.md §8 (GKD, Agarwal et al. 2024; OPSD uses β = 0.5 [P]).

    ``β KL(P_T ‖ M) + (1 − β) KL(P_S ‖ M)`` with ``M = β P_T + (1 − β) P_S``, the mixture formed in
    probability space with log-sum-exp (docs/method.md §5). β = 0 returns forward KL ``KL(P_T ‖ P_S)``
    and β = 1 reverse KL ``KL(P_S ‖ P_T)`` as explicit branches (the GKD/TRL convention; the
    mixture formula itself degenerates to 0 at both ends).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"generalized_jsd: beta must lie in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl(student_logp_N_S, target_logp_N_S, valid_N_S)
    if beta == 1.0:
        return reverse_kl(student_logp_N_S, target_logp_N_S, valid_N_S)
    student_logp_N_S, target_logp_N_S = _upcast(student_logp_N_S), _upcast(target_logp_N_S)
    mixture_logp_N_S = torch.logaddexp(target_logp_N_S + math.log(beta), student_logp_N_S + math.log1p(-beta))
    return beta * kl(target_logp_N_S, mixture_logp_N_S, valid_N_S) + (1.0 - beta) * kl(
        student_logp_N_S, mixture_logp_N_S, valid_N_S
    )


def js(student_logp_N_S: Tensor, target_logp_N_S: Tensor, valid_N_S: Tensor | None = None) -> Tensor:
    """Jensen-Shannon with the ½/½ mixture, the HT objective (docs/method.md §4, §5); bounded by log 2.

    ``½ KL(P_S ‖ M) + ½ KL(P_T ‖ M)``, ``log M = logaddexp(log P_S, log P_T) − log 2``.
    """
    student_logp_N_S, target_logp_N_S = _upcast(student_logp_N_S), _upcast(target_logp_N_S)
    mixture_logp_N_S = torch.logaddexp(student_logp_N_S, target_logp_N_S) - math.log(2.0)
    return 0.5 * kl(student_logp_N_S, mixture_logp_N_S, valid_N_S) + 0.5 * kl(
        target_logp_N_S, mixture_logp_N_S, valid_N_S
    )


def divergence(
    name: str,
    student_logp_N_S: Tensor,
    target_logp_N_S: Tensor,
    valid_N_S: Tensor | None = None,
    jsd_beta: float = 0.5,
) -> Tensor:
    """Dispatch on a routing-table divergence name (docs/method.md §4 / §8); clamped at 0 (see below).

    Every divergence here is ≥ 0 mathematically (Gibbs' inequality); float rounding can leave
    −1e-8 when the two distributions agree, so the result is clamped at 0 — the gradient there is
    ~0 anyway. ``jsd_beta`` is used by ``jsd`` only (default 0.5: OPSD [P], docs/method.md §8).
    """
    if name == "reverse_kl":
        value_N = reverse_kl(student_logp_N_S, target_logp_N_S, valid_N_S)
    elif name == "forward_kl":
        value_N = forward_kl(student_logp_N_S, target_logp_N_S, valid_N_S)
    elif name == "js":
        value_N = js(student_logp_N_S, target_logp_N_S, valid_N_S)
    elif name == "jsd":
        value_N = generalized_jsd(student_logp_N_S, target_logp_N_S, jsd_beta, valid_N_S)
    else:
        raise ValueError(f"unknown divergence {name!r}; expected one of {DIVERGENCES}")
    return value_N.clamp_min(0.0)


def log_prob_at(logits_N_V: Tensor, ids_N: Tensor) -> Tensor:
    """``log π(y_n)`` at the sampled token from logits, in float32 (docs/method.md §2 statistics)."""
    logits_N_V = _upcast(logits_N_V)
    return logits_N_V.gather(-1, ids_N.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits_N_V, dim=-1)


def entropy(logits_N_V: Tensor) -> Tensor:
    """Shannon entropy ``−Σ p log p`` per row (the ``student/entropy`` metric, docs/method.md §10)."""
    logp_N_V = torch.log_softmax(_upcast(logits_N_V), dim=-1)
    return -(logp_N_V.exp() * logp_N_V).sum(-1)


def topk_support(
    student_logits_N_V: Tensor, target_logits_N_V: Tensor, k: int, support: str
) -> tuple[Tensor, Tensor | None]:
    """Indices of the top-K support (docs/method.md §4 "Top-K details" [D]: ``target`` default).

    Returns ``idx_N_K`` and a validity mask (None unless ``union``: then ``idx`` is ``[N, 2K]``
    and entries of the student's top-K already in the target's top-K are marked invalid).
    ``k`` larger than V is clamped to V.
    """
    k = min(k, student_logits_N_V.shape[-1])
    if support == "target":
        return target_logits_N_V.topk(k, dim=-1).indices, None
    if support == "student":
        return student_logits_N_V.topk(k, dim=-1).indices, None
    if support == "union":
        target_idx_N_K = target_logits_N_V.topk(k, dim=-1).indices
        student_idx_N_K = student_logits_N_V.topk(k, dim=-1).indices
        duplicate_N_K = (student_idx_N_K.unsqueeze(-1) == target_idx_N_K.unsqueeze(-2)).any(-1)
        idx_N_2K = torch.cat([target_idx_N_K, student_idx_N_K], dim=-1)
        valid_N_2K = torch.cat([torch.ones_like(duplicate_N_K), ~duplicate_N_K], dim=-1)
        return idx_N_2K, valid_N_2K
    raise ValueError(f"unknown topk_support {support!r}; expected one of {TOPK_SUPPORTS}")


def topk_log_probs(
    logits_N_V: Tensor, idx_N_K: Tensor, valid_N_K: Tensor | None, tail: str
) -> tuple[Tensor, Tensor | None]:
    """Log-probabilities over the top-K support (docs/method.md §4 "Top-K details" [D]).

    ``renorm``: log-softmax over the K gathered logits. ``bucket``: the K full-vocabulary
    log-probabilities plus one bucket holding the remaining mass (computed as a masked
    log-sum-exp, not ``log(1 − covered)``, so it stays exact when the tail is tiny).
    Returns ``logp_N_S`` and the validity mask over S (extended by one True column for the bucket).
    """
    logits_N_V = _upcast(logits_N_V)
    gathered_N_K = logits_N_V.gather(-1, idx_N_K)
    if valid_N_K is not None:
        gathered_N_K = gathered_N_K.masked_fill(~valid_N_K, _LOG_ZERO)
    if tail == "renorm":
        return torch.log_softmax(gathered_N_K, dim=-1), valid_N_K
    if tail == "bucket":
        # Union duplicates name an index that is in the support anyway, so every index is marked.
        in_support_N_V = torch.zeros_like(logits_N_V, dtype=torch.bool)
        in_support_N_V.scatter_(-1, idx_N_K, True)
        log_z_N = torch.logsumexp(logits_N_V, dim=-1, keepdim=True)
        tail_logit_N_1 = torch.logsumexp(
            logits_N_V.masked_fill(in_support_N_V, _LOG_ZERO), dim=-1, keepdim=True
        )
        logp_N_S = torch.cat([gathered_N_K, tail_logit_N_1], dim=-1) - log_z_N
        valid_N_S = None
        if valid_N_K is not None:
            valid_N_S = torch.cat([valid_N_K, torch.ones_like(valid_N_K[..., :1])], dim=-1)
        return logp_N_S, valid_N_S
    raise ValueError(f"unknown topk_tail {tail!r}; expected one of {TOPK_TAILS}")


def covered_mass(logits_N_V: Tensor, idx_N_K: Tensor, valid_N_K: Tensor | None) -> Tensor:
    """Full-vocabulary probability mass on the top-K support (``topk/covered_mass_*`` metrics)."""
    logits_N_V = _upcast(logits_N_V)
    gathered_N_K = logits_N_V.gather(-1, idx_N_K)
    if valid_N_K is not None:
        gathered_N_K = gathered_N_K.masked_fill(~valid_N_K, _LOG_ZERO)
    return (torch.logsumexp(gathered_N_K, dim=-1) - torch.logsumexp(logits_N_V, dim=-1)).exp()


@dataclass
class RowTerms:
    """Per-row outputs of one regime's objective (docs/method.md §5 ``D(student_plain ‖ target)``).

    ``loss_N`` is differentiable (for ``sampled`` support it is the score-function surrogate whose
    value is not the divergence); ``value_N`` is the detached divergence, or the one-sample estimate
    ``log π_S(y) − log π_T(y)`` for ``sampled`` (docs/method.md §8). ``covered_*_N`` are set for top-K.
    """

    loss_N: Tensor
    value_N: Tensor
    covered_student_N: Tensor | None = None
    covered_target_N: Tensor | None = None


def row_terms(
    student_logits_N_V: Tensor,
    target_logits_N_V: Tensor,
    sampled_ids_N: Tensor,
    divergence_name: str,
    support: str,
    *,
    topk: int,
    topk_support_name: str,
    topk_tail: str,
    temperature: float,
    jsd_beta: float,
) -> RowTerms:
    """One regime's ``D(student_plain ‖ target)`` on N rows, with its support (docs/method.md §4, §5, §8).

    Both logits are divided by the loss temperature (1.0 by default, [D] docs/method.md §4) before any
    softmax. ``sampled`` support implements docs/method.md §8: ``loss = sg(log π_S(y) − log π_T(y)) ·
    log π_S(y)`` whose expected gradient is the reverse-KL gradient. Only the student side carries
    gradient; the target is detached here (targets are stop-grad by construction, docs/method.md §1).
    """
    student_N_V = _upcast(student_logits_N_V)
    target_N_V = _upcast(target_logits_N_V.detach())
    if temperature != 1.0:  # skip a [N, V] copy at the default temperature
        student_N_V, target_N_V = student_N_V / temperature, target_N_V / temperature
    if support == "sampled":
        if divergence_name != "reverse_kl":
            raise ValueError(
                f"support 'sampled' is the one-sample reverse-KL estimate (docs/method.md §8); "
                f"divergence {divergence_name!r} has no sampled form"
            )
        student_logq_N = log_prob_at(student_N_V, sampled_ids_N)
        target_logq_N = log_prob_at(target_N_V, sampled_ids_N)
        estimate_N = (student_logq_N - target_logq_N).detach()
        return RowTerms(loss_N=estimate_N * student_logq_N, value_N=estimate_N)
    if support == "full":
        student_logp_N_V = torch.log_softmax(student_N_V, dim=-1)
        target_logp_N_V = torch.log_softmax(target_N_V, dim=-1)
        value_N = divergence(divergence_name, student_logp_N_V, target_logp_N_V, jsd_beta=jsd_beta)
        return RowTerms(loss_N=value_N, value_N=value_N.detach())
    if support == "topk":
        with torch.no_grad():
            idx_N_K, valid_N_K = topk_support(student_N_V, target_N_V, topk, topk_support_name)
            covered_student_N = covered_mass(student_N_V, idx_N_K, valid_N_K)
            covered_target_N = covered_mass(target_N_V, idx_N_K, valid_N_K)
        student_logp_N_S, valid_N_S = topk_log_probs(student_N_V, idx_N_K, valid_N_K, topk_tail)
        target_logp_N_S, _ = topk_log_probs(target_N_V, idx_N_K, valid_N_K, topk_tail)
        value_N = divergence(divergence_name, student_logp_N_S, target_logp_N_S, valid_N_S, jsd_beta=jsd_beta)
        return RowTerms(
            loss_N=value_N,
            value_N=value_N.detach(),
            covered_student_N=covered_student_N,
            covered_target_N=covered_target_N,
        )
    raise ValueError(f"unknown support {support!r}; expected one of {SUPPORTS}")
