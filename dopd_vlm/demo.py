"""The embedded default: privileged on-policy distillation end to end on a CPU, with its
preconditions measured before any distillation.

    dopd-vlm demo [--quick] [--out demo_out] [--methods main|all|a,b] [--rebuild] [--tune]

The task (``data_builders.scenes``, layout ``occluded``): 84x84 images of a 3x3 grid, 2-6 coloured
shapes; in half of the scenes one object is covered by a uniform dark square, so the pixels say
that a cell is occupied but never what is there. The privileged text is the scene as a fixed
9-slot list in row-major order ("red circle, empty, blue square, ...", no coordinates), which
names the covered object too. Three question families, each answered with several content tokens
(the answer is grounded in what it names, so DOPD's per-token routing has something to route):

    How many objects of each color are there?  ->  red two green zero blue one yellow one
    What shape is the blue object?             ->  blue triangle
    Is there a green circle?                   ->  green circle yes

Every question is tagged ``perceivable`` (the visible objects give the answer) or
``privileged_only`` (the answer needs the covered object, which only the privileged text names):
the privilege carries a gap the student can close by learning to perceive, and one it can never
close from the image (where the "privilege illusion" lives).

Steps:
1. builds train / val / held-out test scenes (the val split chooses the shared optimiser
   setting, ``--tune``; the test split is never used for a choice);
2. takes the shipped warm starts (``dopd_vlm/assets/demo``; ``--rebuild`` trains them again with
   ``dopd-vlm sft`` from ``warmstart_recipe()``): a teacher trained long and a student trained
   briefly, both on both views;
3. measures and prints the preconditions on the test split through lmms-eval: the teacher (plain)
   next to the majority-class level, the teacher with the privileged text, the student warm start;
4. distils the student with every method (same preset, steps, prompts, seeds and optimiser
   setting for all; ``--methods all`` adds the Table 8 ablations);
5. evaluates every distilled student through lmms-eval and writes ``report/``: report.md and
   results.json (mean and 95 % interval over seeds, per family, perceivable vs privileged-only,
   the majority-class level), entropy.png (student entropy over steps per method, the paper's
   Fig. 3 diagnostic), regime_fractions.png, tokens_dopd.html and per-run plots.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import time
from collections import Counter, defaultdict
from pathlib import Path

ASSETS = Path(__file__).parent / "assets" / "demo"
PRESET = Path(__file__).parent / "presets" / "demo.yaml"
MAIN_METHODS = ("vanilla_opd", "opd_priv_teacher", "opsd", "dopd")
# the Table 8 ablations of the paper (dopd_vlm/tables.py)
ABLATIONS = ("dopd_no_student", "dopd_no_teacher", "dopd_uniform", "dopd_single_divergence", "dopd_single_support")
METHODS = MAIN_METHODS
# The data recipe of the shipped warm starts and of the demo (project decision, issue 14)
DATA = dict(n_train=4000, n_val=200, n_test=300, seed=0, layout="occluded", caption_style="slots")
KINDS = ["captions"]  # the 9-slot scene list is the privileged text (data.privileged_kinds)
GRID_PIXELS = 84 * 84  # 3x3 cells of 28 px -> 9 merged visual tokens (one per cell)
EVAL_MAX_NEW_TOKENS = 12  # longest reference answer: 8 words + EOS [D]
EVAL_BATCH = 50  # [D] CPU evaluation batch
# Candidates for the one shared learning rate, chosen by --tune on the val split (mean over the
# four main methods, one seed); the preset holds the choice [D]
TUNE_LRS = (3e-4, 1e-3)
T95 = {1: float("nan"), 2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}
PRECONDITION = dict(teacher_over_majority=0.25, student_below_teacher=0.15)  # issue 14


def warmstart_recipe() -> dict:
    """How the shipped checkpoints were made (``dopd-vlm demo --rebuild`` reruns exactly this).

    Both are the tiny Qwen2.5-VL (2 layers, hidden 64, vision tower frozen: a random tower trained
    at the language model's lr collapses). They differ in training time only: the teacher has the
    long offline budget, the student a short one (there is no capacity gap a CPU could show on
    these families). Both see the plain and the privileged view (``data.view=mixed``): DOPD's
    privileged student is the student reading the privileged text in context.
    """
    common = ["data.dataset_path={data}", "optim.batch_size=32", "optim.lr=1e-3", "model.freeze_vision=true",
              "optim.warmup_ratio=0.02", "run.save_total_limit=1", "data.view=mixed",
              "data.privileged_kinds=[captions]"]
    return {
        "teacher": {"init": dict(family="qwen2_5_vl", size="tiny", seed=11),
                    "sft": common + ["optim.max_steps=1600", "optim.seed=11"]},
        "student": {"init": dict(family="qwen2_5_vl", size="tiny", seed=12),
                    "sft": common + ["optim.max_steps=400", "optim.seed=12"]},
    }


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="demo_out", help="report and run folder (default: demo_out)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: one seed, 4 steps, 60 test scenes, the four main methods")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per method (default 3; --quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="distillation steps (default: the preset's; --quick 4)")
    parser.add_argument("--n-test", type=int, default=None, help="held-out scenes evaluated (default 300; --quick 60)")
    parser.add_argument("--methods", default="main",
                        help="main (vanilla_opd, opd_priv_teacher, opsd, dopd), all (+ the Table 8 ablations) "
                             "or comma-separated routing tables")
    parser.add_argument("--rebuild", action="store_true",
                        help="retrain the teacher/student warm starts with dopd-vlm sft into --assets (~27 CPU-minutes; bit for bit the shipped ones)")
    parser.add_argument("--assets", default=str(ASSETS), help="warm-start folder (default: the shipped one)")
    parser.add_argument("--jobs", type=int, default=0,
                        help="distillation runs at a time, each in its own process with one thread "
                             "(default 0 = one per CPU core, at most 4)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="a config override applied to every method's distillation alike (repeatable), "
                             "e.g. --set routing.topk_tail=bucket; recorded in the report")
    parser.add_argument("--tune", action="store_true",
                        help=f"choose the shared learning rate among {TUNE_LRS} on the val split (one seed, "
                             "the main methods) and use it; writes report/tune.json")


def _say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _methods(spec: str) -> list[str]:
    if spec == "main":
        return list(MAIN_METHODS)
    if spec == "all":
        return list(MAIN_METHODS + ABLATIONS)
    return [m.strip() for m in spec.split(",") if m.strip()]


# ------------------------------------------------------------------------------------ data
def build_data(data_dir: Path) -> Path:
    from data_builders.scenes import DEMO_FAMILIES
    from data_builders.synthetic import build_synthetic

    if not (data_dir / "dataset_dict.json").exists():
        build_synthetic(data_dir, n_train=DATA["n_train"], n_val=DATA["n_val"], n_test=DATA["n_test"],
                        seed=DATA["seed"], layout=DATA["layout"], families=DEMO_FAMILIES, privileged_kinds=KINDS,
                        caption_style=DATA["caption_style"], quiet=True, overwrite=True)
    return data_dir


def _parts(family: str, answer: str) -> tuple[list[str], list[str]]:
    """(names, values) of a multi-part answer: 'red two green zero ...' / 'blue triangle' / 'green circle yes'."""
    w = answer.split()
    if family == "count_each_color":
        return w[0::2], w[1::2]
    return [" ".join(w[:-1])], [w[-1]]


def _join(names: list[str], values: list[str]) -> str:
    return " ".join(f"{n} {v}" for n, v in zip(names, values))


def majority_level(data_dir: Path, n_test: int) -> dict:
    """The best constant answer of each family (its names copied from the question, the most
    frequent training value in each part), scored on the test rows like a model's answer."""
    from datasets import load_from_disk

    dd = load_from_disk(str(data_dir))
    freq: dict[tuple[str, int], Counter] = defaultdict(Counter)
    for meta, ans in zip(dd["train"]["meta"], dd["train"]["answer"]):
        for k, v in enumerate(_parts(meta["question_family"], ans)[1]):
            freq[(meta["question_family"], k)][v] += 1
    hits = defaultdict(list)
    test = dd["test"].select(range(min(n_test, len(dd["test"]))))
    for meta, ans in zip(test["meta"], test["answer"]):
        fam = meta["question_family"]
        names, values = _parts(fam, ans)
        guess = _join(names, [freq[(fam, k)].most_common(1)[0][0] for k in range(len(values))])
        ok = float(guess == ans)
        hits["accuracy"].append(ok)
        hits[f"accuracy_{fam}"].append(ok)
        hits[f"accuracy_{meta['gap']}"].append(ok)
    return {k: statistics.mean(v) for k, v in hits.items()}


def group_counts(data_dir: Path, split: str, n: int) -> dict[str, int]:
    from datasets import load_from_disk

    ds = load_from_disk(str(data_dir))[split]
    return dict(Counter(m["eval_group"] for m in ds.select(range(min(n, len(ds))))["meta"]))


def answer_stats(data_dir: Path, tokenizer) -> dict:
    """Reference answers in tokens (content tokens, EOS not counted) and the privileged-only share."""
    from datasets import load_from_disk

    ds = load_from_disk(str(data_dir))["test"]
    lens = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in ds["answer"]]
    gaps = Counter(m["gap"] for m in ds["meta"])
    return {"mean_answer_tokens": statistics.mean(lens), "min_answer_tokens": min(lens),
            "max_answer_tokens": max(lens), "privileged_only_share": gaps["privileged_only"] / len(ds)}


