"""Reliability of the data side, second round (issue 16): images decoded, oriented and converted
once at build time (every Pillow mode, EXIF orientation, high bit depth), images a processor refuses,
unresolvable paths, duplicate record ids, OS errors (disk full) while writing a dataset, and
temporary folders left by killed builds."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from data_builders.build import DuplicateIdError, remove_stale_temp, write_outputs
from data_builders.records import RecordError, canonical_box, orient_box, resolve_image
from data_builders.sources import run_source_build

PY = sys.executable


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def stored(value) -> Image.Image:
    """resolve_image(value) -> the stored image, decoded as datasets would hand it to a processor."""
    d, size = resolve_image(value)
    im = Image.open(io.BytesIO(d["bytes"]))
    assert im.size == tuple(size)
    return im


def px(im: Image.Image, xy=(0, 0)) -> tuple:
    return im.convert("RGBA").getpixel(xy)[:3] if im.mode != "RGB" else im.getpixel(xy)


def png16_rgb(values: list[tuple[int, int, int]]) -> bytes:
    """A 48-bit (16 bits per channel) RGB PNG, one row, written by hand (Pillow cannot write one)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    row = b"\x00" + b"".join(struct.pack(">HHH", *v) for v in values)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", len(values), 1, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row)) + chunk(b"IEND", b""))


# ------------------------------------------------------------------------------- Pillow modes
def _mode_cases():
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal_t = pal.copy()
    pal_t.info["transparency"] = 1
    la = Image.new("LA", (4, 4), (50, 128))
    i16 = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    i32 = Image.fromarray(np.full((4, 4), 200, dtype=np.int32), mode="I")
    i32_16 = Image.fromarray(np.full((4, 4), 65535, dtype=np.int32), mode="I")
    f01 = Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), mode="F")
    f255 = Image.fromarray(np.full((4, 4), 100.0, dtype=np.float32), mode="F")
    # (name, value handed to resolve_image, expected RGB of pixel (0, 0), tolerance)
    return [
        ("1", encode(Image.new("1", (4, 4), 1)), (255, 255, 255), 0),
        ("L", encode(Image.new("L", (4, 4), 77)), (77, 77, 77), 0),
        ("P", encode(pal), (255, 0, 0), 0),
        ("P transparent", encode(pal_t), (255, 255, 255), 0),  # transparent index: white, not red
        ("PA", Image.new("PA", (4, 4), (1, 0)).copy(), (255, 255, 255), 0),
        ("LA half alpha", encode(la), (153, 153, 153), 1),  # 50 * 128/255 + 255 * 127/255
        ("La premultiplied", Image.new("La", (4, 4), (50, 255)), (50, 50, 50), 0),
        ("RGBA transparent", encode(Image.new("RGBA", (4, 4), (255, 0, 0, 0))), (255, 255, 255), 0),
        ("RGBA opaque", encode(Image.new("RGBA", (4, 4), (10, 20, 30, 255))), (10, 20, 30), 0),
        ("RGBa", Image.new("RGBa", (4, 4), (10, 20, 30, 255)), (10, 20, 30), 0),
        ("I;16 PNG", encode(i16), (128, 128, 128), 0),  # 32768/257, not clipped to 255
        ("I;16 TIFF", encode(i16, "TIFF"), (128, 128, 128), 0),
        ("I 8-bit range", encode(i32, "TIFF"), (200, 200, 200), 0),
        ("I 16-bit range", encode(i32_16, "TIFF"), (255, 255, 255), 0),
        ("F 0-1", encode(f01, "TIFF"), (128, 128, 128), 0),
        ("F 0-255", encode(f255, "TIFF"), (100, 100, 100), 0),
        ("CMYK JPEG", encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=100), (255, 0, 0), 3),
        ("CMYK TIFF", encode(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "TIFF"), (255, 0, 0), 0),
        ("YCbCr TIFF", encode(Image.new("RGB", (4, 4), (0, 0, 255)).convert("YCbCr"), "TIFF"), (0, 0, 255), 2),
        ("LAB TIFF", encode(Image.new("LAB", (4, 4), (255, 128, 128)), "TIFF"), (255, 255, 255), 1),
        ("HSV", Image.new("HSV", (4, 4), (0, 255, 255)), (255, 0, 0), 0),
        ("RGBX", Image.new("RGBX", (4, 4), (1, 2, 3, 0)), (1, 2, 3), 0),
        ("RGB 16-bit PNG", png16_rgb([(0x8000, 0xFFFF, 0x0101)] * 4), (128, 255, 1), 1),
        ("GIF (P, first frame)", encode(Image.new("RGB", (4, 4), (0, 255, 0)), "GIF"), (0, 255, 0), 0),
    ]


