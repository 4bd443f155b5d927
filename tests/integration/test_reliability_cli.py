"""Reliability of the `dopd-vlm` entry points on bad arguments: a clear message naming the bad
path / key, a non-zero exit, and no run folder left behind by a run that never started."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dopd_vlm.adapters import AdapterError
from dopd_vlm.cli import main
from dopd_vlm.sources import SpecError

PRESET = Path(__file__).resolve().parents[2] / "dopd_vlm" / "presets" / "tiny_dopd.yaml"
KW = dict(min_pixels=84 * 84, max_pixels=84 * 84)


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_ckpt):
    from data_builders.synthetic import build_synthetic

    root = tmp_path_factory.mktemp("reliability_cli")
    build_synthetic(root / "scenes", n_train=4, n_test=2, seed=0, layout="grid", quiet=True)
    return {"student": tiny_ckpt("qwen2_5_vl", seed=1, **KW), "teacher": tiny_ckpt("qwen2_5_vl", seed=2, layers=3, **KW),
            "data": str(root / "scenes")}


def _train(shared, out, *extra):
    return main(["train", str(PRESET), f"model.model_name_or_path={shared['student']}",
                 f"model.teacher_model_name_or_path={shared['teacher']}", f"data.dataset_path={shared['data']}",
                 f"run.output_dir={out}", "prompts_per_step=2", "num_generations=2", "max_new_tokens=4",
                 "max_steps=1", "run.plots=false", *extra])


def _fails(capsys, run, exc, pattern: str) -> None:
    """The command either raises the project's ``exc`` naming the problem (today), or prints it and
    exits non-zero (once ``cli.main`` reports boundary errors itself: RELIABILITY.md)."""
    try:
        rc = run()
    except exc as e:
        assert re.search(pattern, str(e)), str(e)
        return
    assert rc not in (0, None)
    err = capsys.readouterr().err
    assert re.search(pattern, err), err


def test_train_with_missing_dataset_folder(shared, tmp_path, capsys):
    out = tmp_path / "run"
    _fails(capsys, lambda: _train(shared, out, "data.dataset_path=/nonexistent/ds"), SpecError,
           "dataset folder not found: /nonexistent/ds")
    assert not out.exists()


def test_train_with_a_folder_that_is_no_checkpoint(shared, tmp_path, capsys):
    out = tmp_path / "run"
    _fails(capsys, lambda: _train(shared, out, f"model.model_name_or_path={tmp_path}"), AdapterError,
           f"{tmp_path}: no config.json")
    assert not out.exists()


def test_train_with_a_missing_split(shared, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match=r"no split 'validation'; splits: \['train', 'test'\]"):
        _train(shared, out, "data.split=validation")
    assert not out.exists()


def test_train_resume_latest_without_checkpoint(shared, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match="resume_from=latest but no checkpoint in"):
        _train(shared, out, "run.resume_from=latest")


def test_train_with_a_folder_that_is_no_dataset(shared, tmp_path, capsys):
    out = tmp_path / "run"
    _fails(capsys, lambda: _train(shared, out, f"data.dataset_path={shared['student']}"), SpecError,
           re.escape(shared["student"]))


def test_train_with_a_hub_id_offline(shared, tmp_path, capsys):
    out = tmp_path / "run"
    _fails(capsys, lambda: _train(shared, out, "model.model_name_or_path=no-such-org/no-such-model"), AdapterError,
           "no-such-org/no-such-model.*offline")


def test_tiny_models_unknown_family_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as ei:
        main(["tiny-models", str(tmp_path / "m"), "--family", "llama9"])
    assert ei.value.code == 2 and "invalid choice: 'llama9'" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_eval_without_model_and_build_without_out(capsys):
    assert main(["eval"]) == 2
    assert "no checkpoint given" in capsys.readouterr().err
    assert main(["build", "llava"]) == 2
    assert "--out DIR is required" in capsys.readouterr().err
