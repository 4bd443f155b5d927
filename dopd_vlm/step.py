"""One optimiser step of on-policy distillation (docs/method.md §6), as the recipe in ``train.py`` runs it.

The routing table decides which policies are scored (``table.policies()``); nothing here branches
on the method. Statistics and thresholds are computed over the whole step before any backward, so
gradient accumulation does not change the routing (docs/method.md §3, ``threshold_scope: step``).

Shape legend: P prompts, G rollouts per prompt, B = P·G sequences, R response tokens,
V vocabulary, H hidden size.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from dopd_vlm.collate import collate
from dopd_vlm.lean import chunk_sizes, lean_routed_loss, lean_token_stats
from dopd_vlm.loss import routed_loss
from dopd_vlm.rollout import Rollouts, sample_rollouts
from dopd_vlm.routing import TokenStats, route, thresholds_for_scope, token_stats
from dopd_vlm.scoring import build_scoring_inputs, score
from dopd_vlm.vllm_rollout import logprob_mismatch, token_logprobs


def trained_logits(model, unwrapped, adapter, prompt_batch, response_ids_B_R, vocab_size: int):
    """``student_plain`` response logits ``[B, R, V]`` *through the engine wrapper* (DDP / FSDP /
    DeepSpeed), with grad: gradients are synchronised only when the forward runs through the
    wrapper. ``logits_to_keep=R`` projects only the R response positions (columns T-1 .. L-1), so
    the full ``[B, L, V]`` never exists. Inputs (positions) are built on the unwrapped model."""
    R = response_ids_B_R.shape[1]
    inputs, _ = build_scoring_inputs(unwrapped, adapter, prompt_batch, response_ids_B_R)
    return adapter.response_logits(model, inputs, R)[..., :vocab_size]


# ------------------------------------------------------------------------------------------ loss paths
class DenseLoss:
    """Eq. 10 / Eq. 11 from ``[B, R, V]`` logits (``dopd_vlm.loss.routed_loss``): targets are
    scored as logits, the student's trained forward returns logits."""

    target_output = "logits"

    def __init__(self, routing):
        self.routing = routing

    def lm_head(self, policy_model, adapter, vocab):
        return None  # logits carry the head already

    def token_stats(self, targets, heads, ids_B_R, mask_B_R) -> TokenStats:
        return token_stats(targets["teacher_priv"], targets["student_priv"], ids_B_R, mask_B_R)

    def micro_batch(self, model, unwrapped, adapter, plain_b, targets_b, heads, ids_b, mask_b, table, stats_b,
                    thresholds, step_num_sequences, vocab, want_logprobs=False):
        """``(loss, metrics, sampled-token log-probs [b, R] or None)`` of one micro-batch, with grad."""
        logits_b_R_V = trained_logits(model, unwrapped, adapter, plain_b, ids_b, vocab)
        loss, metrics = routed_loss(logits_b_R_V, targets_b, ids_b, mask_b, table, self.routing,
                                    thresholds=thresholds, step_num_sequences=step_num_sequences)
        return loss, metrics, token_logprobs(logits_b_R_V, ids_b) if want_logprobs else None


class LeanLoss:
    """The same loss from hidden states ``[B, R, H]`` and ``lm_head`` weights, never forming
    ``[B, R, V]`` (``dopd_vlm.lean``; docs/method.md §5.1 "Memory at real sizes")."""

    target_output = "hidden"

    def __init__(self, routing):
        self.routing = routing

    def lm_head(self, policy_model, adapter, vocab):
        return adapter.lm_head_weight(policy_model)[:vocab].detach()

    def token_stats(self, targets, heads, ids_B_R, mask_B_R) -> TokenStats:
        priv = ("teacher_priv", "student_priv")
        return lean_token_stats({k: targets[k] for k in priv}, {k: heads[k] for k in priv}, ids_B_R, mask_B_R,
                                self.routing)

    def micro_batch(self, model, unwrapped, adapter, plain_b, targets_b, heads, ids_b, mask_b, table, stats_b,
                    thresholds, step_num_sequences, vocab, want_logprobs=False):
        inputs, _ = build_scoring_inputs(unwrapped, adapter, plain_b, ids_b)
        hidden_b_R_H = adapter.response_hidden(model, inputs, ids_b.shape[1])
        head_V_H = adapter.lm_head_weight(unwrapped)[:vocab]
        loss, metrics = lean_routed_loss(hidden_b_R_H, head_V_H, targets_b, heads, ids_b, mask_b, table, self.routing,
                                         stats=stats_b, thresholds=thresholds, step_num_sequences=step_num_sequences)
        logprobs = None
        if want_logprobs:  # chunked like the loss: one [chunk, V] block at a time
            with torch.no_grad():
                h_N_H = hidden_b_R_H.detach().reshape(-1, hidden_b_R_H.shape[-1])
                ids_N = ids_b.reshape(-1)
                size = chunk_sizes(self.routing, head_V_H.device, vocab)[0]
                logprobs = torch.cat([token_logprobs(h_N_H[i:i + size] @ head_V_H.detach().T, ids_N[i:i + size])
                                      for i in range(0, ids_N.numel(), size)]).reshape(ids_b.shape)
        return loss, metrics, logprobs


LOSS_PATHS = {"dense": DenseLoss, "lean": LeanLoss}


@dataclass
class StepResult:
    metrics: dict
    finite: bool
    samples: list[dict] = field(default_factory=list)


