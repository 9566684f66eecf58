"""Intensity histograms of a radiograph before and after preprocessing, for the before/after slider.

CLAHE spreads the grey levels, white balance stretches them until a small share of pixels is black or white,
and the crops drop the dark background: `compare_histograms` shows each as numbers (share of pixels per
grey level, percentiles, the share at pure black and white) and `histogram_plot` as a small chart. Shares
are fractions of each image's own pixels, so a cropped image compares fairly with the full one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BINS = 64
# Larger images are summarised on an evenly strided subsample of about this many pixels: shares and
# percentiles move by about 1e-3 (they are shown to 0.1 % and 0.01), and the cost stays that of a 512 x 512
# image whatever the upload (a 2048 x 2048 one took 300 ms in full, issue 16).
SAMPLED_PIXELS = 512 * 512
_DPI = 100
_EXTREME = 0.5 / 255  # within half an 8-bit grey level of 0 or 1 counts as pure black / white


@dataclass(frozen=True)
class IntensityHistogram:
    """The grey-level distribution of one image (values in [0, 1]).

    Attributes:
        edges: (bins + 1,) bin edges from 0 to 1.
        shares: (bins,) fraction of the pixels in each bin (sums to 1).
        mean, std: of the pixel values.
        p1, p50, p99: percentiles of the pixel values.
        black, white: fraction of pixels at pure black / pure white (what a stretch clips).
        pixels: how many pixels the image has (after a crop, fewer); images of more than `SAMPLED_PIXELS`
            are summarised on an evenly strided subsample of them.
    """

    edges: np.ndarray
    shares: np.ndarray
    mean: float
    std: float
    p1: float
    p50: float
    p99: float
    black: float
    white: float
    pixels: int


def intensity_histogram(image: np.ndarray, bins: int = BINS) -> IntensityHistogram:
    """The histogram and summary numbers of a float image in [0, 1] (2-D, or 3-D with equal channels).

    Raises:
        ValueError: an empty image, bins outside 2-256, or values outside [0, 1].
    """
    if not 2 <= bins <= 256:
        raise ValueError(f"bins must be between 2 and 256; got {bins}")
    plane = np.asarray(image)
    plane = plane[..., 0] if plane.ndim == 3 else plane
    if plane.ndim != 2 or plane.size == 0:
        raise ValueError(f"intensity_histogram takes a 2-D image; got shape {np.shape(image)}")
    if not np.isfinite(plane).all() or plane.min() < 0 or plane.max() > 1:  # every pixel, not the sample
        raise ValueError("intensity_histogram takes values in [0, 1]; scale the image first")
    stride = max(1, math.ceil(math.sqrt(plane.size / SAMPLED_PIXELS)))
    values = np.asarray(plane[::stride, ::stride], dtype=np.float64).ravel()
    counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    p1, p50, p99 = np.percentile(values, [1, 50, 99])
    return IntensityHistogram(
        edges=edges,
        shares=counts / values.size,
        mean=float(values.mean()),
        std=float(values.std()),
        p1=float(p1),
        p50=float(p50),
        p99=float(p99),
        black=float(np.mean(values <= _EXTREME)),
        white=float(np.mean(values >= 1 - _EXTREME)),
        pixels=int(plane.size),
    )


def compare_histograms(
    before: np.ndarray, after: np.ndarray, bins: int = BINS
) -> tuple[IntensityHistogram, IntensityHistogram]:
    """Histograms of a radiograph (float (H, W) in [0, 1], as `load_xray` gives it) and of the same image
    after its preprocessing (at its own size: a letterbox's padding would count as black)."""
    return intensity_histogram(before, bins), intensity_histogram(after, bins)


def summary(histogram: IntensityHistogram) -> str:
    """One line of numbers, e.g. "median 0.52, 1-99 % 0.03-0.97, 0.4 % black, 0.0 % white"."""
    return (
        f"median {histogram.p50:.2f}, 1-99 % {histogram.p1:.2f}-{histogram.p99:.2f}, "
        f"{100 * histogram.black:.1f} % black, {100 * histogram.white:.1f} % white"
    )


def histogram_plot(
    before: IntensityHistogram,
    after: IntensityHistogram,
    *,
    labels: tuple[str, str] = ("before", "after"),
    size: tuple[int, int] = (480, 240),
) -> np.ndarray:
    """Both histograms overlaid in a small chart: uint8 RGB (height, width, 3); `size` is (width, height)."""
    width, height = size
    if not (160 <= width <= 2000 and 100 <= height <= 2000):
        raise ValueError(f"size must be (160-2000, 100-2000) pixels; got {size}")
    # here: importing the demo loads no matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    axes = fig.add_subplot()
    for histogram, label, colour in ((before, labels[0], "0.45"), (after, labels[1], "tab:blue")):
        centres = (histogram.edges[:-1] + histogram.edges[1:]) / 2
        axes.fill_between(centres, 100 * histogram.shares, step="mid", alpha=0.25, color=colour)
        axes.step(
            centres, 100 * histogram.shares, where="mid", color=colour, label=f"{label}: {summary(histogram)}"
        )
    axes.set_xlim(0, 1)
    axes.set_ylim(bottom=0)
    axes.set_xlabel("grey level (0 = black, 1 = white)", fontsize=8)
    axes.set_ylabel("% of pixels", fontsize=8)
    axes.tick_params(labelsize=7)
    axes.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.25), frameon=False)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
