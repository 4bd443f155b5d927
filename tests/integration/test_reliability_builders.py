"""Reliability of `dopd-vlm build` on messy sources: every bad row is a counted skip whose reason
names the record and the field (``--on-error skip``, the default) or stops the build with an error
naming them (``--on-error stop``); a stopped or failed build leaves no output folder and no
temporary folders behind."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from data_builders.build import Summary, write_outputs
from data_builders.records import RecordError, validate_record
from data_builders.sources import SourceError, run_source_build


def png(color=(200, 0, 0), size=(32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(w: int, h: int) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def llava_row(rid: str, image, question="<image>\nWhat color is it?", answer="red") -> dict:
    return {"id": rid, "image": image,
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}


# (row, expected skip category, words the skip reason must contain); None = the row is kept
ROWS = [
    (llava_row("good", "ok.png"), None, ()),
    (llava_row("missing", "missing.png"), "invalid image[0]", ("'image[0]'", "image file not found")),
    (llava_row("dotdot", "../secret.png"), "invalid image[0]", ("'image[0]'", "'..'")),
    (llava_row("symlink", "link.png"), "invalid image[0]", ("'image[0]'", "outside image_root")),
    (llava_row("absolute", "/etc/hostname"), "invalid image[0]", ("'image[0]'", "outside image_root")),
    (llava_row("corrupt", "corrupt.png"), "invalid image[0]", ("'image[0]'", "cannot decode image")),
    (llava_row("empty_file", "empty.png"), "invalid image[0]", ("'image[0]'", "cannot decode image")),
    (llava_row("bomb", "bomb.png"), "invalid image[0]", ("'image[0]'", "decompression-bomb")),
    (llava_row("url", "https://example.com/a.png"), "invalid image[0]", ("'image[0]'", "URLs cannot be fetched offline")),
    (llava_row("no_question", "ok.png", question="<image>"), "empty user turn", ("empty user turn",)),
    (llava_row("blank_question", "ok.png", question="<image>\n   "), "empty user turn", ("empty user turn",)),
    (llava_row("tags", "ok.png", question="<image><image>\nTwo?"), "invalid image", ("'image'", "2 <image> tags but 1 images")),
]


@pytest.fixture
def messy(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (root / "ok.png").write_bytes(png())
    (tmp_path / "secret.png").write_bytes(png((0, 0, 200)))
    os.symlink(tmp_path / "secret.png", root / "link.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    (root / "empty.png").write_bytes(b"")
    (root / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    src = tmp_path / "src" / "llava.jsonl"
    src.parent.mkdir()
    src.write_text("".join(json.dumps(r) + "\n" for r, _, _ in ROWS))
    return {"source": str(src), "image_root": str(root), "tmp": tmp_path}


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_bad_rows_are_counted_skips_naming_record_and_field(messy):
    out = messy["tmp"] / "out"
    dd = run_source_build("llava", out=str(out), source=messy["source"], image_root=messy["image_root"], quiet=True)
    ds = dd["train"]
    assert [r["id"].rsplit("/", 1)[1] for r in ds] == ["good"]
    for rec in ds:
        validate_record(rec)
    split = json.loads((out / "build_summary.json").read_text())["splits"][0]
    assert split["rows_in"] == len(ROWS) and split["kept"] == 1 and split["skipped"] == len(ROWS) - 1
    expected_counts: dict[str, int] = {}
    for _, cat, _ in ROWS:
        if cat:
            expected_counts[cat] = expected_counts.get(cat, 0) + 1
    assert split["skip_reasons"] == expected_counts
    by_index = {s["index"]: s for s in split["skipped_rows"]}
    for i, (row, cat, words) in enumerate(ROWS):
        if cat is None:
            continue
        s = by_index[i]
        assert s["category"] == cat
        for w in words:
            assert w in s["reason"], (row["id"], s["reason"])
        if cat.startswith("invalid"):  # a RecordError: the reason names the record itself
            assert f"/{row['id']}'" in s["reason"], s["reason"]
    assert _leftovers(out.parent, "out") == []


@pytest.mark.parametrize("bad_index", [i for i, (_, cat, _) in enumerate(ROWS) if cat and cat.startswith("invalid")])
def test_on_error_stop_names_record_and_field_and_writes_nothing(messy, bad_index):
    rows = [ROWS[0][0], ROWS[bad_index][0]]
    src = messy["tmp"] / "src" / "two.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = messy["tmp"] / "stopped"
    with pytest.raises(RecordError) as ei:
        run_source_build("llava", out=str(out), source=str(src), image_root=messy["image_root"], on_error="stop",
                         quiet=True)
    msg = str(ei.value)
    assert f"/{rows[1]['id']}'" in msg and "'image" in msg and "--on-error stop" in msg, msg
    assert not out.exists()
    assert _leftovers(out.parent, "stopped") == []


def test_non_utf8_bytes_in_jsonl_are_a_counted_skip(messy):
    src = messy["tmp"] / "src" / "latin1.jsonl"
    good = json.dumps(llava_row("good", "ok.png")).encode()
    bad = b'{"id": "latin", "image": "ok.png", "conversations": [{"from": "human", "value": "<image>\\ncaf\xe9?"}, ' \
          b'{"from": "gpt", "value": "red"}]}'
    src.write_bytes(good + b"\n" + bad + b"\n")
    out = messy["tmp"] / "out_latin1"
    dd = run_source_build("llava", out=str(out), source=str(src), image_root=messy["image_root"], quiet=True)
    assert len(dd["train"]) == 1
    assert all("\ufffd" not in r["question"] for r in dd["train"])  # nothing silently replaced
    split = json.loads((out / "build_summary.json").read_text())["splits"][0]
    assert split["skipped"] == 1 and "UnicodeDecodeError" in split["skipped_rows"][0]["reason"]
    with pytest.raises(RecordError, match="UnicodeDecodeError"):
        run_source_build("llava", out=str(out) + "_stop", source=str(src), image_root=messy["image_root"],
                         on_error="stop", quiet=True)
    assert not Path(str(out) + "_stop").exists()


def test_wrong_types_in_a_row_are_a_counted_skip(messy):
    src = messy["tmp"] / "src" / "types.jsonl"
    src.write_text(json.dumps(llava_row("good", "ok.png")) + "\n"
                   + json.dumps({"id": "typed", "image": "ok.png", "conversations": "hello"}) + "\n")
    out = messy["tmp"] / "out_types"
    dd = run_source_build("llava", out=str(out), source=str(src), image_root=messy["image_root"], quiet=True)
    assert len(dd["train"]) == 1
    split = json.loads((out / "build_summary.json").read_text())["splits"][0]
    assert split["skipped"] == 1 and split["skipped_rows"][0]["index"] == 1


def test_wrong_types_skip_reason_names_the_field(messy):
    src = messy["tmp"] / "src" / "types.jsonl"
    src.write_text(json.dumps(llava_row("good", "ok.png")) + "\n"
                   + json.dumps({"id": "typed", "image": "ok.png", "conversations": "hello"}) + "\n")
    out = messy["tmp"] / "out_types_field"
    run_source_build("llava", out=str(out), source=str(src), image_root=messy["image_root"], quiet=True)
    reason = json.loads((out / "build_summary.json").read_text())["splits"][0]["skipped_rows"][0]["reason"]
    assert "'conversations'" in reason and "/typed'" in reason, reason


# ------------------------------------------------------------------------- whole-source errors
@pytest.mark.parametrize("builder, missing", [
    ("scienceqa", "'question'"),
    pytest.param("llava", "['conversations']"),
])
def test_source_without_required_columns(messy, builder, missing):
    src = messy["tmp"] / "src" / "cols.jsonl"
    src.write_text(json.dumps({"id": "x", "text": "hello"}) + "\n")
    with pytest.raises(SourceError, match=r"lacks the column\(s\) \[.*" + missing.strip("[]") + r".*\]"):
        run_source_build(builder, out=str(messy["tmp"] / "o"), source=str(src), image_root=messy["image_root"],
                         quiet=True)
    assert not (messy["tmp"] / "o").exists()


def test_unparseable_json_names_the_file(messy):
    src = messy["tmp"] / "src" / "broken.jsonl"
    src.write_text('{"id": "a", "conversations": [\n')
    with pytest.raises(SourceError, match="cannot read .*broken.jsonl"):
        run_source_build("llava", out=str(messy["tmp"] / "o"), source=str(src), image_root=messy["image_root"],
                         quiet=True)
    assert not (messy["tmp"] / "o").exists()


def test_image_root_that_is_not_a_folder(messy):
    with pytest.raises(SourceError, match="--image-root .* is not a folder"):
        run_source_build("llava", out=str(messy["tmp"] / "o"), source=messy["source"],
                         image_root=str(messy["tmp"] / "nope"), quiet=True)


def test_existing_output_is_not_overwritten(messy):
    out = messy["tmp"] / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_source_build("llava", out=str(out), source=messy["source"], image_root=messy["image_root"], quiet=True)
    assert (out / "keep.txt").read_text() == "x"


def test_hub_source_offline_is_a_clear_error(messy):
    with pytest.raises(SourceError, match="offline mode or no network"):
        run_source_build("scienceqa", out=str(messy["tmp"] / "o"), source="derek-thomas/ScienceQA", quiet=True)
    assert not (messy["tmp"] / "o").exists()


def test_failure_while_writing_leaves_no_partial_output(messy):
    from data_builders.build import records_dataset

    out = messy["tmp"] / "written"

    def fail(tmp):
        assert (tmp / "dataset_dict.json").exists()  # the data was already written into the temp folder
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_outputs({"train": records_dataset([])}, out, [Summary("train")], extra_writer=fail)
    assert not out.exists() and _leftovers(out.parent, "written") == []


# ---------------------------------------------------------------------------------------- CLI
def _cli_build(messy, out, *extra):
    from dopd_vlm.cli import main

    return main(["build", "llava", "--source", messy["source"], "--image-root", messy["image_root"],
                 "--out", str(out), *extra])


def test_cli_build_skip_prints_counts(messy, capsys):
    out = messy["tmp"] / "cli_out"
    assert _cli_build(messy, out) == 0
    text = capsys.readouterr().out
    assert f"rows {len(ROWS)}: kept 1, skipped {len(ROWS) - 1}" in text
    assert "field 'image[0]': image file not found" in text


def test_cli_build_stop_on_error_leaves_no_output(messy):
    out = messy["tmp"] / "cli_stop"
    assert _cli_build(messy, out, "--on-error", "stop") != 0
    assert not out.exists() and _leftovers(out.parent, "cli_stop") == []


def test_cli_build_stop_on_error_message_without_traceback(messy, capsys):
    out = messy["tmp"] / "cli_stop_msg"
    assert _cli_build(messy, out, "--on-error", "stop") not in (0, None)
    err = capsys.readouterr().err
    assert "/missing'" in err and "'image[0]'" in err and "image file not found" in err


def _cli_fails(capsys, argv, exc, words: str) -> None:
    """``dopd-vlm`` either raises ``exc`` naming the problem, or prints it and exits non-zero."""
    from dopd_vlm.cli import main

    try:
        rc = main(argv)
    except exc as e:
        assert words in str(e), str(e)
        return
    assert rc not in (0, None)
    captured = capsys.readouterr()
    assert words in captured.err + captured.out


def test_cli_build_unknown_builder_and_kind(messy, capsys):
    _cli_fails(capsys, ["build", "no_such_builder", "--out", str(messy["tmp"] / "x")], (KeyError, SystemExit),
               "no_such_builder")
    _cli_fails(capsys, ["build", "llava", "--source", messy["source"], "--out", str(messy["tmp"] / "y"),
                        "--privileged", "regionz"], ValueError, "unknown privileged kind 'regionz'")
    assert not (messy["tmp"] / "x").exists() and not (messy["tmp"] / "y").exists()