@pytest.mark.parametrize("name,value,expected,tol", [pytest.param(*c, id=c[0]) for c in _mode_cases()])
def test_every_pillow_mode_is_stored_as_correct_8bit_rgb(name, value, expected, tol):
    im = stored(value)
    assert im.mode == "RGB", (name, im.mode)
    got = im.getpixel((0, 0))
    assert all(abs(a - b) <= tol for a, b in zip(got, expected)), (name, got, expected)


def test_16bit_gradient_is_scaled_not_clipped():
    ramp = (np.arange(256, dtype=np.uint32) * 257).astype(np.uint16).reshape(1, 256)  # 0 .. 65535
    im = stored(encode(Image.fromarray(ramp)))
    got = np.asarray(im)[0, :, 0]
    assert np.array_equal(got, np.arange(256)), got[:8]  # v*257 -> v exactly
    naive = np.asarray(Image.fromarray(ramp).convert("RGB"))[0, :, 0]
    assert (naive == 255).sum() > 200  # what a plain convert("RGB") would have stored


@pytest.mark.parametrize("value,words", [
    (Image.fromarray(np.full((4, 4), -5, dtype=np.int32), mode="I"), "negative pixel values"),
    (Image.fromarray(np.full((4, 4), 1e6, dtype=np.float32), mode="F"), "no 8-bit scale is known"),
    (Image.fromarray(np.full((4, 4), np.nan, dtype=np.float32), mode="F"), "non-finite"),
])
def test_images_without_a_defined_8bit_form_are_refused_naming_the_record(value, words):
    with pytest.raises(RecordError, match=words) as ei:
        resolve_image(value, record_id="ds/x/train/1", field="image")
    assert "'ds/x/train/1'" in str(ei.value) and "'image'" in str(ei.value)


# ---------------------------------------------------------------------------- EXIF orientation
def _exif(o: int):
    ex = Image.Exif()
    ex[0x0112] = o
    return ex


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_once_and_boxes_follow(orientation):
    """A 30x20 picture with a red block at [0, 0, 10, 5]: the stored pixels are the displayed ones,
    the size is the displayed size, and the box mapped with box_frame=stored covers the red block."""
    base = Image.new("RGB", (30, 20), (0, 0, 255))
    base.paste((255, 0, 0), (0, 0, 10, 5))
    data = encode(base, "PNG", exif=_exif(orientation))
    d, size = resolve_image(data)
    im = Image.open(io.BytesIO(d["bytes"]))
    assert im.getexif().get(0x0112) in (None, 1)  # nothing left for a later exif_transpose to apply
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert im.size == tuple(size) == expected.size
    assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(expected))
    red = np.argwhere(np.all(np.asarray(im.convert("RGB")) == (255, 0, 0), axis=-1))
    red_box = [red[:, 1].min(), red[:, 0].min(), red[:, 1].max() + 1, red[:, 0].max() + 1]
    assert orient_box([0, 0, 10, 5], orientation, (30, 20)) == red_box
    if orientation == 1:
        assert canonical_box([0, 0, 10, 5], "xyxy", size) == [0, 0, 10, 5]
        assert d["bytes"] == data  # an 8-bit RGB file without orientation keeps its bytes
    else:
        assert (size.orientation, size.stored) == (orientation, (30, 20))
        assert canonical_box([0, 0, 10, 5], "xyxy", size, frame="stored") == red_box
        assert canonical_box(red_box, "xyxy", size, frame="displayed") == red_box
        with pytest.raises(RecordError, match="EXIF orientation"):  # ambiguous without box_frame
            canonical_box([0, 0, 10, 5], "xyxy", size, "r1", "bbox")


