"""trainer.io.load_xray: DICOM, PNG, JPEG, TIFF and BMP into float32 [0, 1], and its error messages."""

from __future__ import annotations

import io
import logging
import struct
import tracemalloc
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.pixels import convert_color_space
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless, generate_uid

from tests.conftest import shared_path
from trainer.io import MAX_PIXELS, XRay, XRayReadError, XRayWarning, load_xray

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR Storage
IDENTIFIERS = {
    "PatientName": "Zebulon^Quixotic",
    "PatientID": "PID-98765-XYZZY",
    "PatientBirthDate": "19230417",
    "AccessionNumber": "ACC-55555-Q",
    "InstitutionName": "Obscure Hospital 77",
    "StudyDate": "20011122",
    "ReferringPhysicianName": "Wobblesworth^Doc",
}
# Every fragment that would reveal an identifier if it leaked.
FRAGMENTS = (
    "Zebulon",
    "Quixotic",
    "98765",
    "XYZZY",
    "19230417",
    "55555",
    "Obscure Hospital",
    "20011122",
    "Wobbles",
)
SIIM = "siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


# ---------------------------------------------------------------- builders


def dicom_dataset(
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    signed: bool = False,
    sop_class: str = DX_STORAGE,
    **tags: object,
) -> Dataset:
    """A DX dataset carrying distinctive patient identifiers; (H, W[, 3]) or (frames, H, W) pixels."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    for keyword, value in IDENTIFIERS.items():
        setattr(ds, keyword, value)
    ds.Modality = "DX"
    ds.ViewPosition = "PA"
    ds.BodyPartExamined = "CHEST"
    if pixels is not None:
        colour = photometric not in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR")
        frames = pixels.ndim == 3 and not colour
        ds.Rows, ds.Columns = pixels.shape[1:3] if frames else pixels.shape[:2]
        if frames:
            ds.NumberOfFrames = pixels.shape[0]
        ds.SamplesPerPixel = 3 if colour else 1
        if colour:
            ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = 8 if bits_stored <= 8 else 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = int(signed)
        dtype = f"{'i' if signed else 'u'}{ds.BitsAllocated // 8}"
        ds.PixelData = pixels.astype(f"<{dtype}").tobytes()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


def dicom_bytes(pixels: np.ndarray | None, **kwargs: object) -> bytes:
    """A DICOM file (128-byte preamble, 'DICM', file meta), see `dicom_dataset`."""
    return save(dicom_dataset(pixels, **kwargs))


def save(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def bare_dicom_bytes(pixels: np.ndarray) -> bytes:
    """A data set without preamble or file meta (implicit VR little endian), as some old exporters write."""
    ds = dicom_dataset(pixels)
    del ds.file_meta
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    return buffer.getvalue()


def image_bytes(array: np.ndarray | Image.Image, fmt: str, **save_kwargs: object) -> bytes:
    image = array if isinstance(array, Image.Image) else Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_kwargs)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height over a tiny IDAT: decoding it would fail, opening must not."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def with_sbit(png: bytes, bits: int) -> bytes:
    """Insert an sBIT chunk after IHDR (8-byte signature + 25-byte IHDR chunk)."""
    return png[:33] + png_chunk(b"sBIT", bytes([bits])) + png[33:]


def ramp(shape: tuple[int, int], high: int) -> np.ndarray:
    return np.linspace(0, high, shape[0] * shape[1]).round().astype(np.int64).reshape(shape)


def quiet_load(source: object, **kwargs: object) -> XRay:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", XRayWarning)
        return load_xray(source, **kwargs)


def dicom_window(value: float, center: float, width: float) -> float:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window, output scaled to [0, 1]."""
    if value <= center - 0.5 - (width - 1) / 2:
        return 0.0
    if value > center - 0.5 + (width - 1) / 2:
        return 1.0
    return (value - (center - 0.5)) / (width - 1) + 0.5


def assert_no_identifiers(text: str) -> None:
    leaked = [fragment for fragment in FRAGMENTS if fragment.lower() in text.lower()]
    assert not leaked, f"patient identifiers leaked: {leaked}"


# ---------------------------------------------------------------- DICOM, synthetic


