"""Memory-lean routed loss from hidden states and ``lm_head`` weights (docs/method.md §5.1 "Memory at real sizes").

Same loss (Eq. 10 / Eq. 11, docs/method.md §5) and the same gradients as ``dopd_vlm.loss.routed_loss``
on ``hidden @ lm_head.T`` logits, without ever materialising ``[B, R, V]`` logits:

1. Pass 1 (``lean_token_stats``, no grad): chunk by chunk over the valid response tokens, project
   ``teacher_priv`` and ``student_priv`` hidden states and keep only ``log π(y_n)`` (docs/method.md §2).
   With gradient accumulation the trainer runs it on every micro-batch of the step first, computes
   the step thresholds, and passes ``stats`` and ``thresholds`` here.
2. Pass 2: route, then per regime and per chunk of its rows project the student and that regime's
   target only, and evaluate the regime's divergence (full-vocabulary JS only on HT rows).

Backward (``routing.lean_backward``):
  * ``fused`` [D, default]: each chunk's gradient w.r.t. its student logits is formed right away
    (``torch.autograd.grad`` on sub-chunks of ``lean_subchunk_size`` rows, so the divergence graph
    stays small while the projections stay large matmuls) and folded into ``d loss / d hidden``
    rows and one in-place ``d loss / d lm_head`` accumulator. Nothing is recomputed and no
    per-chunk ``[V, H]`` weight-gradient temporaries exist. The loss is linear in the chunk terms,
    so this is exactly the gradient autograd would give. This is the activation-checkpointing
    idea taken one step further: the chunk's activations are never kept, and its backward runs
    while they are still at hand instead of being recomputed.
  * ``checkpoint``: ``torch.utils.checkpoint`` per chunk. Simpler, but recomputes the student and
    target projections in backward and sums per-chunk ``[V, H]`` weight gradients.

``lm_head`` has no bias (all supported families); hidden states are the final-norm outputs at the
response positions (position n predicts ``response_ids[:, n]``).

Shape legend: B sequences, R response tokens, H hidden size (may differ per policy), V lm_head
rows (may exceed the tokenizer: ``routing.vocab_size`` slices them), N valid response tokens,
n rows in one chunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from dopd_vlm.divergences import compute_dtype, entropy, log_prob_at
from dopd_vlm.loss import MetricSums, check_batch, check_ids, regime_terms, token_coefficients
from dopd_vlm.routing import RoutingConfig, Thresholds, TokenStats, compute_thresholds, route
from dopd_vlm.tables import STUDENT, Regime, RoutingTable, get_table

# Chunk sizes. ``routing.lean_chunk_size`` / ``lean_subchunk_size`` default to values measured on
# CPU (128 / 4 rows). On a GPU such small sub-chunks starve the device (issue 15: lean was
# 2.4-3.6x slower than dense on an H200), so there the *defaults* are replaced by sizes derived
# from a memory budget per block; any other configured value is used as given.
CPU_CHUNKS = (128, 4)  # the RoutingConfig defaults [D, measured on CPU]
GPU_CHUNK_BYTES = 2 << 30  # ~3 [n, V] float32 blocks of one projection chunk (student, target, grad) [D]
GPU_SUBCHUNK_BYTES = 1 << 30  # the ~15 [n, V] temporaries of one sub-chunk's divergence graph [D]


def chunk_sizes(routing: RoutingConfig, device: torch.device | str, vocab: int) -> tuple[int, int]:
    """``(chunk rows, sub-chunk rows)`` for this device (see ``CPU_CHUNKS``): the configured values,
    except that the CPU defaults become budget-derived sizes on CUDA (powers of two, 16..8192)."""
    chunk, sub = routing.lean_chunk_size, routing.lean_subchunk_size
    if torch.device(device).type != "cuda" or (chunk, sub) != CPU_CHUNKS:
        return chunk, sub

    def fit(budget: int, copies: int, lo: int, hi: int) -> int:
        rows = max(1, budget // (copies * 4 * max(1, vocab)))
        return max(lo, min(hi, 1 << (rows.bit_length() - 1)))

    chunk = fit(GPU_CHUNK_BYTES, 3, 16, 8192)
    return chunk, min(chunk, fit(GPU_SUBCHUNK_BYTES, 15, 4, 8192))


def for_device(routing: RoutingConfig, device: torch.device | str, vocab: int) -> RoutingConfig:
    """``routing`` with the chunk sizes of ``chunk_sizes`` (unchanged on CPU)."""
    chunk, sub = chunk_sizes(routing, device, vocab)
    if (chunk, sub) == (routing.lean_chunk_size, routing.lean_subchunk_size):
        return routing
    return replace(routing, lean_chunk_size=chunk, lean_subchunk_size=sub)


def _head(lm_head_V_H: Tensor, vocab_size: int) -> Tensor:
    """The lm_head rows of the tokenizer's vocabulary (docs/method.md §11 "Known traps": padded embeddings)."""
    if lm_head_V_H.dim() != 2:
        raise ValueError(f"lm_head weight must be [V, H], got {tuple(lm_head_V_H.shape)}")
    if vocab_size == 0:
        return lm_head_V_H
    if lm_head_V_H.shape[0] < vocab_size:
        raise ValueError(f"lm_head has {lm_head_V_H.shape[0]} rows, fewer than routing.vocab_size={vocab_size}")
    return lm_head_V_H[:vocab_size]


