"""demo.histograms: histogram numbers checked on images whose histogram is known, real preprocessing ops, the
chart as an image."""

from __future__ import annotations

import numpy as np
import pytest

from demo.histograms import compare_histograms, histogram_plot, intensity_histogram, summary
from tests.conftest import REPO_ROOT
from trainer.io import load_xray
from trainer.preprocess import Pipeline


def test_half_black_half_white():
    image = np.zeros((10, 20))
    image[:, 10:] = 1.0
    histogram = intensity_histogram(image, bins=4)
    np.testing.assert_allclose(histogram.edges, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(histogram.shares, [0.5, 0, 0, 0.5])
    assert (histogram.black, histogram.white, histogram.mean, histogram.std) == (0.5, 0.5, 0.5, 0.5)
    assert (histogram.p1, histogram.p99, histogram.pixels) == (0.0, 1.0, 200)
    assert summary(histogram) == "median 0.50, 1-99 % 0.00-1.00, 50.0 % black, 50.0 % white"


def test_a_ramp_fills_every_bin_equally_and_channels_are_one_image():
    ramp = np.tile((np.arange(256) + 0.5) / 256, (8, 1))
    histogram = intensity_histogram(np.stack([ramp] * 3, axis=-1), bins=16)
    np.testing.assert_allclose(histogram.shares, np.full(16, 1 / 16))
    # 0.5 / 256 and 255.5 / 256 lie within half an 8-bit grey level of black and white: one column each.
    assert histogram.black == histogram.white == 1 / 256 and histogram.pixels == 8 * 256
    assert histogram.p50 == pytest.approx(0.5, abs=1e-9)


def test_white_balance_stretches_and_a_crop_drops_pixels():
    image = load_xray(REPO_ROOT / "demo" / "examples" / "nih_00002679_000.png").pixels
    dull = 0.3 + 0.3 * image  # a low-contrast copy in [0.3, 0.6]
    before, after = compare_histograms(dull, Pipeline.parse("white_balance").apply(dull).image)
    assert before.p1 >= 0.3 and before.p99 <= 0.6 and before.black == 0 and before.white == 0
    assert after.p1 < 0.1 and after.p99 > 0.9 and after.black > 0 and after.white > 0
    assert after.pixels == before.pixels
    _, cropped = compare_histograms(image, Pipeline.parse("crop_lungs").apply(image).image)
    assert cropped.pixels < before.pixels and cropped.shares.sum() == pytest.approx(1.0)


def test_the_chart_is_an_image_of_both_histograms():
    image = np.clip(np.random.default_rng(0).normal(0.5, 0.15, (64, 64)), 0, 1)
    before, after = compare_histograms(image, Pipeline.parse("clahe").apply(image).image)
    chart = histogram_plot(before, after, labels=("raw", "CLAHE"), size=(400, 200))
    assert chart.shape == (200, 400, 3) and chart.dtype == np.uint8
    blue = (chart[..., 2] > 150) & (chart[..., 0] < 100)  # tab:blue, the "after" curve
    grey = (
        (np.abs(chart[..., 0].astype(int) - chart[..., 2]) < 8) & (chart[..., 0] > 90) & (chart[..., 0] < 130)
    )
    assert blue.sum() > 100 and grey.sum() > 100


def test_each_curve_peaks_above_its_own_grey_level():
    dark, bright = np.full((32, 32), 0.25), np.full((32, 32), 0.8)
    chart = histogram_plot(*compare_histograms(dark, bright), size=(400, 200))
    blue = (chart[..., 2] > 150) & (chart[..., 0] < 100)
    grey = (
        (np.abs(chart[..., 0].astype(int) - chart[..., 2]) < 8) & (chart[..., 0] > 90) & (chart[..., 0] < 130)
    )
    # Right of the tick labels (whose anti-aliased edges are grey too), above the legend's colour samples.
    plot = np.zeros_like(blue)
    plot[: chart.shape[0] * 2 // 3, chart.shape[1] // 5 :] = True
    grey, blue = grey & plot, blue & plot
    peaks = [np.argwhere(mask)[:, 0].min() for mask in (grey, blue)]
    columns = [
        np.argwhere(mask[: peak + 2])[:, 1].mean() for mask, peak in zip((grey, blue), peaks, strict=True)
    ]
    assert peaks[0] == peaks[1]  # both 100 % of their pixels in one bin: the same height
    assert 0.1 < columns[0] / chart.shape[1] < 0.4 < 0.6 < columns[1] / chart.shape[1] < 0.95


def test_a_title_is_drawn_above_the_plot_which_moves_down_to_make_room():
    histograms = compare_histograms(np.full((32, 32), 0.25), np.full((32, 32), 0.8))
    plain = histogram_plot(*histograms, size=(400, 200))
    titled = histogram_plot(*histograms, size=(400, 200), title="Grey levels")

    def frame_top(chart: np.ndarray) -> int:  # the plot's black frame: the first row dark across the plot
        dark = (chart.max(axis=2) < 60).sum(axis=1)
        return int(np.argmax(dark > chart.shape[1] // 2))

    assert frame_top(titled) > frame_top(plain) + 8
    band = titled[: frame_top(titled) - 2, titled.shape[1] // 3 : titled.shape[1] * 2 // 3]
    assert (band.max(axis=2) < 100).sum() > 30  # the title's letters, centred
    assert (plain[: frame_top(plain) - 2].min(axis=2) > 240).all()  # no title: nothing above the frame


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match="values in \\[0, 1\\]"):
        intensity_histogram(np.full((4, 4), 255.0))
    with pytest.raises(ValueError, match="2-D image"):
        intensity_histogram(np.zeros(5))
    with pytest.raises(ValueError, match="bins"):
        intensity_histogram(np.zeros((4, 4)), bins=1)
    histogram = intensity_histogram(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="size"):
        histogram_plot(histogram, histogram, size=(50, 50))


def test_a_large_image_is_summarised_on_a_subsample_that_agrees_with_the_whole() -> None:
    from demo.histograms import SAMPLED_PIXELS

    rng = np.random.default_rng(0)
    side = 1536  # 9x SAMPLED_PIXELS: every third row and column
    image = np.clip(rng.beta(2, 5, size=(side, side)), 0, 1)
    image[:40] = 0.0  # a black band, as a letterbox or a label leaves
    sampled = intensity_histogram(image)
    assert side * side > SAMPLED_PIXELS and sampled.pixels == side * side
    flat = image.ravel()
    counts, _ = np.histogram(flat, bins=64, range=(0.0, 1.0))
    np.testing.assert_allclose(sampled.shares, counts / flat.size, atol=2e-3)
    for got, q in ((sampled.p1, 1), (sampled.p50, 50), (sampled.p99, 99)):
        assert got == pytest.approx(np.percentile(flat, q), abs=2e-3)
    # a band of rows is off by at most one sampled row: stride / side = 2e-3
    assert sampled.black == pytest.approx(np.mean(flat <= 0.5 / 255), abs=2e-3)
    image[-1, -1] = np.nan  # a pixel the sample skips is still checked
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        intensity_histogram(image)
