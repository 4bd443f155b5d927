"""Reliability: bad records and bad images are refused with an error naming the record and the field.

Every case asserts the project's own ``RecordError`` (a ``ValueError``) whose message names the
record id and the field; none may surface a library exception (``KeyError``, ``OSError`` from
Pillow, ``TypeError``) from deep inside the stack.
"""

from __future__ import annotations

import base64
import copy
import io
import os
import random
import struct
import zlib

import pytest
from PIL import Image

from data_builders.records import RecordError, canonical_box, make_record, resolve_image, validate_record

RID = "ds/default/train/7"


# ------------------------------------------------------------------------------------ helpers
def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims ``w x h`` pixels and has no pixel data at all (a decompression-bomb
    probe: nothing of that size is ever allocated)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def encoded(fmt: str, size=(64, 48), noise: bool = True) -> bytes:
    """An encoded image; random pixels so truncation cuts real compressed data."""
    rng = random.Random(0)
    data = bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3)) if noise else None
    im = Image.frombytes("RGB", size, data) if noise else Image.new("RGB", size, (200, 10, 10))
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def record(**kw) -> dict:
    img, size = resolve_image(encoded("PNG", (40, 30), noise=False))
    base = dict(id=RID, source={"dataset": "ds", "config": None, "split": "train", "revision": None},
                images=[img], image_size=size, question="What color is it?", answer="red",
                privileged={"regions": [{"bbox": [1.0, 2.0, 10.0, 20.0], "label": "red square"}]})
    base.update(kw)
    return make_record(**base)


def assert_record_error(excinfo, field: str, *words: str) -> None:
    e = excinfo.value
    assert type(e) is RecordError, f"expected RecordError, got {type(e).__name__}: {e}"
    assert e.record_id == RID and e.field == field, (e.record_id, e.field)
    msg = str(e)
    assert RID in msg and field in msg, msg
    for w in words:
        assert w in msg, (w, msg)


# ------------------------------------------------------------------------------- image bytes
def _truncated(fmt: str) -> bytes:
    data = encoded(fmt)
    return data[: int(len(data) * 0.6)]


# Pillow's ``verify()`` checks PNG chunk CRCs but does not decode JPEG / GIF / BMP data, so a file
# cut short passes ``_check_image_bytes`` and only fails later inside the processor.

BAD_IMAGE_BYTES = [
    pytest.param(b"", "cannot decode image", id="zero-byte-file"),
    pytest.param(b"this is not an image", "cannot decode image", id="garbage-bytes"),
    pytest.param(png_header_only(0, 10), "cannot decode image", id="zero-width-png"),
    pytest.param(encoded("PNG")[:40], "cannot decode image", id="png-cut-in-header"),
    pytest.param(_truncated("PNG"), "cannot decode image", id="truncated-png"),
    pytest.param(_truncated("WEBP"), "cannot decode image", id="truncated-webp"),
    pytest.param(_truncated("JPEG"), "cannot decode image", id="truncated-jpeg"),
    pytest.param(_truncated("GIF"), "cannot decode image", id="truncated-gif"),
    pytest.param(_truncated("BMP"), "cannot decode image", id="truncated-bmp"),
    # a header claiming 10^10 pixels: DecompressionBombError (> 2x Image.MAX_IMAGE_PIXELS)
    pytest.param(png_header_only(100_000, 100_000), "decompression-bomb", id="bomb-10G-pixels"),
    # 10^8 pixels: between the limit and twice it, Pillow only warns; the project makes it an error
    pytest.param(png_header_only(10_000, 10_000), "decompression-bomb", id="bomb-warning-made-error"),
]


@pytest.mark.parametrize("data, words", BAD_IMAGE_BYTES)
def test_bad_image_bytes_are_refused_naming_record_and_field(data, words):
    with pytest.raises(RecordError) as ei:
        resolve_image(data, None, RID, "images[0]")
    assert_record_error(ei, "images[0]", words)


@pytest.mark.parametrize("wrap", ["bytes", "dict", "data-uri"])
def test_bad_bytes_refused_in_every_container(wrap):
    data = b"\x89PNG\r\n\x1a\n" + b"\x00" * 20  # a PNG signature and nothing valid after it
    value = {"bytes": data, "path": None} if wrap == "dict" else (
        "data:image/png;base64," + base64.b64encode(data).decode() if wrap == "data-uri" else data)
    with pytest.raises(RecordError) as ei:
        resolve_image(value, None, RID, "images[0]")
    assert_record_error(ei, "images[0]", "cannot decode image")


