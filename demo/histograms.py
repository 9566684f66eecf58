"""Intensity histograms of a radiograph before and after preprocessing, for the before/after slider.

CLAHE spreads the grey levels, white balance stretches them until a small share of pixels is black or white,
and the crops drop the dark background: `compare_histograms` shows each as numbers (share of pixels per
grey level, percentiles, the share at pure black and white) and `histogram_plot` as a small chart. Shares
are fractions of each image's own pixels, so a cropped image compares fairly with the full one.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BINS = 64
# Larger images are summarised on an evenly strided subsample of about this many pixels: shares and
# percentiles move by about 1e-3 (they are shown to 0.1 % and 0.01), and the cost stays that of a 512 x 512
# image whatever the upload (a 2048 x 2048 one took 300 ms in full, issue 16).
SAMPLED_PIXELS = 512 * 512
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
    size: tuple[int, int] = (720, 360),
    title: str = "",
) -> np.ndarray:
    """Both histograms overlaid in a small chart: uint8 RGB (height, width, 3); `size` is (width, height);
    `title`, when given, is drawn above the plot.

    Drawn with Pillow: the chart is axis-aligned steps, ticks and text, and matplotlib took 140 ms for it
    (a quarter of a whole prediction, issue 16) where this takes a few.
    """
    width, height = size
    if not (160 <= width <= 2000 and 100 <= height <= 2000):
        raise ValueError(f"size must be (160-2000, 100-2000) pixels; got {size}")
    font, small = _font(max(9, round(height / 22))), _font(max(8, round(height / 26)))
    tall, short = _text_height(font), _text_height(small)
    line_height = short + 3
    curves = ((before, labels[0], _GREY), (after, labels[1], _BLUE))
    legend = [(f"{label}: {summary(histogram)}", colour) for histogram, label, colour in curves]

    top = max(100 * max(float(h.shares.max()) for h, _, _ in curves), 1e-9)
    step = _nice_step(top / 4)
    y_max = math.ceil(top * 1.05 / step) * step
    y_ticks = [step * i for i in range(int(round(y_max / step)) + 1)]
    y_labels = [f"{value:g}" for value in y_ticks]
    left = 6 + tall + 6 + max(int(small.getlength(text)) for text in y_labels) + 6
    right = width - 12
    bottom = height - 6 - len(legend) * line_height - tall - 6 - short - 8
    plot_top = 8 + (tall + 8 if title else 0)
    if bottom - plot_top < 30 or right - left < 60:
        raise ValueError(f"size {size} leaves no room for the chart")

    def x_at(value: float) -> float:
        return left + value * (right - left)

    def y_at(percent: float) -> float:
        return bottom - min(percent, y_max) / y_max * (bottom - plot_top)

    # Each bin as (left x, right x, top y) in pixels.
    bars = [
        [
            (x_at(low), x_at(high), y_at(100 * share))
            for low, high, share in zip(h.edges[:-1], h.edges[1:], h.shares, strict=True)
        ]
        for h, _, _ in curves
    ]
    chart = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(chart, "RGBA")  # RGBA: translucent fills blend where the two overlap
    if title:
        draw.text((width / 2, 6), _fitted(title, font, width - 12), fill="black", font=font, anchor="mt")
    for steps, (_, _, colour) in zip(bars, curves, strict=True):  # fills first: both outlines stay visible
        for x0, x1, y in steps:
            if y < bottom:
                # whole pixel columns, each bin's own: shared edge columns would be painted twice
                draw.rectangle((round(x0), y, round(x1) - 1, bottom), fill=(*colour, 64))
    line = max(1, round(height / 140))
    for steps, (_, _, colour) in zip(bars, curves, strict=True):
        outline = [point for x0, x1, y in steps for point in ((x0, y), (x1, y))]
        draw.line([(x_at(0.0), float(bottom)), *outline, (x_at(1.0), float(bottom))], fill=colour, width=line)

    draw.rectangle((left, plot_top, right, bottom), outline="black")
    for value, text in zip(y_ticks, y_labels, strict=True):
        y = y_at(value)
        draw.line((left - 4, y, left, y), fill="black")
        draw.text((left - 6, y), text, fill="black", font=small, anchor="rm")
    for tenth in range(0, 11, 2):
        x = x_at(tenth / 10)
        draw.line((x, bottom, x, bottom + 4), fill="black")
        draw.text((x, bottom + 6), f"{tenth / 10:.1f}", fill="black", font=small, anchor="mt")
    x_label_top = bottom + 6 + short + 6
    draw.text(((left + right) / 2, x_label_top), "grey level (0 = black, 1 = white)", "black", font, "mt")
    _vertical_text(chart, "% of pixels", font, (6, (plot_top + bottom) / 2))

    y = x_label_top + tall + 8
    for text, colour in legend:
        draw.line((8, y + line_height / 2, 28, y + line_height / 2), fill=colour, width=line)
        draw.text((34, y), _fitted(text, small, width - 40), fill="black", font=small)
        y += line_height
    return np.asarray(chart)


_GREY = (115, 115, 115)  # the raw image
_BLUE = (31, 119, 180)  # the preprocessed one


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's own font (no system font needed) at `size` pixels; loading it takes a few ms."""
    return ImageFont.load_default(size=size)  # type: ignore[return-value]  # FreeType is in Pillow's wheels


def _text_height(font: ImageFont.FreeTypeFont) -> int:
    left, top, right, bottom = font.getbbox("Hg0")
    return int(bottom)


def _nice_step(rough: float) -> float:
    """1, 2, 2.5 or 5 times a power of ten, the smallest not below `rough`."""
    power = 10 ** math.floor(math.log10(rough))
    return next(power * m for m in (1, 2, 2.5, 5, 10) if power * m >= rough)


def _fitted(text: str, font: ImageFont.FreeTypeFont, width: int) -> str:
    """`text`, cut with an ellipsis where it would run past `width` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text.rstrip(" ,:") + "…"


def _vertical_text(
    image: Image.Image, text: str, font: ImageFont.FreeTypeFont, at: tuple[float, float]
) -> None:
    """`text` turned 90 degrees (reading upwards), its left edge at at[0], centred on at[1]."""
    length, height = int(font.getlength(text)) + 2, _text_height(font) + 2
    label = Image.new("RGBA", (length, height), (0, 0, 0, 0))
    ImageDraw.Draw(label).text((1, 0), text, fill="black", font=font)
    turned = label.rotate(90, expand=True)
    image.paste(turned, (int(at[0]), int(at[1] - turned.height / 2)), turned)
