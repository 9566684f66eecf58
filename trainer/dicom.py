"""DICOM radiographs to display-ready pixels: modality LUT, VOI LUT or window, MONOCHROME1 inversion.

Use `trainer.io.load_xray`; this module is its DICOM half. Patient, institution and date attributes are
never accessed: only the fields in `to_xray`'s header summary leave this module, and pydicom's own warnings,
which can quote header values, are not passed on (only counted, in a debug log).
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from trainer.io import DICOM_SUFFIXES, XRay, XRayReadError, fit_within, luma, too_large_error

logger = logging.getLogger(__name__)

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
COLOUR = (
    "RGB",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_PARTIAL_420",
    "YBR_PARTIAL_422",
    "YBR_ICT",
    "YBR_RCT",
    "PALETTE COLOR",
)
# Header fields safe to show: acquisition descriptors, never who, where or when.
_SAFE_FIELDS = {
    "modality": "Modality",
    "view_position": "ViewPosition",
    "body_part": "BodyPartExamined",
    "manufacturer": "Manufacturer",
}
# A raw data set (no preamble) starts with a group 0x0002 or 0x0008 tag, little endian.
_RAW_STARTS = (b"\x02\x00", b"\x08\x00")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def parse(data: bytes, *, suffix: str, label: str) -> Dataset | None:
    """The DICOM data set in `data`, or None when the content is not DICOM.

    A file with the 'DICM' marker at byte 128 must parse; without it (a bare data set), parsing is tried only
    for a DICOM file name or a plausible first tag, and a failure means "not DICOM".
    """
    has_marker = data[128:132] == b"DICM"
    if not has_marker and suffix not in DICOM_SUFFIXES and data[:2] not in _RAW_STARTS:
        return None
    try:
        with warnings.catch_warnings(record=True) as caught:
            dataset = pydicom.dcmread(io.BytesIO(data), force=not has_marker)
    except Exception as exc:  # pydicom raises many types on malformed input
        if not has_marker:
            return None
        raise XRayReadError(
            f"cannot read {label}: the DICOM header is truncated or corrupt ({type(exc).__name__}); "
            "re-export or re-copy the file"
        ) from None
    _log_suppressed(caught)
    if not has_marker and not any(
        keyword in dataset for keyword in (*_PIXEL_KEYWORDS, "Rows", "SOPClassUID")
    ):
        return None
    return dataset


def to_xray(dataset: Dataset, *, max_pixels: int, label: str, max_side: int | None = None) -> XRay:
    """Decode the first frame to float32 [0, 1], bright = dense (downscaled to `max_side`, see load_xray).

    Raises:
        XRayReadError: no pixel data, too large, unsupported photometric interpretation, undecodable pixels.
    """
    if not any(keyword in dataset for keyword in _PIXEL_KEYWORDS):
        raise _no_pixels_error(dataset, label)
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        bits_stored = int(dataset.get("BitsStored") or dataset.BitsAllocated)
        frames = int(dataset.get("NumberOfFrames") or 1)
        photometric = str(dataset.PhotometricInterpretation).strip().upper()
    except (AttributeError, TypeError, ValueError):
        raise XRayReadError(
            f"cannot read {label}: the DICOM image header lacks or garbles Rows, Columns, Bits Allocated or "
            "Photometric Interpretation; re-export the image"
        ) from None
    if rows * columns > max_pixels:
        raise too_large_error(label, rows, columns, max_pixels)
    if photometric not in MONOCHROME + COLOUR:
        raise XRayReadError(
            f"cannot read {label}: DICOM photometric interpretation {photometric[:32]!r} is not supported; "
            f"supported: {', '.join(MONOCHROME + COLOUR)}"
        )
    found: list[str] = []
    if frames > 1:
        found.append(f"multi-frame DICOM ({frames} frames): only the first frame is used")
    raw = _decode_first_frame(dataset, frames, label)
    if photometric in MONOCHROME and raw.ndim != 2:
        raise XRayReadError(
            f"cannot read {label}: {photometric} pixel data has shape {raw.shape}, not (rows, columns)"
        )
    extremes = None  # the full image's stored range, when min/max scaling must not see only the downscale
    if photometric != "PALETTE COLOR":  # stored samples, before any LUT: integers stay integers
        shrunk = fit_within(raw, max_side)
        if shrunk is not raw and photometric in MONOCHROME:
            extremes = np.array([raw.min(), raw.max()])
        raw = shrunk
    try:
        if photometric in MONOCHROME:
            values = apply_modality_lut(raw, dataset)
            extremes = None if extremes is None else apply_modality_lut(extremes, dataset)
        elif photometric == "PALETTE COLOR":
            values = apply_color_lut(raw, dataset)
        else:
            values = raw
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise XRayReadError(
            f"cannot read {label}: the DICOM's rescale, modality LUT or palette is invalid "
            f"({type(exc).__name__}); re-export the image"
        ) from None
    values = fit_within(values, max_side)  # palette colours (the other kinds fit already)
    window: str | None = None
    if photometric in MONOCHROME:
        pixels, window = _voi(values, dataset, found, extremes)
        if photometric == "MONOCHROME1":
            # MONOCHROME1 stores dense as dark: flip so that bone is bright, as displayed.
            pixels = 1.0 - pixels
            found.append("MONOCHROME1 image inverted for display (bright = dense)")
    else:
        # Palette entries have their own bit depth (8 or 16), given by the LUT's dtype.
        full_scale = np.iinfo(values.dtype).max if photometric == "PALETTE COLOR" else 2**bits_stored - 1
        pixels = luma(values) / full_scale
        found.append(f"colour DICOM ({photometric}) converted to grayscale (luma)")
    return XRay(
        pixels=np.clip(pixels, 0.0, 1.0).astype(np.float32),
        source_format="dicom",
        original_size=(rows, columns),
        bit_depth=bits_stored,
        photometric=photometric,
        window=window,
        warnings=tuple(found),
        header=_summary(dataset, photometric, rows, columns, bits_stored, frames),
    )


def _no_pixels_error(dataset: Dataset, label: str) -> XRayReadError:
    """Truncation (pydicom stops quietly at the end of the data) or an object that holds no image."""
    uids = (dataset.get("SOPClassUID"), dataset.file_meta.get("MediaStorageSOPClassUID"))
    names = [uid.name for uid in uids if uid and uid.name != str(uid)]  # known SOP classes only
    kind = f" (SOP class: {names[0]})" if names else ""
    if len(dataset) == 0 or "Rows" in dataset or any("Image Storage" in name for name in names):
        return XRayReadError(
            f"cannot read {label}: the DICOM file{kind} ends before its pixel data; it is probably "
            "truncated: copy or export it again"
        )
    return XRayReadError(
        f"cannot read {label}: the DICOM object has no pixel data{kind}, e.g. a structured report or a "
        "presentation state; export the image object itself"
    )


def _decode_first_frame(dataset: Dataset, frames: int, label: str) -> np.ndarray:
    """pixel_array of the first frame only (a multi-frame file is not decoded whole)."""
    meta = dataset.file_meta
    if "TransferSyntaxUID" not in meta:
        # A bare data set has no file meta: its encoding was detected while parsing.
        implicit, little = dataset.original_encoding
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    try:
        with warnings.catch_warnings(record=True) as caught:
            dataset.pixel_array_options(index=0 if frames > 1 else None)
            raw = dataset.pixel_array
    except Exception as exc:  # decoders raise many types on truncated or corrupt data
        raise XRayReadError(
            f"cannot read {label}: the DICOM pixel data ({meta.TransferSyntaxUID.name}) is truncated, "
            f"corrupt or undecodable: {str(exc)[:200]}. Copy or export the file again; compressed data "
            "needs the pylibjpeg plugins (pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle)"
        ) from None
    _log_suppressed(caught)
    return raw


def _voi(
    values: np.ndarray, dataset: Dataset, found: list[str], extremes: np.ndarray | None = None
) -> tuple[np.ndarray, str]:
    """Apply the VOI LUT or window (else min/max) and scale its output range to [0, 1]; describe it.

    `extremes`: the data's own (min, max) when `values` is a downscale (see load_xray's max_side).
    """
    item = (dataset.get("VOILUTSequence") or [None])[0]
    has_lut = item is not None and "LUTDescriptor" in item and "LUTData" in item
    has_window = dataset.get("WindowCenter") is not None and dataset.get("WindowWidth") is not None
    description, reason = None, "the file has no VOI LUT or window"
    try:
        if has_lut:
            entries, first, _ = item.LUTDescriptor
            # LUTs are indexed by integers; a rescale step may have produced floats.
            out = apply_voi_lut(np.rint(values).astype(np.int64), dataset)
            # Probe every input to learn the LUT's own output range.
            probe = apply_voi_lut(np.arange(first, first + (entries or 65536)), dataset)
            description = "VOI LUT from the file"
        elif has_window:
            out = apply_voi_lut(values, dataset, prefer_lut=False)
            # Values far below and above the window map to its output minimum and maximum.
            probe = apply_voi_lut(np.array([-np.inf, np.inf]), dataset, prefer_lut=False)
            description = _window_text(dataset)
        else:
            out, probe = values, values if extremes is None else extremes
    except (ValueError, NotImplementedError, IndexError) as exc:
        found.append(
            f"the file's VOI LUT/window could not be applied ({exc}); scaled by the data's min/max instead"
        )
        out, probe = values, values if extremes is None else extremes
        reason = "the file's VOI LUT/window is invalid"
    low, high = float(np.min(probe)), float(np.max(probe))
    if description is None:
        description = f"min/max of the pixel data ({low:g} to {high:g}); {reason}"
    span = high - low
    scaled = (np.asarray(out, dtype=np.float64) - low) / span if span > 0 else np.zeros(values.shape)
    return scaled, description


def _window_text(dataset: Dataset) -> str:
    """'window center C, width W' (+ function, + which of several)."""
    centers, widths = dataset["WindowCenter"], dataset["WindowWidth"]
    center = float(centers.value[0] if centers.VM > 1 else centers.value)
    width = float(widths.value[0] if widths.VM > 1 else widths.value)
    text = f"window center {center:g}, width {width:g}"
    function = str(dataset.get("VOILUTFunction") or "LINEAR").upper()
    if function != "LINEAR":
        text += f" ({function})"
    if centers.VM > 1:
        text += f", the first of {centers.VM}"
    return text


def _summary(
    dataset: Dataset, photometric: str, rows: int, columns: int, bits: int, frames: int
) -> dict[str, str]:
    """A header summary with no patient, institution or date attributes."""
    header = {key: str(dataset.get(keyword, ""))[:64] for key, keyword in _SAFE_FIELDS.items()}
    header = {key: value for key, value in header.items() if value}
    header.update(photometric=photometric, size=f"{rows}x{columns}", bits_stored=str(bits))
    header["transfer_syntax"] = dataset.file_meta.TransferSyntaxUID.name
    if frames > 1:
        header["frames"] = str(frames)
    return header


def _log_suppressed(caught: list[warnings.WarningMessage]) -> None:
    """Count pydicom's warnings without their text, which can quote header values such as names."""
    if caught:
        logger.debug(
            "pydicom emitted %d warning(s) while reading; not shown, they may quote header values",
            len(caught),
        )
