"""`run.report_to` is wired, not only validated: train and sft write real tensorboard event files
whose scalars are the steps' metrics (tensorboard is a dev dependency so this runs in CI)."""

from __future__ import annotations

from pathlib import Path

import pytest

PRESET = Path(__file__).resolve().parents[2] / "dopd_vlm" / "presets" / "tiny_dopd.yaml"


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_ckpt):
    from data_builders.synthetic import build_synthetic

    root = tmp_path_factory.mktemp("trackers")
    build_synthetic(root / "scenes", n_train=8, n_test=2, seed=0, layout="grid", quiet=True)
    kw = dict(min_pixels=84 * 84, max_pixels=84 * 84)
    return {"student": tiny_ckpt("qwen2_5_vl", seed=1, **kw), "teacher": tiny_ckpt("qwen2_5_vl", seed=2, **kw),
            "data": str(root / "scenes")}


def _scalars(out: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(out.rglob("events.out.tfevents.*"))
    assert events, f"no tensorboard event file under {out}"
    tags: dict[str, list[int]] = {}
    for ev in events:
        acc = EventAccumulator(str(ev))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            tags.setdefault(tag, []).extend(e.step for e in acc.Scalars(tag))
    return tags


def test_sft_logs_to_tensorboard(shared, tmp_path):
    pytest.importorskip("tensorboard")
    from dopd_vlm.cli import main

    out = tmp_path / "sft"
    assert main(["sft", f"model.model_name_or_path={shared['student']}", f"data.dataset_path={shared['data']}",
                 f"run.output_dir={out}", "optim.max_steps=2", "optim.batch_size=2",
                 "run.report_to=[tensorboard]"]) == 0
    tags = _scalars(out)
    assert sorted(tags["loss"]) == [1, 2] and "first_token_acc" in tags


def test_train_logs_to_tensorboard(shared, tmp_path):
    pytest.importorskip("tensorboard")
    from dopd_vlm.cli import main

    out = tmp_path / "train"
    assert main(["train", str(PRESET), f"model.model_name_or_path={shared['student']}",
                 f"model.teacher_model_name_or_path={shared['teacher']}", f"data.dataset_path={shared['data']}",
                 f"run.output_dir={out}", "prompts_per_step=2", "num_generations=2", "max_new_tokens=4",
                 "optim.max_steps=2", "run.report_to=[tensorboard]", "run.plots=false"]) == 0
    tags = _scalars(out)
    assert sorted(tags["loss"]) == [1, 2]