def _llava(rid, image, question="<image>\nWhat color is it?", answer="red") -> dict:
    return {"id": rid, "image": image,
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}


def _source(tmp_path: Path, rows: list[dict], name="src.jsonl") -> str:
    src = tmp_path / "src" / name
    src.parent.mkdir(exist_ok=True)
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(src)


def test_build_stores_what_the_model_receives_for_a_rotated_phone_jpeg(tmp_path):
    """The JPEG is stored 40x20 with orientation 6 (shown 20x40); datasets decodes the raw file
    rotated, so before the fix meta.image_size said 40x20 for a 20x40 image."""
    root = tmp_path / "images"
    root.mkdir()
    base = Image.new("RGB", (40, 20), (0, 0, 255))
    base.paste((255, 0, 0), (0, 0, 10, 5))
    (root / "phone.jpg").write_bytes(encode(base, "JPEG", exif=_exif(6), quality=95))
    from datasets import Dataset, Features
    from datasets import Image as ImageFeature

    raw = Dataset.from_dict({"im": [{"bytes": (root / "phone.jpg").read_bytes(), "path": None}]},
                            features=Features({"im": ImageFeature()}))
    assert raw[0]["im"].size == (20, 40)  # what a processor receives from the raw file
    out = tmp_path / "out"
    dd = run_source_build("llava", out=str(out), source=_source(tmp_path, [_llava("p", "phone.jpg")]),
                          image_root=str(root), quiet=True)
    rec = dd["train"][0]
    im = rec["images"][0]
    assert rec["meta"]["image_size"] == [20, 40] == list(im.size) and rec["meta"]["exif_orientation"] == 6
    expected = ImageOps.exif_transpose(Image.open(root / "phone.jpg")).convert("RGB")
    assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(expected))