@pytest.mark.parametrize("bits_stored", [12, 16])
def test_dicom_window_centre_maps_to_half(bits_stored: int) -> None:
    full = 2**bits_stored - 1
    pixels = ramp((16, 16), full)
    center, width = full // 2, full // 4
    xray = load_xray(dicom_bytes(pixels, bits_stored=bits_stored, WindowCenter=center, WindowWidth=width))
    assert xray.pixels.dtype == np.float32 and xray.pixels.shape == (16, 16)
    expected = np.vectorize(dicom_window)(pixels, center, width)
    np.testing.assert_allclose(xray.pixels, expected, atol=1e-6)
    at_center = load_xray(
        dicom_bytes(np.full((2, 2), center), bits_stored=bits_stored, WindowCenter=center, WindowWidth=width)
    )
    assert at_center.pixels[0, 0] == pytest.approx(0.5, abs=1 / width)
    assert xray.window == f"window center {center}, width {width}"
    assert xray.bit_depth == bits_stored and xray.photometric == "MONOCHROME2" and xray.warnings == ()


@pytest.mark.parametrize("window", [{}, {"WindowCenter": 1500, "WindowWidth": 2000}])
@pytest.mark.parametrize("bits_stored", [12, 16])
def test_dicom_monochrome1_is_inverted_monochrome2(bits_stored: int, window: dict[str, int]) -> None:
    pixels = ramp((8, 12), 2**bits_stored - 1)
    mono2 = load_xray(dicom_bytes(pixels, bits_stored=bits_stored, **window))
    with pytest.warns(XRayWarning, match="MONOCHROME1 image inverted for display"):
        mono1 = load_xray(dicom_bytes(pixels, photometric="MONOCHROME1", bits_stored=bits_stored, **window))
    np.testing.assert_allclose(mono1.pixels, 1.0 - mono2.pixels, atol=1e-6)
    assert mono1.photometric == "MONOCHROME1" and mono1.header["photometric"] == "MONOCHROME1"
    assert mono2.pixels.min() == 0.0 and mono2.pixels.max() == 1.0


def test_dicom_without_window_scales_by_data_min_max() -> None:
    pixels = np.array([[100, 200], [300, 500]])
    xray = load_xray(dicom_bytes(pixels))
    np.testing.assert_allclose(xray.pixels, (pixels - 100) / 400, atol=1e-6)
    assert "min/max" in xray.window and "100" in xray.window and "500" in xray.window


def test_dicom_rescale_slope_intercept_applies_before_window() -> None:
    pixels = np.array([[1100, 600], [1300, 1000]])
    window = {"WindowCenter": 1000, "WindowWidth": 401}
    plain = load_xray(dicom_bytes(pixels, **window))
    rescaled = load_xray(
        dicom_bytes(pixels, RescaleSlope=2, RescaleIntercept=-1200, RescaleType="US", **window)
    )
    # Stored 1100 is 3/4 up the window on its own, but 2 * 1100 - 1200 = 1000 (its centre) once rescaled.
    assert plain.pixels[0, 0] == pytest.approx(dicom_window(1100, 1000, 401), abs=1e-6)
    assert plain.pixels[0, 0] > 0.7
    assert rescaled.pixels[0, 0] == pytest.approx(0.5, abs=1e-2)
    assert rescaled.pixels[0, 1] == 0.0 and rescaled.pixels[1, 0] == 1.0  # 0 and 1400 fall outside


def test_dicom_signed_pixels_with_window() -> None:
    pixels = np.array([[-1000, -50], [0, 1000]])
    xray = load_xray(dicom_bytes(pixels, bits_stored=16, signed=True, WindowCenter=0, WindowWidth=201))
    np.testing.assert_allclose(xray.pixels, np.vectorize(dicom_window)(pixels, 0, 201), atol=1e-6)


def test_dicom_voi_lut_sequence_is_applied_and_scaled_by_its_range() -> None:
    pixels = ramp((8, 8), 4095)
    lut = np.round(np.sqrt(np.arange(4096) / 4095) * 60000).astype(int)  # not the full 16-bit range
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4096, 0, 16])
    item.add_new("LUTData", "US", lut.tolist())
    ds = dicom_dataset(pixels, WindowCenter=100, WindowWidth=10)  # the LUT takes precedence over the window
    ds.VOILUTSequence = Sequence([item])
    xray = load_xray(save(ds))
    np.testing.assert_allclose(xray.pixels, lut[pixels] / lut.max(), atol=1e-6)
    assert xray.window is not None and "VOI LUT" in xray.window


