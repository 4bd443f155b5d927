"""Importers carry the privileged fields of a user's file (issue 13, point 7); `records` needs no choices;
a build that keeps 0 rows exits non-zero with its reasons."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from data_builders.sources import run_source_build

REGIONS = [{"bbox": [2, 3, 20, 30], "label": "red cube"}, {"box": [30, 4, 60, 40], "label": "blue ball"}]


@pytest.fixture()
def user_files(tmp_path):
    root = tmp_path / "u"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (64, 48), (200, 30, 30)).save(root / "images" / "a.png")
    priv = {"regions": REGIONS, "captions": "A red cube left of a blue ball.",
            "hints": "Look at the left object.\nName its colour.", "rationale": ["The left object is red."]}
    llava = [{"id": "r0", "image": "images/a.png",
              "conversations": [{"from": "human", "value": "<image>\nWhat colour is the left object?"},
                                {"from": "gpt", "value": "red"}], **priv}]
    (root / "llava.json").write_text(json.dumps(llava))
    lf = [{"messages": [{"role": "user", "content": "<image>What colour is the left object?"},
                        {"role": "assistant", "content": "red"}], "images": ["images/a.png"], "privileged": priv}]
    (root / "lf.json").write_text(json.dumps(lf))
    qm = [{"id": "q0", "answer": "red", "boxes": REGIONS, "caption": "A red cube.",
           "messages": [{"role": "user", "content": [{"type": "image", "image": "file://images/a.png"},
                                                     {"type": "text", "text": "What colour is the left object?"}]}]}]
    (root / "qm.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qm))
    trl = [{"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}],
            "completion": [{"role": "assistant", "content": [{"type": "text", "text": "red"}]}],
            "images": ["images/a.png"], "regions": REGIONS, "hints": ["Look left."]}]
    (root / "trl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in trl))
    return root


@pytest.mark.parametrize("builder,file,kinds", [
    ("llava", "llava.json", ["captions", "regions", "rationale", "hints"]),
    ("llamafactory", "lf.json", ["captions", "regions", "rationale", "hints"]),
    ("qwen_messages", "qm.jsonl", ["captions", "regions"]),
    ("trl", "trl.jsonl", ["regions", "hints"]),
])
def test_importers_keep_privileged_fields(user_files, tmp_path, builder, file, kinds):
    ds = run_source_build(builder, out=str(tmp_path / builder), source=str(user_files / file),
                          image_root=str(user_files), quiet=True)["train"]
    r = ds[0]
    assert [g["label"] for g in r["privileged"]["regions"]] == ["red cube", "blue ball"]
    assert r["privileged"]["regions"][1]["bbox"] == [30.0, 4.0, 60.0, 40.0]
    assert r["meta"]["privileged_kinds"] == kinds  # what the row carries is what is rendered
    assert "Objects: red cube [2, 3, 20, 30]; blue ball [30, 4, 60, 40]." in r["privileged_context"]
    if "hints" in kinds and builder != "trl":
        assert r["privileged"]["hints"] == ["Look at the left object.", "Name its colour."]
    summ = json.loads((tmp_path / builder / "build_summary.json").read_text())["splits"][0]
    assert summ["privileged_empty"]["empty_all"] == 0


def test_importer_box_format_and_invalid_boxes(user_files, tmp_path):
    rows = json.loads((user_files / "llava.json").read_text())
    rows[0]["regions"] = [{"bbox": [2, 3, 18, 27], "label": "red cube"}]  # COCO x, y, w, h
    rows.append({**rows[0], "id": "r1", "regions": [{"bbox": [2, 3, 200, 30], "label": "too wide"}]})
    (user_files / "coco.json").write_text(json.dumps(rows))
    out = tmp_path / "coco"
    ds = run_source_build("llava", out=str(out), source=str(user_files / "coco.json"), image_root=str(user_files),
                          options={"box_format": "xywh"}, quiet=True)["train"]
    assert len(ds) == 1 and ds[0]["privileged"]["regions"][0]["bbox"] == [2.0, 3.0, 20.0, 30.0]
    skipped = json.loads((out / "build_summary.json").read_text())["splits"][0]["skipped_rows"]
    assert "privileged.regions[0].bbox" in skipped[0]["reason"] and "outside the image" in skipped[0]["reason"]


def test_records_without_choices_prompt_or_source(user_files, tmp_path, capsys):
    from dopd_vlm.cli import main

    rows = [{"id": "m1", "question": "What colour is the cube?", "answer": "red", "images": ["images/a.png"],
             "privileged": {"regions": [REGIONS[0]]}},
            {"id": "m2", "question": "Is the ball blue?", "answer": "yes", "images": ["images/a.png"],
             "choices": ["yes", "no"], "privileged": {"captions": ["A blue ball."]},
             "meta": {"privileged_kinds": ["captions"]}}]
    (user_files / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = run_source_build("records", out=str(tmp_path / "rec"), source=str(user_files / "mine.jsonl"),
                          quiet=True)["train"]
    assert ds["id"] == ["m1", "m2"] and ds[0]["choices"] is None and ds[1]["choices"] == ["yes", "no"]
    assert ds[0]["privileged_context"].startswith("Objects: red cube") and ds[1]["privileged_context"] == "Caption: A blue ball."
    assert ds[0]["prompt"][0]["content"][0]["type"] == "image" and ds[0]["meta"]["image_size"] == [64, 48]
    # a build that keeps 0 rows: non-zero exit with the reasons
    (user_files / "bad.jsonl").write_text(json.dumps({"id": "b1", "question": "Q?", "images": ["images/missing.png"]})
                                          + "\n")
    rc = main(["build", "records", "--source", str(user_files / "bad.jsonl"), "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert rc == 1 and "kept 0 rows" in err and "cannot be trained on" in err


def test_build_help_documents_the_records_schema():
    from dopd_vlm.cli import build_parser

    parser = build_parser(only="build")
    sub = next(a for a in parser._actions if a.dest == "command").choices["build"]
    text = sub.format_help()
    assert "records schema" in text and "choices" in text and "optional" in text
