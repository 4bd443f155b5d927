"""`dopd-vlm export` round trips through the command line: build -> export -> build (import) again."""

from __future__ import annotations

import json

import numpy as np
import pytest
from datasets import load_from_disk

from dopd_vlm.cli import main

FORMATS = {  # format -> (importer builder, file the importer reads inside the export folder)
    "trl": ("trl", ""),
    "llava": ("llava", "data.json"),
    "llamafactory": ("llamafactory", "data.json"),
    "qwen_messages": ("qwen_messages", "messages.jsonl"),
}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "scenes"
    assert main(["build", "synthetic_scenes", "--out", str(out), "--limit", "5", "--n-test", "3",
                 "--privileged", "regions"]) == 0
    return out


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_round_trip_through_the_cli(fmt, scenes, tmp_path, capsys):
    out = tmp_path / fmt
    assert main(["export", str(scenes), "--format", fmt, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"dopd-vlm build {FORMATS[fmt][0]}" in printed  # tells how to read it back
    assert sorted(p.name for p in out.iterdir()) == ["test", "train"]  # one folder per split
    builder, file = FORMATS[fmt]
    source = out / "train" / file if file else out / "train"
    back = tmp_path / "back"
    args = ["build", builder, "--source", str(source), "--out", str(back)]
    if fmt != "trl":
        args += ["--image-root", str(out / "train")]
    assert main(args) == 0
    original = load_from_disk(str(scenes))["train"]
    again = load_from_disk(str(back))
    again = again[next(iter(again))] if hasattr(again, "keys") else again
    assert len(again) == len(original) == 5
    for a, b in zip(original, again):
        assert b["answer"] == a["answer"]
        assert a["question"] in b["question"]
        assert len(b["images"]) == len(a["images"]) == 1
        assert np.array_equal(_pixels(b["images"][0]), _pixels(a["images"][0]))  # PNG: lossless


def test_teacher_view_carries_the_privileged_context(scenes, tmp_path):
    out = tmp_path / "teacher"
    assert main(["export", str(scenes), "--format", "llava", "--split", "train", "--view", "teacher",
                 "--limit", "2", "--out", str(out)]) == 0
    rows = json.loads((out / "data.json").read_text())  # --split: no per-split folder
    original = load_from_disk(str(scenes))["train"]
    assert len(rows) == 2
    for row, rec in zip(rows, original):
        assert rec["privileged_context"] and rec["privileged_context"] in row["conversations"][0]["value"]
    student = tmp_path / "student"
    assert main(["export", str(scenes), "--format", "llava", "--split", "train", "--out", str(student)]) == 0
    assert original[0]["privileged_context"] not in json.loads((student / "data.json").read_text())[0][
        "conversations"][0]["value"]


def test_errors_are_one_line(scenes, tmp_path, capsys):
    out = tmp_path / "x"
    out.mkdir()
    assert main(["export", str(scenes), "--format", "trl", "--out", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), "--format", "trl", "--out", str(tmp_path / "y")]) == 2
    assert "no such dataset folder" in capsys.readouterr().err
    assert main(["export", str(scenes), "--format", "trl", "--split", "dev", "--out", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err
    assert "no split 'dev'" in err and "Traceback" not in err
    assert not (tmp_path / "z").exists() and not (tmp_path / "z.tmp-export").exists()
    with pytest.raises(SystemExit):  # argparse: an unknown format names the valid ones
        main(["export", str(scenes), "--format", "sharegpt", "--out", str(tmp_path / "w")])
    assert "invalid choice" in capsys.readouterr().err
