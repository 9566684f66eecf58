"""load_xray(max_side=...): large images are downscaled as they are decoded, in their stored bit depth, so one
read's memory is bounded whatever the pixel count; small images and max_side=None are unchanged."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from tests.test_io import dicom_bytes
from trainer.io import load_xray
from trainer.io.xray import fit_within

pytestmark = pytest.mark.filterwarnings("ignore:read at reduced resolution")


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_small_images_and_no_limit_are_unchanged() -> None:
    pixels = (np.arange(300 * 200) % 251).astype(np.uint8).reshape(300, 200)
    data = _png(pixels)
    full, bounded = load_xray(data), load_xray(data, max_side=512)
    assert np.array_equal(full.pixels, bounded.pixels) and bounded.warnings == ()
    assert load_xray(data, max_side=None).pixels.shape == (300, 200)


def test_sixteen_bit_precision_survives_the_downscale() -> None:
    ramp = np.linspace(0, 65535, 3000, dtype=np.float64)
    wide = np.rint(np.tile(ramp, (1000, 1))).astype(np.uint16)  # 3000 x 1000: 3000 levels across
    xray = load_xray(_png(wide), max_side=1500)
    assert xray.pixels.shape == (500, 1500) and xray.original_size == (1000, 3000)
    assert xray.bit_depth == 16 and len(np.unique(xray.pixels[0])) > 1000  # far more than 8 bits' 256
    assert np.allclose(xray.pixels[0, [0, -1]], [0.0, 1.0], atol=1e-3)
    assert any("3000x1000 px downscaled to 1500x500" in note for note in xray.warnings)


def test_the_sbit_rule_is_decided_on_every_sample() -> None:
    """12-bit data stored unscaled with one sample over 4095: 65535 stays the divisor after averaging."""
    values = np.full((2000, 2000), 2000, dtype=np.uint16)
    values[0, 0] = 5000
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    data = buffer.getvalue()
    chunk = b"sBIT" + bytes([12])
    import zlib

    sbit = len(bytes([12])).to_bytes(4, "big") + chunk + zlib.crc32(chunk).to_bytes(4, "big")
    data = data[:33] + sbit + data[33:]  # after IHDR
    full, bounded = load_xray(data), load_xray(data, max_side=500)
    assert full.bit_depth == bounded.bit_depth == 16
    assert bounded.pixels[100, 100] == pytest.approx(full.pixels[100, 100], abs=1e-4)


def test_dicom_is_downscaled_before_its_luts() -> None:
    stored = (np.arange(2400 * 1200) % 4096).astype(np.uint16).reshape(2400, 1200)
    data = dicom_bytes(stored, bits_stored=12)
    full, bounded = load_xray(data), load_xray(data, max_side=600)
    assert bounded.pixels.shape == (600, 300) and bounded.original_size == full.original_size == (2400, 1200)
    assert bounded.window == full.window and bounded.photometric == full.photometric
    assert abs(float(bounded.pixels.mean()) - float(full.pixels.mean())) < 0.01


def test_jpeg_decodes_at_reduced_scale() -> None:
    pixels = (np.indices((1600, 2400)).sum(axis=0) % 256).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    xray = load_xray(buffer.getvalue(), max_side=500)
    assert max(xray.pixels.shape) == 500 and xray.original_size == (1600, 2400)


def test_exif_rotation_reports_the_displayed_size() -> None:
    image = Image.fromarray(np.zeros((400, 1000), dtype=np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees for display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    xray = load_xray(buffer.getvalue(), max_side=250)
    assert xray.original_size == (1000, 400) and xray.pixels.shape == (250, 100)


def test_one_reads_memory_is_bounded_by_the_stored_samples() -> None:
    """A 7700x7700 PNG is a few kB on the wire; read at max_side it costs about its 8-bit samples, not 8
    bytes per pixel in float64 copies."""
    side = 7700
    data = _png(np.zeros((side, side), dtype=np.uint8))
    tracemalloc.start()
    try:
        xray = load_xray(data, max_side=2048, max_pixels=side * side)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert xray.pixels.shape == (2048, 2048)
    # Pillow hands the decoded samples over as bytes (about two copies at the peak): 2 bytes per pixel, where
    # a full-resolution float64 read takes 16.
    assert peak < 2.5 * side * side, f"peak {peak / 1e6:.0f} MB for a {side * side / 1e6:.0f} MP image"


def test_fit_within_keeps_dtypes() -> None:
    for dtype in (np.uint8, np.uint16, np.int16, np.int32, np.float32):
        out = fit_within(np.ones((40, 20), dtype=dtype), 10)
        assert out.dtype == dtype and out.shape == (10, 5)
    assert fit_within(np.ones((8, 3, 3), np.uint16), 4).shape == (4, 2, 3)
