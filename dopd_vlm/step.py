"""One optimiser step of on-policy distillation (method.md §6), as the recipe in ``train.py`` runs it.

The routing table decides which policies are scored (``table.policies()``); nothing here branches
on the method. Statistics and thresholds are computed over the whole step before any backward, so
gradient accumulation does not change the routing (method.md §3, ``threshold_scope: step``).

Shape legend: P prompts, G rollouts per prompt, B = P·G sequences, R response tokens,
V vocabulary, H hidden size.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from dopd_vlm.collate import collate
from dopd_vlm.loss import routed_loss
from dopd_vlm.rollout import sample_rollouts
from dopd_vlm.routing import TokenStats, compute_thresholds, route, token_stats
from dopd_vlm.scoring import build_scoring_inputs, score


def trained_logits(model, unwrapped, adapter, prompt_batch, response_ids_B_R, vocab_size: int):
    """``student_plain`` response logits ``[B, R, V]`` *through the engine wrapper* (DDP / FSDP /
    DeepSpeed), with grad: gradients are synchronised only when the forward runs through the
    wrapper. ``logits_to_keep=R`` projects only the R response positions (columns T-1 .. L-1), so
    the full ``[B, L, V]`` never exists. Inputs (positions) are built on the unwrapped model."""
    R = response_ids_B_R.shape[1]
    inputs, _ = build_scoring_inputs(unwrapped, adapter, prompt_batch, response_ids_B_R)
    logits_B_R_Vm = model(**inputs, use_cache=False, logits_to_keep=R).logits
    return logits_B_R_Vm[..., :vocab_size]


@dataclass
class StepResult:
    metrics: dict
    finite: bool
    samples: list[dict] = field(default_factory=list)


class StepRunner:
    """Holds the policies and runs ``step(records)``: rollouts, scoring, routing, backward."""

    def __init__(self, cfg, table, student, teacher, accelerator):
        self.cfg, self.table, self.student, self.teacher, self.acc = cfg, table, student, teacher, accelerator
        self.policies = table.policies()
        ds = accelerator.state.deepspeed_plugin
        self.synced_gpus = ds is not None and ds.zero_stage == 3  # ZeRO-3 generation must stay in lockstep

    def _views(self, records):
        """Per-policy prompt batches (P rows): each model gets its own processor's tokens/images."""
        kinds = self.cfg.data.privileged_kinds
        s, t = self.student, self.teacher
        student_views = ("plain", "priv") if "student_priv" in self.policies else ("plain",)
        batches = {f"student_{v}": b for v, b in collate(records, s.processor, s.adapter, kinds,
                                                          views=student_views).items()}
        teacher_views = tuple(v for v in ("plain", "priv") if f"teacher_{v}" in self.policies)
        if teacher_views:
            batches.update({f"teacher_{v}": b for v, b in collate(records, t.processor, t.adapter, kinds,
                                                                   views=teacher_views).items()})
        return batches

    def step(self, records: list[dict], sample: bool = False) -> StepResult:
        cfg, acc = self.cfg, self.acc
        G = cfg.rollout.num_generations
        model = self.student.model  # possibly wrapped (DDP); the only trained policy
        unwrapped = self.student.hf_model  # the transformers model (LoRA layers, if any, inside)
        device = acc.device
        batches = {k: b.to(self.teacher.hf_model.device if k.startswith("teacher") else device)
                   for k, b in self._views(records).items()}

        # 1. rollouts y ~ π_S(·|x) from the plain view [P §6.1]
        unwrapped.eval()
        rollouts = sample_rollouts(unwrapped, self.student.processor, self.student.adapter, batches["student_plain"],
                                   G, cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.rollout.top_p,
                                   cfg.rollout.top_k, engine=cfg.rollout.engine, synced_gpus=self.synced_gpus)
        ids_B_R, mask_B_R = rollouts.response_ids_B_R, rollouts.response_mask_B_R
        expanded = {k: b.repeat_interleave(G) for k, b in batches.items()}

        # 2. targets, scored on the identical response ids, no grad [P §6.2]
        models = {"teacher": self.teacher, "student": self.student}
        targets_B_R_V = {}
        with torch.no_grad():
            for policy in sorted(self.policies - {"student_plain"}):
                who, _view = policy.split("_", 1)
                pol = models[who]
                m = pol.hf_model
                targets_B_R_V[policy] = score(m, pol.adapter, expanded[policy], ids_B_R, mask_B_R).detach().to(device)
        unwrapped.train()

        # 3. step-scoped statistics and thresholds (method.md §2-§3)
        thresholds = None  # micro_batch scope: each routed_loss call computes its own
        if self.table.router != "all" and cfg.routing.threshold_scope != "micro_batch":
            stats = token_stats(targets_B_R_V["teacher_priv"], targets_B_R_V["student_priv"], ids_B_R, mask_B_R)
            if cfg.routing.threshold_scope == "global":
                stats = self._gather_stats(stats)
            thresholds = compute_thresholds(stats, cfg.routing)

        # 4. loss per micro-batch (Eq. 10 / Eq. 11), gradients accumulated over the step
        B = ids_B_R.shape[0]
        mb = cfg.optim.micro_batch_size or B
        chunks = [list(range(i, min(i + mb, B))) for i in range(0, B, mb)]
        metric_sums: dict[str, float] = {}
        total_loss = 0.0
        finite = True
        plain = expanded["student_plain"]
        for ci, rows in enumerate(chunks):
            rows_t = torch.tensor(rows, device=device)
            sync = ci == len(chunks) - 1
            ctx = acc.no_sync(model) if not sync else nullcontext()
            with ctx:
                logits_b_R_V = trained_logits(model, unwrapped, self.student.adapter, plain.select(rows),
                                              ids_B_R[rows_t], plain.vocab_size)
                loss, metrics = routed_loss(
                    logits_b_R_V, {k: v[rows_t] for k, v in targets_B_R_V.items()}, ids_B_R[rows_t],
                    mask_B_R[rows_t], self.table, cfg.routing, thresholds=thresholds, step_num_sequences=B)
                if not torch.isfinite(loss):
                    finite = False
                    continue
                acc.backward(loss)
            total_loss += float(loss.detach())
            for k, v in metrics.items():  # micro-batch metrics weighted by its share of sequences
                metric_sums[k] = metric_sums.get(k, 0.0) + float(v) * len(rows) / B
        metric_sums["loss"] = total_loss
        metric_sums["response/length"] = float(mask_B_R.sum(-1).float().mean())
        metric_sums["response/truncated"] = float(rollouts.truncated_B.float().mean())

        samples = self._samples(records, ids_B_R, mask_B_R, targets_B_R_V, thresholds, G) if sample else []
        return StepResult(metric_sums, finite, samples)

    def _gather_stats(self, stats: TokenStats) -> TokenStats:
        """All ranks' statistics (``threshold_scope: global``), padded to a common R."""
        acc = self.acc
        parts = [acc.pad_across_processes(t, dim=1, pad_index=0) for t in
                 (stats.logq_T_B_R, stats.logq_S_B_R, stats.mask_B_R.long())]
        logq_T, logq_S, mask = (acc.gather(t) for t in parts)
        return TokenStats(logq_T, logq_S, mask.bool())

    def _samples(self, records, ids_B_R, mask_B_R, targets_B_R_V, thresholds, G) -> list[dict]:
        """The first rollout of each prompt, decoded token by token with its regime (for the HTML page)."""
        tok = self.student.adapter.tokenizer(self.student.processor)
        if self.table.router == "all":
            regimes_B_R = [["ALL" if m else "" for m in row] for row in mask_B_R.tolist()]
        else:
            stats = token_stats(targets_B_R_V["teacher_priv"], targets_B_R_V["student_priv"], ids_B_R, mask_B_R)
            masks = route(self.table.router, mask_B_R, stats, thresholds)
            regimes_B_R = [["" for _ in row] for row in mask_B_R.tolist()]
            for name, m_B_R in masks.items():
                for b, r in m_B_R.nonzero().tolist():
                    regimes_B_R[b][r] = name
        out = []
        for p, rec in enumerate(records):
            b = p * G
            n = int(mask_B_R[b].sum())
            ids = ids_B_R[b, :n].tolist()
            out.append({"id": rec.get("id"), "prompt": rec.get("question", ""), "answer": rec.get("answer"),
                        "tokens": [tok.decode([i]) for i in ids], "regimes": regimes_B_R[b][:n]})
        return out