def _check_hidden(name: str, hidden_B_R_H: Tensor, lm_head_V_H: Tensor, response_ids_B_R: Tensor) -> None:
    """Boundary validation: hidden states score the response positions (docs/method.md §6 step 2)."""
    if hidden_B_R_H.dim() != 3 or hidden_B_R_H.shape[:2] != response_ids_B_R.shape:
        raise ValueError(
            f"{name} hidden states must be [B, R, H] with [B, R] = {tuple(response_ids_B_R.shape)}, "
            f"got {tuple(hidden_B_R_H.shape)}"
        )
    if hidden_B_R_H.shape[-1] != lm_head_V_H.shape[-1]:
        raise ValueError(f"{name}: hidden size {hidden_B_R_H.shape[-1]} != lm_head width {lm_head_V_H.shape[-1]}")


@torch.no_grad()
def lean_token_stats(
    hidden: Mapping[str, Tensor],
    lm_heads: Mapping[str, Tensor],
    response_ids_B_R: Tensor,
    response_mask_B_R: Tensor,
    routing: RoutingConfig | None = None,
) -> TokenStats:
    """Pass 1: ``log q_T``, ``log q_S`` at the sampled tokens (docs/method.md §2), chunk by chunk, no grad.

    ``hidden`` / ``lm_heads`` hold ``teacher_priv`` and ``student_priv`` (``[B, R, H]`` / ``[V, H]``).
    """
    routing = RoutingConfig() if routing is None else routing
    check_batch(response_ids_B_R, response_mask_B_R, None)
    some_head = next(iter(lm_heads.values()), None)
    if some_head is not None:
        routing = for_device(routing, some_head.device, routing.vocab_size or some_head.shape[0])
    rows_N = response_mask_B_R.reshape(-1).nonzero().squeeze(1)
    ids_N = response_ids_B_R.reshape(-1)[rows_N]
    logq: dict[str, Tensor] = {}
    for policy in ("teacher_priv", "student_priv"):
        if policy not in hidden or policy not in lm_heads:
            raise ValueError(f"lean_token_stats needs hidden states and lm_head for {policy!r}")
        _check_hidden(policy, hidden[policy], lm_heads[policy], response_ids_B_R)
        head_V_H = _head(lm_heads[policy], routing.vocab_size)
        hidden_N_H = hidden[policy].reshape(-1, hidden[policy].shape[-1])
        check_ids(response_ids_B_R, response_mask_B_R, head_V_H.shape[0])
        out_BR = torch.zeros(response_ids_B_R.numel(), dtype=compute_dtype(hidden_N_H.dtype), device=hidden_N_H.device)
        for start in range(0, rows_N.numel(), routing.lean_chunk_size):
            rows_n = rows_N[start : start + routing.lean_chunk_size]
            logits_n_V = hidden_N_H.index_select(0, rows_n) @ head_V_H.T
            out_BR[rows_n] = log_prob_at(logits_n_V, ids_N[start : start + routing.lean_chunk_size])
        logq[policy] = out_BR.reshape(response_ids_B_R.shape)
    return TokenStats(logq["teacher_priv"], logq["student_priv"], response_mask_B_R)


