"""On-policy distillation with a routing table: DOPD and its baselines (docs/method.md §6).

    dopd-vlm train CONFIG.yaml [key=value ...]
    accelerate launch [--config_file scripts/accelerate/zero2.yaml] -m dopd_vlm.train CONFIG.yaml [key=value ...]

One recipe, top to bottom: setup → loop → save. The routing table decides the work: the loop
asks it which policies to score and has no per-method branch. One optimiser step (docs/method.md §6):

    records_P ──render_views──▶ plain / privileged messages (+ the same images)
    plain ──sample_rollouts(student)──▶ response_ids_B_R, response_mask_B_R      (B = P·G)
    score(teacher, priv), score(student, priv), score(teacher, plain) [no grad, as the table needs]
    statistics of the whole step ──▶ thresholds (threshold_scope "step", docs/method.md §3)
    per micro-batch: score(student, plain) [grad] ──routed_loss──▶ backward   (Eq. 10, Eq. 11)
    clip, AdamW step, cosine schedule

Shape legend: P prompts, G rollouts per prompt, B = P·G sequences, R response tokens, V vocabulary.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dopd_vlm.config import TrainConfig, field_help, load_config, save_config

POLICIES_NEEDING_PRIV = ("teacher_priv", "student_priv")


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(parser) -> None:
    parser.add_argument("config", help="YAML preset (see dopd_vlm/presets/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, checked against field types (keys below; docs/config.md)")
    parser.epilog = "config keys (key = default  description):\n" + field_help(TrainConfig)


def run(args) -> int:
    cfg = load_config(TrainConfig, args.config, args.overrides)
    train(cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``accelerate launch -m dopd_vlm.train CONFIG [key=value ...]``."""
    import argparse

    from dopd_vlm.console import set_verbose

    parser = argparse.ArgumentParser(prog="dopd_vlm.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--verbose", action="store_true", help="show library progress bars (quiet by default)")
    args = parser.parse_args(argv)
    set_verbose(args.verbose)  # as `dopd-vlm train` does
    try:
        return run(args)
    except ValueError as e:  # the project's own errors as one line, as `dopd-vlm train` prints them
        if not type(e).__module__.startswith(("dopd_vlm", "data_builders")):
            raise
        print(f"dopd_vlm.train: error: {e}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------------------------------ pieces
@dataclass
class Policy:
    """A loaded model with its adapter and processor."""

    model: object  # what the engine runs (wrapped by accelerate / peft for the student)
    processor: object
    adapter: object
    hf_model: object = None  # the transformers model inside (generation, positions, no-grad scoring)

    def __post_init__(self):
        if self.hf_model is None:
            self.hf_model = self.model


def _is_vision_param(name: str) -> bool:
    # transformers' VLM classes keep the vision encoder under one of these module names
    return any(part in ("visual", "vision_tower", "vision_model") for part in name.split("."))


def param_groups(model, lr: float, weight_decay: float, freeze_vision: bool, vision_lr_scale: float) -> list[dict]:
    """AdamW groups: language model at ``lr``; vision tower frozen or at ``lr * vision_lr_scale``
    (docs/method.md §6 [D]: random towers collapse at the LM's rate)."""
    lm, vision = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if _is_vision_param(name):
            if freeze_vision or vision_lr_scale == 0:
                p.requires_grad_(False)
                continue
            vision.append(p)
        else:
            lm.append(p)
    groups = [{"params": lm, "lr": lr, "weight_decay": weight_decay}]
    if vision:
        groups.append({"params": vision, "lr": lr * vision_lr_scale, "weight_decay": weight_decay})
    return groups


def cosine_with_warmup(optimizer, warmup_steps: int, total_steps: int):
    """Linear warmup then cosine decay to 0 [P: cosine schedule; warmup length D]."""
    import torch

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def data_order(n_records: int, seed: int, shuffle: bool, start: int, count: int) -> list[int]:
    """Record indices ``start .. start+count`` of the infinite epoch-wise permutation stream; a pure
    function of (seed, position), so resuming at ``samples_seen`` reproduces the data exactly."""
    import torch

    out = []
    for pos in range(start, start + count):
        epoch, i = divmod(pos, n_records)
        if shuffle:
            g = torch.Generator().manual_seed(seed * 100_003 + epoch)
            out.append(int(torch.randperm(n_records, generator=g)[i]))
        else:
            out.append(i)
    return out


def load_policy(path: str, dtype: str, trust_remote_code: bool, attn_implementation: str, device,
                chat_template_kwargs: dict | None = None) -> Policy:
    from dopd_vlm.adapters import get_adapter

    adapter = get_adapter(path)
    adapter.chat_template_kwargs = dict(chat_template_kwargs or {})  # model.chat_template_kwargs
    model, processor = adapter.load(path, dtype=dtype, device=str(device), trust_remote_code=trust_remote_code,
                                    attn_implementation=attn_implementation or None)
    return Policy(model, processor, adapter)


def _lora_targets(spec: str) -> str | list[str]:
    """``all-linear`` (peft's keyword) or a comma-separated list of module names."""
    return spec if spec == "all-linear" else [t.strip() for t in spec.split(",") if t.strip()]


def make_accelerator(**kwargs):
    """An ``Accelerator``; several processes without CUDA run DDP over gloo on the CPU (accelerate
    only picks MULTI_CPU when told ``cpu=True``; without it each process silently trains alone)."""
    import torch
    from accelerate import Accelerator

    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(cpu=multi_process and not torch.cuda.is_available(), **kwargs)


def _jsonable(metrics: dict) -> dict:
    out = {}
    for k, v in metrics.items():
        v = v.item() if hasattr(v, "item") else v
        out[k] = None if isinstance(v, float) and not math.isfinite(v) else v
    return out


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """On resume, drop lines logged after the checkpoint's step (they will be logged again)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    keep = []
    for line in lines:
        try:
            if line.strip() and json.loads(line)["step"] <= last_step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            pass  # a line cut short by a kill
    if len(keep) < len(lines):  # atomic: a kill now leaves the old file or the new one (runfolder.py)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ recipe
def train(cfg: TrainConfig) -> Path:
    """Run on-policy distillation as configured; returns the final checkpoint folder."""
    from dopd_vlm.runfolder import RunFolder

    with RunFolder(cfg, "train") as folder:  # lock, fresh/resume checks, Ctrl-C (dopd_vlm/runfolder.py)
        final = _train(cfg, folder)
        return folder.done(final, ", plots and tokens.html" if cfg.run.plots else "")


def _train(cfg: TrainConfig, folder) -> Path:
    import torch
    from accelerate.utils import set_seed
    from datasets import DatasetDict, load_from_disk
    from tqdm.auto import tqdm

    from dopd_vlm.checkpoint import TrainerState, latest_checkpoint, load_trainer_state, save_checkpoint
    from dopd_vlm.reporting import plot_metrics, write_token_html
    from dopd_vlm.sources import resolve_dataset, resolve_model
    from dopd_vlm.step import StepRunner
    from dopd_vlm.tables import get_table

    out = Path(cfg.run.output_dir)
    from dopd_vlm.console import check_trackers, startup_summary

    check_trackers(cfg.run.report_to)  # a missing tracker package is an error now, not one warning and no logs
    accelerator = make_accelerator(mixed_precision=cfg.run.mixed_precision,
                                   log_with=cfg.run.report_to or None, project_dir=str(out))
    folder.open(accelerator)
    table = get_table(cfg.table)
    set_seed(cfg.optim.seed + accelerator.process_index)

    # ---- data and models (tiny:/synthetic: specs are built once, by the main process)
    with accelerator.main_process_first():
        student_path = resolve_model(cfg.model.model_name_or_path, out)
        teacher_path = resolve_model(cfg.model.teacher_model_name_or_path, out) if any(p.startswith("teacher") for p in table.policies()) else ""
        dataset_path = resolve_dataset(cfg.data.dataset_path, out)
    data = load_from_disk(dataset_path)
    if isinstance(data, DatasetDict):
        if cfg.data.split not in data:
            raise SystemExit(f"{dataset_path}: no split {cfg.data.split!r}; splits: {list(data)}")
        data = data[cfg.data.split]
    if cfg.data.max_samples:
        data = data.select(range(min(cfg.data.max_samples, len(data))))
    from dopd_vlm.privilege_check import check_training_data, show_teacher_view, teacher_view_text

    priv_table = bool(set(table.policies()) & set(POLICIES_NEEDING_PRIV))  # never train on empty privilege
    check_training_data(data, cfg.data.privileged_kinds, table.policies(), cfg.data.max_empty_privileged_share,
                        warn=accelerator.print, where=str(dataset_path))
    world, rank = accelerator.num_processes, accelerator.process_index
    if cfg.optim.prompts_per_step % world:
        raise SystemExit(f"optim.prompts_per_step={cfg.optim.prompts_per_step} must divide by the "
                         f"{world} processes")
    local_prompts = cfg.optim.prompts_per_step // world
    startup_summary(accelerator, f"train ({cfg.table})", records=len(data), dataset=str(dataset_path), table=cfg.table,
                    policies=table.policies(), extra={"steps": f"{cfg.optim.max_steps} x {cfg.optim.prompts_per_step} prompts "
                                                               f"x {cfg.rollout.num_generations} rollouts", "output": str(out)})

    resume_ckpt = None
    if cfg.run.resume_from:
        resume_ckpt = latest_checkpoint(out) if cfg.run.resume_from == "latest" else Path(cfg.run.resume_from)
        if resume_ckpt is None:
            raise SystemExit(f"resume_from=latest but no checkpoint in {out}")
        if not cfg.model.use_peft:  # LoRA runs reload the base model and then the adapter (below)
            student_path = str(resume_ckpt)  # save_pretrained weights: loaded like any checkpoint
    student = load_policy(student_path, cfg.model.dtype, cfg.model.trust_remote_code,
                          cfg.model.attn_implementation, accelerator.device,
                          chat_template_kwargs=cfg.model.chat_template_kwargs)
    teacher = None
    if teacher_path:
        teacher = load_policy(teacher_path, cfg.model.teacher_dtype or cfg.model.dtype, cfg.model.trust_remote_code,
                              cfg.model.attn_implementation, cfg.model.teacher_device or accelerator.device,
                              chat_template_kwargs=cfg.model.chat_template_kwargs)
        teacher.model.requires_grad_(False).eval()  # frozen [P]
        from dopd_vlm.scoring import check_tokenizer_compat

        check_tokenizer_compat(student.processor, student.adapter, teacher.processor, teacher.adapter)
    if priv_table and accelerator.is_main_process:
        show_teacher_view(data, cfg.data.privileged_kinds, teacher or student, accelerator.print)
    model = student.model
    if cfg.model.use_peft:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.model.lora_r, lora_alpha=cfg.model.lora_alpha,
                                                 lora_dropout=cfg.model.lora_dropout,
                                                 target_modules=_lora_targets(cfg.model.lora_target_modules)))
        if resume_ckpt is not None:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(model, load_file(str(resume_ckpt / "adapter" / "adapter_model.safetensors")))
        student.hf_model = model.get_base_model()
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    model.train()
    groups = param_groups(model, cfg.optim.lr, cfg.optim.weight_decay, cfg.model.freeze_vision,
                          cfg.model.vision_lr_scale)
    optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=(cfg.optim.adam_beta1, cfg.optim.adam_beta2))
    scheduler = cosine_with_warmup(optimizer, int(cfg.optim.warmup_ratio * cfg.optim.max_steps), cfg.optim.max_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    student.model = model

    # ---- resume (the student's weights were loaded from the checkpoint itself, above)
    state = TrainerState(step=0, samples_seen=0, extra={})
    if resume_ckpt is not None:
        state = folder.load_state(load_trainer_state, resume_ckpt, optimizer, scheduler)
        accelerator.print(f"resumed from {resume_ckpt} at step {state.step}")

    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        for name in ("metrics.jsonl", "samples.jsonl"):
            (out / name).touch()
            _truncate_jsonl(out / name, state.step)
    if cfg.run.report_to:
        accelerator.init_trackers("dopd-vlm", config={"table": cfg.table, "lr": cfg.optim.lr})

    runner = StepRunner(cfg, table, student, teacher, accelerator)
    if cfg.rollout.engine == "vllm":  # vLLM engine or server, fed the weights after every optimiser step
        from dopd_vlm.vllm_rollout import attach

        attach(runner, optimizer, cfg, student, student_path, out, seed=cfg.optim.seed + accelerator.process_index)
    bar = tqdm(total=cfg.optim.max_steps, initial=state.step, desc=f"train {cfg.table}",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    bad_in_a_row = 0
    last_step = min(cfg.optim.max_steps, cfg.run.stop_after_step or cfg.optim.max_steps)
    while state.step < last_step:
        t0 = time.perf_counter()
        start = state.samples_seen + rank * local_prompts
        idx = data_order(len(data), cfg.optim.seed, cfg.data.shuffle, start, local_prompts)
        records = [data[i] for i in idx]
        result = runner.step(records, sample=bool(cfg.run.sample_every) and (state.step + 1) % cfg.run.sample_every == 0)
        state.samples_seen += cfg.optim.prompts_per_step
        if result.finite:
            bad_in_a_row = 0
            if cfg.optim.max_grad_norm > 0:
                result.metrics["grad_norm"] = float(accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm))
            optimizer.step()
            scheduler.step()
        else:
            bad_in_a_row += 1
            accelerator.print(f"step {state.step + 1}: non-finite loss, update skipped "
                              f"({bad_in_a_row}/{cfg.run.max_bad_steps} in a row)")
            if bad_in_a_row >= cfg.run.max_bad_steps:
                raise SystemExit(f"stopping: {bad_in_a_row} non-finite losses in a row")
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        metrics = {"step": state.step, "lr": scheduler.get_last_lr()[0], "step_time_s": time.perf_counter() - t0,
                   **_jsonable(result.metrics)}
        if accelerator.is_main_process:
            if state.step % cfg.run.log_every == 0:
                with open(out / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(metrics) + "\n")
            if result.samples:
                with open(out / "samples.jsonl", "a") as fh:
                    for s, rec in zip(result.samples, records):  # + what the teacher saw (its privileged text)
                        view = teacher_view_text(rec, cfg.data.privileged_kinds, teacher or student) if priv_table else None
                        fh.write(json.dumps({"step": state.step, **s, "privileged": view}) + "\n")
        if cfg.run.report_to:
            accelerator.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=state.step)
        bar.update(1)
        bar.set_postfix(loss=f"{result.metrics.get('loss', float('nan')):.4f}")
        if folder.should_stop(accelerator, state.step):
            break  # Ctrl-C: the checkpoint, plots and HTML below, then exit 130
        if cfg.run.save_every and state.step % cfg.run.save_every == 0 and state.step < last_step:
            _save(accelerator, out, state, student, optimizer, scheduler, cfg.run.save_total_limit, save_checkpoint)
    bar.close()
    final = _save(accelerator, out, state, student, optimizer, scheduler, cfg.run.save_total_limit, save_checkpoint)
    if accelerator.is_main_process and cfg.run.plots:
        plot_metrics(out / "metrics.jsonl", out / "plots")
        write_token_html(out / "samples.jsonl", out / "tokens.html", title=f"{cfg.table}: token routing")
    if runner.engine is not None:  # vLLM first: accelerate's end_training tears torch.distributed down
        runner.engine.close()
    accelerator.end_training()
    return final


def _check_replicas(accelerator, model) -> None:
    """Under DDP every rank must hold the same weights after a step (gradients were all-reduced);
    a drift means a forward bypassed the wrapper. One float per rank, so cheap enough to check."""
    import torch
    from accelerate.utils import DistributedType

    if accelerator.distributed_type not in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        return
    total = torch.stack([p.detach().double().sum() for p in accelerator.unwrap_model(model).parameters()]).sum()
    sums = accelerator.gather(total.reshape(1).to(accelerator.device))
    if not torch.allclose(sums, sums[0].expand_as(sums), rtol=1e-9, atol=0):
        raise RuntimeError(f"DDP replicas diverged: parameter sums per rank {sums.tolist()}")


def _save(accelerator, out, state, student, optimizer, scheduler, keep_last, save_checkpoint) -> Path:
    accelerator.wait_for_everyone()
    _check_replicas(accelerator, student.model)
    state_dict = accelerator.get_state_dict(student.model)  # collective under FSDP / ZeRO-3: every rank
    path = out / f"checkpoint-{state.step:06d}"
    if accelerator.is_main_process:
        def save_fn(model, folder):
            unwrapped = accelerator.unwrap_model(model)
            if unwrapped is not student.hf_model:  # LoRA: adapter (for resume) + merged model (for eval)
                import copy

                unwrapped.save_pretrained(folder / "adapter", safe_serialization=True)
                copy.deepcopy(unwrapped).merge_and_unload().save_pretrained(folder, safe_serialization=True)
                return
            unwrapped.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)

        path = save_checkpoint(out, state.step, student.model, student.processor, optimizer, scheduler, state,
                               keep_last=keep_last, save_fn=save_fn)
    accelerator.wait_for_everyone()
    return path


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
