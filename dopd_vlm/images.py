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


# ------------------------------------------------------------------------- one conversion, at build time
# Project decision, as qwen-vl-utils' ``to_rgb`` does: transparent pixels are composited on white
# (a plain ``convert("RGB")`` keeps whatever colour hides under alpha 0, often black).
ALPHA_BACKGROUND = (255, 255, 255)
# Qwen2-VL / Qwen2.5-VL / Qwen3-VL refuse an image whose long side exceeds 200 times its short side
# (``smart_resize`` in transformers' qwen2_vl image processor and qwen-vl-utils' ``MAX_RATIO``); the
# Idefics3 processor takes any ratio, so 200 is the strictest limit of the supported families.
MAX_ASPECT_RATIO = 200.0
# EXIF tag 0x0112 ("Orientation") and the transpose each value asks for (PIL.ImageOps.exif_transpose).
ORIENTATION_TAG = 0x0112


class ImageConversionError(ValueError):
    """An image whose pixels have no defined 8-bit RGB form (the message says why)."""


def exif_orientation(im) -> int:
    """The EXIF orientation (1-8) a viewer applies; 1 when absent or unreadable."""
    try:
        v = int(im.getexif().get(ORIENTATION_TAG) or 1)
    except Exception:  # a broken EXIF block: Pillow's exif_transpose ignores it too
        return 1
    return v if 1 <= v <= 8 else 1


def _scaled_to_l(arr, scale: float):
    import numpy as np
    from PIL import Image

    out = np.clip(np.rint(arr.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(out, mode="L")


def _declared_bits(im) -> int | None:
    tags = getattr(im, "tag_v2", None)  # TIFF: BitsPerSample
    try:
        bits = tags.get(258) if tags is not None else None
    except Exception:
        return None
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return int(bits) if isinstance(bits, int) else None


def to_rgb8(im):
    """Any mode Pillow opens -> an 8-bit RGB image with the same pixels (or ``ImageConversionError``).

    - 16-bit grey (``I;16*``) is scaled by 255/65535 (``convert("RGB")`` would clip it to white);
    - 32-bit integer (``I``) and float (``F``) images have no scale of their own: a TIFF's
      BitsPerSample is used when it says 16; otherwise values within 0-255 are taken as 8-bit, within
      0-65535 as 16-bit, floats within 0-1 as 0-1 intensities; anything else (negative values, NaN,
      larger ranges) is refused rather than guessed;
    - alpha (``RGBA``, ``LA``, ``PA``, ``P`` with transparency, premultiplied ``RGBa`` / ``La``) is
      composited on white (``ALPHA_BACKGROUND``);
    - ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``: Pillow's conversion.
    """
    import numpy as np
    from PIL import Image

    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16"):
        return _scaled_to_l(np.asarray(im), 255.0 / 65535.0).convert("RGB")
    if mode in ("I", "F"):
        arr = np.asarray(im)
        if arr.size == 0:
            raise ImageConversionError(f"empty {mode} image")
        if not np.isfinite(arr).all():
            raise ImageConversionError(f"mode {mode} image has non-finite pixel values")
        lo, hi = float(arr.min()), float(arr.max())
        if _declared_bits(im) == 16 and lo >= 0 and hi <= 65535:
            scale = 255.0 / 65535.0
        elif lo < 0:
            raise ImageConversionError(f"mode {mode} image has negative pixel values (min {lo:g}); no 8-bit scale is known")
        elif mode == "F" and hi <= 1.0:
            scale = 255.0
        elif hi <= 255:
            scale = 1.0
        elif hi <= 65535:
            scale = 255.0 / 65535.0
        else:
            raise ImageConversionError(f"mode {mode} image has pixel values up to {hi:g}; no 8-bit scale is known")
        return _scaled_to_l(arr, scale).convert("RGB")
    if mode == "La":
        im, mode = im.convert("LA"), "LA"
    elif mode == "RGBa":
        im, mode = im.convert("RGBA"), "RGBA"
    has_alpha = mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info)
    try:
        if has_alpha:
            rgba = im.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
            return Image.alpha_composite(bg, rgba).convert("RGB")
        return im.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageConversionError(f"mode {mode} cannot be converted to RGB ({e})") from e


def normalize_image(im):
    """Decode once, apply the EXIF orientation, convert to 8-bit RGB -> (image, info).

    ``info``: ``orientation`` (the EXIF value applied, 1 = none), ``stored_size`` (w, h before
    orientation), ``mode`` (the mode decoded), ``frames`` (multi-frame files keep frame 0), and
    ``changed`` (whether the pixels differ from the file's own RGB decode, i.e. it must be re-encoded).
    This is what ``datasets`` hands to a model's processor after its own ``exif_transpose`` and the
    processor's ``convert("RGB")``, made explicit and done once.
    """
    from PIL import ImageOps

    with strict_decoding():
        im.load()
    orientation = exif_orientation(im)
    info = {"orientation": orientation, "stored_size": tuple(im.size), "mode": im.mode,
            "frames": int(getattr(im, "n_frames", 1) or 1)}
    out = ImageOps.exif_transpose(im) if orientation != 1 else im
    out = to_rgb8(out)
    info["changed"] = orientation != 1 or info["mode"] != "RGB"
    return out, info


def processor_refusal(size, max_aspect_ratio: float | None = MAX_ASPECT_RATIO, min_side: int = 1) -> str | None:
    """Why a model processor would refuse an image of ``size`` (w, h), or None."""
    w, h = int(size[0]), int(size[1])
    if min(w, h) < max(1, int(min_side)):
        return f"{w}x{h} has a side under {min_side} px (--min-image-side)"
    if max_aspect_ratio is not None and max(w, h) / min(w, h) > max_aspect_ratio:
        return (f"{w}x{h} has aspect ratio {max(w, h) / min(w, h):.1f} > {max_aspect_ratio:g}, which the Qwen-VL "
                "processors refuse (--max-aspect-ratio)")
    return None
