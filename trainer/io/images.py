"""PNG (8- or 16-bit), JPEG, TIFF (8- or 16-bit) and BMP radiographs to float32 pixels in [0, 1], via Pillow.

16-bit PNG: divided by 65535, unless an sBIT chunk declares n < 16 significant bits *and* no value exceeds
2**n - 1. Such a file holds n-bit data stored unscaled (common for 12-bit medical exports), so it is divided
by 2**n - 1. A writer that follows the PNG specification shifts n-bit data up to fill 16 bits; its values then
exceed 2**n - 1 and 65535 remains the right divisor.
"""

from __future__ import annotations

import codecs
import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from trainer.io.xray import (
    DICOM_SUFFIXES,
    SUPPORTED_FORMATS,
    XRay,
    XRayReadError,
    fit_within,
    luma,
    too_large_error,
)

_PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "TIFF": "tiff", "BMP": "bmp"}
_EXIF_ORIENTATION = 0x0112


def read_image(data: bytes, name: str, label: str, max_pixels: int, max_side: int | None = None) -> XRay:
    """Decode PNG, JPEG, TIFF or BMP with Pillow (OpenCV for 16-bit colour, which Pillow cuts to 8 bits)."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise XRayReadError(
            f"cannot read {label}: the image is larger than Pillow's decompression-bomb limit of "
            f"{2 * Image.MAX_IMAGE_PIXELS} pixels; downsample it first"
        ) from None
    except UnidentifiedImageError:
        raise XRayReadError(_unidentified_message(data, name, label)) from None
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise XRayReadError(
            f"cannot read {label}: the image header is corrupt ({exc}); re-export the file"
        ) from exc
    source_format = _PIL_FORMATS.get(image.format or "")
    if source_format is None:
        raise XRayReadError(
            f"cannot read {label}: {image.format} images are not supported; supported: {SUPPORTED_FORMATS}. "
            "Convert it to PNG (16-bit if the original has more than 8 bits)"
        )
    width, height = image.size
    if width * height > max_pixels:
        raise too_large_error(label, height, width, max_pixels)
    found: list[str] = []
    if Path(name).suffix.lower() in DICOM_SUFFIXES:
        found.append(
            f"the file is named {name!r} but holds a {source_format.upper()} image, not a DICOM; "
            "read it as such"
        )
    if max_side is not None and source_format == "jpeg":
        image.draft(None, (max_side, max_side))  # JPEG decodes at 1/2, 1/4 or 1/8 scale, still >= max_side
    try:
        if image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
            width, height = height, width  # exif_transpose turns it a quarter
        pixels, bit_depth, window = _pil_pixels(image, data, source_format, found, max_side)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise XRayReadError(
            f"cannot read {label}: the {source_format.upper()} data is truncated or corrupt ({exc}); "
            "re-export or re-download the file"
        ) from exc
    return XRay(
        pixels=np.clip(pixels, 0.0, 1.0).astype(np.float32, copy=False),
        source_format=source_format,
        original_size=(height, width),
        bit_depth=bit_depth,
        photometric=image.mode,
        window=window,
        warnings=tuple(found),
        header={},
        chroma=_chroma(image),
    )


def _pil_pixels(
    image: Image.Image, data: bytes, source_format: str, found: list[str], max_side: int | None
) -> tuple[np.ndarray, int, str | None]:
    """(pixels in [0, 1], bits per sample, window) from a lazily opened Pillow image; appends to `found`.

    Samples are downscaled to `max_side` as decoded, before any conversion to floating point.
    """
    mode = image.mode
    stored_bits = _stored_bits(image, data, source_format)
    if stored_bits > 8 and mode in ("RGB", "RGBA"):
        import cv2  # only for this rare case: Pillow decodes 16-bit colour PNG/TIFF at 8 bits per channel

        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if decoded is None:
            raise ValueError(f"OpenCV could not decode the {stored_bits}-bit colour data")
        significant = _png_significant_bits(data) if source_format == "png" else None
        scale, bits = _full_scale_16bit(decoded[..., :3], significant)  # on every sample, before the resize
        gray = _gray_from_rgb(fit_within(decoded, max_side)[..., 2::-1], mode, found)  # OpenCV gives BGR(A)
        return gray / scale, bits, None
    image = ImageOps.exif_transpose(image)
    if mode.startswith("I;16"):
        significant = _png_significant_bits(data) if source_format == "png" else None
        stored = np.asarray(image)
        scale, bits = _full_scale_16bit(stored, significant)  # decided on every sample, before the resize
        return _scaled(fit_within(stored, max_side), scale), bits, None
    if mode in ("I", "F"):  # 32-bit integer or float samples (TIFF): no fixed full scale
        samples = np.asarray(image)
        low, high = float(samples.min()), float(samples.max())
        values: np.ndarray = fit_within(samples, max_side).astype(np.float64)
        if mode == "F" and low >= 0.0 and high <= 1.0:
            return values, 32, None
        span = high - low
        scaled = (values - low) / span if span > 0 else np.zeros_like(values)
        return (
            scaled,
            32,
            f"min/max of the pixel data ({low:g} to {high:g}); 32-bit samples have no fixed range",
        )
    if mode == "1":
        return fit_within(np.asarray(image, dtype=np.float32), max_side), 1, None
    if mode in ("L", "LA", "La"):
        return _scaled(fit_within(np.asarray(image.convert("L")), max_side), 255.0), 8, None
    # RGB, RGBA, P, PA, CMYK, YCbCr, ...: converting to RGB drops any alpha channel.
    rgb = fit_within(np.asarray(image.convert("RGB")), max_side)
    return _gray_from_rgb(rgb, mode, found) / 255.0, 8, None


def _scaled(samples: np.ndarray, full_scale: float) -> np.ndarray:
    """Integer samples (8 or 16 bits) divided by their full scale, in float32.

    Exactly the float32 rounding of the float64 quotient: both operands are integers below 2**24, so exact
    in float32, and rounding a quotient to 53 bits first and then to 24 never differs from rounding it to 24
    directly (53 >= 2 * 24 + 2). A quarter of the memory traffic of dividing in float64 and then converting.
    """
    return samples.astype(np.float32) / np.float32(full_scale)


def _chroma(image: Image.Image, samples: int = 65536) -> float:
    """Mean (max - min) over R, G, B in [0, 1], on an evenly spaced subsample; 0 for grayscale modes."""
    if image.mode in ("1", "L", "LA", "La", "I", "F") or image.mode.startswith("I;16"):
        return 0.0
    width, height = image.size
    step = max(1, round((width * height / samples) ** 0.5))
    rgb = np.asarray(image.convert("RGB"))[::step, ::step].astype(np.int16)
    return float((rgb.max(axis=-1) - rgb.min(axis=-1)).mean() / 255.0)


def _gray_from_rgb(rgb: np.ndarray, mode: str, found: list[str]) -> np.ndarray:
    """One channel when all three agree (exact), else luma with a warning."""
    red, green, blue = (rgb[..., i] for i in range(3))
    if np.array_equal(red, green) and np.array_equal(green, blue):
        return red.astype(np.float64)
    found.append(f"colour image ({mode}) converted to grayscale (luma); its colour channels differed")
    return luma(rgb)


def _full_scale_16bit(values: np.ndarray, significant: int | None) -> tuple[float, int]:
    """(full scale, bits) of 16-bit samples: the sBIT rule of the module docstring."""
    if significant is not None and significant < 16 and values.max() <= 2**significant - 1:
        return float(2**significant - 1), significant
    return 65535.0, 16


def _stored_bits(image: Image.Image, data: bytes, source_format: str) -> int:
    """Bits per sample in the file itself, which Pillow's mode hides for 16-bit colour."""
    if source_format == "png" and len(data) > 24:
        return data[24]  # IHDR bit depth: IHDR is always the first chunk
    if source_format == "tiff":
        bits = getattr(image, "tag_v2", {}).get(258, 8)  # BitsPerSample, one value per channel
        return max(bits) if isinstance(bits, tuple) else int(bits)
    return 8


def _png_significant_bits(data: bytes) -> int | None:
    """The sBIT chunk's largest value, or None; it must come before the first IDAT chunk."""
    position = 8
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        if kind == b"IDAT":
            return None
        if kind == b"sBIT" and length:
            return max(data[position + 8 : position + 8 + length])
        position += 12 + length
    return None


def _unidentified_message(data: bytes, name: str, label: str) -> str:
    """Why content that is neither DICOM nor a Pillow image cannot be read, without quoting it."""
    head = data[:4096]
    try:
        # Incremental: a multi-byte character cut at the end of `head` is not an error.
        is_text = b"\x00" not in head and bool(codecs.getincrementaldecoder("utf-8")().decode(head).strip())
    except UnicodeDecodeError:
        is_text = False
    what = "it looks like a text file" if is_text else "its content matches no known image format"
    if Path(name).suffix.lower() in DICOM_SUFFIXES:
        return (
            f"cannot read {label}: it is named like a DICOM file but is not one (no 'DICM' marker at byte "
            f"128 and no parsable DICOM data set) nor an image: {what}; check that the right file was sent"
        )
    return f"cannot read {label}: not an image: {what}; supported formats: {SUPPORTED_FORMATS}"
