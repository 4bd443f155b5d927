"""Dense vs memory-lean routed loss: time and peak memory, forward + backward (issue 3 benchmark).

    .venv/bin/python benchmarks/bench_loss.py                         # B=2, R=1024, V=151936, H=1024
    .venv/bin/python benchmarks/bench_loss.py --R 128 --V 16384       # quick small run

Both paths start from the same inputs: hidden states ``[B, R, H]`` of student_plain (grad),
teacher_priv and student_priv, and three ``[V, H]`` lm_head weights (the student's gets gradients).
``dense`` projects the three policies to ``[B, R, V]`` logits and calls ``dopd_vlm.loss.routed_loss``;
``lean`` calls ``dopd_vlm.lean.lean_routed_loss`` (pass 1 statistics + chunked pass 2). Each path
runs in its own fresh subprocess, so neither sees the other's allocator state.

Memory, honestly: peak resident set size of the process (``VmHWM``) during the forward + backward,
minus the resident size just before it (inputs already allocated), after resetting the peak with
``/proc/self/clear_refs``. This counts everything the CPU allocator keeps resident (torch tensors
and any heap it does not return), not a model of tensor sizes. Both paths end holding the
student's lm_head gradient (``V × H`` float32), reported separately as ``weight_grad_MiB``.
Linux only. Time: wall-clock and process CPU time (all threads) of the forward + backward with
``torch.get_num_threads()`` threads. On a shared machine wall-clock mostly measures the neighbours;
the CPU time is the better measure of the work each path does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from dopd_vlm.routing import RoutingConfig  # torch-only module: cheap enough for the parent


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _child(args: argparse.Namespace) -> dict:
    import torch

    from dopd_vlm.lean import lean_routed_loss
    from dopd_vlm.loss import routed_loss
    from dopd_vlm.routing import RoutingConfig

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    B, R, V, H = args.B, args.R, args.V, args.H
    policies = ("student_plain", "teacher_priv", "student_priv")
    # Correlated policies (a shared component) so the routing statistics spread across regimes.
    shared_V_H = torch.randn(V, H) * 0.05
    heads = {p: shared_V_H + torch.randn(V, H) * 0.05 for p in policies}
    shared_B_R_H = torch.randn(B, R, H)
    hidden = {p: shared_B_R_H + 0.5 * torch.randn(B, R, H) for p in policies}
    del shared_V_H, shared_B_R_H
    student_h = hidden["student_plain"].requires_grad_(True)
    student_w = heads["student_plain"].requires_grad_(True)
    ids = torch.randint(0, V, (B, R))
    mask = torch.ones(B, R, dtype=torch.bool)
    mask[0, int(R * 0.9) :] = False  # some padding, as in a real rollout batch
    routing = RoutingConfig(lean_chunk_size=args.chunk, lean_subchunk_size=args.subchunk, lean_backward=args.backward)

    baseline_kib = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start, start_cpu = time.perf_counter(), time.process_time()
    if args.path == "dense":
        with torch.no_grad():
            targets = {p: hidden[p] @ heads[p].T for p in ("teacher_priv", "student_priv")}
        loss, metrics = routed_loss(student_h @ student_w.T, targets, ids, mask, args.table, routing)
    else:
        loss, metrics = lean_routed_loss(
            student_h, student_w, {p: hidden[p] for p in policies[1:]}, {p: heads[p] for p in policies[1:]},
            ids, mask, args.table, routing,
        )
    loss.backward()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    peak_kib = _rss_kib("VmHWM")
    return {
        "path": args.path if args.path == "dense" else f"lean-{args.backward}",
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_extra_MiB": (peak_kib - baseline_kib) / 1024,
        "weight_grad_MiB": student_w.grad.numel() * student_w.grad.element_size() / 2**20,
        "loss": loss.item(),
        "threads": torch.get_num_threads(),
        "regime_fracs": {k: round(v, 3) for k, v in metrics.items() if k.endswith("/frac")},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--B", type=int, default=2)
    parser.add_argument("--R", type=int, default=1024)
    parser.add_argument("--V", type=int, default=151936)
    parser.add_argument("--H", type=int, default=1024)
    parser.add_argument("--table", default="dopd")
    parser.add_argument("--chunk", type=int, default=RoutingConfig.lean_chunk_size,
                        help="lean rows per projection chunk (routing.lean_chunk_size)")
    parser.add_argument("--subchunk", type=int, default=RoutingConfig.lean_subchunk_size,
                        help="lean rows per divergence graph (routing.lean_subchunk_size)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--paths", default="dense,lean-fused", help="comma list of dense, lean-fused, lean-checkpoint")
    parser.add_argument("--path", choices=("dense", "lean"), help=argparse.SUPPRESS)
    parser.add_argument("--backward", default="fused", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.path:  # child process
        print(json.dumps(_child(args)))
        return 0
    common = [f"--B={args.B}", f"--R={args.R}", f"--V={args.V}", f"--H={args.H}", f"--table={args.table}",
              f"--chunk={args.chunk}", f"--subchunk={args.subchunk}", f"--threads={args.threads}"]
    results = []
    for name in args.paths.split(","):
        path, _, backward = name.partition("-")
        cmd = [sys.executable, __file__, *common, f"--path={path}", f"--backward={backward or 'fused'}"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    dense = next((r for r in results if r["path"] == "dense"), None)
    print(f"\nB={args.B} R={args.R} V={args.V} H={args.H} table={args.table} chunk={args.chunk} subchunk={args.subchunk} "
          f"threads={results[0]['threads']}")
    print("| path | wall (s) | CPU (s) | peak extra (MiB) | peak extra without W.grad (MiB) "
          "| wall / dense | CPU / dense | memory / dense |")
    print("|---|---|---|---|---|---|---|---|")
    nan = float("nan")
    for r in results:
        ratio_t = r["seconds"] / dense["seconds"] if dense else nan
        ratio_c = r["cpu_seconds"] / dense["cpu_seconds"] if dense else nan
        ratio_m = r["peak_extra_MiB"] / dense["peak_extra_MiB"] if dense else nan
        print(f"| {r['path']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['peak_extra_MiB']:.0f} | "
              f"{r['peak_extra_MiB'] - r['weight_grad_MiB']:.0f} | {ratio_t:.2f} | {ratio_c:.2f} | {ratio_m:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
