"""Read a radiograph from any common file into display-ready float32 pixels in [0, 1].

`load_xray` takes a path, bytes or a binary file object holding a DICOM (handled by `trainer.dicom`), PNG
(8- or 16-bit), JPEG, TIFF (8- or 16-bit) or BMP file, and returns an `XRay` whose pixels are bright where
the body is dense (bone), as the image is meant to be displayed. Outside DICOM (whose window or VOI LUT is
applied) intensities are divided by the largest value the bit depth allows, never clipped: 16-bit data keeps
all its levels.

16-bit PNG: divided by 65535, unless an sBIT chunk declares n < 16 significant bits *and* no value exceeds
2**n - 1. Such a file holds n-bit data stored unscaled (common for 12-bit medical exports), so it is divided
by 2**n - 1. A writer that follows the PNG specification shifts n-bit data up to fill 16 bits; its values then
exceed 2**n - 1 and 65535 remains the right divisor.
"""

from __future__ import annotations

import codecs
import io
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 60_000_000
"""Default limit on height * width, checked from the header before any pixel data is decoded."""

SUPPORTED_FORMATS = "DICOM, PNG, JPEG, TIFF, BMP"
DICOM_SUFFIXES = (".dcm", ".dicom")
_PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "TIFF": "tiff", "BMP": "bmp"}
# ITU-R BT.601 luma, the weights Pillow's own "L" conversion uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


class XRayReadError(ValueError):
    """The input cannot be read as a radiograph; the message says what is wrong and what to do."""


class XRayWarning(UserWarning):
    """A lossy or notable but valid conversion while reading (colour to gray, inversion, first frame only)."""


@dataclass(frozen=True, eq=False)  # eq=False: numpy arrays do not compare to a single bool
class XRay:
    """A radiograph ready for preprocessing.

    Attributes:
        pixels: float32 (H, W) in [0, 1]; bright = dense (bone), as displayed.
        source_format: "png", "jpeg", "tiff", "bmp" or "dicom".
        original_size: (height, width) as read, after EXIF orientation and before any preprocessing.
        bit_depth: bits per sample actually used (1, 8, 12, 15, 16, ...).
        photometric: DICOM photometric interpretation, or the Pillow mode ("L", "I;16", "RGB", "P", ...).
        window: the intensity window or VOI LUT applied, None if the values were only divided by the range.
        warnings: lossy or notable conversions made while reading.
        header: a safe DICOM summary (modality, view position, size, ...) without patient identifiers;
            {} for other formats.
        chroma: how colourful the source was, the mean over pixels of (max - min of R, G, B) in [0, 1]; 0 for
            grayscale sources and DICOM (whose colour shows in `photometric`).
    """

    pixels: np.ndarray
    source_format: str
    original_size: tuple[int, int]
    bit_depth: int
    photometric: str
    window: str | None
    warnings: tuple[str, ...]
    header: dict[str, str]
    chroma: float = 0.0


def load_xray(source: str | os.PathLike | bytes | BinaryIO, *, max_pixels: int = MAX_PIXELS) -> XRay:
    """Read a radiograph (DICOM, PNG, JPEG, TIFF or BMP) into float32 pixels in [0, 1].

    The format is recognised from the content; a `.dcm` name only makes a DICOM without the standard
    preamble acceptable. Every conversion worth knowing about is listed in `XRay.warnings` and also emitted
    as an `XRayWarning`.

    Args:
        source: a file path, the file's bytes, or a binary file object (e.g. an upload).
        max_pixels: largest height * width accepted, checked before the pixel data is decoded.

    Returns:
        The image with its format, size, bit depth and (for DICOM) a header summary free of identifiers.

    Raises:
        XRayReadError: the input is missing, empty, truncated, corrupt, too large or not a supported image.
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive number of pixels, got {max_pixels}")
    data, name = _read_source(source)
    label = repr(name) if name else "the input"
    if not data:
        hint = "seek(0) if it was read before" if hasattr(source, "read") else "check the file or the export"
        raise XRayReadError(f"cannot read {label}: it is empty (0 bytes); {hint}")
    # Imported here, not at the top: trainer.dicom imports this module for XRay and XRayReadError.
    from trainer import dicom

    dataset = dicom.parse(data, suffix=Path(name).suffix.lower(), label=label)
    if dataset is not None:
        xray = dicom.to_xray(dataset, max_pixels=max_pixels, label=label)
    else:
        xray = _read_image(data, name, label, max_pixels)
    for message in xray.warnings:
        warnings.warn(message, XRayWarning, stacklevel=2)
    return xray


def luma(rgb: np.ndarray) -> np.ndarray:
    """Gray (ITU-R BT.601 luma) of an (H, W, 3+) array, in the input's units; extra channels are ignored."""
    return rgb[..., :3].astype(np.float64) @ _LUMA


