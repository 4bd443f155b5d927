"""Exporters and importers round-trip; CLEVR files re-import; contamination guard; CLI options."""

from __future__ import annotations

import io
import json

import pytest
from datasets import load_from_disk

from data_builders import exporters as E
from data_builders.build import eval_image_hashes, image_content_hash
from data_builders.sources import run_source_build
from data_builders.synthetic import build_synthetic
from dopd_vlm.cli import main


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes") / "ds"
    return build_synthetic(out, n_train=12, n_test=6, seed=11, layout="grid", privileged_kinds=["regions"],
                           quiet=True), out


def _pixels(im):
    return im.convert("RGB").tobytes(), im.size


def _prompt_text(rec):
    return "".join(p["text"] for p in rec["prompt"][-1]["content"] if p["type"] == "text")


def _same_pairs(original, imported):
    assert len(original) == len(imported)
    for a, b in zip(original, imported):
        assert _prompt_text(b) == _prompt_text(a)
        assert b["answer"] == a["answer"]
        assert [_pixels(i) for i in b["images"]] == [_pixels(i) for i in a["images"]]
        assert [p["type"] for p in b["prompt"][-1]["content"]] == [p["type"] for p in a["prompt"][-1]["content"]]


def test_llava_round_trip(tmp_path, scenes):
    dd, _ = scenes
    path = E.export_llava(dd["train"], tmp_path / "llava")
    rows = json.loads(path.read_text())
    assert rows[0]["conversations"][0]["value"].startswith("<image>\n") and rows[0]["image"].startswith("images/")
    back = run_source_build("llava", out=str(tmp_path / "imp"), source=str(path), image_root=str(tmp_path / "llava"),
                            quiet=True)["train"]
    _same_pairs(dd["train"], back)
    # export again: identical JSON (ids aside, which carry the import path)
    again = json.loads(E.export_llava(back, tmp_path / "llava2").read_text())
    assert [r["conversations"] for r in again] == [r["conversations"] for r in rows]


def test_llamafactory_round_trip(tmp_path, scenes):
    dd, _ = scenes
    path = E.export_llamafactory(dd["train"], tmp_path / "lf", view="teacher")
    rows = json.loads(path.read_text())
    info = json.loads((tmp_path / "lf" / "dataset_info.json").read_text())
    assert info["dopd_vlm"]["formatting"] == "sharegpt" and info["dopd_vlm"]["columns"]["images"] == "images"
    assert rows[0]["messages"][0]["content"].count("<image>") == len(rows[0]["images"]) == 1
    assert "Objects: " in rows[0]["messages"][0]["content"]  # the teacher view carries the privileged text
    back = run_source_build("llamafactory", out=str(tmp_path / "imp"), source=str(path),
                            image_root=str(tmp_path / "lf"), quiet=True)["train"]
    for a, b in zip(dd["train"], back):
        assert _prompt_text(b) == _prompt_text(a) + "\n" + a["privileged_context"]
        assert b["answer"] == a["answer"]
    # a row whose <image> tags do not match its images is a counted, explained skip
    rows[0]["images"] = []
    path.write_text(json.dumps(rows))
    run_source_build("llamafactory", out=str(tmp_path / "imp2"), source=str(path), image_root=str(tmp_path / "lf"),
                     quiet=True)
    summ = json.loads((tmp_path / "imp2" / "build_summary.json").read_text())["splits"][0]
    assert summ["skipped_rows"][0]["reason"].endswith("1 <image> tags in the messages but 0 images")


def test_trl_round_trip(tmp_path, scenes):
    dd, _ = scenes
    E.export_trl(dd["test"], tmp_path / "trl")
    trl = load_from_disk(str(tmp_path / "trl"))
    row = trl[0]
    assert row["prompt"][0]["content"][0]["type"] == "image"
    assert row["completion"] == [{"role": "assistant", "content": [{"type": "text", "text": dd["test"][0]["answer"]}]}]
    back = run_source_build("trl", out=str(tmp_path / "imp"), source=str(tmp_path / "trl"), split="train",
                            quiet=True)["train"]
    _same_pairs(dd["test"], back)
    # TRL's conversational "messages" form of the same rows
    msgs = trl.map(lambda r: {"messages": r["prompt"] + r["completion"]}, remove_columns=["prompt", "completion"])
    msgs.save_to_disk(str(tmp_path / "trl_msgs"))
    back = run_source_build("trl_messages", out=str(tmp_path / "imp2"), source=str(tmp_path / "trl_msgs"),
                            split="train", quiet=True)["train"]
    _same_pairs(dd["test"], back)


def test_qwen_messages_for_process_vision_info(tmp_path, scenes):
    from qwen_vl_utils import process_vision_info

    dd, _ = scenes
    rec = dd["train"][0]
    msgs = E.to_qwen_messages(rec, view="teacher")
    assert msgs[0]["content"][-1]["text"] == "\n" + rec["privileged_context"]
    images, videos = process_vision_info(msgs)
    assert videos is None and len(images) == 1
    # qwen-vl-utils resizes to multiples of 28: the 84x84 grid image passes unchanged
    assert _pixels(images[0]) == _pixels(rec["images"][0])
    path = E.export_qwen_messages(dd["train"], tmp_path / "qwen")
    line = json.loads(path.read_text().splitlines()[0])
    images, _ = process_vision_info(line["messages"])
    assert _pixels(images[0]) == _pixels(rec["images"][0])
    back = run_source_build("qwen_messages", out=str(tmp_path / "imp"), source=str(path),
                            image_root=str(tmp_path / "qwen"), quiet=True)["train"]
    _same_pairs(dd["train"], back)


