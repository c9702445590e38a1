"""Images from clients and archives: only common raster formats are opened, and the pixel count is checked from
the header before any pixel is decoded, for uploads and requests alike."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

#: Formats PIL decodes at the size their header declares; of multi-frame ones (GIF, TIFF, WebP, MPO, APNG) only
#: the first frame is ever decoded. Others are refused: ICO and ICNS hold sub-images of other sizes, EPS is
#: rendered by Ghostscript, and the rest are rare enough not to be worth their decoders' attack surface.
FORMATS = ("PNG", "JPEG", "MPO", "GIF", "BMP", "DIB", "TIFF", "WEBP", "PPM", "TGA")
FORMAT_NAMES = "PNG, JPEG, GIF, BMP, TIFF, WebP, PNM or TGA"
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}

# PIL's own decompression-bomb guard is replaced by the explicit pixel limit below.
Image.MAX_IMAGE_PIXELS = None


class ImageRefused(ValueError):
    """An image that is not opened or decoded; the message says why, for the client."""


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """``data`` as an image whose header has been read and no pixel decoded yet. Raises ``ImageRefused`` for a
    format not in ``FORMATS`` or more than ``max_pixels`` pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data), formats=FORMATS)
    except Exception:  # noqa: BLE001 - PIL raises many types for what is not an image
        raise ImageRefused(f"not an image in a supported format ({FORMAT_NAMES})") from None
    if im.width * im.height > max_pixels:
        raise ImageRefused(f"too many pixels ({im.width}×{im.height} > {max_pixels})")
    return im


def fit_image(im: Image.Image, channels: int, size: tuple[int, int]) -> np.ndarray:
    """Convert a PIL image to (channels, *size) uint8: scale to cover ``size`` keeping its aspect ratio,
    then centre-crop. Used for stored datasets and for images sent to the embedding endpoint alike."""
    im = im.convert("L" if channels == 1 else "RGB")
    h, w = size
    if im.size != (w, h):
        scale = max(h / im.height, w / im.width)
        new = (max(w, round(im.width * scale)), max(h, round(im.height * scale)))
        im = im.resize(new, Image.Resampling.BILINEAR, reducing_gap=3.0)
        left, top = (new[0] - w) // 2, (new[1] - h) // 2
        im = im.crop((left, top, left + w, top + h))
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def stored_to_pil(pixels: np.ndarray) -> Image.Image:
    """A stored ``(C, H, W)`` uint8 image (one channel or three) as a PIL image."""
    return Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))


def decode_fitted(im: Image.Image, channels: int, size: tuple[int, int]) -> np.ndarray:
    """An opened image decoded and fitted to ``(channels, *size)`` uint8 (``fit_image``); the full-size decode
    is dropped on return. Raises ``ImageRefused`` for truncated or corrupt pixel data."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fit_image(im, channels, size)
    except Exception as exc:  # noqa: BLE001 - decoders raise many types for hostile data
        raise ImageRefused(f"corrupt image: {exc or type(exc).__name__}") from None