def test_dicom_invalid_window_falls_back_to_min_max_with_warning() -> None:
    pixels = np.array([[0, 10], [20, 40]])
    with pytest.warns(XRayWarning, match="could not be applied"):
        xray = load_xray(dicom_bytes(pixels, WindowCenter=10, WindowWidth=0))
    np.testing.assert_allclose(xray.pixels, pixels / 40, atol=1e-6)


def test_dicom_rle_lossless_decodes_like_the_uncompressed_file() -> None:
    pixels = ramp((16, 20), 4095)
    ds = dicom_dataset(pixels)
    ds.compress(RLELossless)
    xray = load_xray(save(ds))
    assert xray.header["transfer_syntax"] == "RLE Lossless"
    np.testing.assert_allclose(xray.pixels, load_xray(dicom_bytes(pixels)).pixels, atol=1e-7)


def test_dicom_multi_frame_uses_first_frame_with_warning() -> None:
    frames = np.stack([ramp((6, 5), 4095), np.zeros((6, 5)), np.full((6, 5), 4095)])
    with pytest.warns(XRayWarning, match="3 frames"):
        xray = load_xray(dicom_bytes(frames))
    np.testing.assert_allclose(xray.pixels, frames[0] / 4095, atol=1e-6)
    assert xray.header["frames"] == "3" and xray.original_size == (6, 5)


def test_dicom_rgb_is_converted_to_luma_with_warning() -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    with pytest.warns(XRayWarning, match=r"colour DICOM \(RGB\) converted to grayscale"):
        xray = load_xray(dicom_bytes(rgb, photometric="RGB", bits_stored=8))
    expected = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    np.testing.assert_allclose(xray.pixels, expected, atol=1e-6)
    assert xray.window is None and xray.photometric == "RGB"


def test_dicom_ybr_full_is_converted_to_rgb_then_luma() -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[:2] = (250, 30, 10)
    rgb[2:] = (20, 180, 90)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    with pytest.warns(XRayWarning, match="YBR_FULL"):
        xray = load_xray(dicom_bytes(ybr, photometric="YBR_FULL", bits_stored=8))
    expected = rgb.astype(float) @ [0.299, 0.587, 0.114] / 255
    np.testing.assert_allclose(xray.pixels, expected, atol=3 / 255)


def test_dicom_palette_colour_is_converted_through_its_lut() -> None:
    indices = np.array([[0, 1], [2, 3]])
    ds = dicom_dataset(indices, photometric="PALETTE COLOR", bits_stored=8)
    red, green, blue = (np.zeros(256, np.uint16) for _ in range(3))
    red[:4] = [0, 65535, 0, 30000]
    green[:4] = [0, 0, 65535, 30000]
    blue[3] = 30000  # index 3 is a gray
    for colour, table in zip(("Red", "Green", "Blue"), (red, green, blue), strict=True):
        ds.add_new(f"{colour}PaletteColorLookupTableDescriptor", "US", [256, 0, 16])
        ds.add_new(f"{colour}PaletteColorLookupTableData", "OW", table.tobytes())
    with pytest.warns(XRayWarning, match="PALETTE COLOR"):
        xray = load_xray(save(ds))
    expected = np.array([[0.0, 0.299], [0.587, 30000 / 65535]])
    np.testing.assert_allclose(xray.pixels, expected, atol=1e-4)


@pytest.mark.parametrize("photometric", ["HSV", "GARBAGE_XYZ"])
def test_dicom_unsupported_photometric_is_refused(photometric: str) -> None:
    with pytest.raises(XRayReadError, match=f"photometric interpretation '{photometric}' is not supported"):
        load_xray(dicom_bytes(np.zeros((4, 4)), photometric=photometric))


def test_dicom_structured_report_has_no_pixel_data() -> None:
    with pytest.raises(XRayReadError, match=r"no pixel data \(SOP class: Comprehensive SR Storage\)"):
        load_xray(dicom_bytes(None, sop_class=SR_STORAGE))


@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_dicom_truncated_file_is_reported(keep: float) -> None:
    data = dicom_bytes(ramp((32, 32), 4095))
    with pytest.raises(XRayReadError, match="truncated"):
        load_xray(data[: int(len(data) * keep)])


