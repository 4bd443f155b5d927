"""Float64 reference implementations of docs/method.md §2–§5, §8, written independently of dopd_vlm.

Deliberately naive: probabilities (not log-probs), Python loops over tokens, numpy quantiles,
explicit mixtures. Tests compare the production code against these.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def softmax64(logits_V) -> np.ndarray:
    x = np.asarray(torch.as_tensor(logits_V).detach().double().cpu().numpy(), dtype=np.float64)
    x = x - x.max()
    e = np.exp(x)
    return e / e.sum()


def kl64(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p ‖ q) = Σ p log(p / q) over entries with p > 0."""
    keep = p > 0
    return float(np.sum(p[keep] * np.log(p[keep] / q[keep])))


def reverse_kl64(ps, pt) -> float:
    return kl64(ps, pt)


def forward_kl64(ps, pt) -> float:
    return kl64(pt, ps)


def js64(ps, pt) -> float:
    m = 0.5 * (ps + pt)
    return 0.5 * kl64(ps, m) + 0.5 * kl64(pt, m)


def jsd64(ps, pt, beta: float) -> float:
    if beta == 0.0:
        return forward_kl64(ps, pt)
    if beta == 1.0:
        return reverse_kl64(ps, pt)
    m = beta * pt + (1 - beta) * ps
    return beta * kl64(pt, m) + (1 - beta) * kl64(ps, m)


DIV64 = {"reverse_kl": reverse_kl64, "forward_kl": forward_kl64, "js": js64}


def div64(name: str, ps, pt, jsd_beta: float) -> float:
    if name == "jsd":
        return jsd64(ps, pt, jsd_beta)
    return DIV64[name](ps, pt)


def top_indices(logits_V, k: int) -> list[int]:
    x = torch.as_tensor(logits_V).detach().double().cpu().numpy()
    return [int(i) for i in np.argsort(-x, kind="stable")[: min(k, len(x))]]


def support64(s_logits_V, t_logits_V, k: int, support: str) -> list[int]:
    if support == "target":
        return top_indices(t_logits_V, k)
    if support == "student":
        return top_indices(s_logits_V, k)
    idx = top_indices(t_logits_V, k)
    return idx + [i for i in top_indices(s_logits_V, k) if i not in idx]


def restrict64(p: np.ndarray, idx: list[int], tail: str) -> np.ndarray:
    """The top-K distribution: renormalised over idx, or idx plus one bucket with the rest."""
    sub = p[idx]
    if tail == "renorm":
        return sub / sub.sum()
    return np.concatenate([sub, [max(0.0, 1.0 - sub.sum())]])


def token_div64(s_logits_V, t_logits_V, y: int, divergence: str, support: str, routing) -> float:
    """One token's D(student_plain ‖ target) (for sampled support: the one-sample estimate)."""
    tau = routing.loss_temperature
    s = torch.as_tensor(s_logits_V).double() / tau
    t = torch.as_tensor(t_logits_V).double() / tau
    ps, pt = softmax64(s), softmax64(t)
    if support == "sampled":
        return math.log(ps[y]) - math.log(pt[y])
    if support == "full":
        return div64(divergence, ps, pt, routing.jsd_beta)
    idx = support64(s, t, routing.topk, routing.topk_support)
    return div64(divergence, restrict64(ps, idx, routing.topk_tail), restrict64(pt, idx, routing.topk_tail), routing.jsd_beta)


def thresholds64(logq_T: list[float], logq_S: list[float], routing) -> dict[str, float]:
    """Method.md §3: each statistic trimmed at its own quantile; normalisation fitted on kept values."""
    A = np.abs(np.array(logq_T) - np.array(logq_S))
    qS, qT = np.exp(np.array(logq_S)), np.exp(np.array(logq_T))

    def kept(v):
        if routing.outlier_quantile >= 1.0:
            return v
        return v[v <= np.quantile(v, routing.outlier_quantile)]

    def affine(v):
        if routing.normalization == "none":
            return 0.0, 1.0
        if routing.normalization == "zscore":
            sd = float(np.std(v))
            return float(np.mean(v)), sd if sd > 0 else 1.0
        span = float(v.max() - v.min())
        return float(v.min()), span if span > 0 else 1.0

    kS, kT = kept(qS), kept(qT)
    (sS, cS), (sT, cT) = affine(kS), affine(kT)
    out = {"A": float(kept(A).mean()), "q_S": float(kS.mean()), "q_T": float(kT.mean())}
    out.update(sS=sS, cS=cS, sT=sT, cT=cT)
    out["qsum"] = (out["q_S"] - sS) / cS + (out["q_T"] - sT) / cT
    return out


def regime64(logq_T: float, logq_S: float, thr: dict[str, float]) -> str:
    A = abs(logq_T - logq_S)
    qS, qT = math.exp(logq_S), math.exp(logq_T)
    if A < thr["A"]:
        qsum = (qS - thr["sS"]) / thr["cS"] + (qT - thr["sT"]) / thr["cT"]
        return "LH" if qsum >= thr["qsum"] else "LL"
    return "HT" if qT >= qS else "HS"


def logq64(logits_V, y: int) -> float:
    return float(math.log(softmax64(logits_V)[y]))


def routed_loss64(student, targets, ids, mask, table, routing, thresholds=None, step_num_sequences=None):
    """Eq. 10 / Eq. 11 with loops: returns (loss, {(b, n): regime name}, thresholds dict)."""
    B, R, _ = student.shape
    valid = [(b, n) for b in range(B) for n in range(R) if bool(mask[b, n])]
    names = {}
    thr = thresholds
    if table.router == "dopd4":
        lt = {bn: logq64(targets["teacher_priv"][bn], int(ids[bn])) for bn in valid}
        ls = {bn: logq64(targets["student_priv"][bn], int(ids[bn])) for bn in valid}
        if thr is None:
            thr = thresholds64([lt[bn] for bn in valid], [ls[bn] for bn in valid], routing)
        names = {bn: regime64(lt[bn], ls[bn], thr) for bn in valid}
    else:
        names = {bn: "ALL" for bn in valid}
    total = 0.0
    for b in range(B):
        toks = [bn for bn in valid if bn[0] == b]
        if not toks:
            continue
        seq = 0.0
        for bn in toks:
            reg = table.regime(names[bn])
            w = reg.resolve_weight(routing)
            d = token_div64(student[bn], targets[reg.target][bn], int(ids[bn]), reg.divergence, reg.resolve_support(routing), routing)
            seq += w * d
        total += seq / len(toks)
    return total / (B if step_num_sequences is None else step_num_sequences), names, thr
