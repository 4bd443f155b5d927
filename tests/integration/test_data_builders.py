"""Every source builder on a tiny local fixture in that dataset's real schema."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from data_builders.records import validate_record
from data_builders.sources import SourceError, run_source_build
from dopd_vlm.privileged import contains_answer

_spec = importlib.util.spec_from_file_location(
    "source_fixtures", Path(__file__).parents[1] / "fixtures" / "data" / "source_fixtures.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)


def build(tmp_path, name, fixture, split=None, **kw):
    out = tmp_path / f"out_{name}"
    info = fixture(tmp_path / "src")
    dd = run_source_build(name, out=str(out), source=info["source"], split=split,
                          image_root=kw.pop("image_root", info["image_root"]), quiet=True, **kw)
    (split_name,) = list(dd)
    ds = dd[split_name]
    summary = json.loads((out / "build_summary.json").read_text())
    for rec in ds:
        validate_record(rec)
    return ds, summary


def skipped(summary) -> dict:
    return {s["index"]: s["reason"] for s in summary["splits"][0]["skipped_rows"]}


def test_scienceqa(tmp_path):
    ds, summary = build(tmp_path, "scienceqa", fx.write_scienceqa, split="train")
    assert len(ds) == 1
    r = ds[0]
    assert r["answer"] == "B" and r["choices"] == ["blue", "red", "green"]
    text = r["prompt"][0]["content"][-1]["text"]
    assert text.startswith("Context: Look at the picture.\nWhich color is shown?\nOptions: A. blue B. red C. green")
    assert r["privileged"]["lecture"] == "Colors are properties of light."
    assert r["privileged"]["hints"] == ["The picture is filled with one colour."]  # conclusion with "red" dropped
    assert r["privileged_context"] == "Hints: The picture is filled with one colour."
    assert r["meta"]["subject"] == "natural science" and r["images"][0].size == (32, 24)
    sk = skipped(summary)
    assert "no image" in sk[1] and "answer index 5" in sk[2]
    assert summary["source"]["revision"].startswith("sha256:")
    assert summary["splits"][0]["skip_reasons"] == {"no image": 1, "invalid answer": 1}


def test_aokvqa_mc_and_direct(tmp_path):
    ds, summary = build(tmp_path, "aokvqa", fx.write_aokvqa)
    assert len(ds) == 1 and ds[0]["answer"] == "grass" and ds[0]["choices"][1] == "grass"
    assert ds[0]["privileged"]["rationale"][0] == "Lawns are grass."
    assert not any(contains_answer(h, "grass") for h in ds[0]["privileged"]["hints"])
    assert "correct_choice_idx is null" in skipped(summary)[1]
    ds, _ = build(tmp_path / "direct", "aokvqa", fx.write_aokvqa, options={"mode": "direct"})
    assert ds[0]["answer"] == "grass" and ds[0]["choices"] is None
    assert ds[0]["meta"]["direct_answers"].count("turf") == 3


def test_caption_builders(tmp_path):
    ds, _ = build(tmp_path, "coco_caption", fx.write_coco_caption, split="val")
    r = ds[0]
    assert r["answer"] == "A red wall." and r["privileged"]["captions"] == ["A plain red surface.",
                                                                           "Red paint covers everything."]
    assert r["question"] in ("Describe the image.", "What is in the picture?", "Write a caption for the image.",
                             "Describe this picture in one sentence.")
    assert r["privileged_context"].startswith("Caption: A plain red surface.")
    ds, _ = build(tmp_path, "textcaps", fx.write_textcaps)
    assert ds[0]["answer"] == "A sign that says STOP." and ds[0]["privileged"]["captions"] == ["A blue sign."]
    ds, summary = build(tmp_path, "coco_karpathy", fx.write_coco_karpathy)
    assert len(ds) == 1 and ds[0]["meta"]["cocoid"] == 73 and ds[0]["images"][0].format == "JPEG"
    assert "image file not found" in skipped(summary)[1]
    ds, _ = build(tmp_path, "pixmo_cap", fx.write_pixmo_cap)
    assert ds[0]["answer"] == "A green field fills the frame." and len(ds[0]["privileged"]["captions"]) == 2
    ds, _ = build(tmp_path / "keep", "coco_caption", fx.write_coco_caption, split="val", options={"hold_out": False})
    assert ds[0]["answer"] is None and len(ds[0]["privileged"]["captions"]) == 3


def test_pixmo_without_image_root_fails_clearly(tmp_path):
    with pytest.raises(Exception, match="URLs cannot be fetched offline"):
        build(tmp_path, "pixmo_cap", fx.write_pixmo_cap, image_root=None, on_error="stop")


@pytest.mark.parametrize("with_image_path", [True, False])
def test_refcoco(tmp_path, with_image_path):
    ds, _ = build(tmp_path, "refcoco", lambda d: fx.write_refcoco(d, with_image_path))
    assert len(ds) == 2
    r = ds[0]
    assert r["question"] == 'Where is "the lady with the blue shirt" in the image? Answer with a box [x1, y1, x2, y2].'
    assert r["meta"]["answer_box"] == [10.5, 8.0, 30.5, 38.0]  # xywh -> xyxy
    assert r["answer"] == "[10, 8, 30, 38]"
    assert r["privileged"]["captions"] == ["lady in blue"]
    assert r["privileged"]["regions"] == [{"bbox": [10.5, 8.0, 30.5, 38.0], "label": "the lady with the blue shirt"}]
    assert r["id"].endswith("/train/0")


def test_refcoco_lmms_and_vg(tmp_path):
    ds, _ = build(tmp_path, "refcoco_lmms", fx.write_refcoco_lmms, split="val")
    assert ds[0]["meta"]["answer_box"] == [4.0, 6.0, 14.0, 18.0] and ds[0]["privileged"]["captions"] == ["dog on the left"]
    ds, _ = build(tmp_path, "vg_regions", fx.write_vg_regions)
    regs = ds[0]["privileged"]["regions"]
    # the region outside the 100x80 image is dropped, the others converted to xyxy
    assert regs == [{"bbox": [10.0, 5.0, 40.0, 25.0], "label": "a green patch"},
                    {"bbox": [0.0, 40.0, 40.0, 80.0], "label": "lower left"}]
    assert ds[0]["privileged_context"] == "Objects: a green patch [10, 5, 40, 25]; lower left [0, 40, 40, 80]."


def test_reasoning_builders(tmp_path):
    ds, summary = build(tmp_path, "virl39k", fx.write_virl39k)
    assert [r["answer"] for r in ds] == ["3", "\\text{first}"]
    two = ds[1]
    assert [p["type"] for p in two["prompt"][0]["content"]] == ["text", "image", "text", "image", "text"]
    assert len(two["images"]) == 2 and two["question"] == "Compare  with . Which is red?"
    assert "2 <image> tags but 1 images" in skipped(summary)[2]
    ds, _ = build(tmp_path, "geometry3k", fx.write_geometry3k)
    assert ds[0]["answer"] == "60" and [p["type"] for p in ds[0]["prompt"][0]["content"]] == ["image", "text"]
    ds, summary = build(tmp_path, "llava_cot", fx.write_llava_cot)
    r = ds[0]
    assert r["answer"] == "Red" and r["privileged"]["captions"] == ["A uniformly coloured image."]
    assert r["privileged"]["rationale"] == ["The whole image has one colour.", "That colour is red."]
    assert r["privileged"]["hints"] == ["The whole image has one colour."]
    assert "no <CONCLUSION>" in skipped(summary)[1]
    ds, summary = build(tmp_path, "r1_onevision", fx.write_r1_onevision)
    r = ds[0]
    assert r["answer"] == "5" and r["images"][0].size == (32, 24)
    assert r["privileged"]["hints"] == ["The image is blue. So I compute 2 + 3."]
    assert "invalid base64" in skipped(summary)[1]


def test_text_math_builders(tmp_path):
    ds, summary = build(tmp_path, "gsm8k", fx.write_gsm8k)
    r = ds[0]
    assert r["answer"] == "72" and r["images"] == [] and r["prompt"][0]["content"][0]["type"] == "text"
    # hints_exec (with execution): the last step states the answer: it is the conclusion and is dropped
    assert r["privileged"]["hints_exec"] == ["Natalia sold 48/2 = 24 clips in May."]
    # hints (without execution, issue 13): what to compute, never the computed results
    assert r["privileged"]["hints"] == ["Natalia sold 48/2 clips in May.",
                                        "Natalia sold 48+(48/2) clips altogether in April and May."]
    assert not contains_answer(r["privileged_context"], "72")
    assert "####" in skipped(summary)[1]
    ds, summary = build(tmp_path, "hendrycks_math", fx.write_hendrycks_math)
    assert [r["answer"] for r in ds] == ["1", "\\frac{x}{1}"]
    assert "no final answer" in skipped(summary)[2]
    ds, _ = build(tmp_path, "openr1_math", fx.write_openr1_math)
    assert ds[0]["answer"] == "4" and ds[0]["privileged"]["hints"] == ["Divide both sides by 2."]
    assert ds[0]["id"].endswith("/train/u-1")
    ds, summary = build(tmp_path, "dapo_math", fx.write_dapo_math)
    assert [r["question"] for r in ds] == ["What is $1+1$?", "What is $2+2$?"]  # whitespace duplicate removed
    assert skipped(summary)[2].startswith("duplicate of ")


def test_missing_columns_are_named(tmp_path):
    info = fx.write_gsm8k(tmp_path / "src")
    with pytest.raises(SourceError, match=r"lacks the column\(s\) \['problem', 'solution'\]"):
        run_source_build("hendrycks_math", out=str(tmp_path / "o"), source=info["source"], quiet=True)
    assert not (tmp_path / "o").exists()


def test_hub_offline_error_is_clear(tmp_path):
    with pytest.raises(SourceError, match="not reachable from here"):
        run_source_build("gsm8k", out=str(tmp_path / "o"), quiet=True)
    with pytest.raises(SourceError, match="local files only"):
        run_source_build("llava", out=str(tmp_path / "o"), quiet=True)


def test_on_error_stop_names_the_row(tmp_path):
    with pytest.raises(Exception, match=r"source row 1: .*####"):
        build(tmp_path, "gsm8k", fx.write_gsm8k, on_error="stop")
    assert not (tmp_path / "out_gsm8k").exists()


def test_malformed_rows_are_counted_skips(tmp_path):
    from datasets import Dataset

    src = tmp_path / "g.parquet"
    Dataset.from_list([{"question": "ok?", "answer": "1+1=2\n#### 2"}, {"question": "bad", "answer": None}]).to_parquet(str(src))
    run_source_build("gsm8k", out=str(tmp_path / "o"), source=str(src), quiet=True)
    s = json.loads((tmp_path / "o" / "build_summary.json").read_text())["splits"][0]
    assert s["kept"] == 1 and s["skip_reasons"] == {"malformed row": 1}
    assert s["skipped_rows"][0]["reason"].startswith("malformed row: TypeError")


def test_cli_source_build_options(tmp_path, capsys):
    from datasets import load_from_disk

    from dopd_vlm.cli import main

    info = fx.write_aokvqa(tmp_path / "src")
    out = tmp_path / "cli_out"
    rc = main(["build", "aokvqa", "--source", info["source"], "--out", str(out), "--option", "mode=direct",
               "--privileged", "rationale", "--limit", "1", "--leak-policy", "drop", "--jsonl"])
    assert rc == 1  # a build that keeps 0 rows fails, with its reasons (issue 13)
    captured = capsys.readouterr()
    assert "kept 0 rows (answer leak" in captured.err
    ds = load_from_disk(str(out))["train"]
    # the rationales name the answer "grass": dropped under --leak-policy drop
    assert len(ds) == 0
    s = json.loads((out / "build_summary.json").read_text())
    assert s["limit"] == 1 and s["privileged_kinds"] == ["rationale"] and s["splits"][0]["leak"]["dropped"] == 1
    assert "dropped 1" in captured.out
    # a typo in --privileged is one line naming the valid kinds, exit 2 (issue 18)
    assert main(["build", "aokvqa", "--source", info["source"], "--out", str(tmp_path / "x"), "--privileged", "boxs"]) == 2
    assert "unknown privileged kind 'boxs'; valid kinds: regions" in capsys.readouterr().err
    assert main(["build", "gsm8k", "--source", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")]) == 1
    assert "not reachable" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no work or temporary folders left


def test_clevr_v1_files(tmp_path):
    ds, summary = build(tmp_path, "clevr", fx.write_clevr_v1, split="val", kinds=["hints", "program"])
    assert [r["answer"] for r in ds] == ["2", "rubber"]
    r = ds[1]
    assert r["privileged"]["rationale"][-1] == "query_material: rubber."
    assert r["privileged"]["rationale"][3] == "relate[left]: large gray rubber sphere."
    assert r["privileged"]["regions"] == []  # CLEVR's own scenes have no boxes
    assert r["privileged"]["scene_graph"]["objects"][1] == {"id": 1, "color": "gray", "shape": "cube",
                                                            "material": "metal", "size": "small"}
    assert r["privileged_context"].startswith("Hints: Look at all objects.\nKeep the cylinders.")  # one step per line
    assert "Program: scene, filter_shape[cylinder], unique, relate[left], unique, query_material." in r["privileged_context"]
    # the third question's given answer contradicts its program on this scene
    assert "program answer mismatch: executed 'no', given 'yes'" in skipped(summary)[2]


def test_local_split_files(tmp_path):
    from datasets import Dataset

    d = tmp_path / "gsm" / "data"
    d.mkdir(parents=True)
    Dataset.from_list([{"question": "a?", "answer": "x\n#### 1"}]).to_parquet(str(d / "train-00000-of-00001.parquet"))
    Dataset.from_list([{"question": "b?", "answer": "y\n#### 2"}] * 2).to_parquet(str(d / "test-00000-of-00001.parquet"))
    ds = run_source_build("gsm8k", out=str(tmp_path / "t"), source=str(tmp_path / "gsm"), split="test", quiet=True)
    assert len(ds["test"]) == 2 and ds["test"][0]["answer"] == "2"
    with pytest.raises(SourceError, match="no files of split 'validation'"):
        run_source_build("gsm8k", out=str(tmp_path / "v"), source=str(tmp_path / "gsm"), split="validation", quiet=True)
