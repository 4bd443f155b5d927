"""Review finding: importers honour ``--option box_frame`` for boxes on EXIF-rotated images.

Before the fix the ``records`` builder refused such a box and told the user to pass
``--option box_frame=stored|displayed``, which it then ignored (the row could never be imported),
and the llava-style importers silently kept a stored-frame box as if it were displayed.
The check is on pixels: a blue rectangle drawn in the stored image must lie inside the written box
of the displayed (rotated) image.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from data_builders.sources import run_source_build

STORED_BOX = [8, 4, 30, 20]  # on the 80x40 stored pixels


@pytest.fixture()
def exif_files(tmp_path):
    root = tmp_path / "u"
    root.mkdir()
    im = Image.new("RGB", (80, 40), (255, 255, 255))
    im.paste((0, 0, 255), (STORED_BOX[0], STORED_BOX[1], STORED_BOX[2], STORED_BOX[3]))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display: 40x80 shown
    im.save(root / "a.png", exif=exif.tobytes())
    region = [{"bbox": STORED_BOX, "label": "blue box"}]
    (root / "r.jsonl").write_text(json.dumps({"id": "a", "question": "Colour?", "answer": "blue",
                                              "images": ["a.png"], "privileged": {"regions": region}}) + "\n")
    (root / "l.json").write_text(json.dumps([{"id": "a", "image": "a.png", "regions": region, "conversations": [
        {"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "blue"}]}]))
    return root


def _blue_inside(rec) -> float:
    arr = np.asarray(rec["images"][0].convert("RGB")).astype(int)
    blue = (arr[..., 2] > 200) & (arr[..., 0] < 60)
    x1, y1, x2, y2 = (int(round(v)) for v in rec["privileged"]["regions"][0]["bbox"])
    return blue[y1:y2, x1:x2].sum() / blue.sum()


@pytest.mark.parametrize("builder,file", [("records", "r.jsonl"), ("llava", "l.json")])
def test_box_frame_stored_maps_boxes_through_the_orientation(exif_files, tmp_path, builder, file):
    ds = run_source_build(builder, out=str(tmp_path / builder), source=str(exif_files / file),
                          image_root=str(exif_files), options={"box_frame": "stored"}, quiet=True)["train"]
    assert len(ds) == 1 and ds[0]["images"][0].size == (40, 80)
    assert ds[0]["privileged"]["regions"][0]["bbox"] == [20.0, 8.0, 36.0, 30.0]  # hand-computed: (x, y) -> (40 - y, x)
    assert _blue_inside(ds[0]) == 1.0


@pytest.mark.parametrize("builder,file", [("records", "r.jsonl"), ("llava", "l.json")])
def test_box_frame_displayed_keeps_boxes(exif_files, tmp_path, builder, file):
    ds = run_source_build(builder, out=str(tmp_path / builder), source=str(exif_files / file),
                          image_root=str(exif_files), options={"box_frame": "displayed"}, quiet=True)["train"]
    assert ds[0]["privileged"]["regions"][0]["bbox"] == [float(v) for v in STORED_BOX]


def test_unknown_or_invalid_build_option_is_one_line_error(exif_files, tmp_path, capsys):
    # `--option box_fram=stored` (a typo) used to be ignored: the boxes were written in the default frame.
    from dopd_vlm.cli import main

    base = ["build", "llava", "--source", str(exif_files / "l.json"), "--image-root", str(exif_files)]
    assert main(base + ["--out", str(tmp_path / "a"), "--option", "box_fram=stored"]) == 1
    assert "--option box_fram=stored: unknown option; known: box_format, box_frame, hold_out, mode" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "b"), "--option", "box_frame=store"]) == 1
    assert "expected one of stored, displayed" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert main(base + ["--out", str(tmp_path / "c"), "--option", "box_frame=stored"]) == 0