def test_records_jsonl_round_trip(tmp_path, scenes):
    dd, _ = scenes
    E.write_records_jsonl(dd["train"], tmp_path / "j", "train")
    back = run_source_build("records", out=str(tmp_path / "imp"), source=str(tmp_path / "j" / "train.jsonl"),
                            quiet=True)["train"]  # no --privileged: each record keeps its own kinds
    for a, b in zip(dd["train"], back):
        assert b["id"] == a["id"] and b["privileged"] == a["privileged"] and b["prompt"] == a["prompt"]
        assert b["privileged_context"] == a["privileged_context"]
        assert _pixels(b["images"][0]) == _pixels(a["images"][0])


def test_clevr_files_reimport_with_executed_traces(tmp_path, scenes):
    dd, out = scenes
    back = run_source_build("clevr", out=str(tmp_path / "clevr"), source=str(out / "clevr"), split="train",
                            kinds=["regions", "program"], quiet=True)["train"]
    assert len(back) == len(dd["train"])
    for a, b in zip(dd["train"], back):
        assert b["question"] == a["question"] and b["answer"] == a["answer"]
        assert b["privileged"]["regions"] == a["privileged"]["regions"]
        assert b["privileged"]["rationale"] == a["privileged"]["rationale"]  # re-executed from the JSON files
        assert b["privileged"]["hints"] == a["privileged"]["hints"]
        assert _pixels(b["images"][0]) == _pixels(a["images"][0])
    # a tampered answer is caught by re-executing the program
    qpath = out / "clevr" / "questions" / "CLEVR_train_questions.json"
    q = json.loads(qpath.read_text())
    q["questions"][0]["answer"] = "purple"
    (tmp_path / "bad" / "questions").mkdir(parents=True)
    (tmp_path / "bad" / "questions" / "CLEVR_train_questions.json").write_text(json.dumps(q))
    (tmp_path / "bad" / "scenes").symlink_to(out / "clevr" / "scenes")
    (tmp_path / "bad" / "images").symlink_to(out / "clevr" / "images")
    run_source_build("clevr", out=str(tmp_path / "bad_out"), source=str(tmp_path / "bad"), split="train",
                     image_root=str(out / "clevr" / "images" / "train"), quiet=True)
    s = json.loads((tmp_path / "bad_out" / "build_summary.json").read_text())["splits"][0]
    assert s["kept"] == len(dd["train"]) - 1 and "program answer mismatch" in s["skipped_rows"][0]["reason"]


def test_contamination_guard(tmp_path, scenes):
    from PIL import Image

    dd, out = scenes
    # The eval set: two train images saved as files in another format (BMP): same pixels, other bytes.
    ev = tmp_path / "eval"
    ev.mkdir()
    for k in (0, 3):
        dd["train"][k]["images"][0].save(ev / f"{k}.bmp")
    hashes = eval_image_hashes(ev)
    assert hashes == {image_content_hash(dd["train"][k]["images"][0]) for k in (0, 3)}
    E.write_records_jsonl(dd["train"], tmp_path / "j", "train")
    rc = main(["build", "records", "--source", str(tmp_path / "j" / "train.jsonl"), "--out", str(tmp_path / "clean"),
               "--exclude-images", str(ev), "--parquet"])
    assert rc == 0
    clean = load_from_disk(str(tmp_path / "clean"))["train"]
    assert len(clean) == len(dd["train"]) - 2
    kept_ids = set(clean["id"])
    assert dd["train"][0]["id"] not in kept_ids and dd["train"][3]["id"] not in kept_ids
    s = json.loads((tmp_path / "clean" / "build_summary.json").read_text())
    assert s["splits"][0]["contamination_dropped"] == 2 and (tmp_path / "clean" / "parquet" / "train.parquet").is_file()
    # an eval set given as a datasets folder works too (the synthetic test split vs itself)
    assert len(eval_image_hashes(out)) >= len(dd["train"])
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    assert image_content_hash(buf.getvalue()) == image_content_hash(Image.new("RGB", (4, 4)))


def test_num_proc_gives_the_same_records(tmp_path, scenes):
    dd, _ = scenes
    E.write_records_jsonl(dd["train"], tmp_path / "j", "train")
    src = str(tmp_path / "j" / "train.jsonl")
    one = run_source_build("records", out=str(tmp_path / "a"), source=src, kinds=["captions"], quiet=True)["train"]
    two = run_source_build("records", out=str(tmp_path / "b"), source=src, kinds=["captions"], num_proc=2,
                           quiet=True)["train"]
    assert one["id"] == two["id"] and one["privileged_context"] == two["privileged_context"]
