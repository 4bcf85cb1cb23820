"""Decoding a visitor's image within a memory budget decided from its header alone.

Every limit is checked before a pixel is decoded: the declared size, and the bytes the decoder will
allocate for it (bytes per sample counted: a 16-bit or float image costs 2-4 times an 8-bit one; a
progressive JPEG holds its whole coefficient buffer at full size, whatever the draft scale). What is
admitted is shrunk in its own mode before any conversion, so a deep image is never copied at full size.
"""
from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageMode, JpegImagePlugin, PngImagePlugin

from mlc.data.base import to_rgb
from mlc.serving.errors import RequestError

MAX_FILE_BYTES = 50 * 2**20
MAX_DECODE_PIXELS = 40_000_000  # decoded at full size (every format but a baseline JPEG)
MAX_JPEG_PIXELS = 210_000_000  # a baseline JPEG decodes at 1/8 scale: a 200 MP phone photo still works
MAX_DECODE_BYTES = 192 * 2**20  # the largest buffer one decode may allocate (40 MP RGBA or float: 160 MB)
MAX_SIDE = 1024  # decoded images are downscaled to this; the models see 224-448 px
TINY_SIDE = 32


@dataclass
class DecodedImage:
    """An upload as RGB at most ``MAX_SIDE`` px, with its original size for the status line."""

    image: Image.Image
    original_size: tuple[int, int]

    @property
    def note(self) -> str:
        w, h = self.original_size
        if min(w, h) < TINY_SIDE:
            return f"The image is only {w} x {h} pixels; it was upscaled, so expect unreliable scores."
        if self.image.size != self.original_size:
            return f"The {w} x {h} image was downscaled to {self.image.width} x {self.image.height} before resizing."
        return ""


def too_large(size: tuple[int, int], why: str) -> RequestError:
    w, h = size
    return RequestError(f"Image too large ({w} x {h}, {w * h / 1e6:.0f} MP): {why}. Please downscale it "
                        "(a baseline JPEG of up to 200 MP is fine).")


def pixel_bytes(mode: str) -> int:
    """Bytes PIL stores per pixel in ``mode``: 8-bit images of 3 or 4 bands take 4 (RGBX), deep ones 2-4 a band."""
    info = ImageMode.getmode(mode)
    itemsize = max(1, np.dtype(info.typestr.lstrip("|<>")).itemsize) if info.typestr != "|b1" else 1
    bands = len(info.bands)
    return 4 if itemsize == 1 and bands == 3 else bands * itemsize


def jpeg_coefficient_bytes(image: Image.Image) -> int:
    """What libjpeg holds for a progressive JPEG: every component's DCT coefficients (2 bytes a
    sample) at full size, by its sampling factors; draft scaling does not reduce it."""
    layers = getattr(image, "layer", None) or [("", 1, 1, 0)] * len(image.getbands())
    h_max = max(h for _, h, _, _ in layers)
    v_max = max(v for _, _, v, _ in layers)
    w, h = image.size
    return int(sum(2 * w * h * lh * lv / (h_max * v_max) for _, lh, lv, _ in layers))


def _open_header(path: Path) -> Image.Image:
    """Open without decoding pixels. PIL refuses images over its own bomb limit already here; a
    JPEG or PNG is reopened with its plugin directly, so the refusal can name its size."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.UnidentifiedImageError:
        raise RequestError("The file is not an image that can be read (PNG, JPEG, WebP, BMP, TIFF, GIF ...).") from None
    except Image.DecompressionBombError:
        with open(path, "rb") as f:
            magic = f.read(8)
        if magic.startswith(b"\xff\xd8\xff"):
            return JpegImagePlugin.JpegImageFile(str(path))
        if magic == b"\x89PNG\r\n\x1a\n":
            with PngImagePlugin.PngImageFile(str(path)) as png:
                raise too_large(png.size, f"the limit is {MAX_DECODE_PIXELS / 1e6:.0f} MP") from None
        raise RequestError("Image too large (over 178 MP): Please downscale it.") from None


def check_budget(image: Image.Image, max_side: int) -> None:
    """Refuse, from the header and the draft the decoder was given, what would not decode within
    ``MAX_DECODE_BYTES``; asks a JPEG to decode at reduced scale first."""
    declared = image.size
    pixels = declared[0] * declared[1]
    is_jpeg = image.format == "JPEG"
    progressive = is_jpeg and bool(image.info.get("progressive") or image.info.get("progression"))
    if pixels > (MAX_JPEG_PIXELS if is_jpeg and not progressive else MAX_DECODE_PIXELS):
        limit = MAX_JPEG_PIXELS if is_jpeg and not progressive else MAX_DECODE_PIXELS
        kind = ("a progressive JPEG is decoded at full size, and the limit is"
                if progressive else "the limit is")
        raise too_large(declared, f"{kind} {limit / 1e6:.0f} MP")
    needed = 0
    if progressive:
        needed += jpeg_coefficient_bytes(image)
    if is_jpeg:
        image.draft(image.mode, (max_side, max_side))  # header only: DCT scaling, 1/2 to 1/8
    needed += image.width * image.height * pixel_bytes(image.mode)
    if needed > MAX_DECODE_BYTES:
        raise too_large(declared, f"decoding it needs about {needed / 2**20:.0f} MB; the limit is "
                                  f"{MAX_DECODE_BYTES / 2**20:.0f} MB")


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block only loses the rotation
        return 1


_TRANSPOSE = {2: [Image.Transpose.FLIP_LEFT_RIGHT], 3: [Image.Transpose.ROTATE_180],
              4: [Image.Transpose.FLIP_TOP_BOTTOM], 5: [Image.Transpose.TRANSPOSE],
              6: [Image.Transpose.ROTATE_270], 7: [Image.Transpose.TRANSVERSE], 8: [Image.Transpose.ROTATE_90]}


def _decode(image: Image.Image, max_side: int) -> Image.Image:
    """Decode, shrink in the image's own mode, then rotate by EXIF and convert: the conversions run
    on the small image, so a deep or transparent one is never copied at full size."""
    check_budget(image, max_side)
    orientation = _orientation(image)
    image.load()
    # Image.reduce (the fast first step) takes 8-bit and 32-bit modes only; 16-bit, palette and 1-bit resize directly
    gap = 2.0 if image.mode not in ("1", "P") and not image.mode.startswith("I;16") else None
    image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=gap)
    for method in _TRANSPOSE.get(orientation, []):
        image = image.transpose(method)
    return to_rgb(image)


def load_image(path: str | Path, max_side: int = MAX_SIDE) -> DecodedImage:
    """Decode an upload ourselves, so every failure (not an image, truncated, huge) is a clear RequestError."""
    path = Path(path)
    if not path.is_file():
        raise RequestError("No image was received. Upload an image first.")
    size = path.stat().st_size
    if size == 0:
        raise RequestError("The uploaded file is empty.")
    if size > MAX_FILE_BYTES:
        raise RequestError(f"The file is {size / 2**20:.0f} MB; the limit is {MAX_FILE_BYTES / 2**20:.0f} MB.")
    try:
        with _open_header(path) as image:
            original = image.size
            return DecodedImage(_decode(image, max_side), original)
    except RequestError:
        raise
    except Image.DecompressionBombError as err:
        raise RequestError(f"Image too large to decode safely ({err}). Please downscale it.") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as err:
        raise RequestError(f"The image could not be decoded: the file is truncated or corrupt ({err}).") from None