def test_contamination_hash_sees_an_eval_file_and_its_oriented_training_copy_as_one(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (root / "phone.jpg").write_bytes(encode(Image.new("RGB", (40, 20), (9, 99, 199)), "JPEG", exif=_exif(8)))
    evalset = tmp_path / "eval"
    evalset.mkdir()
    (evalset / "same.jpg").write_bytes((root / "phone.jpg").read_bytes())
    out = tmp_path / "out"
    run_source_build("llava", out=str(out), source=_source(tmp_path, [_llava("p", "phone.jpg")]), image_root=str(root),
                     exclude_images=[str(evalset)], quiet=True)
    s = json.loads((out / "build_summary.json").read_text())["splits"][0]
    assert s["contamination_dropped"] == 1 and s["kept"] == 0


# --------------------------------------------------------------------- processors and paths
@pytest.fixture
def images(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (root / "ok.png").write_bytes(encode(Image.new("RGB", (32, 24), (200, 0, 0))))
    (root / "strip.png").write_bytes(encode(Image.new("RGB", (300, 1), (0, 200, 0))))  # aspect ratio 300
    (root / "tiny.png").write_bytes(encode(Image.new("RGB", (20, 20), (0, 0, 200))))
    (root / "folder.png").mkdir()
    os.symlink(root / "loop_b.png", root / "loop_a.png")
    os.symlink(root / "loop_a.png", root / "loop_b.png")
    os.mkfifo(root / "fifo.png")
    return root


def test_images_the_processors_refuse_are_counted_skips_at_build_time(tmp_path, images):
    src = _source(tmp_path, [_llava("ok", "ok.png"), _llava("strip", "strip.png"), _llava("tiny", "tiny.png")])
    out = tmp_path / "out"
    dd = run_source_build("llava", out=str(out), source=src, image_root=str(images), quiet=True)
    assert [r["id"].rsplit("/", 1)[1] for r in dd["train"]] == ["ok", "tiny"]
    s = json.loads((out / "build_summary.json").read_text())["splits"][0]
    assert s["skip_reasons"] == {"image unsupported by the model processors": 1}
    reason = s["skipped_rows"][0]["reason"]
    assert s["skipped_rows"][0]["id"].endswith("/strip") and "300x1" in reason and "aspect ratio 300.0 > 200" in reason
    # the limits are options: a larger ratio keeps the strip, a minimum side drops the 20x20 image
    dd = run_source_build("llava", out=str(tmp_path / "out2"), source=src, image_root=str(images), quiet=True,
                          image_limits={"max_aspect_ratio": 400})
    assert [r["id"].rsplit("/", 1)[1] for r in dd["train"]] == ["ok", "strip", "tiny"]
    out = tmp_path / "out3"
    dd = run_source_build("llava", out=str(out), source=src, image_root=str(images), quiet=True,
                          image_limits={"min_side": 21})
    assert [r["id"].rsplit("/", 1)[1] for r in dd["train"]] == ["ok"]
    s = json.loads((out / "build_summary.json").read_text())["splits"][0]
    assert "20x20 has a side under 21 px" in s["skipped_rows"][1]["reason"]


def test_cli_build_image_limit_options(tmp_path, images, capsys):
    from dopd_vlm.cli import main

    src = _source(tmp_path, [_llava("ok", "ok.png"), _llava("tiny", "tiny.png")])
    assert main(["build", "llava", "--source", src, "--image-root", str(images), "--out", str(tmp_path / "o"),
                 "--min-image-side", "22"]) == 0
    assert "side under 22 px" in capsys.readouterr().out


PATH_ROWS = [  # (row, words the skip reason must contain)
    (_llava("too_long", "x" * 300 + ".png"), ("cannot resolve image path", "OSError")),
    (_llava("loop", "loop_a.png"), ("cannot resolve image path", "loop")),
    (_llava("folder", "folder.png"), ("image file not found", "not a regular file")),
    (_llava("fifo", "fifo.png"), ("not a regular file",)),
    (_llava("nul", "ok\u0000.png"), ("cannot resolve image path", "null")),
]


def test_unresolvable_paths_are_counted_skips(tmp_path, images):
    src = _source(tmp_path, [_llava("ok", "ok.png")] + [r for r, _ in PATH_ROWS])
    out = tmp_path / "out"
    dd = run_source_build("llava", out=str(out), source=src, image_root=str(images), quiet=True)
    assert len(dd["train"]) == 1
    s = json.loads((out / "build_summary.json").read_text())["splits"][0]
    assert s["skipped"] == len(PATH_ROWS) and set(s["skip_reasons"]) == {"invalid image[0]"}
    by_id = {r["id"].rsplit("/", 1)[1]: r["reason"] for r in s["skipped_rows"]}
    for row, words in PATH_ROWS:
        for w in words:
            assert w in by_id[row["id"]], (row["id"], by_id[row["id"]])


@pytest.mark.parametrize("row,words", [pytest.param(r, w, id=r["id"]) for r, w in PATH_ROWS])
def test_unresolvable_path_under_on_error_stop_names_record(tmp_path, images, row, words):
    with pytest.raises(RecordError) as ei:
        run_source_build("llava", out=str(tmp_path / "stop"), source=_source(tmp_path, [row]), image_root=str(images),
                         on_error="stop", quiet=True)
    assert f"/{row['id']}'" in str(ei.value) and "'image[0]'" in str(ei.value)
    assert not (tmp_path / "stop").exists()


def test_bad_rows_with_two_processes_give_the_same_summary(tmp_path, images):
    """--num-proc 2: every skip (paths, processor limits, duplicate ids) is counted as with one process."""
    rows = [_llava("ok", "ok.png"), _llava("strip", "strip.png"), _llava("ok", "tiny.png")] + [r for r, _ in PATH_ROWS]
    src = _source(tmp_path, rows)
    summaries = []
    for n in (1, 2):
        out = tmp_path / f"out{n}"
        run_source_build("llava", out=str(out), source=src, image_root=str(images), num_proc=n,
                         duplicates="drop-later", quiet=True)
        s = json.loads((out / "build_summary.json").read_text())["splits"][0]
        summaries.append({k: s[k] for k in ("kept", "skipped", "skip_reasons", "duplicates")}
                         | {"rows": sorted((r["index"], r["category"]) for r in s["skipped_rows"])})
    assert summaries[0] == summaries[1]
    assert summaries[0]["kept"] == 1 and summaries[0]["skip_reasons"] == {
        "image unsupported by the model processors": 1, "duplicate id": 1, "invalid image[0]": len(PATH_ROWS)}


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_a_counted_skip(tmp_path, images):
    (images / "secret.png").write_bytes((images / "ok.png").read_bytes())
    os.chmod(images / "secret.png", 0)
    out = tmp_path / "out"
    run_source_build("llava", out=str(out), source=_source(tmp_path, [_llava("s", "secret.png")]),
                     image_root=str(images), quiet=True)
    s = json.loads((out / "build_summary.json").read_text())["splits"][0]
    assert "cannot read image file" in s["skipped_rows"][0]["reason"]


# ----------------------------------------------------------------------- training-time checks
@pytest.fixture(scope="module")
def qwen(tiny_ckpt):
    from dopd_vlm.adapters import get_adapter

    path = tiny_ckpt("qwen2_5_vl", seed=1, min_pixels=84 * 84, max_pixels=84 * 84)
    adapter = get_adapter(path)
    _, processor = adapter.load(path)
    return adapter, processor


def _record(rid, im, size):
    from data_builders.records import make_record

    return make_record(id=rid, source={"dataset": "ds", "split": "train"}, images=[im], image_size=size,
                       question="What color is it?", answer="red")


def test_collate_names_the_record_a_processor_refuses(qwen):
    from dopd_vlm.collate import collate
    from dopd_vlm.views import RecordError as ViewRecordError

    adapter, processor = qwen
    good = _record("ds/default/train/good", Image.new("RGB", (84, 84)), (84, 84))
    strip = _record("ds/default/train/strip", Image.new("RGB", (300, 1)), (300, 1))  # slipped past a build
    with pytest.raises(ViewRecordError) as ei:
        collate([good, strip], processor, adapter)
    msg = str(ei.value)
    assert "'ds/default/train/strip'" in msg and "300x1" in msg and "aspect ratio" in msg, msg
    assert len(collate([good], processor, adapter)["plain"].input_ids_B_T) == 1


def test_collate_refuses_a_record_whose_size_is_not_its_image(qwen):
    """A dataset built before images were oriented at build time: the decoded image is rotated."""
    from dopd_vlm.collate import collate
    from dopd_vlm.views import RecordError as ViewRecordError

    adapter, processor = qwen
    rec = _record("ds/default/train/rot", Image.new("RGB", (84, 42)), (42, 84))
    with pytest.raises(ViewRecordError, match=r"'ds/default/train/rot', field 'meta.image_size'.*rebuild"):
        collate([rec], processor, adapter)


# ------------------------------------------------------------------------------ duplicate ids
def test_duplicate_ids_are_refused_by_default_and_dropped_on_request(tmp_path, images, capsys):
    rows = [_llava("a", "ok.png"), _llava("b", "ok.png"), _llava("a", "ok.png", answer="blue"), _llava("a", "ok.png")]
    src = _source(tmp_path, rows)
    with pytest.raises(DuplicateIdError, match=r"1 record id\(s\) occur more than once \(2 extra rows\), first .*/a'"):
        run_source_build("llava", out=str(tmp_path / "e"), source=src, image_root=str(images), quiet=True)
    assert not (tmp_path / "e").exists()
    out = tmp_path / "d"
    dd = run_source_build("llava", out=str(out), source=src, image_root=str(images), duplicates="drop-later", quiet=True)
    assert [(r["id"].rsplit("/", 1)[1], r["answer"]) for r in dd["train"]] == [("a", "red"), ("b", "red")]
    s = json.loads((out / "build_summary.json").read_text())["splits"][0]
    assert s["duplicates"] == {"policy": "drop-later", "ids": 1, "rows_dropped": 2}
    assert s["skip_reasons"] == {"duplicate id": 2} and [r["index"] for r in s["skipped_rows"]] == [2, 3]
    assert "is also source row 0 (kept)" in s["skipped_rows"][0]["reason"]

    from dopd_vlm.cli import main

    capsys.readouterr()
    assert main(["build", "llava", "--source", src, "--image-root", str(images), "--out", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "--duplicates drop-later" in err
    assert main(["build", "llava", "--source", src, "--image-root", str(images), "--out", str(tmp_path / "c"),
                 "--duplicates", "drop-later"]) == 0
    assert "1 record id(s) occur more than once (--duplicates drop-later: dropped 2 later rows)" in capsys.readouterr().out


# ----------------------------------------------------------------------- OS errors at write time
def _noise_png(seed: int, size=(256, 256)) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)))


def _cli(args: list[str], preexec=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "dopd_vlm.cli", "build", *args], capture_output=True, text=True, timeout=300,
                          preexec_fn=preexec, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_file_size_limit_while_building_is_one_line_and_keeps_the_previous_dataset(tmp_path, images):
    """A real OS write error (EFBIG from RLIMIT_FSIZE, the per-process cousin of a full disk)."""
    import resource

    out = tmp_path / "ds"
    small = _source(tmp_path, [_llava("ok", "ok.png")], "small.jsonl")
    assert _cli(["llava", "--source", small, "--image-root", str(images), "--out", str(out)]).returncode == 0
    before = (out / "build_summary.json").read_bytes()
    for k in range(3):
        (images / f"big{k}.png").write_bytes(_noise_png(k))
    big = _source(tmp_path, [_llava(f"b{k}", f"big{k}.png") for k in range(3)], "big.jsonl")

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))

    r = _cli(["llava", "--source", big, "--image-root", str(images), "--out", str(out), "--overwrite"], preexec=limit)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    line = [ln for ln in r.stderr.splitlines() if "cannot write" in ln]
    assert len(line) == 1 and "file too large" in line[0] and "EFBIG" in line[0] and str(tmp_path) in line[0], r.stderr
    assert (out / "build_summary.json").read_bytes() == before  # the previous dataset is intact
    assert _leftovers(tmp_path, "ds") == []


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (CAP_SYS_ADMIN)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_while_writing_is_one_line_and_keeps_the_previous_dataset(tmp_path, images, small_tmpfs):
    """ENOSPC on a 700 KB tmpfs: the conversion cache fits, the dataset copy does not."""
    out = small_tmpfs / "ds"
    small = _source(tmp_path, [_llava("ok", "ok.png")], "small.jsonl")
    assert _cli(["llava", "--source", small, "--image-root", str(images), "--out", str(out)]).returncode == 0
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for k in range(3):
        (images / f"big{k}.png").write_bytes(_noise_png(k, (256, 200)))  # 3 x 154 KB: fits once, not twice
    big = _source(tmp_path, [_llava(f"b{k}", f"big{k}.png") for k in range(3)], "big.jsonl")
    r = _cli(["llava", "--source", big, "--image-root", str(images), "--out", str(out), "--overwrite"])
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    line = [ln for ln in r.stderr.splitlines() if "cannot write" in ln]
    assert len(line) == 1 and "no space left on the device (ENOSPC)" in line[0], r.stderr
    assert line[0].startswith(f"dopd-vlm build llava: cannot write dataset {out}:"), line  # the copy, not the cache
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert _leftovers(small_tmpfs, "ds") == []