class _Plan:
    """Everything pass 2 needs besides the two differentiable inputs (hidden rows, lm_head)."""

    def __init__(self, table, routing, masks_B_R, coef_BR, ids_BR, target_hidden, target_heads, sums, vocab):
        self.vocab: int = vocab  # tokenizer vocabulary: lm_head rows [:vocab] are projected
        self.table: RoutingTable = table
        self.routing: RoutingConfig = routing
        self.masks_B_R: dict[str, Tensor] = masks_B_R
        self.coef_BR: Tensor = coef_BR
        self.ids_BR: Tensor = ids_BR
        self.target_hidden: dict[str, Tensor] = target_hidden  # policy -> [B*R, H_policy]
        self.target_heads: dict[str, Tensor] = target_heads  # policy -> [V, H_policy]
        self.sums: MetricSums = sums

    def chunks(self):
        """``(regime, weight, rows_n)`` for every chunk of every regime's rows (Eq. 10 by regime)."""
        size = self.routing.lean_chunk_size
        for regime in self.table.regimes:
            rows_N = self.masks_B_R[regime.name].reshape(-1).nonzero().squeeze(1)
            weight = regime.resolve_weight(self.routing)
            for start in range(0, rows_N.numel(), size):
                yield regime, weight, rows_N[start : start + size]

    @torch.no_grad()
    def target_logits(self, regime: Regime, rows_n: Tensor) -> Tensor:
        """The regime's stop-grad target logits on these rows (docs/method.md §1: targets carry no grad)."""
        return self.target_hidden[regime.target].index_select(0, rows_n) @ self.target_heads[regime.target].T

    def terms(self, regime: Regime, student_logits_n_V: Tensor, target_logits_n_V: Tensor, rows_n: Tensor):
        """The regime's ``D(student_plain ‖ target)`` on these rows (Eq. 10 term, docs/method.md §4)."""
        return regime_terms(student_logits_n_V, target_logits_n_V, self.ids_BR[rows_n], regime, self.routing)