def test_decompression_bomb_limit_is_on():
    # Security default: nobody in the package switched Pillow's limit off (None) or raised it.
    import data_builders.build  # noqa: F401  (modules that touch images are imported)
    import data_builders.records  # noqa: F401

    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS <= 89_478_485


# ----------------------------------------------------------------------------- image values
def test_url_image_is_refused_offline_with_clear_message():
    with pytest.raises(RecordError) as ei:
        resolve_image("https://example.com/cat.jpg", "/tmp", RID, "images[0]")
    assert_record_error(ei, "images[0]", "URL", "offline", "--image-root")


@pytest.mark.parametrize("value, words", [
    ("data:image/png,notbase64", "not base64"),
    ("data:image/png;base64,@@@@", "invalid base64"),
    ({"bytes": None, "path": None}, "neither bytes nor path"),
    (12345, "unsupported image value of type int"),
    (["a.png"], "unsupported image value of type list"),
])
def test_malformed_image_values(value, words):
    with pytest.raises(RecordError) as ei:
        resolve_image(value, "/tmp", RID, "images[0]")
    assert_record_error(ei, "images[0]", words)


# ---------------------------------------------------------------------- paths under image_root
@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "ok.png").write_bytes(encoded("PNG", noise=False))
    secret = tmp_path / "secret.png"  # a real image outside the root
    secret.write_bytes(encoded("PNG", noise=False))
    os.symlink(secret, root / "sub" / "escape.png")
    os.symlink(tmp_path, root / "sub" / "up")  # a directory link leading out of the root
    os.symlink(root / "ok.png", root / "sub" / "inside.png")  # a link that stays inside: allowed
    return root


def test_path_inside_root_and_inside_symlink_resolve(image_root):
    assert resolve_image("ok.png", image_root, RID)[1] == (64, 48)
    assert resolve_image("sub/inside.png", image_root, RID)[1] == (64, 48)


@pytest.mark.parametrize("path, words", [
    ("../secret.png", "'..'"),
    ("sub/../../secret.png", "'..'"),
    ("sub/escape.png", "outside image_root"),
    ("sub/up/secret.png", "outside image_root"),
    ("/etc/passwd", "outside image_root"),
    ("missing.png", "image file not found"),
    ("sub", "image file not found"),  # a folder, not a file
])
def test_image_paths_are_confined_to_image_root(image_root, path, words):
    with pytest.raises(RecordError) as ei:
        resolve_image(path, image_root, RID, "images[0]")
    assert_record_error(ei, "images[0]", words)


def test_path_without_image_root_is_refused(image_root):
    with pytest.raises(RecordError) as ei:
        resolve_image("ok.png", None, RID, "images[0]")
    assert_record_error(ei, "images[0]", "no image_root", "--image-root")