def test_write_error_message_names_path_and_cause(tmp_path):
    from data_builders.build import DatasetWriteError, Summary, records_dataset

    def full(tmp):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp / "data-00000-of-00001.arrow"))

    out = tmp_path / "w"
    with pytest.raises(DatasetWriteError) as ei:
        write_outputs({"train": records_dataset([])}, out, [Summary("train")], extra_writer=full)
    msg = str(ei.value)
    assert "no space left on the device (ENOSPC)" in msg and "data-00000-of-00001.arrow" in msg and str(out) in msg
    assert isinstance(ei.value, OSError) and isinstance(ei.value, ValueError)
    assert not out.exists() and _leftovers(tmp_path, "w") == []


# ------------------------------------------------------------------- temp folders of killed builds
def _killed_pid() -> int:
    p = subprocess.Popen([PY, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temp_folders_are_removed_only_when_their_owner_is_gone(tmp_path):
    from data_builders.build import _HOST

    out = tmp_path / "ds"
    dead, alive = _killed_pid(), subprocess.Popen(["sleep", "60"])
    try:
        names = {"dead_tmp": f".ds.tmp-{dead}-1-{_HOST}", "dead_work": f".ds.work-{dead}-1-{_HOST}",
                 "legacy": f".ds.tmp-{dead}-1", "alive": f".ds.tmp-{alive.pid}-1-{_HOST}",
                 "alive_old": f".ds.work-{alive.pid}-2-{_HOST}", "other_host": f".ds.tmp-{dead}-1-elsewhere",
                 "other_ds": f".ds2.tmp-{dead}-1-{_HOST}"}
        for n in names.values():
            (tmp_path / n).mkdir()
            (tmp_path / n / "x").write_text("x")
        week = time.time() - 7 * 24 * 3600
        os.utime(tmp_path / names["alive_old"], (week, week))
        removed = remove_stale_temp(out)
        assert sorted(removed) == sorted([names["dead_tmp"], names["dead_work"], names["legacy"], names["alive_old"]])
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == sorted([names["alive"], names["other_host"], names["other_ds"]])
    finally:
        alive.kill()
        alive.wait()


def test_interrupted_overwrite_is_restored(tmp_path):
    dead = _killed_pid()
    old = tmp_path / f".ds.old-{dead}"  # killed between the two renames of an overwrite
    old.mkdir()
    (old / "build_summary.json").write_text("{}")
    remove_stale_temp(tmp_path / "ds")
    assert (tmp_path / "ds" / "build_summary.json").exists() and not old.exists()


def test_a_killed_build_leaves_nothing_after_the_next_build(tmp_path, images):
    """SIGKILL a real `dopd-vlm build` once its temporary folder exists; the next build removes it."""
    for k in range(40):
        (images / f"n{k}.png").write_bytes(_noise_png(k, (96, 96)))
    src = _source(tmp_path, [_llava(f"n{k}", f"n{k}.png") for k in range(40)])
    out = tmp_path / "ds"
    p = subprocess.Popen([PY, "-m", "dopd_vlm.cli", "build", "llava", "--source", src, "--image-root", str(images),
                          "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not _leftovers(tmp_path, "ds") and p.poll() is None:
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    left = _leftovers(tmp_path, "ds")
    if not left:
        pytest.fail("the build ended before a temporary folder could be seen (machine too fast or too slow)")
    r = _cli(["llava", "--source", src, "--image-root", str(images), "--out", str(out), "--overwrite"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert _leftovers(tmp_path, "ds") == []
    assert all(f"removed stale temporary folder {tmp_path / n}" in r.stderr for n in left), (left, r.stderr[-2000:])