class _FusedStudentLoss(torch.autograd.Function):
    """Loss of pass 2 with its gradients formed chunk by chunk in the forward (see module doc)."""

    @staticmethod
    def forward(ctx, student_hidden_BR_H: Tensor, student_head_V_H: Tensor, plan: _Plan) -> Tensor:
        """Eq. 11 loss as ``Σ_n c_n · w · D_n``; stores ``d loss / d hidden`` and ``d loss / d lm_head``."""
        vocab = plan.vocab
        head_v_H = student_head_V_H[:vocab]
        dtype = compute_dtype(student_hidden_BR_H.dtype)
        grad_hidden_BR_H = torch.zeros_like(student_hidden_BR_H)
        # One float32 accumulator for d loss / d lm_head (bf16 accumulation over chunks would drift).
        grad_head_V_H = torch.zeros(student_head_V_H.shape, dtype=dtype, device=student_head_V_H.device)
        loss = torch.zeros((), dtype=dtype, device=student_hidden_BR_H.device)
        sub = plan.routing.lean_subchunk_size
        for regime, weight, rows_n in plan.chunks():
            hidden_n_H = student_hidden_BR_H.index_select(0, rows_n)
            target_n_V = plan.target_logits(regime, rows_n)
            student_n_V = hidden_n_H @ head_v_H.T  # grad mode is off in Function.forward
            # The divergence graph holds ~15 [rows, V] temporaries: build it on sub-chunks so the
            # projections keep large, efficient matmuls while the graph stays small. Each
            # sub-chunk's logit gradient overwrites its logits, which are not needed any more.
            for start in range(0, rows_n.numel(), sub):
                part = slice(start, start + sub)
                student_leaf = student_n_V[part].detach().requires_grad_(weight != 0.0)
                with torch.enable_grad():
                    terms = plan.terms(regime, student_leaf, target_n_V[part], rows_n[part])
                    coef_weight_n = plan.coef_BR[rows_n[part]] * weight
                    part_loss = (coef_weight_n * terms.loss_N).sum()
                    grad_part_V = torch.autograd.grad(part_loss, student_leaf)[0] if weight != 0.0 else None
                loss += part_loss.detach()
                plan.sums.add(regime, terms, coef_weight_n)
                plan.sums.add_entropy(entropy(student_leaf.detach()))
                del terms, part_loss, student_leaf
                if grad_part_V is not None:
                    student_n_V[part] = grad_part_V
                    del grad_part_V
            del target_n_V
            if weight != 0.0:
                grad_logits_n_V = student_n_V  # every row now holds d loss / d logits
                grad_hidden_BR_H.index_copy_(0, rows_n, grad_logits_n_V @ head_v_H)
                grad_head_V_H[:vocab].addmm_(grad_logits_n_V.T.to(dtype), hidden_n_H.to(dtype))
                del grad_logits_n_V
            del student_n_V
        ctx.grad_hidden_BR_H = grad_hidden_BR_H
        ctx.grad_head_V_H = grad_head_V_H
        ctx.head_dtype = student_head_V_H.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        """Scale the stored gradients by the incoming scalar gradient (the loss is linear in them)."""
        grad_hidden_BR_H, grad_head_V_H = ctx.grad_hidden_BR_H, ctx.grad_head_V_H
        del ctx.grad_hidden_BR_H, ctx.grad_head_V_H
        grad_hidden_BR_H.mul_(grad_loss.to(grad_hidden_BR_H.dtype))
        grad_head_V_H.mul_(grad_loss.to(grad_head_V_H.dtype))
        return grad_hidden_BR_H, grad_head_V_H.to(ctx.head_dtype), None


def _checkpointed_loss(student_hidden_BR_H: Tensor, student_head_V_H: Tensor, plan: _Plan) -> Tensor:
    """Pass 2 with ``torch.utils.checkpoint`` per chunk (``routing.lean_backward: checkpoint``)."""
    head_v_H = student_head_V_H[: plan.vocab]

    def chunk(hidden_n_H: Tensor, head_v_H: Tensor, regime: Regime, weight: float, rows_n: Tensor):
        """One chunk's weighted Eq. 10 terms (recomputed in backward by the checkpoint)."""
        student_n_V = hidden_n_H @ head_v_H.T
        terms = plan.terms(regime, student_n_V, plan.target_logits(regime, rows_n), rows_n)
        coef_weight_n = plan.coef_BR[rows_n] * weight
        return (coef_weight_n * terms.loss_N).sum(), terms, coef_weight_n, entropy(student_n_V.detach())

    loss = student_hidden_BR_H.narrow(0, 0, 0).sum().to(compute_dtype(student_hidden_BR_H.dtype))
    for regime, weight, rows_n in plan.chunks():
        hidden_n_H = student_hidden_BR_H.index_select(0, rows_n)
        chunk_loss, terms, coef_weight_n, entropy_n = checkpoint(
            chunk, hidden_n_H, head_v_H, regime, weight, rows_n, use_reentrant=False
        )
        loss = loss + chunk_loss
        plan.sums.add(regime, terms, coef_weight_n)
        plan.sums.add_entropy(entropy_n)
    return loss


