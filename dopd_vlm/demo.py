"""The embedded default: DOPD end to end on synthetic scenes and tiny models, on a CPU.

    dopd-vlm demo [--quick] [--out demo_out] [--rebuild]

1. builds synthetic scenes (3x3 grid, privileged boxes + labels), train / held-out test;
2. takes the shipped warm-started teacher and student (``dopd_vlm/assets/demo``; ``--rebuild``
   trains them again with ``dopd-vlm sft`` — the exact recipe is ``warmstart_recipe()``);
3. checks through lmms-eval that the teacher beats the student, with and without the privileged
   text (the privileged task is a diagnostic copy of the test set whose prompts carry it);
4. distils the student with vanilla_opd, opd_priv_teacher and dopd (same steps and seeds);
5. evaluates every distilled student through lmms-eval on the held-out scenes and writes a report
   folder: report.md (accuracy per method and question family, mean ± spread over seeds),
   training plots, the token-routing HTML page; and prints the table.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

ASSETS = Path(__file__).parent / "assets" / "demo"
PRESET = Path(__file__).parent / "presets" / "demo.yaml"
METHODS = ("vanilla_opd", "opd_priv_teacher", "dopd")
# The data recipe of the shipped warm starts and of the demo (project decision; see warmstart_recipe)
DATA = dict(n_train=4000, n_test=300, seed=0, layout="grid", families="demo")
GRID_PIXELS = 84 * 84  # 3x3 cells of 28 px -> 9 merged visual tokens (demo-notes.md)


def warmstart_recipe() -> dict:
    """How the shipped checkpoints were made (``dopd-vlm demo --rebuild`` reruns exactly this)."""
    common = ["data.dataset_path={data}", "optim.batch_size=32", "optim.lr=3e-3", "model.freeze_vision=true",
              "optim.warmup_ratio=0.02", "run.save_total_limit=1"]
    return {
        "teacher": {"init": dict(family="qwen2_5_vl", hidden=96, layers=3, seed=11),
                    "sft": common + ["data.view=mixed", "optim.max_steps=4500", "optim.time_budget_s=1200",
                                     "optim.seed=11"]},
        # the student also sees both views: DOPD's "privileged student" is the student reading p in
        # context (method.md §1); a tiny student never shown p answers garbage with it, and the LL/HS
        # regimes would then pull it towards that garbage (measured: see the issue-10 note)
        "student": {"init": dict(family="qwen2_5_vl", size="tiny", seed=12),
                    "sft": common + ["data.view=mixed", "optim.max_steps=300", "optim.seed=12"]},
    }


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="demo_out", help="report and run folder (default: demo_out)")
    parser.add_argument("--quick", action="store_true", help="fewer steps, one seed, smaller test set (~3 min)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per method (default 3; --quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="distillation steps (default 40; --quick 8)")
    parser.add_argument("--n-test", type=int, default=None, help="held-out scenes evaluated (default 300; --quick 60)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated routing tables")
    parser.add_argument("--rebuild", action="store_true",
                        help="retrain the teacher/student warm starts with dopd-vlm sft (10-20 min) into --assets")
    parser.add_argument("--assets", default=str(ASSETS), help="warm-start folder (default: the shipped one)")


def _say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rebuild_warmstarts(data_dir: Path, assets: Path, work: Path, roles: tuple[str, ...] = ("teacher", "student")) -> None:
    from dopd_vlm.config import SFTConfig, load_config
    from dopd_vlm.sft import sft
    from dopd_vlm.tiny import write_tiny_checkpoint

    for role, recipe in warmstart_recipe().items():
        if role not in roles:
            continue
        _say(f"warm start: training the {role} with dopd-vlm sft")
        init = work / f"{role}_init"
        write_tiny_checkpoint(init, min_pixels=GRID_PIXELS, max_pixels=GRID_PIXELS, **recipe["init"])
        overrides = [o.format(data=data_dir) for o in recipe["sft"]]
        cfg = load_config(SFTConfig, None, [f"model.model_name_or_path={init}", f"run.output_dir={work / role}",
                                            *overrides])
        ckpt = sft(cfg)
        dest = assets / role
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(ckpt, dest, ignore=shutil.ignore_patterns("trainer_state"))
        (dest / "RECIPE.json").write_text(json.dumps(
            {"init": recipe["init"], "sft": recipe["sft"], "data": DATA,
             "command": "dopd-vlm demo --rebuild  (dopd_vlm.demo.warmstart_recipe)"}, indent=1))


def privileged_copy(data_dir: Path, out_dir: Path, kinds: list[str], adapter, processor) -> Path:
    """The test split with the privileged view as the prompt: a diagnostic for the teacher only."""
    from datasets import DatasetDict, load_from_disk

    from dopd_vlm.views import render_views

    test = load_from_disk(str(data_dir))["test"]

    def to_priv(rec):
        _, priv, _ = render_views(rec, kinds, adapter=adapter, processor=processor)
        return {"prompt": priv}

    DatasetDict({"test": test.map(to_priv, desc="privileged view")}).save_to_disk(str(out_dir))
    return out_dir


def _acc_table(rows: list[tuple[str, list[dict]]], families: list[str]) -> str:
    """Markdown: one row per model/method, mean ± spread (population stdev) over seeds."""
    head = ["model", "seeds", "accuracy"] + families
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, runs in rows:
        cells = [label, str(len(runs))]
        for key in ["accuracy"] + [f"accuracy_{f}" for f in families]:
            vals = [r[key] for r in runs if r.get(key) is not None]
            if not vals:
                cells.append("n/a")
            elif len(vals) == 1:
                cells.append(f"{vals[0]:.3f}")
            else:
                cells.append(f"{statistics.mean(vals):.3f} ± {statistics.pstdev(vals):.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args) -> int:
    from data_builders.scenes import DEMO_FAMILIES
    from data_builders.synthetic import build_synthetic
    from dopd_vlm.adapters import get_adapter
    from dopd_vlm.config import TrainConfig, load_config
    from dopd_vlm.evaluate import evaluate, make_task
    from dopd_vlm.train import train

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = args.seeds or (1 if args.quick else 3)
    steps = args.steps or (8 if args.quick else 40)
    n_test = args.n_test or (60 if args.quick else DATA["n_test"])
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    assets = Path(args.assets)

    # 1. data
    data_dir = out / "data" / "scenes"
    if not (data_dir / "dataset_dict.json").exists():
        _say(f"building {DATA['n_train']} train + {DATA['n_test']} held-out synthetic scenes")
        build_synthetic(data_dir, n_train=DATA["n_train"], n_test=DATA["n_test"], seed=DATA["seed"],
                        layout=DATA["layout"], families=DEMO_FAMILIES, privileged_kinds=["regions"], quiet=True,
                        overwrite=True)

    # 2. warm starts
    if args.rebuild or not (assets / "teacher" / "config.json").exists():
        rebuild_warmstarts(data_dir, assets, out / "warmstart")
    teacher, student = str(assets / "teacher"), str(assets / "student")
    kinds = ["regions"]

    # 3. tasks: the student view (what is deployed) and a privileged diagnostic copy for the teacher
    tasks_dir = out / "tasks"
    make_task(data_dir, "demo_scenes", out=tasks_dir / "demo_scenes", split="test", limit=n_test)
    adapter = get_adapter(teacher)
    _, t_proc = adapter.load(teacher)
    priv_data = out / "data" / "scenes_priv"
    if not priv_data.exists():
        privileged_copy(data_dir, priv_data, kinds, adapter, t_proc)
    make_task(priv_data, "demo_scenes_priv", out=tasks_dir / "demo_scenes_priv", split="test", limit=n_test)

    _say("evaluating the warm starts through lmms-eval (teacher with/without privileged text, student)")
    base, _ = evaluate([teacher, student], ["demo_scenes"], out / "eval" / "base", include_path=str(tasks_dir),
                       labels=["teacher_plain", "student_warmstart"], batch_size=16, max_new_tokens=4)
    priv, _ = evaluate([teacher], ["demo_scenes_priv"], out / "eval" / "teacher_priv", include_path=str(tasks_dir),
                       labels=["teacher_privileged"], batch_size=16, max_new_tokens=4)
    for r in base + priv:
        if r.error:
            raise SystemExit(f"evaluation of {r.label} failed: {r.error}")
    (t_plain, s_warm), (t_priv,) = ([next(iter(r.metrics.values())) for r in rs] for rs in (base, priv))
    _say(f"warm starts: teacher + privileged text {t_priv['accuracy']:.3f}, teacher plain "
         f"{t_plain['accuracy']:.3f}, student {s_warm['accuracy']:.3f}")
    if not t_priv["accuracy"] > s_warm["accuracy"]:
        _say("WARNING: the privileged teacher does not beat the student; distillation results mean little")

    # 4. distillation
    runs: dict[str, list[Path]] = {m: [] for m in methods}
    for method in methods:
        for seed in range(seeds):
            run_dir = out / "runs" / f"{method}-seed{seed}"
            _say(f"distilling with {method} (seed {seed}, {steps} steps)")
            cfg = load_config(TrainConfig, PRESET, [
                f"table={method}", f"model.model_name_or_path={student}", f"model.teacher_model_name_or_path={teacher}",
                f"data.dataset_path={data_dir}", f"optim.seed={seed}", f"optim.max_steps={steps}",
                f"run.output_dir={run_dir}"])
            runs[method].append(train(cfg))

    # 5. evaluation of the distilled students
    _say("evaluating the distilled students through lmms-eval")
    ckpts = [str(c) for m in methods for c in runs[m]]
    labels = [f"{m}-seed{s}" for m in methods for s in range(seeds)]
    dist, paths = evaluate(ckpts, ["demo_scenes"], out / "eval" / "distilled", include_path=str(tasks_dir),
                           labels=labels, batch_size=16, max_new_tokens=4)
    failed = [r for r in dist if r.error]
    scores = {(m, s): r.metrics.get("demo_scenes", {}) for (m, s), r in
              zip([(m, s) for m in methods for s in range(seeds)], dist)}

    rows = [("teacher + privileged text", [t_priv]), ("teacher (plain)", [t_plain]),
            ("student (warm start)", [s_warm])]
    rows += [(m, [scores[(m, s)] for s in range(seeds)]) for m in methods]
    families = sorted({k[len("accuracy_"):] for _, runs in rows for r in runs for k in r if k.startswith("accuracy_")})
    table = _acc_table(rows, families)

    report = out / "report"
    report.mkdir(exist_ok=True)
    if "dopd" in methods:
        src = runs["dopd"][0].parent
        if (src / "plots").exists():
            shutil.copytree(src / "plots", report / "plots_dopd", dirs_exist_ok=True)
        if (src / "tokens.html").exists():
            shutil.copy(src / "tokens.html", report / "tokens_dopd.html")
    shutil.copy(paths["png"], report / "comparison.png")
    minutes = (time.perf_counter() - t0) / 60
    text = (f"# dopd-vlm demo report\n\nHeld-out synthetic scenes (n = {n_test}), exact match through lmms-eval; "
            f"{steps} distillation steps x {seeds} seed(s) per method; mean ± population spread over seeds.\n\n"
            f"{table}\n\nTraining plots: `plots_dopd/`; token routing: `tokens_dopd.html`; per-run "
            f"results: `../eval/`. Wall time {minutes:.1f} min.\n")
    if failed:
        text += "\nFailed evaluations: " + ", ".join(r.label for r in failed) + "\n"
    (report / "report.md").write_text(text)
    print("\n" + table + "\n")
    _say(f"report written to {report / 'report.md'} ({minutes:.1f} min)")
    return 1 if failed else 0
