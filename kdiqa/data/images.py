"""Decode any image a user may have into 8-bit RGB, or fail with a one-line DataError.

IQA datasets are mostly 8-bit RGB JPEGs, but user folders hold PNGs with alpha, 16-bit TIFFs, grey
scans, CMYK JPEGs from print workflows, palette GIFs and phone photos whose pixels are stored sideways
with an EXIF orientation tag. Every model in kdiqa expects the same thing, so the conversion happens
once, here, with rules that are written down rather than left to Pillow's defaults (which clip 16-bit
data to 255 instead of scaling it, and ignore EXIF orientation).
"""
from __future__ import annotations

import io
import os
import struct
import warnings

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from kdiqa.errors import DataError

# Largest image (width × height) we decode; bigger files are refused before their pixels are read.
# Equal to the threshold at which Pillow itself raises DecompressionBombError (2 × its warning limit).
# Raising it above that also needs PIL.Image.MAX_IMAGE_PIXELS raised, since Pillow checks first.
MAX_PIXELS = 2 * 89_478_485

# White, because transparent regions are meant to show the page behind them and most viewers (and the
# people who rated the images) see them on a light background; the RGB values hidden under alpha = 0
# are arbitrary (often black) and would otherwise leak into the model input.
ALPHA_BACKGROUND = (255, 255, 255)

ORIENTATION_TAG = 0x0112  # EXIF orientation: 1 upright, 5-8 stored with width and height swapped

# What counts as an image when a folder is searched (``kdiqa predict``, ``data.unlabelled.folder``).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"})

__all__ = ["MAX_PIXELS", "ALPHA_BACKGROUND", "IMAGE_SUFFIXES", "load_image", "to_rgb"]

# What Pillow's decoders raise on corrupt or truncated files (each plugin has its habits).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError)


def load_image(path: str | os.PathLike, reduce_to: tuple[int, int] | None = None) -> Image.Image:
    """Open ``path`` and return an independent 8-bit RGB image, upright as the camera meant it.

    - EXIF orientation is applied (phone photos are stored sideways otherwise).
    - Alpha (RGBA, LA, PA, palette transparency) is composited onto white; see ``ALPHA_BACKGROUND``.
    - 16-bit and 32-bit grey are scaled to 0..255, never clipped; see :func:`to_rgb`.
    - Images over ``MAX_PIXELS`` are refused from their header, before decoding.
    - ``reduce_to = (width, height)``: a JPEG may be decoded at 1/2, 1/4 or 1/8 of its size (the
      decoder's DCT scaling, :meth:`PIL.Image.Image.draft`: several times faster) as long as the
      upright result stays at least that large; other formats decode at full size. For scoring a
      whole view resized to the model's input (``kdiqa predict``), where it changes the pixels only
      as a different downscaling filter would.
    The file is closed before returning. Any failure is a :class:`DataError` naming the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: image file not found")
    try:
        with warnings.catch_warnings():
            # Our own MAX_PIXELS check below is the limit; Pillow's warning threshold is lower and noisy.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                if width * height > MAX_PIXELS:
                    raise DataError(
                        f"{path}: image is {width}x{height} = {width * height} pixels, over the limit "
                        f"kdiqa.data.images.MAX_PIXELS = {MAX_PIXELS} (refused as a possible decompression bomb)"
                    )
                if reduce_to is not None and im.format == "JPEG":
                    im.draft(None, _stored_size(im, reduce_to))
                im.load()
                rgb = to_rgb(_upright(im))
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: refused as a possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image Pillow can identify") from None
    except _DECODE_ERRORS as exc:
        raise DataError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None
    return rgb


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert an image of any Pillow mode to 8-bit RGB by explicit rules (always a new image).

    - ``I;16*`` (16-bit grey): divided by 257, so 65535 → 255 exactly.
    - ``I`` and ``F`` (32-bit int/float grey, e.g. 16-bit PGM or float TIFF): the bit depth is not in
      the mode, so it is inferred from the largest value: within [0, 1] (``F`` only) → × 255; within
      [0, 255] → as is; within [0, 65535] → / 257; larger → scaled by the maximum. Negatives clip to 0.
    - ``CMYK``: through the embedded ICC profile when there is one, else Pillow's naive formula.
    - alpha modes: composited onto ``ALPHA_BACKGROUND``.
    """
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_grey_to_uint8(image), mode="L").convert("RGB")
    if mode == "P":
        has_alpha = "transparency" in image.info or (image.palette is not None and image.palette.mode == "RGBA")
        return _composite(image.convert("RGBA")) if has_alpha else image.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite(image.convert("RGBA"))
    if mode == "CMYK":
        return _cmyk_to_rgb(image)
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise ValueError(f"cannot convert image mode {mode!r} to RGB ({exc})") from None


def _stored_size(image: Image.Image, size: tuple[int, int]) -> tuple[int, int]:
    """``size`` (width, height) of the upright image, in the file's stored orientation (EXIF 5-8 swap axes)."""
    try:
        orientation = image.getexif().get(ORIENTATION_TAG, 1)
    except _DECODE_ERRORS:
        orientation = 1  # as _upright: a corrupt EXIF block costs the rotation
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else (size[0], size[1])


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a corrupt EXIF block costs the rotation, not the image."""
    try:
        return ImageOps.exif_transpose(image)  # always a new image, independent of the open file
    except _DECODE_ERRORS:
        return image.copy()


def _grey_to_uint8(image: Image.Image) -> np.ndarray:
    arr = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16"):
        full_scale = 65535.0
    else:
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(arr.max()) if arr.size else 0.0
        if image.mode == "F" and peak <= 1.0:
            full_scale = 1.0
        elif peak <= 255.0:
            full_scale = 255.0
        elif peak <= 65535.0:
            full_scale = 65535.0
        else:
            full_scale = peak
    scaled = np.clip(arr, 0.0, full_scale) * (255.0 / full_scale)
    return np.rint(scaled).astype(np.uint8)


def _composite(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    icc = image.info.get("icc_profile")
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile is common in the wild; the naive conversion is still usable
    return image.convert("RGB")
