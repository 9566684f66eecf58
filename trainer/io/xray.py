"""The radiograph type every reader returns, the errors and warnings of reading, and the shared limits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.errors import ChexlabError

MAX_PIXELS = 60_000_000
"""Default limit on height * width, checked from the header before any pixel data is decoded."""

SUPPORTED_FORMATS = "DICOM, PNG, JPEG, TIFF, BMP"
DICOM_SUFFIXES = (".dcm", ".dicom")
# ITU-R BT.601 luma, the weights Pillow's own "L" conversion uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


class XRayReadError(ChexlabError, ValueError):
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


def luma(rgb: np.ndarray) -> np.ndarray:
    """Gray (ITU-R BT.601 luma) of an (H, W, 3+) array, in the input's units; extra channels are ignored."""
    return rgb[..., :3].astype(np.float64) @ _LUMA


def fit_within(values: np.ndarray, max_side: int | None) -> np.ndarray:
    """`values` (H, W[, C]) area-downscaled so that the longer side is at most `max_side`, in its own dtype.

    Integer samples stay integers (rounded), so 16-bit levels survive and LUT indices stay indices; an image
    that already fits (or `max_side=None`) is returned as it is.
    """
    height, width = values.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return values
    import cv2  # imported on demand: most reads need no resize

    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if values.dtype in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
        return cv2.resize(values, size, interpolation=cv2.INTER_AREA)
    resized = cv2.resize(values.astype(np.float64), size, interpolation=cv2.INTER_AREA)  # e.g. int32
    return (np.rint(resized) if values.dtype.kind in "iu" else resized).astype(values.dtype)


def too_large_error(label: str, height: int, width: int, max_pixels: int) -> XRayReadError:
    """The error for an image over the pixel limit (both readers check it from the header)."""
    return XRayReadError(
        f"cannot read {label}: the image is {height}x{width} (height x width) = {height * width / 1e6:.1f} "
        f"megapixels, over the limit of {max_pixels / 1e6:.1f} megapixels; downsample it first, or pass a "
        "larger max_pixels if the memory is there"
    )
