"""Read a radiograph from any common file into display-ready float32 pixels in [0, 1].

`load_xray` takes a path, bytes or a binary file object holding a DICOM (handled by `trainer.io.dicom`), PNG
(8- or 16-bit), JPEG, TIFF (8- or 16-bit) or BMP file, and returns an `XRay` whose pixels are bright where
the body is dense (bone), as the image is meant to be displayed. Outside DICOM (whose window or VOI LUT is
applied) intensities are divided by the largest value the bit depth allows, never clipped: 16-bit data keeps
all its levels.

The DICOM reader is `trainer.io.dicom`, the other formats' `trainer.io.images`; the type they return, its
errors and the shared limits are in `trainer.io.xray`.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import BinaryIO

from trainer.io import dicom
from trainer.io.images import read_image
from trainer.io.xray import MAX_PIXELS, SUPPORTED_FORMATS, XRay, XRayReadError, XRayWarning

__all__ = ["MAX_PIXELS", "SUPPORTED_FORMATS", "XRay", "XRayReadError", "XRayWarning", "load_xray"]


def load_xray(
    source: str | os.PathLike | bytes | BinaryIO, *, max_pixels: int = MAX_PIXELS, max_side: int | None = None
) -> XRay:
    """Read a radiograph (DICOM, PNG, JPEG, TIFF or BMP) into float32 pixels in [0, 1].

    The format is recognised from the content; a `.dcm` name only makes a DICOM without the standard
    preamble acceptable. Every conversion worth knowing about is listed in `XRay.warnings` and also emitted
    as an `XRayWarning`.

    Args:
        source: a file path, the file's bytes, or a binary file object (e.g. an upload).
        max_pixels: largest height * width accepted, checked before the pixel data is decoded.
        max_side: if given, a larger image is area-downscaled right after decoding (JPEG: decoded at reduced
            scale) so that its longer side is at most this, still in its stored bit depth: one read's memory
            is then bounded whatever the pixel count. None keeps the full resolution.

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
    dataset = dicom.parse(data, suffix=Path(name).suffix.lower(), label=label)
    if dataset is not None:
        xray = dicom.to_xray(dataset, max_pixels=max_pixels, max_side=max_side, label=label)
    else:
        xray = read_image(data, name, label, max_pixels, max_side)
    if xray.pixels.shape != xray.original_size:
        (height, width), (new_height, new_width) = xray.original_size, xray.pixels.shape
        note = f"read at reduced resolution: {width}x{height} px downscaled to {new_width}x{new_height}"
        xray = dataclasses.replace(xray, warnings=(*xray.warnings, note))
    for message in xray.warnings:
        warnings.warn(message, XRayWarning, stacklevel=2)
    return xray


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