class StepRunner:
    """Holds the policies and runs ``step(records)``: rollouts, scoring, routing, backward.

    ``engine`` is the vLLM rollout engine when ``rollout.engine=vllm`` (``dopd_vlm.vllm_rollout.attach``
    sets it and pushes the weights after every optimiser step); None samples with HF ``generate``.
    """

    def __init__(self, cfg, table, student, teacher, accelerator):
        self.cfg, self.table, self.student, self.teacher, self.acc = cfg, table, student, teacher, accelerator
        self.policies = table.policies()
        ds = accelerator.state.deepspeed_plugin
        self.synced_gpus = ds is not None and ds.zero_stage == 3  # ZeRO-3 generation must stay in lockstep
        self.loss_path = LOSS_PATHS[cfg.run.loss_impl](cfg.routing)
        self.engine = None
        self.pending_metrics: dict[str, float] = {}  # e.g. the last weight push, reported with the next step

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

    def _rollouts(self, batch, unwrapped) -> Rollouts:
        """y ~ π_S(·|x) from the plain view [P §6.1], with the HF model or the vLLM engine."""
        rc = self.cfg.rollout
        if self.engine is None:
            if rc.engine == "vllm":
                raise ValueError("rollout.engine=vllm but this StepRunner has no vLLM engine; "
                                 "dopd_vlm.vllm_rollout.attach(runner, optimizer, ...) builds one (train.py does)")
            return sample_rollouts(unwrapped, self.student.processor, self.student.adapter, batch,
                                   rc.num_generations, rc.max_new_tokens, rc.temperature, rc.top_p, rc.top_k,
                                   engine="hf", synced_gpus=self.synced_gpus)
        eos_ids = self.student.adapter.eos_token_ids(unwrapped, self.student.processor)
        rollouts = self.engine.sample(batch, rc.num_generations, rc.max_new_tokens, rc.temperature, rc.top_p,
                                      rc.top_k, eos_ids, return_logprobs=True)
        device = batch.input_ids_B_T.device
        return Rollouts(rollouts.response_ids_B_R.to(device), rollouts.response_mask_B_R.to(device),
                        rollouts.truncated_B.to(device), rollouts.num_generations,
                        None if rollouts.logprobs_B_R is None else rollouts.logprobs_B_R.to(device))

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
        rollouts = self._rollouts(batches["student_plain"], unwrapped)
        ids_B_R, mask_B_R = rollouts.response_ids_B_R, rollouts.response_mask_B_R
        expanded = {k: b.repeat_interleave(G) for k, b in batches.items()}

        # 2. targets, scored on the identical response ids, no grad [P §6.2]. The loss path says
        #    what a target is: [B, R, V] logits (dense) or [B, R, H] hidden states + lm_head (lean).
        path = self.loss_path
        V = expanded["student_plain"].vocab_size
        models = {"teacher": self.teacher, "student": self.student}
        targets, heads = {}, {}  # policy -> logits or hidden states; policy -> [V, H] (lean)
        with torch.no_grad():
            for policy in sorted(self.policies - {"student_plain"}):
                pol = models[policy.split("_", 1)[0]]
                out = score(pol.hf_model, pol.adapter, expanded[policy], ids_B_R, mask_B_R, output=path.target_output)
                targets[policy] = out.detach().to(device)
                head = path.lm_head(pol.hf_model, pol.adapter, V)
                if head is not None:
                    heads[policy] = head.to(device)
        unwrapped.train()
        bad = sorted(p for p, t in targets.items() if not bool(torch.isfinite(t[mask_B_R]).all()))
        if not self._all_ranks(not bad):
            acc.print(f"non-finite target scores on valid response tokens: {bad or 'on another rank'}")
            return StepResult({"loss": float("nan")}, finite=False)

        # 3. statistics and thresholds over the whole step before any backward (docs/method.md §2-§3)
        stats = thresholds = None
        if self.table.router != "all":
            stats = path.token_stats(targets, heads, ids_B_R, mask_B_R)
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
        want_logprobs = rollouts.logprobs_B_R is not None
        trainer_lp_B_R = torch.zeros(ids_B_R.shape, device=device) if want_logprobs else None
        for ci, rows in enumerate(chunks):
            rows_t = torch.tensor(rows, device=device)
            ids_b, mask_b = ids_B_R[rows_t], mask_B_R[rows_t]
            sub = {k: v[rows_t] for k, v in targets.items()}
            sub_stats = None if stats is None else TokenStats(
                stats.logq_T_B_R[rows_t], stats.logq_S_B_R[rows_t], stats.mask_B_R[rows_t])
            with acc.no_sync(model) if ci < len(chunks) - 1 else nullcontext():
                loss, metrics, lp_b_R = path.micro_batch(
                    model, unwrapped, self.student.adapter, plain.select(rows), sub, heads, ids_b, mask_b, self.table,
                    sub_stats, thresholds, B, V, want_logprobs=want_logprobs)
                if lp_b_R is not None:
                    trainer_lp_B_R[rows_t] = lp_b_R.to(device)
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
        if want_logprobs:  # the silent drift of a rollout engine: its log-probs vs the trainer's scoring
            metrics.update(logprob_mismatch(rollouts.logprobs_B_R, trainer_lp_B_R, mask_B_R))
        metrics.update(self.pending_metrics)
        self.pending_metrics = {}

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


