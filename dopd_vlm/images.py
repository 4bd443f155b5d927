"""Strict image decoding.

lmms-eval sets ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True`` globally when imported (its task
module), after which Pillow silently pads truncated files with grey. Our boundary checks must
refuse truncated images whatever was imported before, so they decode under this guard.
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def strict_decoding():
    """Within the block, truncated image files raise ``OSError`` again."""
    from PIL import ImageFile

    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
