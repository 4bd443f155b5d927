"""Supervised fine-tuning: warm-start a student (plain view) or a teacher (privileged view).

    dopd-vlm sft CONFIG.yaml [key=value ...]

Cross-entropy on the response tokens only (the record's ``answer`` or ``privileged.solution``,
followed by EOS), after the chosen view's prompt. The same adapters, collator and scoring inputs
as distillation, so a warm-started checkpoint is scored exactly as it was trained.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from dopd_vlm.config import SFTConfig, field_help, load_config, save_config


def add_arguments(parser) -> None:
    parser.add_argument("config", nargs="?", default=None, help="YAML preset (optional)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, checked against field types (keys below; docs/config.md)")
    parser.epilog = "config keys (key = default  description):\n" + field_help(SFTConfig)


def run(args) -> int:
    overrides = list(args.overrides)
    config = args.config
    if config is not None and "=" in config:  # no YAML, only overrides
        overrides.insert(0, config)
        config = None
    sft(load_config(SFTConfig, config, overrides))
    return 0


def response_tensors(texts: list[str], tokenizer, eos_id: int, pad_id: int):
    """``(ids_B_R, mask_B_R)``: each text tokenised (no specials) + EOS, right padded."""
    import torch

    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] + [eos_id] for t in texts]
    R = max(len(r) for r in rows)
    ids = torch.full((len(rows), R), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), R), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = True
    return ids, mask


def sft_target(record: dict, target: str) -> str:
    if target == "answer":
        value = record.get("answer")
    else:
        value = (record.get("privileged") or {}).get("solution")
    if not value:
        raise ValueError(f"record {record.get('id')!r}, field {target!r}: empty; SFT needs a target text")
    return str(value)


def sft(cfg: SFTConfig) -> Path:
    """Supervised fine-tuning as configured; returns the final checkpoint folder. Saves every
    ``run.save_every`` steps and resumes (``run.resume_from``) bit-exactly like ``train``; the run
    folder is guarded like train's (dopd_vlm/runfolder.py: lock, fresh/resume checks, Ctrl-C)."""
    from dopd_vlm.runfolder import RunFolder

    with RunFolder(cfg, "sft") as folder:
        return folder.done(_sft(cfg, folder))


def _sft(cfg: SFTConfig, folder) -> Path:
    import torch
    from accelerate.utils import set_seed
    from datasets import DatasetDict, load_from_disk
    from tqdm.auto import tqdm

    from dopd_vlm.checkpoint import TrainerState, load_trainer_state, save_checkpoint
    from dopd_vlm.collate import collate
    from dopd_vlm.console import check_trackers
    from dopd_vlm.sources import resolve_dataset, resolve_model
    from dopd_vlm.step import trained_logits
    from dopd_vlm.train import (
        _truncate_jsonl,
        cosine_with_warmup,
        data_order,
        load_policy,
        make_accelerator,
        param_groups,
    )

    out = Path(cfg.run.output_dir)
    check_trackers(cfg.run.report_to)  # a missing tracker package is an error at start (as in train)
    acc = make_accelerator(mixed_precision=cfg.run.mixed_precision, log_with=cfg.run.report_to or None,
                           project_dir=str(out))
    folder.open(acc)
    set_seed(cfg.optim.seed)
    with acc.main_process_first():
        model_path = resolve_model(cfg.model.model_name_or_path, out)
        data_path = resolve_dataset(cfg.data.dataset_path, out)
    data = load_from_disk(data_path)
    if isinstance(data, DatasetDict):
        data = data[cfg.data.split]
    if cfg.data.max_samples:
        data = data.select(range(min(cfg.data.max_samples, len(data))))
    from dopd_vlm.console import startup_summary
    from dopd_vlm.privilege_check import check_training_data

    # a privileged view whose context is empty is the plain view under another name: refuse, as train does
    check_training_data(data, cfg.data.privileged_kinds, ("student_priv",) if cfg.data.view != "plain" else (),
                        cfg.data.max_empty_privileged_share, warn=acc.print, where=str(data_path))
    startup_summary(acc, f"sft ({cfg.data.view} view)", records=len(data), dataset=str(data_path),
                    extra={"view": f"{cfg.data.view} (privileged kinds: {', '.join(cfg.data.privileged_kinds) or 'none'})",
                           "steps": f"{cfg.optim.max_steps} x {cfg.optim.batch_size} records per process",
                           "target": cfg.data.target, "output": str(out)})
    resume_ckpt = folder.resume_checkpoint() if cfg.run.resume_from else None
    if cfg.run.resume_from:
        if resume_ckpt is None:
            raise SystemExit(f"resume_from=latest but no checkpoint in {out}")
        model_path = str(resume_ckpt)  # save_pretrained weights: loaded like any checkpoint
    pol = load_policy(model_path, cfg.model.dtype, cfg.model.trust_remote_code, cfg.model.attn_implementation,
                      acc.device, chat_template_kwargs=cfg.model.chat_template_kwargs)
    model = pol.model
    model.train()
    opt = torch.optim.AdamW(param_groups(model, cfg.optim.lr, cfg.optim.weight_decay, cfg.model.freeze_vision,
                                         cfg.model.vision_lr_scale), lr=cfg.optim.lr)
    sched = cosine_with_warmup(opt, int(cfg.optim.warmup_ratio * cfg.optim.max_steps), cfg.optim.max_steps)
    model, opt, sched = acc.prepare(model, opt, sched)
    unwrapped = acc.unwrap_model(model)
    state = TrainerState(step=0, samples_seen=0, extra={})
    if resume_ckpt is not None:
        state = folder.load_state(load_trainer_state, resume_ckpt, opt, sched)
        acc.print(f"resumed from {resume_ckpt} at step {state.step}")
    tok = pol.adapter.tokenizer(pol.processor)
    eos_id = pol.adapter.eos_token_ids(unwrapped, pol.processor)[0]
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        (out / "metrics.jsonl").touch()
        _truncate_jsonl(out / "metrics.jsonl", state.step)  # steps after the checkpoint are logged again
    if cfg.run.report_to:
        acc.init_trackers("dopd-vlm-sft", config={"view": cfg.data.view, "lr": cfg.optim.lr})
    B = cfg.optim.batch_size
    t_start = time.perf_counter()
    step = state.step
    last_step = min(cfg.optim.max_steps, cfg.run.stop_after_step or cfg.optim.max_steps)

    def save(step: int) -> Path:
        acc.wait_for_everyone()
        path = out / f"checkpoint-{step:06d}"
        if acc.is_main_process:
            path = save_checkpoint(out, step, unwrapped, pol.processor, opt, sched,
                                   TrainerState(step=step, samples_seen=step * B * acc.num_processes, extra={}),
                                   keep_last=cfg.run.save_total_limit)
        acc.wait_for_everyone()
        return path

    bar = tqdm(total=cfg.optim.max_steps, initial=step, desc=f"sft ({cfg.data.view})", disable=not acc.is_local_main_process,
               dynamic_ncols=True)
    while step < last_step:
        idx = data_order(len(data), cfg.optim.seed, True, step * B * acc.num_processes + acc.process_index * B, B)
        records = [data[i] for i in idx]
        view = {"plain": "plain", "privileged": "priv", "mixed": ("plain", "priv")[step % 2]}[cfg.data.view]
        kinds = cfg.data.privileged_kinds if view == "priv" else []
        batch = collate(records, pol.processor, pol.adapter, kinds, views=(view,))[view].to(acc.device)
        ids, mask = response_tensors([sft_target(r, cfg.data.target) for r in records], tok, eos_id,
                                     batch.pad_token_id)
        ids, mask = ids.to(acc.device), mask.to(acc.device)
        logits_B_R_V = trained_logits(model, unwrapped, pol.adapter, batch, ids, batch.vocab_size)
        logp_B_R = torch.log_softmax(logits_B_R_V.float(), -1).gather(-1, ids[..., None]).squeeze(-1)
        # per-sequence mean over response tokens, then batch mean (as Eq. 11 does for distillation)
        loss = -((logp_B_R * mask).sum(-1) / mask.sum(-1)).mean()
        acc.backward(loss)
        if cfg.optim.max_grad_norm > 0:
            acc.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        first_ok = (logits_B_R_V.argmax(-1)[:, 0] == ids[:, 0]).float().mean().item()
        if step % cfg.run.log_every == 0:
            row = {"loss": loss.item(), "first_token_acc": first_ok, "lr": sched.get_last_lr()[0]}
            if acc.is_main_process:
                with open(out / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps({"step": step, **row}) + "\n")
            if cfg.run.report_to:
                acc.log(row, step=step)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{first_ok:.2f}")
        if cfg.optim.time_budget_s and time.perf_counter() - t_start > cfg.optim.time_budget_s:
            acc.print(f"time budget of {cfg.optim.time_budget_s:.0f}s reached at step {step}")
            break
        if folder.should_stop(acc, step):
            break  # Ctrl-C: the checkpoint below, then exit 130
        if cfg.run.save_every and step % cfg.run.save_every == 0 and step < last_step:
            save(step)
    bar.close()
    final = save(step)
    if cfg.run.report_to:
        acc.end_training()
    return final