def summarize(metrics: dict, counts: dict[str, int]) -> dict:
    """lmms-eval's accuracy per (family, gap) group -> overall, per family, per gap (count-weighted)."""
    from dopd_vlm.lmms_task_utils import family_metric_name

    fam, gap = defaultdict(lambda: [0.0, 0]), defaultdict(lambda: [0.0, 0])
    for group, n in counts.items():
        v = metrics.get(family_metric_name(group))
        if v is None:
            continue
        f, g = group.split("/")
        for d, k in ((fam, f), (gap, g)):
            d[k][0] += v * n
            d[k][1] += n
    out = {"accuracy": metrics.get("accuracy")}
    out.update({f"accuracy_{k}": s / n for k, (s, n) in sorted(fam.items())})
    out.update({f"accuracy_{k}": s / n for k, (s, n) in sorted(gap.items())})
    return out


def ci95(vals: list[float]) -> tuple[float, float]:
    """Mean and the half-width of a 95 % Student-t interval over seeds (nan for one seed)."""
    m = statistics.mean(vals)
    if len(vals) < 2:
        return m, float("nan")
    t = T95.get(len(vals), 1.96)
    return m, t * statistics.stdev(vals) / math.sqrt(len(vals))


# ------------------------------------------------------------------------------ warm starts
def rebuild_warmstarts(data_dir: Path, assets: Path, work: Path, roles: tuple[str, ...] = ("teacher", "student")) -> None:
    from dopd_vlm.config import SFTConfig, load_config
    from dopd_vlm.console import phase
    from dopd_vlm.sft import sft
    from dopd_vlm.tiny import write_tiny_checkpoint

    for role, recipe in warmstart_recipe().items():
        if role not in roles:
            continue
        with phase(f"warm start: dopd-vlm sft of the {role}"):
            init = work / f"{role}_init"
            write_tiny_checkpoint(init, min_pixels=GRID_PIXELS, max_pixels=GRID_PIXELS, **recipe["init"])
            overrides = [o.format(data=data_dir) for o in recipe["sft"]]
            cfg = load_config(SFTConfig, None, [f"model.model_name_or_path={init}",
                                                f"run.output_dir={work / role}", *overrides,
                                                "run.overwrite=true"])  # a rebuild replaces its own sft run
            with _logged(work / f"{role}.log"):
                ckpt = sft(cfg)
            dest = assets / role
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(ckpt, dest, ignore=shutil.ignore_patterns("trainer_state", "optimizer*", "scheduler*"))
            (dest / "RECIPE.json").write_text(json.dumps(
                {"init": recipe["init"], "sft": recipe["sft"], "data": DATA, "privileged_kinds": KINDS,
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


# ------------------------------------------------------------------------------ tables
def _fmt(vals: list[float]) -> str:
    if not vals:
        return "n/a"
    m, h = ci95(vals)
    return f"{m:.3f}" if len(vals) == 1 else f"{m:.3f} ± {h:.3f}"


def _columns(rows) -> list[str]:
    keys = []
    for _, runs in rows:
        for r in runs:
            keys += [k for k in r if k.startswith("accuracy_") and k not in keys]
    gaps = [k for k in keys if k in ("accuracy_perceivable", "accuracy_privileged_only")]
    return ["accuracy"] + sorted(gaps) + sorted(k for k in keys if k not in gaps)


def acc_table(rows: list[tuple[str, list[dict]]]) -> str:
    """Markdown: one row per model/method; several seeds -> mean ± 95 % interval half-width."""
    cols = _columns(rows)
    head = ["model", "seeds"] + [c.replace("accuracy_", "") if c != "accuracy" else "all" for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, runs in rows:
        cells = [label, str(len(runs))]
        for key in cols:
            cells.append(_fmt([r[key] for r in runs if r.get(key) is not None]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _rows_json(rows, model_of: dict[str, str]) -> list[dict]:
    out = []
    for label, runs in rows:
        cols = _columns([(label, runs)])
        entry = {"model": label, "checkpoint": model_of.get(label), "seeds": len(runs)}
        for key in cols:
            vals = [r[key] for r in runs if r.get(key) is not None]
            if not vals:
                continue
            m, h = ci95(vals)
            name = "overall" if key == "accuracy" else key[len("accuracy_"):]
            entry.setdefault("mean", {})[name] = m
            entry.setdefault("interval95", {})[name] = [m - h, m + h] if len(vals) > 1 else None
            entry.setdefault("per_seed", {})[name] = vals
        out.append(entry)
    return out


# ------------------------------------------------------------------------------ diagnostics
def _read_metrics(run_dir: Path) -> list[dict]:
    p = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def run_diagnostics(run_dirs: list[Path]) -> dict:
    """Per method, averaged over its seeds and steps: regime fractions, each regime's share of the
    objective (frac x mean loss / loss), the mean privilege gap A, and entropy first -> last step."""
    rows = [r for d in run_dirs for r in _read_metrics(d)]
    if not rows:
        return {}
    keys = {k for r in rows for k in r}
    out = {}
    for k in sorted(keys):
        if k.startswith(("regime/", "gap/", "threshold/A", "loss", "response/length")):
            vals = [r[k] for r in rows if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
            if vals:
                out[k] = statistics.mean(vals)
    regimes = sorted({k.split("/")[1] for k in keys if k.startswith("regime/") and k.endswith("/frac")})
    if len(regimes) > 1:
        shares = defaultdict(list)
        for r in rows:
            parts = {g: r.get(f"regime/{g}/frac", 0.0) * r.get(f"regime/{g}/loss", 0.0) for g in regimes}
            parts = {g: v for g, v in parts.items() if math.isfinite(v)}
            tot = sum(parts.values())
            if tot > 0:
                for g, v in parts.items():
                    shares[g].append(v / tot)
        out.update({f"objective_share/{g}": statistics.mean(v) for g, v in shares.items()})
    ent = defaultdict(list)
    for d in run_dirs:
        m = [r for r in _read_metrics(d) if "student/entropy" in r]
        if m:
            ent["first"].append(m[0]["student/entropy"])
            ent["last"].append(m[-1]["student/entropy"])
    if ent:
        out["entropy/first"], out["entropy/last"] = statistics.mean(ent["first"]), statistics.mean(ent["last"])
    return out


def plot_over_steps(runs: dict[str, list[Path]], key_prefix: str, path: Path, title: str,
                    only: list[str] | None = None) -> Path | None:
    """One line per method (or per regime for ``regime/``), the mean over seeds at each step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8), dpi=110)
    drew = False
    for method, dirs in runs.items():
        if only and method not in only:
            continue
        per_key: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for d in dirs:
            for r in _read_metrics(d):
                for k, v in r.items():
                    if (k == key_prefix or (key_prefix.endswith("/") and k.startswith(key_prefix) and k.endswith("/frac"))) \
                            and isinstance(v, (int, float)) and math.isfinite(v):
                        per_key[k][r["step"]].append(v)
        for k, by_step in sorted(per_key.items()):
            xs = sorted(by_step)
            label = method if k == key_prefix else f"{method} {k.split('/')[1]}"
            ax.plot(xs, [statistics.mean(by_step[x]) for x in xs], marker="o", ms=2, label=label)
            drew = True
    if not drew:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------ the pipeline
def _evaluate(ckpts, labels, task, tasks_dir, out, counts):
    """lmms-eval on every checkpoint (one call: lmms-eval indexes its tasks once per call) ->
    per checkpoint the summary of ``task``, or a tuple of summaries when ``task`` is a list."""
    from dopd_vlm.evaluate import evaluate

    tasks = [task] if isinstance(task, str) else list(task)
    with _logged(Path(out) / "console.log"):
        res, _ = evaluate(ckpts, tasks, out, include_path=str(tasks_dir), labels=labels, batch_size=EVAL_BATCH,
                          max_new_tokens=EVAL_MAX_NEW_TOKENS)
    bad = [r for r in res if r.error]
    if bad:
        raise SystemExit(f"evaluation of {bad[0].label} failed: {bad[0].error}")
    if isinstance(task, str):
        return [summarize(r.metrics[task], counts) for r in res]
    return [tuple(summarize(r.metrics[t], counts) for t in tasks) for r in res]


def _has_field(cfg_cls, section: str, name: str) -> bool:
    import dataclasses

    sec = {f.name: f for f in dataclasses.fields(cfg_cls)}.get(section)
    if sec is None:
        return False
    sub = sec.default_factory() if sec.default_factory is not dataclasses.MISSING else sec.default
    return any(f.name == name for f in dataclasses.fields(sub))


def _distill(method, seed, steps, lr, student, teacher, data_dir, run_dir, overrides=()) -> Path:
    from dopd_vlm.config import TrainConfig, load_config
    from dopd_vlm.train import train

    over = [f"table={method}", f"model.model_name_or_path={student}", f"model.teacher_model_name_or_path={teacher}",
            f"data.dataset_path={data_dir}", f"optim.seed={seed}", f"run.output_dir={run_dir}"]
    if _has_field(TrainConfig, "run", "overwrite"):  # a rerun of the demo replaces its own runs
        over.append("run.overwrite=true")
    if steps:
        over.append(f"optim.max_steps={steps}")
    if lr:
        over.append(f"optim.lr={lr}")
    cfg = load_config(TrainConfig, PRESET, [*overrides, *over])
    with _logged(Path(run_dir).parent / f"{Path(run_dir).name}.log"):
        return train(cfg)


class _logged:
    """Send what a library prints (progress bars, config echoes) to ``path`` instead of the
    terminal, unless --verbose: the terminal gets one line per phase."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self):
        import contextlib

        from dopd_vlm.console import verbose

        self._stack = contextlib.ExitStack()
        if not verbose():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = self._stack.enter_context(open(self.path, "a"))
            self._stack.enter_context(contextlib.redirect_stdout(fh))
            self._stack.enter_context(contextlib.redirect_stderr(fh))
        return self

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)


def _distill_job(job: tuple) -> str:
    """One distillation run in a worker process (one torch thread each; quiet like the parent)."""
    import torch

    from dopd_vlm.console import set_verbose

    torch.set_num_threads(1)
    set_verbose(False)
    _quiet()
    return str(_distill(*job))


def _exit_with_parent(parent_pid: int) -> None:
    """Worker initializer: leave when the demo process is gone (killed by a signal it cannot clean up
    after), instead of distilling on as an orphan."""
    import threading

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def distill_all(jobs: list[tuple], n_jobs: int) -> list[str]:
    """Run ``_distill(*job)`` for every job, ``n_jobs`` at a time in worker processes (1 = here)."""
    if n_jobs <= 1 or len(jobs) <= 1:
        return [str(_distill(*job)) for job in jobs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(n_jobs, len(jobs)), mp_context=mp.get_context("spawn"),
                             initializer=_exit_with_parent, initargs=(os.getpid(),)) as pool:
        return list(pool.map(_distill_job, jobs))


def tune_lr(out: Path, data_dir: Path, tasks_dir: Path, student: str, teacher: str, steps: int | None,
            methods: list[str], n_jobs: int = 1, overrides: tuple[str, ...] = ()) -> float:
    """The one shared learning rate: best mean val accuracy over ``methods`` (seed 0) among TUNE_LRS."""
    counts = group_counts(data_dir, "val", DATA["n_val"])
    scores: dict[str, dict[str, float]] = {}
    for lr in TUNE_LRS:
        with _timed(f"tune: distil {len(methods)} methods at lr {lr:g} (seed 0)"):
            ckpts = distill_all([(m, 0, steps, lr, student, teacher, data_dir, out / "tune" / f"lr{lr:g}" / m,
                                  overrides) for m in methods], n_jobs)
        with _timed(f"tune: evaluate the lr {lr:g} students on the val split ({DATA['n_val']} scenes)"):
            accs = _evaluate(ckpts, methods, "demo_scenes_val", tasks_dir, out / "tune" / f"lr{lr:g}" / "eval", counts)
        scores[f"{lr:g}"] = {m: a["accuracy"] for m, a in zip(methods, accs)}
        scores[f"{lr:g}"]["mean"] = statistics.mean(a["accuracy"] for a in accs)
    best = max(TUNE_LRS, key=lambda lr: scores[f"{lr:g}"]["mean"])
    (out / "report").mkdir(parents=True, exist_ok=True)
    (out / "report" / "tune.json").write_text(json.dumps({"candidates": list(TUNE_LRS), "split": "val",
                                                          "val_accuracy": scores, "chosen_lr": best}, indent=1))
    _say(f"shared lr chosen on val: {best:g} (" + ", ".join(f"lr {k}: mean {v['mean']:.3f}" for k, v in scores.items()) + ")")
    return best


def _preconditions(majority, t_plain, t_priv, s_warm, stats) -> tuple[list[str], dict]:
    over = t_plain["accuracy"] - majority["accuracy"]
    priv_gain = t_priv["accuracy"] - t_plain["accuracy"]
    below = t_plain["accuracy"] - s_warm["accuracy"]
    checks = {
        "1_capable_teacher": over >= PRECONDITION["teacher_over_majority"] and priv_gain > 0.05,
        "2_real_gap": below >= PRECONDITION["student_below_teacher"],
        "4_long_answers": stats["min_answer_tokens"] >= 2,
        "5_both_gaps": 0 < stats["privileged_only_share"] < 1,
    }

    def ok(b):
        return "PASS" if b else "FAIL"

    def fams(r):
        return ", ".join(f"{k[len('accuracy_'):]} {v:.2f}" for k, v in r.items() if k != "accuracy")

    lines = [
        f"majority-class level     {majority['accuracy']:.3f}  ({fams(majority)})",
        f"teacher, plain           {t_plain['accuracy']:.3f}  ({fams(t_plain)})",
        f"teacher + privileged     {t_priv['accuracy']:.3f}  ({fams(t_priv)})",
        f"student warm start       {s_warm['accuracy']:.3f}  ({fams(s_warm)})",
        f"1. capable teacher: plain {over:+.3f} over the majority level (need >= "
        f"{PRECONDITION['teacher_over_majority']}), privileged {priv_gain:+.3f} over plain  {ok(checks['1_capable_teacher'])}",
        f"2. real gap: student {below:.3f} below the plain teacher (need >= {PRECONDITION['student_below_teacher']})  "
        f"{ok(checks['2_real_gap'])}",
        f"4. answers: {stats['mean_answer_tokens']:.1f} content tokens on average ({stats['min_answer_tokens']}-"
        f"{stats['max_answer_tokens']})  {ok(checks['4_long_answers'])}",
        f"5. privilege: {100 * stats['privileged_only_share']:.0f} % of the questions are privileged-only (covered "
        f"object), the rest perceivable  {ok(checks['5_both_gaps'])}",
    ]
    return lines, checks


TIMINGS: dict[str, dict[str, float]] = {}


class _timed:
    """``console.phase`` (one line with the wall time) that also records wall and this process's
    CPU time per phase in ``TIMINGS`` (results.json): on a shared machine the CPU time is the
    number that does not depend on the other load."""

    def __init__(self, name: str):
        from dopd_vlm.console import phase

        self.name, self._phase = name, phase(name)

    def __enter__(self):
        self._w, self._c = time.perf_counter(), _cpu_s()
        return self._phase.__enter__()

    def __exit__(self, *exc):
        TIMINGS[self.name] = {"wall_s": time.perf_counter() - self._w, "cpu_s": _cpu_s() - self._c}
        return self._phase.__exit__(*exc)


def _cpu_s() -> float:
    """CPU seconds of this process and of its finished worker processes (--jobs)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ru.ru_utime + ru.ru_stime


def _quiet() -> None:
    """One line per phase: the trainers' progress bars (tqdm reads TQDM_DISABLE when a bar is
    made) and lmms-eval's debug log off, unless --verbose."""
    import sys

    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        from loguru import logger
    except ImportError:
        return
    logger.remove()
    logger.add(sys.stderr, level="WARNING")


def run(args) -> int:
    from dopd_vlm.console import verbose

    if not verbose():
        _quiet()
    from dopd_vlm.adapters import get_adapter
    from dopd_vlm.evaluate import make_task
    t0, c0 = time.perf_counter(), _cpu_s()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = args.seeds or (1 if args.quick else 3)
    steps = args.steps or (4 if args.quick else None)
    n_test = args.n_test or (60 if args.quick else DATA["n_test"])
    methods = _methods(args.methods)
    assets = Path(args.assets)
    if not args.jobs:  # one single-threaded run per core: the distillations are independent
        args.jobs = max(1, min(4, os.cpu_count() or 1))
    overrides = tuple(getattr(args, "overrides", None) or ())
    from dopd_vlm.config import TrainConfig, load_config

    preset = load_config(TrainConfig, PRESET, list(overrides))  # a bad --set fails here, before any work

    with _timed(f"data: {DATA['n_train']} train / {DATA['n_val']} val / {DATA['n_test']} test scenes"):
        data_dir = build_data(out / "data" / "scenes")
    if args.rebuild or not (assets / "teacher" / "config.json").exists():
        rebuild_warmstarts(data_dir, assets, out / "warmstart")
    teacher, student = str(assets / "teacher"), str(assets / "student")

    with _timed("lmms-eval tasks: test (student view), test with the privileged text, val"):
        tasks_dir = out / "tasks"
        make_task(data_dir, "demo_scenes", out=tasks_dir / "demo_scenes", split="test", limit=n_test,
                  family_key="eval_group", max_new_tokens=EVAL_MAX_NEW_TOKENS)
        make_task(data_dir, "demo_scenes_val", out=tasks_dir / "demo_scenes_val", split="val",
                  family_key="eval_group", max_new_tokens=EVAL_MAX_NEW_TOKENS)
        adapter = get_adapter(teacher)
        _, t_proc = adapter.load(teacher)
        priv_data = out / "data" / "scenes_priv"
        if not priv_data.exists():
            privileged_copy(data_dir, priv_data, KINDS, adapter, t_proc)
        make_task(priv_data, "demo_scenes_priv", out=tasks_dir / "demo_scenes_priv", split="test", limit=n_test,
                  family_key="eval_group", max_new_tokens=EVAL_MAX_NEW_TOKENS)
    counts = group_counts(data_dir, "test", n_test)

    with _timed("preconditions: teacher plain / + privileged text, student warm start (lmms-eval, test)"):
        majority = majority_level(data_dir, n_test)
        (t_plain, t_priv), (s_warm, s_priv) = _evaluate(
            [teacher, student], ["teacher", "student_warmstart"], ["demo_scenes", "demo_scenes_priv"], tasks_dir,
            out / "eval" / "base", counts)
        stats = answer_stats(data_dir, adapter.tokenizer(t_proc))
    pre_lines, checks = _preconditions(majority, t_plain, t_priv, s_warm, stats)
    preset_steps = preset.optim.max_steps
    print(f"\npreconditions (held-out test, n = {n_test}):\n  " + "\n  ".join(pre_lines) + "\n", flush=True)

    lr = tune_lr(out, data_dir, tasks_dir, student, teacher, steps or preset_steps, list(MAIN_METHODS),
                 args.jobs, overrides) if args.tune else None
    lr = lr or preset.optim.lr
    n_steps = steps or preset_steps

    runs: dict[str, list[Path]] = {m: [] for m in methods}
    ckpts: dict[str, list[str]] = {m: [] for m in methods}
    jobs = [(m, seed, n_steps, lr, student, teacher, data_dir, out / "runs" / f"{m}-seed{seed}", overrides)
            for m in methods for seed in range(seeds)]
    with _timed(f"distil: {len(methods)} methods x {seeds} seed(s) x {n_steps} steps, lr {lr:g}, "
                f"{max(1, args.jobs)} at a time"):
        for (method, *_, run_dir, _overrides), ckpt in zip(jobs, distill_all(jobs, args.jobs)):
            ckpts[method].append(ckpt)
            runs[method].append(run_dir)

    with _timed(f"evaluate {sum(len(v) for v in ckpts.values())} distilled students (lmms-eval, test)"):
        labels = [f"{m}-seed{s}" for m in methods for s in range(seeds)]
        accs = _evaluate([c for m in methods for c in ckpts[m]], labels, "demo_scenes", tasks_dir,
                         out / "eval" / "distilled", counts)
    scores = dict(zip(labels, accs))

    rows = [("majority-class level", [majority]), ("teacher + privileged text", [t_priv]),
            ("teacher (plain)", [t_plain]), ("student warm start + privileged text", [s_priv]),
            ("student (warm start)", [s_warm])]
    rows += [(m, [scores[f"{m}-seed{s}"] for s in range(seeds)]) for m in methods]
    table = acc_table(rows)
    diag = {m: run_diagnostics(runs[m]) for m in methods}

    # precondition 3: vanilla OPD improves the warm start beyond the seed spread
    check3 = None
    if "vanilla_opd" in methods:
        m, h = ci95([scores[f"vanilla_opd-seed{s}"]["accuracy"] for s in range(seeds)])
        gain = m - s_warm["accuracy"]
        check3 = bool(gain > 0 and (seeds > 1 and gain > h))
        pre_lines.append(f"3. distillation works: vanilla_opd {gain:+.3f} over the warm start "
                         f"(95 % half-width {h:.3f})  {'PASS' if check3 else 'FAIL'}")
        checks["3_distillation_works"] = check3

    report = out / "report"
    report.mkdir(exist_ok=True)
    plot_over_steps(runs, "student/entropy", report / "entropy.png", "student entropy (nats), mean over seeds")
    plot_over_steps(runs, "regime/", report / "regime_fractions.png", "DOPD token fraction per regime",
                    only=["dopd"])
    for method in methods:
        src = runs[method][0]
        if (src / "tokens.html").exists():
            shutil.copy(src / "tokens.html", report / f"tokens_{method}.html")
        if (src / "plots").exists():
            shutil.copytree(src / "plots", report / f"plots_{method}", dirs_exist_ok=True)
    wall, cpu = (time.perf_counter() - t0) / 60, (_cpu_s() - c0) / 60
    settings = {"steps": n_steps, "seeds": seeds, "lr": lr, "prompts_per_step": preset.optim.prompts_per_step,
                "num_generations": preset.rollout.num_generations, "max_new_tokens": preset.rollout.max_new_tokens,
                "preset": str(PRESET.name), "n_test": n_test, "methods": methods, "overrides": list(overrides),
                "lr_source": "--tune on the val split" if args.tune else "the preset (chosen on the val split)"}
    model_of = {"teacher + privileged text": teacher, "teacher (plain)": teacher, "student (warm start)": student,
                "student warm start + privileged text": student}
    results = {"task": "synthetic scenes, layout occluded (dopd_vlm.demo)", "metric": "exact match of the whole answer",
               "settings": settings, "majority_level": majority, "preconditions": checks,
               "answer_stats": stats, "rows": _rows_json(rows, model_of), "diagnostics": diag,
               "wall_min": wall, "process_cpu_min": cpu, "timings": TIMINGS}
    (report / "results.json").write_text(json.dumps(results, indent=1))
    diag_lines = ["| method | " + " | ".join(["entropy first → last", "gap A", "LH/LL/HT/HS frac",
                                                "LH/LL/HT/HS objective share"]) + " |", "|---|---|---|---|---|"]
    for m in methods:
        d = diag[m]
        fr = "/".join(f"{d[f'regime/{g}/frac']:.2f}" for g in ("LH", "LL", "HT", "HS") if f"regime/{g}/frac" in d) or "all tokens"
        sh = "/".join(f"{d[f'objective_share/{g}']:.2f}" for g in ("LH", "LL", "HT", "HS")
                      if f"objective_share/{g}" in d) or "-"
        diag_lines.append(f"| {m} | {d.get('entropy/first', float('nan')):.2f} → {d.get('entropy/last', float('nan')):.2f} | "
                          f"{d.get('gap/mean', float('nan')):.3f} | {fr} | {sh} |")
    text = (f"# dopd-vlm demo report\n\nHeld-out synthetic scenes (n = {n_test}; layout `occluded`), exact match of "
            f"the whole answer through lmms-eval. Every method: {n_steps} steps x {seeds} seed(s), "
            f"{settings['prompts_per_step']} prompts x G {settings['num_generations']} per step, lr {lr:g} "
            f"({settings['lr_source']})" + (f"; overrides for every method: {', '.join(overrides)}" if overrides else "") +
            ". Cells: mean ± 95 % interval half-width over seeds (Student t).\n\n"
            f"## Preconditions (measured before distillation)\n\n" + "\n".join(f"- {x}" for x in pre_lines) +
            f"\n\n## Results\n\n{table}\n\n`perceivable`: the visible objects give the answer; `privileged_only`: "
            f"the answer needs the covered object, which only the privileged text names.\n\n"
            f"## Training diagnostics (mean over seeds and steps)\n\n" + "\n".join(diag_lines) +
            f"\n\nPlots: `entropy.png` (student entropy per method), `regime_fractions.png` (DOPD), "
            f"`plots_<method>/`; token routing: `tokens_<method>.html`; numbers: `results.json`.\n\n"
            f"Wall time {wall:.1f} min (CPU time of the demo's processes {cpu:.1f} min; on a shared machine the wall time "
            f"grows with the other load).\n\n| phase | wall s | CPU s |\n|---|---|---|\n" +
            "".join(f"| {k} | {v['wall_s']:.0f} | {v['cpu_s']:.0f} |\n" for k, v in TIMINGS.items()))
    (report / "report.md").write_text(text)
    print("\n" + table + "\n", flush=True)
    if check3 is not None:
        print(pre_lines[-1], flush=True)
    _say(f"report written to {report / 'report.md'} ({wall:.1f} min wall, {cpu:.1f} min CPU)")
    return 0