def test_corrupt_file_on_disk_is_refused(image_root):
    (image_root / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(RecordError) as ei:
        resolve_image("bad.jpg", image_root, RID, "images[0]")
    assert_record_error(ei, "images[0]", "cannot decode image")


# ------------------------------------------------------------------------------------- boxes
@pytest.mark.parametrize("bbox, fmt, words", [
    ([-5, 2, 10, 20], "xyxy", "negative"),
    ([1, 2, 50, 20], "xyxy", "outside the image"),  # image is 40 x 30
    ([1, 2, 10, 45], "xyxy", "outside the image"),
    ([20, 10, 8, 6], "xyxy", "degenerate"),  # an xywh box (w 8, h 6) handed over as xyxy
    ([30, 20, 15, 15], "xywh", "outside the image"),  # x + w = 45 > 40
    ([1, 2, 0, 5], "xywh", "degenerate"),  # zero width
    ([1, 2, 3], "xyxy", "4 numbers"),
    (["a", 2, 3, 4], "xyxy", "non-numeric"),
    ([0, 0, float("nan"), 5], "xyxy", "non-finite"),
    ([0, 0, float("inf"), 5], "xywh", "non-finite"),
])
def test_canonical_box_refuses_bad_boxes(bbox, fmt, words):
    with pytest.raises(RecordError) as ei:
        canonical_box(bbox, fmt, (40, 30), RID, "privileged.regions[0].bbox")
    assert_record_error(ei, "privileged.regions[0].bbox", words)


def test_canonical_box_clips_only_within_tolerance():
    assert canonical_box([10.5, 8, 30, 30.5], "xywh", (40, 39), RID) == [10.5, 8.0, 40.0, 38.5]


@pytest.mark.parametrize("bbox, words", [
    ([-1.0, 2.0, 10.0, 20.0], "negative"),
    ([1.0, 2.0, 41.0, 20.0], "outside the image"),
    ([12.0, 12.0, 4.0, 4.0], "degenerate"),  # xywh (w 4, h 4) given as xyxy
    ([1.0, 2.0, 10.0], "4 numbers"),
    (["1", 2.0, 10.0, 20.0], "4 numbers"),
    pytest.param([float("nan"), 2.0, 10.0, 20.0], "non-finite", id="nan-box"),
])
def test_validate_record_refuses_bad_region_boxes(bbox, words):
    rec = record(privileged={"regions": [{"bbox": bbox, "label": "a"}]})
    with pytest.raises(RecordError) as ei:
        validate_record(rec)
    assert_record_error(ei, "privileged.regions[0].bbox", words)


def test_validate_record_refuses_bad_ocr_box():
    rec = record(privileged={"ocr": [{"text": "STOP", "bbox": [0.0, 0.0, 100.0, 5.0]}]})
    with pytest.raises(RecordError) as ei:
        validate_record(rec)
    assert_record_error(ei, "privileged.ocr[0].bbox", "outside the image")


# ------------------------------------------------------------------------------ record fields
def _mut(path: str, value):
    """A valid record with ``path`` (dotted, ints index lists) set to ``value`` (or deleted)."""
    rec = record()
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    target = rec
    for k in keys[:-1]:
        target = target[k]
    if value is _DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return rec


_DELETE = object()

BAD_FIELDS = [
    ("question", "", "question", "non-empty string"),
    ("question", "   \n", "question", "non-empty string"),
    ("question", 42, "question", "non-empty string"),
    ("question", _DELETE, "question", "missing field"),
    ("answer", 3, "answer", "string or None"),
    ("choices", ["only one"], "choices", "2-26 strings"),
    ("choices", "A,B", "choices", "2-26 strings"),
    ("images", "img.png", "images", "must be a list"),
    ("images", [], "images", "0 images but 1 image parts"),
    ("images.0", 7, "images[0]", "PIL image or a {bytes, path} dict"),
    ("prompt", [], "prompt", "non-empty list"),
    ("prompt.0.role", "robot", "prompt[0]", "role in"),
    ("prompt.0.content.1.text", None, "prompt[0].content[1].text", "string"),
    ("prompt.0.content.0.type", "audio", "prompt[0].content[0]", "'image' or 'text'"),
    ("prompt.0.role", "assistant", "prompt", "last message must be the user"),
    ("source.split", "", "source.split", "non-empty string"),
    ("source", "ds", "source", "exactly dataset, config, split, revision"),
    ("meta.image_size", [40], "meta.image_size", "positive ints"),
    ("meta.image_size", [40.0, 30.0], "meta.image_size", "positive ints"),
    ("meta", None, "meta", "must be a dict"),
    ("privileged.captions", "a caption", "privileged.captions", "list of strings"),
    ("privileged.solution", ["x"], "privileged.solution", "string or None"),
    ("privileged.regions.0", [1, 2, 3, 4], "privileged.regions[0]", "a region is"),
    ("privileged.regions.0.label", 5, "privileged.regions[0].label", "string or None"),
    ("privileged.program", [{"no": "function"}], "privileged.program", "function"),
    ("privileged.scene_graph", "graph", "privileged.scene_graph", "dict or None"),
    ("privileged_context", None, "privileged_context", "must be a string"),
]


@pytest.mark.parametrize("path, value, field, words", BAD_FIELDS,
                         ids=[f"{p}={'<deleted>' if v is _DELETE else repr(v)[:20]}" for p, v, _, _ in BAD_FIELDS])
def test_validate_record_names_record_and_field(path, value, field, words):
    rec = _mut(path, value)
    with pytest.raises(RecordError) as ei:
        validate_record(rec)
    assert_record_error(ei, field, words)


def test_unknown_and_extra_fields():
    rec = record()
    rec["privileged"]["secret"] = "x"
    with pytest.raises(RecordError) as ei:
        validate_record(rec)
    assert_record_error(ei, "privileged.secret", "unknown privileged field")
    rec = record()
    rec["labels"] = ["x"]
    with pytest.raises(RecordError) as ei:
        validate_record(rec)
    assert_record_error(ei, "labels", "unknown field")


def test_record_that_is_not_a_dict_or_has_no_id():
    with pytest.raises(RecordError, match="a record is a dict, got list"):
        validate_record([1, 2])
    rec = record()
    rec["id"] = ""
    with pytest.raises(RecordError, match="field 'id'"):
        validate_record(rec)


def test_validate_does_not_mutate_or_crash_on_deep_copies():
    rec = record()
    snapshot = copy.deepcopy(rec)
    validate_record(rec)
    assert rec == snapshot
