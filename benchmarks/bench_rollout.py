"""Rollout throughput: HF ``generate`` vs vLLM on the same model, prompts and sampling (issue 15).

    .venv-vllm/bin/python benchmarks/bench_rollout.py                       # tiny Qwen2.5-VL (head 32), CPU
    .venv-vllm/bin/python benchmarks/bench_rollout.py --family qwen3 --P 16 --G 4 --R 64
    python benchmarks/bench_rollout.py --model /path/to/checkpoint --dtype bfloat16 --P 64 --G 4 --R 2048  # GPU

Runs in the vLLM virtualenv (``make setup-vllm``; on a GPU ``pip install -e ".[vllm]"``). Both
engines get the same checkpoint folder, the same P synthetic-scene prompts (rendered and encoded by
the checkpoint's own processor, images included for a VL model), G samples per prompt, at most R
new tokens, temperature 1, top-p 1, top-k off, the same EOS ids and the same suppressed image
placeholders: exactly what training asks of them (``dopd_vlm.rollout.sample_rollouts`` for HF,
``dopd_vlm.vllm_rollout.ColocatedEngine`` for vLLM, which training uses).

Each engine does one untimed warm-up call (one prompt) and then ``--runs`` timed calls of the whole
batch; tokens / s = valid response tokens (up to and including EOS) / wall seconds, median over the
runs. vLLM's start-up (engine build, profiling, KV-cache allocation) is reported separately: it is
paid once per training run, not per step. ``--min-tokens`` forces R tokens per sample in both
engines (HF ``min_new_tokens``, vLLM ``min_tokens``) so random-init models do equal work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def prepare(a) -> tuple[str, list[dict]]:
    from data_builders.synthetic import build_synthetic
    from dopd_vlm.tiny import write_tiny_checkpoint

    cache = Path(a.cache)
    model = a.model
    if not model:
        model = str(cache / f"{a.family}_{a.size}")
        if not (Path(model) / "config.json").exists():
            write_tiny_checkpoint(model, family=a.family, size=a.size, seed=1)
    data = cache / "scenes"
    if not data.exists():
        build_synthetic(data, n_train=max(16, a.P), n_test=4, seed=0, layout="grid", quiet=True)
    from datasets import load_from_disk

    recs = load_from_disk(str(data))["train"]
    return model, [recs[i % len(recs)] for i in range(a.P)]


def _plain_batch(records, processor, adapter):
    from dopd_vlm.collate import collate

    if not adapter.takes_images:  # a text model gets the question alone
        records = [{**r, "images": [], "prompt": [{"role": "user", "content": [{"type": "text", "text": r["question"]}]}]}
                   for r in records]
    return collate(records, processor, adapter, views=("plain",))["plain"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="", help="checkpoint folder (default: a tiny random-init one)")
    p.add_argument("--family", default="qwen2_5_vl", help="tiny family when --model is not given")
    p.add_argument("--size", default="tiny-h32", help="tiny size (head size >= 32 for vLLM)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--P", type=int, default=16, help="prompts")
    p.add_argument("--G", type=int, default=4, help="samples per prompt")
    p.add_argument("--R", type=int, default=32, help="max new tokens")
    p.add_argument("--runs", type=int, default=1, help="timed calls per engine")
    p.add_argument("--min-tokens", action="store_true", help="force exactly R tokens per sample in both engines")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=0, help="torch threads for HF (0 = torch's default)")
    p.add_argument("--cache", default="/tmp/dopd_bench_rollout")
    p.add_argument("--out", default=str(HERE / "results" / "rollout_cpu"))
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from dopd_vlm.adapters import get_adapter
    from dopd_vlm.config import RolloutConfig
    from dopd_vlm.rollout import sample_rollouts
    from dopd_vlm.vllm_rollout import ColocatedEngine

    if a.threads:
        torch.set_num_threads(a.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_path, records = prepare(a)
    adapter = get_adapter(model_path)
    model, processor = adapter.load(model_path, dtype=a.dtype, device=device)
    batch = _plain_batch(records, processor, adapter).to(device)
    eos = adapter.eos_token_ids(model, processor)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    result = {"model": model_path, "P": a.P, "G": a.G, "R": a.R, "dtype": a.dtype, "device": device}

    # ---- HF generate
    def hf(b):
        if a.min_tokens:
            return _hf_min_tokens(model, processor, adapter, b, a)
        return sample_rollouts(model, processor, adapter, b, a.G, a.R, engine="hf")

    hf(batch.select([0]))
    times, toks = [], []
    for _ in range(a.runs):
        sync()
        t0 = time.perf_counter()
        r = hf(batch)
        sync()
        times.append(time.perf_counter() - t0)
        toks.append(int(r.response_mask_B_R.sum()))
    result["hf"] = {"seconds": statistics.median(times), "tokens": statistics.median(toks),
                    "tokens_per_s": statistics.median(t / s for t, s in zip(toks, times)),
                    "mean_len": statistics.median(toks) / (a.P * a.G)}
    print(f"HF generate: {result['hf']}", flush=True)
    threads_hf = torch.get_num_threads()
    model = None  # free it before vLLM loads its own copy
    if device == "cuda":
        torch.cuda.empty_cache()

    # ---- vLLM
    t0 = time.perf_counter()
    engine = ColocatedEngine(model_path, RolloutConfig(engine="vllm", vllm_gpu_memory_utilization=a.gpu_memory_utilization),
                             dtype=a.dtype, seed=0)
    result["vllm_startup_s"] = time.perf_counter() - t0

    def vl(b):
        if a.min_tokens:
            return _vllm_min_tokens(engine, b, a, eos)
        return engine.sample(b, a.G, a.R, 1.0, 1.0, 0, eos, return_logprobs=True)

    vl(batch.select([0]))
    times, toks = [], []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        r = vl(batch)
        times.append(time.perf_counter() - t0)
        toks.append(int(r.response_mask_B_R.sum()))
    result["vllm"] = {"seconds": statistics.median(times), "tokens": statistics.median(toks),
                      "tokens_per_s": statistics.median(t / s for t, s in zip(toks, times)),
                      "mean_len": statistics.median(toks) / (a.P * a.G)}
    print(f"vLLM: {result['vllm']} (start-up {result['vllm_startup_s']:.1f} s)", flush=True)
    result["ratio_vllm_over_hf"] = result["vllm"]["tokens_per_s"] / result["hf"]["tokens_per_s"]
    import transformers
    import vllm

    result["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                          "vllm": vllm.__version__, "python": platform.python_version()}
    result["machine"] = {"cores": os.cpu_count(), "loadavg": os.getloadavg(), "torch_threads_hf": threads_hf,
                         "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
                         "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    md = markdown(result)
    print(md)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    return 0


def _hf_min_tokens(model, processor, adapter, batch, a):
    """HF generate with ``min_new_tokens=R`` (the project's sampling otherwise unchanged)."""
    import torch

    from dopd_vlm.rollout import Rollouts, response_mask

    expanded = batch.repeat_interleave(a.G)
    with torch.no_grad():
        out = model.generate(**expanded.model_inputs(), do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                             max_new_tokens=a.R, min_new_tokens=a.R, pad_token_id=batch.pad_token_id,
                             suppress_tokens=batch.placeholder_ids or None, eos_token_id=adapter.eos_token_ids(model, processor))
    ids = out[:, expanded.prompt_len:]
    mask, cut = response_mask(ids, adapter.eos_token_ids(model, processor))
    return Rollouts(ids, mask, cut, a.G)


def _vllm_min_tokens(engine, batch, a, eos):
    from dopd_vlm.vllm_rollout import sampling_params, to_rollouts, vllm_prompts

    params = sampling_params(a.G, a.R, 1.0, 1.0, 0, eos, batch.placeholder_ids, False)
    params.min_tokens = a.R
    outs = engine.llm.generate(vllm_prompts(batch), params, use_tqdm=False)
    rows = [list(c.token_ids) for o in outs for c in o.outputs]
    return to_rollouts(rows, None, [True] * len(rows), a.G, batch.pad_token_id, eos)


def markdown(r: dict) -> str:
    m, v = r["machine"], r["versions"]
    where = m["gpu"] or f"CPU, {m['cores']} cores shared with other agents (load {m['loadavg'][0]:.1f})"
    return "\n".join([
        f"## Rollouts: HF generate vs vLLM ({m['date_utc']} UTC)", "",
        f"Model `{Path(r['model']).name}` ({r['dtype']}, {r['device']}), P={r['P']} prompts × G={r['G']} samples, "
        f"R≤{r['R']} new tokens, temperature 1, top-p 1, top-k off; {where}; torch {v['torch']}, "
        f"transformers {v['transformers']}, vLLM {v['vllm']}.", "",
        "| engine | tokens | seconds | tokens/s | mean length |", "|---|---:|---:|---:|---:|",
        f"| HF generate | {r['hf']['tokens']} | {r['hf']['seconds']:.2f} | {r['hf']['tokens_per_s']:.0f} | {r['hf']['mean_len']:.1f} |",
        f"| vLLM | {r['vllm']['tokens']} | {r['vllm']['seconds']:.2f} | {r['vllm']['tokens_per_s']:.0f} | {r['vllm']['mean_len']:.1f} |",
        "", f"vLLM / HF tokens/s: **{r['ratio_vllm_over_hf']:.2f}×**; vLLM start-up (once per run): "
        f"{r['vllm_startup_s']:.1f} s.", ""])


if __name__ == "__main__":
    sys.exit(main())
