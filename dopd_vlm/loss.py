"""The routed distillation loss, Eq. 10 and Eq. 11 of DOPD (docs/method.md §5), from dense logits.

Public API (stable; outside code calls this):

    loss, metrics = routed_loss(student_logits_B_R_V, targets, response_ids_B_R, response_mask_B_R,
                                table="dopd", routing=None)

For real vocabulary sizes use the memory-lean twin ``dopd_vlm.lean.lean_routed_loss`` (same loss,
same gradients, from hidden states and ``lm_head`` weights).

Eq. 10: ``L_n = Σ_regimes I_regime(n) · weight · D(student_plain ‖ target)`` at every response token.
Eq. 11: per sequence, the mean of ``L_n`` over its valid response tokens; then the mean over
sequences. With gradient accumulation each micro-batch passes ``step_num_sequences`` (the number of
sequences in the whole optimiser step) and its loss is ``Σ_b L_b / step_num_sequences``, so the
summed micro-batch gradients equal the whole-batch gradient; pass the step's ``thresholds`` too
(docs/method.md §3 "Gradient accumulation must not change the routing").

Shape legend: B sequences, R response tokens, V vocabulary, N valid response tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from dopd_vlm.divergences import RowTerms, compute_dtype, entropy, row_terms
from dopd_vlm.routing import (
    RoutingConfig,
    Thresholds,
    TokenStats,
    compute_thresholds,
    route,
    slice_vocab,
    token_stats,
)
from dopd_vlm.tables import STUDENT, Regime, RoutingTable, get_table

ENTROPY_CHUNK = 256  # rows per chunk of the no-grad entropy metric [D]


def check_batch(response_ids_B_R: Tensor, response_mask_B_R: Tensor, step_num_sequences: int | None) -> None:
    """Boundary validation of the response tensors (validated once, here; Eq. 11 batch sizes)."""
    if response_ids_B_R.dim() != 2 or response_ids_B_R.dtype.is_floating_point or response_ids_B_R.dtype == torch.bool:
        raise ValueError(
            f"response_ids must be an integer [B, R] tensor, got {response_ids_B_R.dtype} {tuple(response_ids_B_R.shape)}"
        )
    if response_mask_B_R.dtype != torch.bool or response_mask_B_R.shape != response_ids_B_R.shape:
        raise ValueError(
            f"response_mask must be a bool tensor shaped like response_ids {tuple(response_ids_B_R.shape)}, "
            f"got {response_mask_B_R.dtype} {tuple(response_mask_B_R.shape)}"
        )
    batch = response_ids_B_R.shape[0]
    if step_num_sequences is not None and step_num_sequences < batch:
        raise ValueError(f"step_num_sequences={step_num_sequences} is smaller than this micro-batch's B={batch}")


def check_ids(response_ids_B_R: Tensor, response_mask_B_R: Tensor, vocab: int) -> None:
    """Every valid response id indexes the (sliced) vocabulary (docs/method.md §2: ``q`` at ``y_n``)."""
    valid_ids_N = response_ids_B_R[response_mask_B_R]
    if valid_ids_N.numel() and (valid_ids_N.min() < 0 or valid_ids_N.max() >= vocab):
        raise ValueError(
            f"response_ids outside [0, {vocab}) at valid positions (min {int(valid_ids_N.min())}, "
            f"max {int(valid_ids_N.max())}); set routing.vocab_size to the tokenizer's size?"
        )


def token_coefficients(response_mask_B_R: Tensor, step_num_sequences: int | None, dtype: torch.dtype) -> Tensor:
    """``c_n = 1 / (|valid tokens of n's sequence| · step_num_sequences)`` (Eq. 11 as a token sum).

    ``Σ_n c_n · L_n`` = per-sequence mean then mean over ``step_num_sequences`` (default B). A
    sequence with no valid token contributes 0 and still counts in the denominator [D], so the
    micro-batch weighting b / B of gradient accumulation holds exactly.
    """
    denominator = response_mask_B_R.shape[0] if step_num_sequences is None else step_num_sequences
    lengths_B = response_mask_B_R.sum(dim=1).clamp_min(1).to(dtype)
    return (response_mask_B_R.to(dtype) / (lengths_B.unsqueeze(1) * denominator))


def regime_terms(
    student_logits_N_V: Tensor, target_logits_N_V: Tensor, ids_N: Tensor, regime: Regime, routing: RoutingConfig
) -> RowTerms:
    """``D(student_plain ‖ target)`` on one regime's rows with the regime's support (Eq. 10 term)."""
    return row_terms(
        student_logits_N_V,
        target_logits_N_V,
        ids_N,
        regime.divergence,
        regime.resolve_support(routing),
        topk=routing.topk,
        topk_support_name=routing.topk_support,
        topk_tail=routing.topk_tail,
        temperature=routing.loss_temperature,
        jsd_beta=routing.jsd_beta,
    )


@dataclass
class MetricSums:
    """Detached running sums behind the metrics of issue 3 / docs/method.md §3–§5 (dense and lean paths).

    Metrics are per call: with gradient accumulation ``loss/objective`` sums over micro-batches to
    the step's Eq. 11 value; fractions and means are the micro-batch's own.
    """

    table: RoutingTable
    device: torch.device

    def __post_init__(self) -> None:
        zero = lambda: torch.zeros((), dtype=torch.float64, device=self.device)  # noqa: E731
        self.count = {r.name: 0 for r in self.table.regimes}
        self.value_sum = {r.name: zero() for r in self.table.regimes}
        self.objective = zero()
        self.entropy_sum = zero()
        self.covered_student_sum = zero()
        self.covered_target_sum = zero()
        self.covered_count = 0

    @torch.no_grad()
    def add(self, regime: Regime, terms: RowTerms, coef_weight_N: Tensor) -> None:
        """Add one regime's rows: count, divergence sum, Eq. 11 objective, top-K covered mass."""
        self.count[regime.name] += terms.value_N.shape[0]
        self.value_sum[regime.name] += terms.value_N.double().sum()
        self.objective += (coef_weight_N.double() * terms.value_N.double()).sum()
        if terms.covered_student_N is not None:
            self.covered_student_sum += terms.covered_student_N.double().sum()
            self.covered_target_sum += terms.covered_target_N.double().sum()
            self.covered_count += terms.covered_student_N.shape[0]

    @torch.no_grad()
    def add_entropy(self, entropy_N: Tensor) -> None:
        """Add student_plain entropies (temperature 1) of valid rows."""
        self.entropy_sum += entropy_N.double().sum()

    def finalize(self, stats: TokenStats | None, thresholds: Thresholds | None) -> dict[str, float]:
        """Flat metrics (issue 3): regime fractions and mean divergences, gap and thresholds,
        student entropy, top-K covered mass. Empty means are NaN."""
        nan = float("nan")
        total = sum(self.count.values())
        metrics: dict[str, float] = {"tokens/valid": float(total), "loss/objective": self.objective.item()}
        for name, count in self.count.items():
            metrics[f"regime/{name}/frac"] = count / total if total else nan
            metrics[f"regime/{name}/loss"] = self.value_sum[name].item() / count if count else nan
        metrics["student/entropy"] = self.entropy_sum.item() / total if total else nan
        if any(r.support == "topk" for r in self.table.regimes):
            n = self.covered_count
            metrics["topk/covered_mass_student"] = self.covered_student_sum.item() / n if n else nan
            metrics["topk/covered_mass_target"] = self.covered_target_sum.item() / n if n else nan
        if stats is not None and thresholds is not None:
            gap_N = stats.gap_B_R[stats.mask_B_R]
            metrics["gap/mean"] = gap_N.double().mean().item() if gap_N.numel() else nan
            metrics["threshold/A"] = thresholds.gap
            metrics["threshold/q_S"] = thresholds.q_S
            metrics["threshold/q_T"] = thresholds.q_T
            metrics["threshold/qsum"] = thresholds.qsum
        return metrics


def routed_loss(
    student_logits_B_R_V: Tensor,
    targets: Mapping[str, Tensor],
    response_ids_B_R: Tensor,
    response_mask_B_R: Tensor,
    table: str | RoutingTable,
    routing: RoutingConfig | None = None,
    *,
    thresholds: Thresholds | None = None,
    step_num_sequences: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The routed loss of Eq. 10 / Eq. 11 (docs/method.md §5) and its metrics, from dense logits.

    Args:
        student_logits_B_R_V: ``student_plain`` logits at the response positions (position n
            predicts ``response_ids[:, n]``); the only tensor that receives gradients.
        targets: ``{"teacher_priv" | "student_priv" | "teacher_plain": [B, R, V] logits}``; every
            policy in ``table.policies()`` besides student_plain; must not require grad.
        response_ids_B_R: the sampled response token ids (int).
        response_mask_B_R: True at valid (non-pad) response tokens.
        table: a ``RoutingTable`` or a registered name (``dopd_vlm.tables.TABLES``).
        routing: ``RoutingConfig``; default = docs/method.md defaults.
        thresholds: the step's thresholds from ``dopd_vlm.routing.thresholds_for_scope`` (statistics
            of every micro-batch of the step); default = computed from this call's tokens
            (docs/method.md §3).
        step_num_sequences: sequences in the whole optimiser step (gradient accumulation); this
            call's loss is ``Σ_b L_b / step_num_sequences``. Default = B (plain Eq. 11).

    Returns:
        ``(loss, metrics)``: a 0-dim float32 loss (for ``sampled`` support its value is the
        score-function surrogate; ``metrics["loss/objective"]`` is Eq. 11 with the divergence
        estimates) and a flat ``dict[str, float]``.
    """
    table = get_table(table)
    routing = RoutingConfig() if routing is None else routing
    check_batch(response_ids_B_R, response_mask_B_R, step_num_sequences)
    if student_logits_B_R_V.dim() != 3 or student_logits_B_R_V.shape[:2] != response_ids_B_R.shape:
        raise ValueError(
            f"student_logits must be [B, R, V] with [B, R] = {tuple(response_ids_B_R.shape)}, "
            f"got {tuple(student_logits_B_R_V.shape)}"
        )
    student_B_R_V = slice_vocab(student_logits_B_R_V, routing.vocab_size)
    needed = sorted(table.policies() - {STUDENT})
    missing = [p for p in needed if p not in targets]
    if missing:
        raise ValueError(f"table {table.name!r} needs target logits for {missing}; got {sorted(targets)}")
    target_B_R_V: dict[str, Tensor] = {}
    for policy in needed:
        logits = slice_vocab(targets[policy], routing.vocab_size)
        if logits.shape != student_B_R_V.shape:
            raise ValueError(
                f"targets[{policy!r}] is {tuple(logits.shape)}, student_logits {tuple(student_B_R_V.shape)} "
                "(after routing.vocab_size slicing); set routing.vocab_size when lm_head widths differ"
            )
        if logits.requires_grad:
            raise ValueError(f"targets[{policy!r}] requires grad; targets are stop-grad (docs/method.md §1): detach them")
        target_B_R_V[policy] = logits
    vocab = student_B_R_V.shape[-1]
    check_ids(response_ids_B_R, response_mask_B_R, vocab)

    stats = None
    if table.router == "dopd4":
        stats = token_stats(target_B_R_V["teacher_priv"], target_B_R_V["student_priv"], response_ids_B_R, response_mask_B_R)
        thresholds = compute_thresholds(stats, routing) if thresholds is None else thresholds
    masks_B_R = route(table.router, response_mask_B_R, stats, thresholds)

    dtype = compute_dtype(student_B_R_V.dtype)
    coef_N = token_coefficients(response_mask_B_R, step_num_sequences, dtype).reshape(-1)
    student_N_V = student_B_R_V.reshape(-1, vocab)
    ids_N = response_ids_B_R.reshape(-1)
    sums = MetricSums(table, student_B_R_V.device)
    valid_rows_N = response_mask_B_R.reshape(-1).nonzero().squeeze(1)
    with torch.no_grad():  # chunked so the metric does not add [N, V] temporaries to the peak
        for start in range(0, valid_rows_N.numel(), ENTROPY_CHUNK):
            sums.add_entropy(entropy(student_N_V.index_select(0, valid_rows_N[start : start + ENTROPY_CHUNK])))
    # An empty sum keeps the loss attached to the graph when no token is valid.
    loss = student_N_V.narrow(0, 0, 0).sum().to(dtype)
    for regime in table.regimes:
        rows_n = masks_B_R[regime.name].reshape(-1).nonzero().squeeze(1)
        if rows_n.numel() == 0:
            continue
        target_N_V = target_B_R_V[regime.target].reshape(-1, vocab)
        if rows_n.numel() == student_N_V.shape[0]:  # every row (router "all"): views, no [N, V] copies
            student_n_V, target_n_V = student_N_V, target_N_V
        else:
            student_n_V, target_n_V = student_N_V.index_select(0, rows_n), target_N_V.index_select(0, rows_n)
        terms = regime_terms(student_n_V, target_n_V, ids_N[rows_n], regime, routing)
        coef_weight_n = coef_N[rows_n] * regime.resolve_weight(routing)
        loss = loss + (coef_weight_n * terms.loss_N).sum()
        sums.add(regime, terms, coef_weight_n)
    return loss, sums.finalize(stats, thresholds)
