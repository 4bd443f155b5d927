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
from dopd_vlm.lean import lean_routed_loss, lean_token_stats
from dopd_vlm.loss import routed_loss
from dopd_vlm.rollout import sample_rollouts
from dopd_vlm.routing import TokenStats, route, thresholds_for_scope, token_stats
from dopd_vlm.scoring import build_scoring_inputs, score


def trained_logits(model, unwrapped, adapter, prompt_batch, response_ids_B_R, vocab_size: int):
    """``student_plain`` response logits ``[B, R, V]`` *through the engine wrapper* (DDP / FSDP /
    DeepSpeed), with grad: gradients are synchronised only when the forward runs through the
    wrapper. ``logits_to_keep=R`` projects only the R response positions (columns T-1 .. L-1), so
    the full ``[B, L, V]`` never exists. Inputs (positions) are built on the unwrapped model."""
    R = response_ids_B_R.shape[1]
    inputs, _ = build_scoring_inputs(unwrapped, adapter, prompt_batch, response_ids_B_R)
    return adapter.response_logits(model, inputs, R)[..., :vocab_size]


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

        # 2. targets, scored on the identical response ids, no grad [P §6.2]. The lean path keeps
        #    hidden states [B, R, H] and each policy's lm_head instead of [B, R, V] logits (design.md).
        lean = cfg.run.loss_impl == "lean"
        V = expanded["student_plain"].vocab_size
        models = {"teacher": self.teacher, "student": self.student}
        targets, heads = {}, {}  # policy -> [B, R, V] logits (dense) or [B, R, H] hidden (lean); [V, H]
        with torch.no_grad():
            for policy in sorted(self.policies - {"student_plain"}):
                pol = models[policy.split("_", 1)[0]]
                out = score(pol.hf_model, pol.adapter, expanded[policy], ids_B_R, mask_B_R,
                            output="hidden" if lean else "logits")
                targets[policy] = out.detach().to(device)
                if lean:
                    heads[policy] = pol.adapter.lm_head_weight(pol.hf_model)[:V].detach().to(device)
        unwrapped.train()
        bad = sorted(p for p, t in targets.items() if not bool(torch.isfinite(t[mask_B_R]).all()))
        if not self._all_ranks(not bad):
            acc.print(f"non-finite target scores on valid response tokens: {bad or 'on another rank'}")
            return StepResult({"loss": float("nan")}, finite=False)

        # 3. statistics and thresholds over the whole step before any backward (method.md §2-§3)
        stats = thresholds = None
        if self.table.router != "all":
            priv = ("teacher_priv", "student_priv")
            stats = (lean_token_stats({k: targets[k] for k in priv}, {k: heads[k] for k in priv}, ids_B_R, mask_B_R,
                                      cfg.routing) if lean else
                     token_stats(targets["teacher_priv"], targets["student_priv"], ids_B_R, mask_B_R))
            thresholds = thresholds_for_scope([stats], cfg.routing, gather=self._gather_1d)

        # 4. loss per micro-batch (Eq. 10 / Eq. 11), gradients accumulated over the step
        B = ids_B_R.shape[0]
        mb = cfg.optim.micro_batch_size or B
        chunks = [list(range(i, min(i + mb, B))) for i in range(0, B, mb)]
        sums: dict[str, float] = {}
        weights: dict[str, float] = {}
        total_loss = 0.0
        finite = True
        plain = expanded["student_plain"]
        adapter = self.student.adapter
        for ci, rows in enumerate(chunks):
            rows_t = torch.tensor(rows, device=device)
            ids_b, mask_b = ids_B_R[rows_t], mask_B_R[rows_t]
            sub = {k: v[rows_t] for k, v in targets.items()}
            with acc.no_sync(model) if ci < len(chunks) - 1 else nullcontext():
                if lean:
                    inputs, _ = build_scoring_inputs(unwrapped, adapter, plain.select(rows), ids_b)
                    hidden_b_R_H = adapter.response_hidden(model, inputs, ids_b.shape[1])
                    sub_stats = None if stats is None else TokenStats(
                        stats.logq_T_B_R[rows_t], stats.logq_S_B_R[rows_t], stats.mask_B_R[rows_t])
                    loss, metrics = lean_routed_loss(
                        hidden_b_R_H, adapter.lm_head_weight(unwrapped)[:V], sub, heads, ids_b, mask_b, self.table,
                        cfg.routing, stats=sub_stats, thresholds=thresholds, step_num_sequences=B)
                else:
                    logits_b_R_V = trained_logits(model, unwrapped, adapter, plain.select(rows), ids_b, V)
                    loss, metrics = routed_loss(logits_b_R_V, sub, ids_b, mask_b, self.table, cfg.routing,
                                                thresholds=thresholds, step_num_sequences=B)
                if not self._all_ranks(bool(torch.isfinite(loss))):  # every rank skips, or none: no DDP hang
                    finite = False
                    continue
                acc.backward(loss)
            total_loss += float(loss.detach())
            for k, v in metrics.items():
                v = float(v)
                if k.startswith("loss/"):  # already scaled by 1/step_num_sequences: the step's value is the sum
                    sums[k] = sums.get(k, 0.0) + v
                elif v == v:  # means of the micro-batch, weighted by its sequences; NaN = empty regime
                    sums[k] = sums.get(k, 0.0) + v * len(rows)
                    weights[k] = weights.get(k, 0.0) + len(rows)
        metrics = {k: (v / weights[k] if k in weights else v) for k, v in sums.items()}
        metrics["loss"] = total_loss if finite else float("nan")
        metrics["response/length"] = float(mask_B_R.sum(-1).float().mean())
        metrics["response/truncated"] = float(rollouts.truncated_B.float().mean())

        samples = self._samples(records, ids_B_R, mask_B_R, stats, thresholds, G) if sample else []
        return StepResult(metrics, finite, samples)

    def _all_ranks(self, ok: bool) -> bool:
        """True when ``ok`` holds on every rank (one tiny all-reduce when distributed)."""
        if self.acc.num_processes == 1:
            return ok
        flag = torch.tensor([1.0 if ok else 0.0], device=self.acc.device)
        return bool(self.acc.reduce(flag, reduction="sum").item() == self.acc.num_processes)

    def _gather_1d(self, values_N: torch.Tensor) -> torch.Tensor:
        """Concatenation of a 1-D tensor of any length over all ranks (``threshold_scope: global``)."""
        acc = self.acc
        sizes = acc.gather(torch.tensor([values_N.numel()], device=values_N.device))
        padded = acc.gather(acc.pad_across_processes(values_N, dim=0))
        width = int(sizes.max())
        return torch.cat([padded[i * width:i * width + int(n)] for i, n in enumerate(sizes.tolist())])

    def _samples(self, records, ids_B_R, mask_B_R, stats, thresholds, G) -> list[dict]:
        """The first rollout of each prompt, decoded token by token with its regime (for the HTML page)."""
        tok = self.student.adapter.tokenizer(self.student.processor)
        if self.table.router == "all":
            regimes_B_R = [["ALL" if m else "" for m in row] for row in mask_B_R.tolist()]
        else:
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