def too_large_error(label: str, height: int, width: int, max_pixels: int) -> XRayReadError:
    """The error for an image over the pixel limit (shared by the DICOM reader)."""
    return XRayReadError(
        f"cannot read {label}: the image is {height}x{width} (height x width) = {height * width / 1e6:.1f} "
        f"megapixels, over the limit of {max_pixels / 1e6:.1f} megapixels; downsample it first, or pass a "
        "larger max_pixels if the memory is there"
    )


def _read_source(source: str | os.PathLike | bytes | BinaryIO) -> tuple[bytes, str]:
    """The raw bytes and a file name ("" when unknown)."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), ""
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        try:
            return path.read_bytes(), path.name
        except FileNotFoundError:
            raise XRayReadError(f"cannot read {str(path)!r}: no such file; check the path") from None
        except IsADirectoryError:
            raise XRayReadError(f"cannot read {str(path)!r}: it is a directory, not an image file") from None
        except OSError as exc:
            raise XRayReadError(f"cannot read {str(path)!r}: {exc.strerror}; check its permissions") from exc
    if not hasattr(source, "read"):
        raise TypeError(f"source must be a path, bytes or a binary file object, not {type(source).__name__}")
    data = source.read()
    name = Path(str(getattr(source, "name", ""))).name
    if isinstance(data, str):
        what = repr(name) if name else "the input"
        raise XRayReadError(f"cannot read {what}: the file object is in text mode; open the file with 'rb'")
    return bytes(data), name


def _read_image(data: bytes, name: str, label: str, max_pixels: int) -> XRay:
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
    try:
        pixels, bit_depth, window = _pil_pixels(image, data, source_format, found)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise XRayReadError(
            f"cannot read {label}: the {source_format.upper()} data is truncated or corrupt ({exc}); "
            "re-export or re-download the file"
        ) from exc
    return XRay(
        pixels=np.clip(pixels, 0.0, 1.0).astype(np.float32),
        source_format=source_format,
        original_size=pixels.shape,
        bit_depth=bit_depth,
        photometric=image.mode,
        window=window,
        warnings=tuple(found),
        header={},
        chroma=_chroma(image),
    )


def _pil_pixels(
    image: Image.Image, data: bytes, source_format: str, found: list[str]
) -> tuple[np.ndarray, int, str | None]:
    """(pixels in [0, 1], bits per sample, window) from a lazily opened Pillow image; appends to `found`."""
    mode = image.mode
    stored_bits = _stored_bits(image, data, source_format)
    if stored_bits > 8 and mode in ("RGB", "RGBA"):
        import cv2  # only for this rare case: Pillow decodes 16-bit colour PNG/TIFF at 8 bits per channel

        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if decoded is None:
            raise ValueError(f"OpenCV could not decode the {stored_bits}-bit colour data")
        gray = _gray_from_rgb(decoded[..., 2::-1], mode, found)  # OpenCV gives BGR(A)
        return _scale_16bit(gray, _png_significant_bits(data) if source_format == "png" else None)
    image = ImageOps.exif_transpose(image)
    if mode.startswith("I;16"):
        significant = _png_significant_bits(data) if source_format == "png" else None
        return _scale_16bit(np.asarray(image, dtype=np.float64), significant)
    if mode in ("I", "F"):  # 32-bit integer or float samples (TIFF): no fixed full scale
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
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
        return np.asarray(image, dtype=np.float64), 1, None
    if mode in ("L", "LA", "La"):
        return np.asarray(image.convert("L"), dtype=np.float64) / 255.0, 8, None
    # RGB, RGBA, P, PA, CMYK, YCbCr, ...: converting to RGB drops any alpha channel.
    rgb = np.asarray(image.convert("RGB"))
    return _gray_from_rgb(rgb, mode, found) / 255.0, 8, None


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


def _scale_16bit(values: np.ndarray, significant: int | None) -> tuple[np.ndarray, int, None]:
    """Divide 16-bit samples by their full scale (see the module docstring for the sBIT rule)."""
    if significant is not None and significant < 16 and values.max() <= 2**significant - 1:
        return values / (2**significant - 1), significant, None
    return values / 65535.0, 16, None


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
