"""The record schema: validation errors name the record and the field; images and boxes resolve safely."""

from __future__ import annotations

import base64
import copy
import io
import os

import pytest
from PIL import Image

from data_builders.records import (
    RecordError,
    build_prompt,
    canonical_box,
    make_record,
    resolve_image,
    validate_record,
)


def _png(size=(8, 6), color="red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _record(**kw):
    img, size = resolve_image(_png((40, 30)))
    base = dict(id="ds/cfg/train/1", source={"dataset": "ds", "config": "cfg", "split": "train", "revision": None},
                images=[img], image_size=size, question="What color is it?", answer="red",
                privileged={"regions": [{"bbox": [1.0, 2.0, 10.0, 20.0], "label": "red square"}]})
    base.update(kw)
    return make_record(**base)


def test_valid_record_passes():
    rec = _record(choices=["red", "blue"], answer="A")
    assert validate_record(rec) is rec
    text = rec["prompt"][0]["content"][-1]["text"]
    assert text.splitlines() == ["What color is it?", "Options: A. red B. blue",
                                 "Answer with the letter of the correct option."]


@pytest.mark.parametrize("mutate,field,msg", [
    (lambda r: r.update(id=""), "id", "non-empty"),
    (lambda r: r.pop("meta"), "meta", "missing"),
    (lambda r: r.update(extra=1), "extra", "unknown field"),
    (lambda r: r["source"].update(split=3), "source.split", "non-empty string"),
    (lambda r: r.update(images=[]), "images", "0 images but 1 image parts"),
    (lambda r: r["prompt"][0].update(role="robot"), "prompt[0]", "role"),
    (lambda r: r["prompt"][0]["content"].append({"type": "video"}), "prompt[0].content[2]", "part type"),
    (lambda r: r.update(question="  "), "question", "non-empty"),
    (lambda r: r.update(choices=["only one"]), "choices", "2-26"),
    (lambda r: r.update(answer=3), "answer", "string"),
    (lambda r: r["meta"].update(image_size=[40]), "meta.image_size", "[w, h]"),
    (lambda r: r["privileged"].update(secret="x"), "privileged.secret", "unknown privileged"),
    (lambda r: r["privileged"].update(hints="one hint"), "privileged.hints", "list of strings"),
    (lambda r: r["privileged"]["regions"][0].update(bbox=[-3, 0, 5, 5]), "privileged.regions[0].bbox", "negative"),
    (lambda r: r["privileged"]["regions"][0].update(bbox=[0, 0, 50, 5]), "privileged.regions[0].bbox", "outside"),
    (lambda r: r["privileged"]["regions"][0].update(bbox=[5, 5, 5, 9]), "privileged.regions[0].bbox", "degenerate"),
    (lambda r: r["privileged"]["regions"][0].update(label=7), "privileged.regions[0].label", "string"),
    (lambda r: r["privileged"].update(program=[{"fn": "x"}]), "privileged.program", "function"),
])
def test_validation_errors_name_record_and_field(mutate, field, msg):
    rec = copy.deepcopy(_record())
    mutate(rec)
    with pytest.raises(RecordError, match=msg) as e:
        validate_record(rec)
    assert e.value.field == field
    assert "ds/cfg/train/1" in str(e.value) or field == "id"


def test_make_record_rejects_unknown_privileged_field():
    with pytest.raises(RecordError, match="privileged.rationales"):
        _record(privileged={"rationales": ["x"]})


def test_resolve_image_sources(tmp_path):
    data = _png((8, 6))
    pil = Image.open(io.BytesIO(data))
    assert resolve_image(pil)[1] == (8, 6)
    assert resolve_image(data) == ({"bytes": data, "path": None}, (8, 6))
    assert resolve_image({"bytes": data, "path": "x.png"})[0]["bytes"] == data
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    assert resolve_image(uri)[0]["bytes"] == data
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes(data)
    assert resolve_image("sub/a.png", image_root=tmp_path)[0]["bytes"] == data
    assert resolve_image({"bytes": None, "path": "sub/a.png"}, image_root=tmp_path)[1] == (8, 6)


def test_resolve_image_refusals(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "secret.png"
    outside.write_bytes(_png())
    with pytest.raises(RecordError, match="URLs cannot be fetched offline"):
        resolve_image("https://example.com/a.jpg", record_id="r1")
    with pytest.raises(RecordError, match="no image_root"):
        resolve_image("a.png", record_id="r1")
    with pytest.raises(RecordError, match=r"'\.\.'"):
        resolve_image("../secret.png", image_root=root, record_id="r1")
    os.symlink(outside, root / "link.png")
    with pytest.raises(RecordError, match="outside image_root"):
        resolve_image("link.png", image_root=root, record_id="r1")
    with pytest.raises(RecordError, match="outside image_root"):
        resolve_image(str(outside), image_root=root, record_id="r1")
    with pytest.raises(RecordError, match="not found"):
        resolve_image("missing.png", image_root=root, record_id="r1")
    with pytest.raises(RecordError, match="cannot decode image") as e:
        resolve_image(b"not an image", record_id="r1", field="images[0]")
    assert "record 'r1', field 'images[0]'" in str(e.value)
    with pytest.raises(RecordError, match="base64"):
        resolve_image("data:image/png;base64,@@@", record_id="r1")


def test_decompression_bomb_limit_stays_on(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(RecordError, match="decompression-bomb"):
        resolve_image(_png((20, 20)), record_id="bomb")  # 400 px > the limit
    with pytest.raises(RecordError, match="decompression-bomb"):
        resolve_image(_png((12, 10)), record_id="bomb")  # between the limit and twice it: a warning, made an error


def test_canonical_boxes():
    assert canonical_box([10, 20, 30, 40], "xywh", (100, 100)) == [10, 20, 40, 60]
    assert canonical_box([10, 20, 30, 40], "xyxy", (100, 100)) == [10, 20, 30, 40]
    assert canonical_box([0, 0, 100.4, 50], "xyxy", (100, 100)) == [0, 0, 100, 50]  # rounding overshoot clipped
    with pytest.raises(RecordError, match="outside"):
        canonical_box([50, 50, 60, 60], "xywh", (100, 100), record_id="r")
    with pytest.raises(RecordError, match="negative"):
        canonical_box([-5, 0, 10, 10], "xyxy", (100, 100))
    with pytest.raises(RecordError, match="degenerate"):
        canonical_box([5, 5, 0, 10], "xywh", (100, 100))
    with pytest.raises(RecordError, match="4 numbers"):
        canonical_box([1, 2, 3], "xyxy", (100, 100))


def test_build_prompt_parts():
    p = build_prompt("Q?", n_images=2, context="ctx", instruction="Answer with a single word.")
    assert [c["type"] for c in p[0]["content"]] == ["image", "image", "text"]
    assert p[0]["content"][-1]["text"] == "Context: ctx\nQ?\nAnswer with a single word."
    assert build_prompt("Q?", n_images=0)[0]["content"] == [{"type": "text", "text": "Q?"}]
