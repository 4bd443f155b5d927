"""What a new user meets first: quiet output, one-line errors, the start-up summary, the launch
check, trackers checked at start, readable plots, and a README that points at docs/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dopd_vlm import console
from dopd_vlm.cli import main

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "dopd_vlm" / "presets" / "tiny_dopd.yaml"
BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
for _name in ("TQDM_DISABLE", "TRANSFORMERS_VERBOSITY", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
    ENV.pop(_name, None)  # what set_verbose in this test process may have set


def _cli(*args, cwd=None, timeout=300):
    return subprocess.run([str(BIN / "dopd-vlm"), *args], capture_output=True, text=True, env=ENV, cwd=cwd,
                          timeout=timeout)


# ------------------------------------------------------------------------------ quiet by default
def test_verbose_flag_sets_console_mode(capsys):
    assert main(["--verbose", "build", "--list"]) == 0
    assert console.verbose() is True
    assert main(["build", "--list"]) == 0
    assert console.verbose() is False
    assert "synthetic_scenes" in capsys.readouterr().out


def test_progress_bars_only_with_verbose(tmp_path):
    quiet = _cli("build", "synthetic_scenes", "--out", str(tmp_path / "q"), "--limit", "3", "--n-test", "2")
    assert quiet.returncode == 0, quiet.stderr
    assert "it/s" not in quiet.stderr and "%|" not in quiet.stderr, quiet.stderr
    loud = _cli("--verbose", "build", "synthetic_scenes", "--out", str(tmp_path / "v"), "--limit", "3", "--n-test", "2")
    assert loud.returncode == 0, loud.stderr
    assert "%|" in loud.stderr  # the same build shows its bars when asked


def test_main_help_points_at_the_docs():
    out = _cli("--help").stdout
    assert "--verbose" in out and "docs/method.md" in out and "docs/config.md" in out
    for name in ("method.md", "data.md", "config.md", "gpu.md"):
        assert (ROOT / "docs" / name).is_file()


# ------------------------------------------------------------------------------ one-line errors
def test_privileged_typo_is_one_line_naming_the_valid_kinds(tmp_path):
    r = _cli("build", "synthetic_scenes", "--out", str(tmp_path / "s"), "--limit", "2", "--privileged", "regons")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "'regons'" in lines[0] and "regions" in lines[0] and "captions" in lines[0]


def test_missing_tracker_is_an_error_at_start(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(console.TRACKER_PACKAGES, "tensorboard", ("no_such_tracker_package_dopd",))
    out = tmp_path / "run"
    code = main(["train", str(PRESET), f"run.output_dir={out}", "run.report_to=[tensorboard]"])
    err = capsys.readouterr().err
    assert code == 2
    assert "run.report_to: 'tensorboard' is not installed" in err and "Traceback" not in err
    assert not (out / "models").exists()  # refused before any model was built


def test_installed_and_unknown_trackers():
    console.check_trackers([])
    with pytest.raises(ValueError, match="unknown tracker 'mlflow'"):
        console.check_trackers(["mlflow"])


def test_yaml_no_for_a_string_key_works_from_the_shell():
    from dopd_vlm.config import TrainConfig, load_config

    assert load_config(TrainConfig, PRESET, ["run.mixed_precision=no"]).run.mixed_precision == "no"


def test_bool_key_refuses_yes_from_the_shell(capsys):
    assert main(["train", str(PRESET), "model.trust_remote_code=yes"]) == 2
    err = capsys.readouterr().err
    assert "model.trust_remote_code: expected true/false, got 'yes'" in err


# ------------------------------------------------------------------------------ start-up summary
def test_startup_summary_single_process():
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    kwargs = dict(records=12, dataset="data/x", table="dopd", policies={"teacher_priv", "student_plain", "student_priv"},
                  extra={"steps": "3 x 4 prompts x 2 rollouts"})
    text = console.startup_summary(acc, "train (dopd)", compact=False, **kwargs)
    assert "processes        1 (single process): cpu (rank 0)" in text
    assert "records          12 from data/x" in text
    assert "policies scored  student_plain, student_priv, teacher_priv" in text
    assert "warning" not in text
    line = console.startup_summary(acc, "train (dopd)", compact=True, **kwargs)  # quiet mode: one line
    assert "\n" not in line
    assert line.startswith("dopd-vlm train (dopd): processes 1 (single process): cpu (rank 0) · records 12")
    assert "policies scored student_plain, student_priv, teacher_priv · steps 3 x 4 prompts x 2 rollouts" in line


def test_launch_mismatch_reads_the_launcher_command():
    warn = console.launch_mismatch(1, ["/venv/bin/python", "/venv/bin/accelerate", "launch", "--cpu",
                                       "--num_processes", "2", "-m", "dopd_vlm.train", "p.yaml"])
    assert "asked for 2 processes but this run has 1" in warn and "--multi_gpu --num_processes 2" in warn
    assert "--cpu` always runs one process" in warn
    assert console.launch_mismatch(1, ["/venv/bin/accelerate", "launch", "--num-processes=3", "x.py"]).startswith(
        "warning: the launcher was asked for 3")
    assert console.launch_mismatch(2, ["/venv/bin/accelerate", "launch", "--multi_gpu", "--num_processes", "2"]) == ""
    assert console.launch_mismatch(1, ["bash", "-c", "python x.py"]) == ""


def test_launch_mismatch_reads_an_accelerate_config_file(tmp_path):
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text("distributed_type: MULTI_GPU\nnum_processes: 8\n")
    warn = console.launch_mismatch(1, ["accelerate", "launch", "--config_file", str(cfg), "-m", "dopd_vlm.train"])
    assert "asked for 8 processes" in warn


SUMMARY_SCRIPT = """
import os
from accelerate import Accelerator
from dopd_vlm.train import make_accelerator
from dopd_vlm import console
acc = make_accelerator()
console.startup_summary(acc, "probe", records=7, table="dopd", policies=["student_plain"])
acc.wait_for_everyone()
"""


@pytest.mark.parametrize("launch, expect", [
    (["--cpu", "--num_processes", "2"], ["1 (single process)", "warning: the launcher was asked for 2 processes"]),
    (["--multi_gpu", "--num_processes", "2"], ["2 (MULTI_CPU)", "ranks 0, 1"]),
])
def test_real_accelerate_launches_on_cpu(tmp_path, launch, expect):
    """What `accelerate launch` really does on a CPU (accelerate 1.15): `--cpu` starts one process,
    `--multi_gpu` starts two that run DDP over gloo; the summary and the warning say so."""
    script = tmp_path / "probe.py"
    script.write_text(SUMMARY_SCRIPT)
    r = subprocess.run([str(BIN / "accelerate"), "launch", *launch, "--num_machines", "1", "--mixed_precision", "no",
                        "--dynamo_backend", "no", str(script)], capture_output=True, text=True, env=ENV, timeout=300,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    for e in expect:
        assert e in r.stderr, r.stderr[-2000:]
    assert r.stderr.count("dopd-vlm probe") == 1  # printed once, by the main process


# ------------------------------------------------------------------------------ plots
def _metrics(run: Path) -> None:
    rows = [{"step": s, "loss": 1.0 / s, "regime/HT/frac": 0.2, "regime/LH/frac": 0.8, "gap/mean": 0.3}
            for s in (1, 2, 3)]
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_plot_titles_name_run_and_table(tmp_path):
    from PIL import Image

    from dopd_vlm.config import TrainConfig, apply_overrides, save_config
    from dopd_vlm.reporting import plot_metrics

    run = tmp_path / "my_gkd_run"
    _metrics(run)
    save_config(apply_overrides(TrainConfig(), ["table=gkd"]), run / "config.yaml")
    written = plot_metrics(run / "metrics.jsonl", run / "plots")
    assert written
    for png in written:
        title = Image.open(png).text["Title"]
        assert "my_gkd_run" in title and "table gkd" in title, title


def test_plot_step_ticks_are_integers():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dopd_vlm.reporting import metric_figure

    rows = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)]
    fig = metric_figure(rows, "loss — run", ["loss"])
    ticks = [t for t in fig.axes[0].get_xticks() if 1 <= t <= 3]
    plt.close(fig)
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    # without the integer locator matplotlib puts ticks at 1.25, 1.5, ... for three steps
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [1, 0.5, 0.3])
    fig.canvas.draw()
    assert any(not float(t).is_integer() for t in ax.get_xticks())
    plt.close(fig)


# ------------------------------------------------------------------------------ README
def test_readme_points_at_docs_and_a_working_cpu_multiprocess_command():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in ("docs/method.md", "docs/data.md", "docs/config.md", "docs/gpu.md"):
        assert name in text
    assert "accelerate launch --multi_gpu --num_processes 2" in text
