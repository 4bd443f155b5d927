"""`dopd-vlm build synthetic_scenes` and `build_synthetic`: offline, fast, atomic, complete records."""

from __future__ import annotations

import json
import time

import pytest
from datasets import load_from_disk

from data_builders.records import validate_record
from data_builders.synthetic import build_synthetic
from dopd_vlm.cli import main
from dopd_vlm.privileged import contains_answer


def test_build_synthetic_api(tmp_path):
    t0 = time.perf_counter()
    dd = build_synthetic(tmp_path / "scenes", n_train=1000, n_test=100, seed=0, layout="grid",
                         privileged_kinds=["regions"], quiet=True)
    elapsed = time.perf_counter() - t0
    assert elapsed < 30, elapsed  # "1000 grid scenes in seconds" (generous bound for a loaded CI box)
    assert {k: len(v) for k, v in dd.items()} == {"train": 1000, "test": 100}
    rec = dd["train"][0]
    validate_record(rec)
    assert rec["images"][0].size == (84, 84)
    assert rec["privileged_context"].startswith("Objects: ")
    assert rec["meta"]["image_size"] == [84, 84] and rec["source"]["revision"] == "seed=0"
    # no test item repeats a train item (same image objects and question)
    train = {(json.dumps(r["privileged"]["regions"]), r["question"]) for r in dd["train"].select_columns(["privileged", "question"])}
    test = {(json.dumps(r["privileged"]["regions"]), r["question"]) for r in dd["test"].select_columns(["privileged", "question"])}
    assert not train & test
    summary = json.loads((tmp_path / "scenes" / "build_summary.json").read_text())
    assert summary["splits"][0]["kept"] == 1000 and summary["privileged_kinds"] == ["regions"]
    assert (tmp_path / "scenes" / "clevr" / "questions" / "CLEVR_train_questions.json").is_file()
    # deterministic: a second build is identical
    dd2 = build_synthetic(tmp_path / "again", n_train=20, n_test=0, seed=0, privileged_kinds=["regions"], quiet=True)
    assert dd2["train"]["privileged_context"] == dd["train"]["privileged_context"][:20]
    assert dd2["train"]["question"] == dd["train"]["question"][:20]


@pytest.mark.parametrize("kinds,needle", [
    (["captions"], "Caption: "), (["regions"], "Objects: "), (["boxes", "captions"], "Boxes: "),
    (["scene_graph"], "Scene: "), (["program"], "Program: scene"), (["trace"], "Steps: scene: "),
    (["hints"], "Hints: Look at all objects."), (["answer"], "Answer: "),
])
def test_every_privileged_variant(tmp_path, kinds, needle):
    dd = build_synthetic(tmp_path / "v", n_train=30, n_test=0, seed=1, layout="free", privileged_kinds=kinds,
                         quiet=True)
    ctxs = dd["train"]["privileged_context"]
    assert all(c.startswith(needle) for c in ctxs)
    answers = dd["train"]["answer"]
    if kinds == ["answer"]:
        assert all(contains_answer(c, a) for c, a in zip(ctxs, answers))
    if kinds == ["hints"]:  # hints are step-wise and never state the answer
        assert not any(contains_answer(c.removeprefix("Hints: "), a) for c, a in zip(ctxs, answers))


def test_leak_policies(tmp_path):
    with pytest.raises(ValueError, match="final answer"):
        build_synthetic(tmp_path / "e", n_train=10, n_test=0, privileged_kinds=["answer"], leak_policy="error",
                        quiet=True)
    assert not (tmp_path / "e").exists()  # never a half dataset
    dd = build_synthetic(tmp_path / "d", n_train=40, n_test=0, privileged_kinds=["answer"], leak_policy="drop",
                         quiet=True)
    assert len(dd["train"]) == 0 and dd["train"].column_names[0] == "id"
    s = json.loads((tmp_path / "d" / "build_summary.json").read_text())["splits"][0]
    assert s["leak"]["dropped"] == 40 and s["kept"] == 0


def test_cli_build_synthetic(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["build", "synthetic_scenes", "--out", str(out), "--split", "test", "--limit", "25", "--seed", "3",
               "--privileged", "boxes,caption", "--layout", "free", "--parquet", "--jsonl"])
    assert rc == 0
    dd = load_from_disk(str(out))
    assert list(dd) == ["test"] and len(dd["test"]) == 25
    assert dd["test"][0]["images"][0].size == (224, 224)
    assert (out / "parquet" / "test.parquet").is_file()
    lines = (out / "jsonl" / "test.jsonl").read_text().splitlines()
    assert len(lines) == 25 and (out / "jsonl" / json.loads(lines[0])["images"][0]).is_file()
    assert "kept 25" in capsys.readouterr().out
    # an existing output is not replaced without --overwrite
    with pytest.raises(FileExistsError, match="--overwrite"):
        main(["build", "synthetic_scenes", "--out", str(out), "--limit", "5"])
    assert len(load_from_disk(str(out))["test"]) == 25
    assert main(["build", "synthetic_scenes", "--out", str(out), "--limit", "5", "--overwrite"]) == 0
    assert {k: len(v) for k, v in load_from_disk(str(out)).items()} == {"train": 5, "test": 5}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_build_synthetic_occluded_with_val_split(tmp_path):
    """The demo's build: train / val / test, the slot-list privileged text, gap tags on every row."""
    from data_builders.scenes import DEMO_FAMILIES

    dd = build_synthetic(tmp_path / "occ", n_train=60, n_val=20, n_test=20, seed=0, layout="occluded",
                         families=DEMO_FAMILIES, privileged_kinds=["captions"], caption_style="slots", quiet=True)
    assert {k: len(v) for k, v in dd.items()} == {"train": 60, "val": 20, "test": 20}
    for split in dd:
        for rec in dd[split]:
            validate_record(rec)
            assert rec["privileged_context"].startswith("Caption: ")
            assert len(rec["privileged_context"].removeprefix("Caption: ").split(", ")) == 9
            assert rec["meta"]["gap"] in ("perceivable", "privileged_only")
            assert rec["meta"]["eval_group"] == f"{rec['meta']['question_family']}/{rec['meta']['gap']}"
    # the val split is its own stream: no scene+question equal to a train one
    train = {(r["privileged_context"], r["question"]) for r in dd["train"].select_columns(["privileged_context", "question"])}
    val = {(r["privileged_context"], r["question"]) for r in dd["val"].select_columns(["privileged_context", "question"])}
    assert not train & val and val != {(r["privileged_context"], r["question"]) for r in dd["test"]}