def test_dicom_image_without_pixel_data_is_not_called_truncated() -> None:
    """A complete header-only export is not a truncated file (issue 12)."""
    header_only = dicom_dataset(ramp((4, 4), 4095))
    del header_only.PixelData
    for data in (save(header_only), dicom_bytes(None)):
        with pytest.raises(XRayReadError, match="describes an image but holds no pixel data") as caught:
            load_xray(data)
        assert "probably truncated" not in str(caught.value)


def test_dicom_cut_inside_an_element_is_truncated_and_between_elements_is_not_claimed() -> None:
    data = dicom_bytes(ramp((32, 32), 4095))
    pixel_tag = data.index(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data, little endian
    for cut in (pixel_tag + 3, pixel_tag + 20, pixel_tag - 1, 400):  # in a tag, in a value, before both
        with pytest.raises(XRayReadError, match="ends in the middle of a data element, so it is truncated"):
            load_xray(data[:cut])
    with pytest.raises(XRayReadError, match="or a copy cut short between two elements"):
        load_xray(data[:pixel_tag])


def test_dicom_with_zero_padding_after_the_pixel_data_still_reads() -> None:
    pixels = ramp((8, 8), 4095)
    for padding in (b"\x00" * 3, b"\x00" * 2048):
        np.testing.assert_allclose(load_xray(dicom_bytes(pixels) + padding).pixels, pixels / 4095, atol=1e-6)


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ({"BitsStored": 0}, r"Bits Stored \(0\) is invalid: it must be from 1 to Bits Allocated \(16\)"),
        ({"BitsStored": 17}, r"Bits Stored \(17\) is invalid"),
        ({"BitsAllocated": 12}, r"Bits Allocated \(12\) is invalid: it must be 1 or a multiple of 8"),
    ],
)
def test_dicom_invalid_bit_depth_names_the_header_value_not_decoder_plugins(
    tags: dict[str, int], message: str
) -> None:
    with pytest.raises(XRayReadError, match=message) as caught:
        load_xray(dicom_bytes(ramp((8, 8), 4095), **tags))
    assert "pylibjpeg" not in str(caught.value)


def test_dicom_decoder_plugins_are_suggested_for_compressed_data_only() -> None:
    short = dicom_dataset(ramp((8, 8), 4095))
    short.PixelData = short.PixelData[:64]  # a complete element, but half the pixels
    with pytest.raises(XRayReadError, match=r"\(Explicit VR Little Endian\) is truncated, corrupt") as caught:
        load_xray(save(short))
    assert "pylibjpeg" not in str(caught.value)
    garbage = dicom_dataset(ramp((16, 20), 4095))
    garbage.file_meta.TransferSyntaxUID = JPEGLSLossless
    garbage.PixelData = encapsulate([b"\x13\x37" * 50])  # not a JPEG-LS stream (or no decoder installed)
    with pytest.raises(XRayReadError, match=r"(?s)\(JPEG-LS Lossless Image Compression\).*pylibjpeg plugins"):
        load_xray(save(garbage))


@pytest.mark.filterwarnings("ignore::trainer.io.XRayWarning")
def test_dicom_reading_swaps_no_process_wide_warning_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Uploads are read in server threads: warnings.catch_warnings (process-wide) must not be used."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("warnings.catch_warnings was used while reading")

    files = [
        dicom_bytes(ramp((8, 8), 4095), photometric="MONOCHROME1"),
        bare_dicom_bytes(ramp((6, 6), 4095)),
        dicom_bytes(np.zeros((2, 4, 4))),
    ]
    filters = list(warnings.filters)
    monkeypatch.setattr(warnings, "catch_warnings", refuse)
    with ThreadPoolExecutor(max_workers=4) as pool:
        xrays = list(pool.map(load_xray, files * 4))
    monkeypatch.undo()
    assert [x.source_format for x in xrays] == ["dicom"] * 12
    assert warnings.filters == filters


