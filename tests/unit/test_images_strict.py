"""Truncated images are refused even after a library switched Pillow to lenient decoding."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageFile

from dopd_vlm.images import strict_decoding


def test_strict_decoding_overrides_load_truncated_images(monkeypatch):
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, format="JPEG")  # noise: a long scan body
    truncated = buf.getvalue()[: len(buf.getvalue()) // 2]
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # what importing lmms-eval does
    Image.open(io.BytesIO(truncated)).load()  # lenient: no error
    with pytest.raises(OSError), strict_decoding():
        Image.open(io.BytesIO(truncated)).load()
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored
