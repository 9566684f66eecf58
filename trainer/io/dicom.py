"""DICOM radiographs to display-ready pixels: modality LUT, VOI LUT or window, MONOCHROME1 inversion.

Use `trainer.io.load_xray`; this module is its DICOM half. Patient, institution and date attributes are
never accessed (so pydicom never converts, validates or quotes them): only the fields in `to_xray`'s header
summary leave this module.

pydicom reports oddities of a file (implicit VR where explicit was declared, an invalid Number of Frames) on
its own "pydicom" logger and as Python warnings; they are left to the application's logging and warning
filters. Catching them here would need `warnings.catch_warnings`, which swaps process-wide state and is not
safe while a server reads uploads in several threads.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from trainer.io.xray import DICOM_SUFFIXES, XRay, XRayReadError, fit_within, luma, too_large_error

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
_UNDEFINED_LENGTH = 0xFFFFFFFF
_ELEMENT_HEADER = 8  # tag, VR and length; bytes past the last element, fewer than this, are a cut header


def parse(data: bytes, *, suffix: str, label: str) -> Dataset | None:
    """The DICOM data set in `data`, or None when the content is not DICOM.

    A file with the 'DICM' marker at byte 128 must parse; without it (a bare data set), parsing is tried only
    for a DICOM file name or a plausible first tag, and a failure means "not DICOM".
    """
    has_marker = data[128:132] == b"DICM"
    if not has_marker and suffix not in DICOM_SUFFIXES and data[:2] not in _RAW_STARTS:
        return None
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=not has_marker)
    except Exception as exc:  # pydicom raises many types on malformed input
        if not has_marker:
            return None
        raise XRayReadError(
            f"cannot read {label}: the DICOM header is truncated or corrupt ({type(exc).__name__}); "
            "re-export or re-copy the file"
        ) from None
    if not has_marker and not any(
        keyword in dataset for keyword in (*_PIXEL_KEYWORDS, "Rows", "SOPClassUID")
    ):
        return None
    if _cut_short(dataset, data):
        raise XRayReadError(
            f"cannot read {label}: the DICOM file ends in the middle of a data element, so it is truncated; "
            "copy or export it again"
        )
    return dataset


def _cut_short(dataset: Dataset, data: bytes) -> bool:
    """Whether `data` ends inside an element of the data set: pydicom stops there quietly.

    That is, inside the value of the last element read, or in the header of one more (a few bytes that are
    not zero padding). A file that ends exactly between two elements cannot be told from a complete one;
    sequences and encapsulated pixel data are left to the decoder.
    """
    tags = list(dataset.keys())  # iterating the Dataset itself would convert (and validate) every element
    elements = [dataset.get_item(tag) for tag in tags]
    raw = [e for e in elements if isinstance(e, RawDataElement) and e.length != _UNDEFINED_LENGTH]
    if not raw:
        return False
    last = max(raw, key=lambda element: element.value_tell)
    if len(last.value or b"") < last.length:
        return True
    tail = data[last.value_tell + last.length :]
    return 0 < len(tail) < _ELEMENT_HEADER and any(tail)


def to_xray(dataset: Dataset, *, max_pixels: int, label: str, max_side: int | None = None) -> XRay:
    """Decode the first frame to float32 [0, 1], bright = dense (downscaled to `max_side`, see load_xray).

    Raises:
        XRayReadError: no pixel data, too large, unsupported photometric interpretation, undecodable pixels.
    """
    if not any(keyword in dataset for keyword in _PIXEL_KEYWORDS):
        raise _no_pixels_error(dataset, label)
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        bits_allocated = int(dataset.BitsAllocated)
        stored = dataset.get("BitsStored")
        bits_stored = bits_allocated if stored is None or stored == "" else int(stored)
        frames = int(dataset.get("NumberOfFrames") or 1)
        photometric = str(dataset.PhotometricInterpretation).strip().upper()
    except (AttributeError, TypeError, ValueError):
        raise XRayReadError(
            f"cannot read {label}: the DICOM image header lacks or garbles Rows, Columns, Bits Allocated or "
            "Photometric Interpretation; re-export the image"
        ) from None
    _check_bit_depth(bits_allocated, bits_stored, label)
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


def _check_bit_depth(bits_allocated: int, bits_stored: int, label: str) -> None:
    """The header's bit depths, which pydicom only checks while decoding (and the data is not to blame).

    Raises:
        XRayReadError: Bits Allocated is not 1 or a multiple of 8 up to 64, or Bits Stored is not in
            1..Bits Allocated.
    """
    if not (bits_allocated == 1 or bits_allocated % 8 == 0) or not 1 <= bits_allocated <= 64:
        raise XRayReadError(
            f"cannot read {label}: the DICOM header's Bits Allocated ({bits_allocated}) is invalid: it must "
            "be 1 or a multiple of 8 up to 64. The file was written wrongly; export the image again"
        )
    if not 1 <= bits_stored <= bits_allocated:
        raise XRayReadError(
            f"cannot read {label}: the DICOM header's Bits Stored ({bits_stored}) is invalid: it must be "
            f"from 1 to Bits Allocated ({bits_allocated}). The file was written wrongly; export it again"
        )


def _no_pixels_error(dataset: Dataset, label: str) -> XRayReadError:
    """A DICOM object without pixel data (a file cut inside an element is caught by `parse`)."""
    uids = (dataset.get("SOPClassUID"), dataset.file_meta.get("MediaStorageSOPClassUID"))
    names = [uid.name for uid in uids if uid and uid.name != str(uid)]  # known SOP classes only
    kind = f" (SOP class: {names[0]})" if names else ""
    if len(dataset) == 0:
        return XRayReadError(
            f"cannot read {label}: the DICOM file ends inside or right after its file meta header: it holds "
            "no data set and no image, so it is truncated or was written wrongly; copy or export it again"
        )
    if "Rows" in dataset or any("Image Storage" in name for name in names):
        return XRayReadError(
            f"cannot read {label}: the DICOM file{kind} describes an image but holds no pixel data (a "
            "header-only export, or a copy cut short between two elements); copy or export the image again, "
            "with its pixel data"
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
    syntax = meta.TransferSyntaxUID
    try:
        dataset.pixel_array_options(index=0 if frames > 1 else None)
        return dataset.pixel_array
    except Exception as exc:  # decoders raise many types on truncated or corrupt data
        plugins = (
            "; compressed data needs the pylibjpeg plugins (pylibjpeg-libjpeg, pylibjpeg-openjpeg, "
            "pylibjpeg-rle)"
            if syntax.is_compressed
            else ""
        )
        raise XRayReadError(
            f"cannot read {label}: the DICOM pixel data ({syntax.name}) is truncated, corrupt or "
            f"undecodable: {str(exc)[:200]}. Copy or export the file again{plugins}"
        ) from None


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