def test_dicom_huge_header_is_refused_before_allocating() -> None:
    ds = dicom_dataset(np.zeros((2, 2)))
    ds.Rows, ds.Columns = 60000, 60000  # 3.6 gigapixels claimed, 8 bytes present
    data = save(ds)
    tracemalloc.start()
    try:
        with pytest.raises(
            XRayReadError, match=r"60000x60000 \(height x width\) = 3600\.0 megapixels.*max_pixels"
        ):
            load_xray(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6


def test_dicom_pixel_limit_is_configurable() -> None:
    data = dicom_bytes(np.zeros((10, 10)))
    with pytest.raises(XRayReadError, match="over the limit of 0.0 megapixels"):
        load_xray(data, max_pixels=99)
    assert load_xray(data, max_pixels=100).original_size == (10, 10)


@pytest.mark.parametrize("name", ["scan.dcm", "scan.DICOM", ""])
def test_dicom_without_preamble_is_detected(name: str) -> None:
    pixels = ramp((6, 6), 4095)
    upload = io.BytesIO(bare_dicom_bytes(pixels))
    upload.name = name
    xray = load_xray(upload)
    assert xray.source_format == "dicom" and xray.header["transfer_syntax"] == "Implicit VR Little Endian"
    np.testing.assert_allclose(xray.pixels, pixels / 4095, atol=1e-6)


def test_dicom_header_is_a_safe_summary() -> None:
    xray = load_xray(dicom_bytes(np.zeros((3, 5)), Manufacturer="Acme X-Ray"))
    assert xray.header == {
        "modality": "DX",
        "view_position": "PA",
        "body_part": "CHEST",
        "manufacturer": "Acme X-Ray",
        "photometric": "MONOCHROME2",
        "size": "3x5",
        "bits_stored": "12",
        "transfer_syntax": "Explicit VR Little Endian",
    }


def _identifier_cases() -> list[tuple[str, bytes]]:
    good = dicom_bytes(ramp((8, 8), 4095), photometric="MONOCHROME1", WindowCenter=2000, WindowWidth=1000)
    frames = dicom_bytes(np.zeros((2, 4, 4)))
    invalid = dicom_dataset(np.zeros((2, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns here, quoting the value: reading must not
        invalid.add_new("PatientBirthDate", "DA", "Zebulon-19230417")
        invalid.add_new("PatientAge", "AS", "Quixotic, far too long for AS")
    return [
        ("monochrome1", good),
        ("invalid identifier values", save(invalid)),
        ("multi-frame", frames),
        ("rgb", dicom_bytes(np.zeros((2, 2, 3)), photometric="RGB", bits_stored=8)),
        ("structured report", dicom_bytes(None, sop_class=SR_STORAGE)),
        ("bad photometric", dicom_bytes(np.zeros((2, 2)), photometric="HSV")),
        ("truncated", good[: len(good) - 9]),
        ("cut inside the patient name", good[: good.index(b"Quixotic") + 3]),
        ("too large", good),
        ("bad window", dicom_bytes(np.zeros((2, 2)), WindowCenter=1, WindowWidth=-5)),
    ]


@pytest.mark.parametrize(
    ("case", "data"), _identifier_cases(), ids=lambda value: value if isinstance(value, str) else ""
)
def test_no_patient_identifiers_anywhere(case: str, data: bytes, caplog: pytest.LogCaptureFixture) -> None:
    assert b"Zebulon" in data  # identifiers are in the file...
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            xray = load_xray(data, max_pixels=10 if case == "too large" else MAX_PIXELS)
            seen += [repr(xray), str(xray.header), *xray.warnings, str(xray.window)]
        except XRayReadError as exc:
            seen += [str(exc), repr(exc)]
    seen += [str(warning.message) for warning in caught] + [caplog.text]
    assert_no_identifiers("\n".join(seen))  # ...and nowhere in what comes out


# ---------------------------------------------------------------- DICOM, real files in ../shared


@pytest.fixture(scope="module")
def rg1_uncompressed() -> XRay:
    return quiet_load(shared_path("data", "dicom", "RG1_UNCR.dcm"))


@pytest.mark.shared
def test_real_monochrome1_cr_is_inverted_for_display(rg1_uncompressed: XRay) -> None:
    xray, pixels = rg1_uncompressed, rg1_uncompressed.pixels
    assert xray.photometric == "MONOCHROME1" and xray.bit_depth == 15 and xray.original_size == (1955, 1841)
    assert any("inverted" in message for message in xray.warnings)
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0 and pixels.max() - pixels.min() > 0.5
    height, width = pixels.shape
    rows = slice(height // 4, 3 * height // 4)
    mediastinum = pixels[rows, int(0.45 * width) : int(0.55 * width)].mean()
    lungs = [pixels[rows, int(a * width) : int(b * width)].mean() for a, b in ((0.15, 0.3), (0.7, 0.85))]
    assert mediastinum > max(lungs) + 0.1  # dense centre bright, air-filled lungs dark
    assert xray.header["modality"] == "CR" and xray.header["body_part"] == "CHEST"


@pytest.mark.shared
def test_real_jpeg2000_matches_uncompressed(rg1_uncompressed: XRay) -> None:
    j2k = quiet_load(shared_path("data", "dicom", "RG1_J2KI.dcm"))
    assert j2k.header["transfer_syntax"] == "JPEG 2000 Image Compression"
    assert j2k.pixels.shape == rg1_uncompressed.pixels.shape
    correlation = np.corrcoef(j2k.pixels.ravel(), rg1_uncompressed.pixels.ravel())[0, 1]
    assert correlation > 0.99


@pytest.mark.shared
def test_real_jpeg_baseline_monochrome2() -> None:
    xray = load_xray(shared_path("data", "dicom", SIIM))
    assert xray.photometric == "MONOCHROME2" and xray.pixels.shape == (1024, 1024) and xray.warnings == ()
    assert xray.header["transfer_syntax"] == "JPEG Baseline (Process 1)"
    assert xray.pixels.std() > 0.1


@pytest.mark.shared
def test_real_fake_monochrome1_is_the_inverted_siim_image() -> None:
    siim = load_xray(shared_path("data", "dicom", SIIM))
    with pytest.warns(XRayWarning, match="inverted"):
        fake = load_xray(shared_path("data", "dicom", "siim_Fake_MONOHR1.dcm"))
    assert np.abs(fake.pixels - (1.0 - siim.pixels)).mean() < 0.02


# ---------------------------------------------------------------- ordinary images


def test_png_8bit_is_divided_by_255() -> None:
    pixels = ramp((5, 7), 255).astype(np.uint8)
    xray = load_xray(image_bytes(pixels, "PNG"))
    np.testing.assert_allclose(xray.pixels, pixels / 255, atol=1e-7)
    assert (xray.source_format, xray.bit_depth, xray.photometric, xray.window, xray.header) == (
        "png",
        8,
        "L",
        None,
        {},
    )


def test_png_16bit_is_divided_by_65535_without_clipping() -> None:
    pixels = np.array([[1000, 60000], [0, 65535]], np.uint16)
    xray = load_xray(image_bytes(pixels, "PNG"))
    np.testing.assert_allclose(xray.pixels, pixels / 65535, atol=1e-7)
    assert xray.bit_depth == 16 and xray.photometric == "I;16"


@pytest.mark.parametrize(("dtype", "sbit", "divisor"), [(np.uint8, None, 255), (np.uint16, None, 65535),
                                                      (np.uint16, 12, 4095)])  # fmt: skip
def test_png_levels_are_the_float64_quotients_rounded_to_float32(
    dtype: type, sbit: int | None, divisor: int
) -> None:
    # Every level of the bit depth: float32 pixels bit for bit as dividing in float64 and rounding would give.
    pixels = np.arange(divisor + 1, dtype=dtype).reshape(-1, 64)
    png = image_bytes(pixels, "PNG")
    xray = load_xray(with_sbit(png, sbit) if sbit else png)
    assert xray.pixels.dtype == np.float32
    np.testing.assert_array_equal(xray.pixels, (pixels / divisor).astype(np.float32))


@pytest.mark.parametrize(("high", "divisor", "bits"), [(4095, 4095, 12), (60000, 65535, 16)])
def test_png_16bit_significant_bits(high: int, divisor: int, bits: int) -> None:
    # sBIT 12 with values <= 4095: unscaled 12-bit data. With larger values the writer shifted them up.
    pixels = np.array([[0, 1000], [2000, high]], np.uint16)
    xray = load_xray(with_sbit(image_bytes(pixels, "PNG"), 12))
    np.testing.assert_allclose(xray.pixels, pixels / divisor, atol=1e-7)
    assert xray.bit_depth == bits


@pytest.mark.parametrize("fmt", [".png", ".tiff"])
def test_16bit_colour_keeps_16_bits(fmt: str) -> None:
    gray = np.array([[1000, 60000], [257, 65535]], np.uint16)
    equal = np.stack([gray] * 3, axis=-1)
    ok, encoded = cv2.imencode(fmt, equal)
    assert ok
    xray = load_xray(encoded.tobytes())
    np.testing.assert_allclose(xray.pixels, gray / 65535, atol=1e-7)
    assert xray.bit_depth == 16 and xray.warnings == ()
    coloured = equal.copy()
    coloured[..., 2] = 0  # OpenCV order: this is red
    with pytest.warns(XRayWarning, match="colour channels differed"):
        xray = load_xray(cv2.imencode(fmt, coloured)[1].tobytes())
    np.testing.assert_allclose(xray.pixels, (0.587 + 0.114) * gray / 65535, atol=1e-6)


def test_jpeg_exif_orientation_is_applied() -> None:
    stored = np.zeros((20, 40), np.uint8)  # landscape as stored, bright band on the left
    stored[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    xray = load_xray(image_bytes(stored, "JPEG", exif=exif.tobytes(), quality=95))
    assert xray.pixels.shape == (40, 20) and xray.original_size == (40, 20) and xray.source_format == "jpeg"
    assert xray.pixels[:8].mean() > 0.9 and xray.pixels[12:].mean() < 0.1  # the left band is now on top


@pytest.mark.parametrize(
    ("pixels", "writer"),
    [
        (ramp((6, 4), 255).astype(np.uint8), "pillow"),
        (ramp((6, 4), 65535).astype(np.uint16), "pillow"),
        (ramp((6, 4), 65535).astype(np.uint16), "tifffile"),
    ],
)
def test_tiff_8_and_16_bit(pixels: np.ndarray, writer: str) -> None:
    if writer == "pillow":
        data = image_bytes(pixels, "TIFF")
    else:
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, pixels)
        data = buffer.getvalue()
    xray = load_xray(data)
    full = np.iinfo(pixels.dtype).max
    np.testing.assert_allclose(xray.pixels, pixels / full, atol=1e-7)
    assert xray.source_format == "tiff" and xray.bit_depth == pixels.itemsize * 8


@pytest.mark.parametrize(("low", "high", "window"), [(0.0, 1.0, False), (-3.0, 5.0, True)])
def test_float_tiff(low: float, high: float, window: bool) -> None:
    pixels = np.linspace(low, high, 12, dtype=np.float32).reshape(3, 4)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels)
    xray = load_xray(buffer.getvalue())
    np.testing.assert_allclose(xray.pixels, (pixels - low) / (high - low), atol=1e-6)
    assert (xray.window is not None) == window


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_bmp(mode: str) -> None:
    gray = ramp((5, 6), 255).astype(np.uint8)
    image = Image.fromarray(gray).convert(mode)
    xray = load_xray(image_bytes(image, "BMP"))
    np.testing.assert_allclose(xray.pixels, gray / 255, atol=1e-7)
    assert xray.source_format == "bmp" and xray.warnings == ()


def test_one_bit_png() -> None:
    pixels = np.array([[0, 1], [1, 0]], bool)
    xray = load_xray(image_bytes(Image.fromarray(pixels), "PNG"))
    np.testing.assert_array_equal(xray.pixels, pixels.astype(np.float32))
    assert xray.bit_depth == 1


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P"])
def test_colour_images_with_equal_channels_give_no_warning(mode: str) -> None:
    gray = ramp((4, 6), 255).astype(np.uint8)
    if mode == "RGBA":
        image = Image.fromarray(np.dstack([gray, gray, gray, 255 - gray]))  # alpha is dropped
    else:
        image = Image.fromarray(gray).convert(mode)  # "P": a grayscale palette
    with warnings.catch_warnings():
        warnings.simplefilter("error", XRayWarning)
        xray = load_xray(image_bytes(image, "PNG"))
    np.testing.assert_allclose(xray.pixels, gray / 255, atol=1e-7)
    assert xray.photometric == mode and xray.warnings == ()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P"])
def test_colour_images_with_different_channels_warn(mode: str) -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[:2, :, 2] = 100
    image = Image.fromarray(rgb).convert(mode, palette=Image.Palette.ADAPTIVE)  # an exact 2-colour palette
    with pytest.warns(XRayWarning, match=rf"colour image \({mode}\) converted to grayscale"):
        xray = load_xray(image_bytes(image, "PNG"))
    expected = rgb.astype(float) @ [0.299, 0.587, 0.114] / 255
    np.testing.assert_allclose(xray.pixels, expected, atol=1e-6)


def test_png_named_dcm_is_read_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "scan.dcm"
    path.write_bytes(image_bytes(np.full((3, 3), 51, np.uint8), "PNG"))
    with pytest.warns(XRayWarning, match="named 'scan.dcm' but holds a PNG image"):
        xray = load_xray(path)
    assert xray.source_format == "png" and xray.pixels[0, 0] == pytest.approx(0.2)


# ---------------------------------------------------------------- sources


@pytest.mark.parametrize("kind", ["path", "str", "bytes", "bytearray", "memoryview", "BytesIO", "open file"])
def test_every_source_kind(kind: str, tmp_path: Path) -> None:
    pixels = ramp((4, 5), 65535).astype(np.uint16)
    data = image_bytes(pixels, "PNG")
    path = tmp_path / "image.png"
    path.write_bytes(data)
    sources = {
        "path": lambda: path,
        "str": lambda: str(path),
        "bytes": lambda: data,
        "bytearray": lambda: bytearray(data),
        "memoryview": lambda: memoryview(data),
        "BytesIO": lambda: io.BytesIO(data),
        "open file": lambda: path.open("rb"),
    }
    source = sources[kind]()
    xray = load_xray(source)
    if kind == "open file":
        source.close()
    np.testing.assert_allclose(xray.pixels, pixels / 65535, atol=1e-7)


def test_dicom_from_path_and_open_file(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(dicom_bytes(ramp((4, 4), 4095)))
    with path.open("rb") as handle:
        from_handle = load_xray(handle)
    np.testing.assert_array_equal(load_xray(path).pixels, from_handle.pixels)


# ---------------------------------------------------------------- errors


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def truncated(data: bytes, fraction: float = 0.6) -> bytes:
    return data[: int(len(data) * fraction)]


NOISE = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
ERROR_CASES = {
    "empty bytes": (lambda tmp: b"", r"the input: it is empty \(0 bytes\)"),
    "empty file": (lambda tmp: write(tmp, "blank.png", b""), r"'blank.png': it is empty"),
    "text file": (
        lambda tmp: write(tmp, "notes.txt", b"patient notes\nline 2\n"),
        "not an image: it looks like a text file",
    ),
    "binary junk": (lambda tmp: bytes(range(256)) * 4, "matches no known image format"),
    "text named .dcm": (
        lambda tmp: write(tmp, "scan.dcm", b"just some text\n" * 20),
        "named like a DICOM file but is not one.*text file",
    ),
    "truncated png": (lambda tmp: truncated(image_bytes(NOISE, "PNG")), "PNG data is truncated or corrupt"),
    "truncated jpeg": (
        lambda tmp: truncated(image_bytes(NOISE, "JPEG")),
        "JPEG data is truncated or corrupt",
    ),
    "missing path": (lambda tmp: tmp / "nope.png", "nope.png'.*no such file; check the path"),
    "directory": (lambda tmp: tmp, "is a directory"),
    "gif": (lambda tmp: image_bytes(NOISE, "GIF"), "GIF images are not supported; supported: DICOM, PNG"),
    "png over max_pixels": (
        lambda tmp: png_header_only(10000, 7000),
        r"7000x10000 \(height x width\) = 70.0 megapixels.*limit of 60.0",
    ),
    "png decompression bomb": (lambda tmp: png_header_only(30000, 30000), "decompression-bomb limit"),
    "text-mode file": (lambda tmp: write(tmp, "a.png", b"x").open("r"), "text mode; open the file with 'rb'"),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_errors_say_what_is_wrong(case: str, tmp_path: Path) -> None:
    make_source, message = ERROR_CASES[case]
    source = make_source(tmp_path)
    try:
        with pytest.raises(XRayReadError, match=message):
            load_xray(source)
    finally:
        if hasattr(source, "close"):
            source.close()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_pixels must be a positive"):
        load_xray(b"x", max_pixels=0)
    with pytest.raises(TypeError, match="not int"):
        load_xray(42)  # type: ignore[arg-type]


def test_xray_read_error_is_a_value_error() -> None:
    assert issubclass(XRayReadError, ValueError) and MAX_PIXELS == 60_000_000