def lean_routed_loss(
    student_hidden_B_R_H: Tensor,
    student_lm_head_V_H: Tensor,
    target_hidden: Mapping[str, Tensor],
    target_lm_heads: Mapping[str, Tensor],
    response_ids_B_R: Tensor,
    response_mask_B_R: Tensor,
    table: str | RoutingTable,
    routing: RoutingConfig | None = None,
    *,
    stats: TokenStats | None = None,
    thresholds: Thresholds | None = None,
    step_num_sequences: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """``routed_loss`` (Eq. 10 / Eq. 11, docs/method.md §5) from hidden states, never holding ``[B, R, V]``.

    Args:
        student_hidden_B_R_H: ``student_plain`` final hidden states at the response positions; receives
            gradients, as does ``student_lm_head_V_H`` (the student's lm_head weight).
        target_hidden / target_lm_heads: ``{policy: [B, R, H_p]}`` / ``{policy: [V, H_p]}`` for every
            policy in ``table.policies()`` besides student_plain (no gradient flows into them).
        response_ids_B_R, response_mask_B_R, table, routing, thresholds, step_num_sequences: as in
            ``dopd_vlm.loss.routed_loss``.
        stats: pass-1 statistics from ``lean_token_stats`` (already computed for step-scoped
            thresholds); default = computed here.
        Chunking: ``routing.lean_chunk_size`` rows per projection, ``routing.lean_subchunk_size``
        rows per divergence graph (on CUDA the CPU defaults give way to ``chunk_sizes``),
        ``routing.lean_backward`` fused | checkpoint (module doc).

    Returns:
        ``(loss, metrics)`` equal to ``routed_loss(hidden @ lm_head.T ...)`` (loss to float rounding,
        same gradients).
    """
    table = get_table(table)
    routing = RoutingConfig() if routing is None else routing
    check_batch(response_ids_B_R, response_mask_B_R, step_num_sequences)
    _check_hidden(STUDENT, student_hidden_B_R_H, student_lm_head_V_H, response_ids_B_R)
    student_head_v_H = _head(student_lm_head_V_H, routing.vocab_size)
    vocab = student_head_v_H.shape[0]
    routing = for_device(routing, student_hidden_B_R_H.device, vocab)
    needed = sorted(table.policies() - {STUDENT})
    missing = [p for p in needed if p not in target_hidden or p not in target_lm_heads]
    if missing:
        raise ValueError(f"table {table.name!r} needs hidden states and lm_head for {missing}")
    flat_hidden: dict[str, Tensor] = {}
    heads: dict[str, Tensor] = {}
    for policy in needed:
        _check_hidden(policy, target_hidden[policy], target_lm_heads[policy], response_ids_B_R)
        heads[policy] = _head(target_lm_heads[policy], routing.vocab_size).detach()
        if heads[policy].shape[0] != vocab:
            raise ValueError(
                f"{policy} lm_head has {heads[policy].shape[0]} rows, student {vocab} "
                "(after routing.vocab_size slicing); set routing.vocab_size when lm_head widths differ"
            )
        flat_hidden[policy] = target_hidden[policy].detach().reshape(-1, target_hidden[policy].shape[-1])
    check_ids(response_ids_B_R, response_mask_B_R, vocab)

    if table.router == "dopd4":
        if stats is None:
            stats = lean_token_stats(target_hidden, target_lm_heads, response_ids_B_R, response_mask_B_R, routing)
        thresholds = compute_thresholds(stats, routing) if thresholds is None else thresholds
    else:
        stats = None
    masks_B_R = route(table.router, response_mask_B_R, stats, thresholds)

    dtype = compute_dtype(student_hidden_B_R_H.dtype)
    coef_BR = token_coefficients(response_mask_B_R, step_num_sequences, dtype).reshape(-1)
    sums = MetricSums(table, student_hidden_B_R_H.device)
    plan = _Plan(table, routing, masks_B_R, coef_BR, response_ids_B_R.reshape(-1), flat_hidden, heads, sums, vocab)
    student_hidden_BR_H = student_hidden_B_R_H.reshape(-1, student_hidden_B_R_H.shape[-1])
    if routing.lean_backward == "fused":
        loss = _FusedStudentLoss.apply(student_hidden_BR_H, student_lm_head_V_H, plan)
    else:
        loss = _checkpointed_loss(student_hidden_BR_H, student_lm_head_V_H, plan)
    return loss, sums.finalize(stats, thresholds)
