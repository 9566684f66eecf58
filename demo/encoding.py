"""How the demo encodes images: a compact format for the ones it shows, lossless PNG for downloads.

Every image a response shows (the overlay, before/after, any other view) goes through `display_bytes`; every
image offered as a download through `png_bytes`. Measured on a 512 px overlay (bench/speed.py keeps the
numbers): Pillow's default PNG costs ~80 ms and ~240 KiB, WebP at quality 90 ~20-50 ms and ~20 KiB, JPEG at
quality 90 ~1-3 ms and ~37 KiB (PSNR ~47 dB, invisible at display size). The server's CPU is the scarce part
on a 2-vCPU Space (two requests at a time, others queue), so JPEG: the fastest to encode by an order of
magnitude, and small enough that the transfer is a few milliseconds. Downloads stay PNG (at zlib level 1:
as lossless as the default level, ~5x faster, ~20 % larger).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

__all__ = ["DISPLAY_FORMAT", "DISPLAY_SUFFIX", "as_uint8", "display_bytes", "png_bytes"]

DISPLAY_FORMAT = "jpeg"  # what `gr.Image(format=...)` is told, for the views that get arrays
DISPLAY_SUFFIX = ".jpg"
JPEG_QUALITY = 90
PNG_LEVEL = 1  # zlib level: the bytes decode to the same pixels at any level


def display_bytes(image: np.ndarray) -> bytes:
    """A shown image as JPEG bytes (quality `JPEG_QUALITY`).

    Args:
        image: uint8 pixels, (H, W) greyscale or (H, W, 3) RGB (an alpha channel is dropped: JPEG has none).

    Raises:
        ValueError: not uint8, or not one of those shapes.
    """
    data = io.BytesIO()
    picture = _picture(image)
    if picture.mode == "RGBA":
        picture = picture.convert("RGB")
    picture.save(data, format="JPEG", quality=JPEG_QUALITY)
    return data.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    """A downloadable image as lossless PNG bytes (uint8 (H, W), (H, W, 3) or (H, W, 4))."""
    data = io.BytesIO()
    _picture(image).save(data, format="PNG", compress_level=PNG_LEVEL)
    return data.getvalue()


def _picture(image: np.ndarray) -> Image.Image:
    if image.dtype != np.uint8:
        raise ValueError(f"images are encoded from uint8 pixels, got {image.dtype}: convert them first")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        raise ValueError(f"an image is (H, W), (H, W, 3) or (H, W, 4), got shape {image.shape}")
    return Image.fromarray(image)


def as_uint8(image: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] as 8-bit pixels for display."""
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
