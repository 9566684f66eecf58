"""Preprocessing ops for chest radiographs and a JSON-able pipeline of them.

Every op is a pure function from a float32 (H, W) image in [0, 1] (bright = dense, as displayed; what
`trainer.io.load_xray` returns) to a new float32 (H', W') image in [0, 1]. A `Pipeline` is an immutable,
validated sequence of ops; its JSON form (a list of flat dicts) is what a model's config.json stores, so that
training and inference run the same code path::

    pipeline = Pipeline.parse("crop_lungs,clahe:clip_limit=3")
    pipeline.to_list()  # [{"op": "crop_lungs", "margin": 0.05}, {"op": "clahe", "clip_limit": 3.0, ...}]
    result = pipeline.apply(image)  # result.image, result.warnings (e.g. a lung-crop fallback)

The crop ops search for the body and the lungs on a copy downscaled to `ANALYSIS_SIDE` pixels (classical
thresholding and morphology, no model), so they cost tens of milliseconds whatever the input size. Put crops
before intensity ops in a pipeline: the boxes are then found on the image as acquired.
"""

from __future__ import annotations

import contextvars
import difflib
import inspect
import json
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from trainer.errors import ChexlabError

__all__ = [
    "ANALYSIS_SIDE",
    "OPS",
    "Box",
    "LungSearch",
    "OpSpec",
    "Param",
    "Pipeline",
    "PipelineResult",
    "PreprocessError",
    "PreprocessWarning",
    "Step",
    "body_box",
    "clahe",
    "crop",
    "crop_body",
    "crop_lungs",
    "fit_to_input",
    "describe_ops",
    "equalize",
    "find_lungs",
    "gamma",
    "invert",
    "lung_box",
    "median",
    "resize",
    "white_balance",
]

ANALYSIS_SIDE = 256
"""Longer side (pixels) of the downscaled copy on which body and lung boxes are searched."""

_LUNG_PERCENTILES = tuple(range(4, 76, 4))  # dark-region thresholds tried, as % of body pixels
_RIB_RADIUS = 0.025  # of the body box's longer side: wider than a rib shadow, narrower than a lung
_SPLIT_LEVELS = 4  # how many thresholds above a leak the watershed split looks
_MAX_LUNG_WIDTH = 0.6  # of the body box width
_APEX_EXTENSION = 0.1  # of a lung's height
_MIN_LUNG_CONTRAST = 0.05  # (body mean - lung mean) / the body's 5-95 % range
_SEARCH_TILES = 4  # CLAHE tiles for the lung search: coarse enough to leave no halo beside the spine
_LEVELS = 65535  # 16-bit quantisation: keeps the detail of 12-16 bit radiographs that 8 bits would merge


class PreprocessError(ChexlabError, ValueError):
    """A preprocessing op or pipeline was given something it cannot work with (bad op, parameter or image)."""


class PreprocessWarning(UserWarning):
    """A preprocessing op did something weaker than asked (e.g. crop_lungs fell back to the body crop)."""


# Pipeline.apply collects warnings here instead of emitting them; a ContextVar (not warnings.catch_warnings,
# which swaps process-wide state) keeps that safe when a UI serves several sessions from threads.
_warning_sink: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "chexlab_preprocess_warnings", default=None
)


def _warn(message: str) -> None:
    sink = _warning_sink.get()
    if sink is None:
        warnings.warn(message, PreprocessWarning, stacklevel=3)
    else:
        sink.append(message)


# --------------------------------------------------------------------------------------------- boxes


@dataclass(frozen=True)
class Box:
    """A crop rectangle in pixel coordinates; `bottom` and `right` are exclusive (NumPy slice bounds)."""

    top: int
    left: int
    bottom: int
    right: int

    def __post_init__(self) -> None:
        for name in ("top", "left", "bottom", "right"):  # NumPy integers from OpenCV stats become plain ints
            object.__setattr__(self, name, int(getattr(self, name)))

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def area(self) -> int:
        return self.height * self.width

    @classmethod
    def full(cls, shape: tuple[int, ...]) -> Box:
        """The box covering a whole image of this (H, W) shape."""
        return cls(0, 0, int(shape[0]), int(shape[1]))

    def scaled(self, sy: float, sx: float, shape: tuple[int, ...]) -> Box:
        """This box mapped to an image `sy`/`sx` times larger, rounded outwards and clipped to `shape`."""
        top = min(max(math.floor(self.top * sy), 0), shape[0] - 1)
        left = min(max(math.floor(self.left * sx), 0), shape[1] - 1)
        bottom = max(min(math.ceil(self.bottom * sy), shape[0]), top + 1)
        right = max(min(math.ceil(self.right * sx), shape[1]), left + 1)
        return Box(top, left, bottom, right)

    def within(self, outer: Box) -> Box:
        """This box clipped to `outer` (which it must overlap)."""
        return Box(
            max(self.top, outer.top), max(self.left, outer.left),
            min(self.bottom, outer.bottom), min(self.right, outer.right),
        )  # fmt: skip

    def expanded(self, margin: float, shape: tuple[int, ...]) -> Box:
        """This box grown by `margin` times its height/width on every side, clipped to `shape`."""
        dy, dx = round(margin * self.height), round(margin * self.width)
        return Box(
            max(self.top - dy, 0), max(self.left - dx, 0),
            min(self.bottom + dy, shape[0]), min(self.right + dx, shape[1]),
        )  # fmt: skip


def crop(image: np.ndarray, box: Box) -> np.ndarray:
    """A copy of `image` inside `box` (a copy, so callers may modify it without touching the input)."""
    return image[box.top : box.bottom, box.left : box.right].astype(np.float32, copy=True)


# --------------------------------------------------------------------------------------------- helpers


def _as_image(image: np.ndarray) -> np.ndarray:
    """Validate an op's input: a non-empty 2-D float array, clipped to [0, 1] (with a warning if needed)."""
    arr = np.asarray(image)
    if arr.ndim != 2 or arr.size == 0:
        raise PreprocessError(
            f"expected a non-empty 2-D grayscale image (H, W); got shape {arr.shape}"
            " (load files with trainer.io.load_xray, which returns that)"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise PreprocessError(
            f"expected float pixels in [0, 1]; got dtype {arr.dtype}"
            " (load files with trainer.io.load_xray, or divide integer pixels by their maximum)"
        )
    arr = arr.astype(np.float32, copy=False)
    lo, hi = float(arr.min()), float(arr.max())
    if not (lo >= 0.0 and hi <= 1.0):  # also true for NaN
        _warn(f"pixel values outside [0, 1] (min {lo:.3g}, max {hi:.3g}) were clipped")
        arr = np.clip(np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    return arr


def _quantise(image: np.ndarray) -> np.ndarray:
    return np.rint(image * _LEVELS).astype(np.uint16)


def _to_float(q: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * np.float32(1.0 / _LEVELS)


def _analysis_copy(image: np.ndarray) -> tuple[np.ndarray, float, float]:
    """A copy at most ANALYSIS_SIDE pixels on its longer side, and the (y, x) factors back to full size."""
    h, w = image.shape
    scale = min(1.0, ANALYSIS_SIDE / max(h, w))
    if scale == 1.0:
        return image, 1.0, 1.0
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    small = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA)
    return small, h / sh, w / sw


def _robust_unit(values: np.ndarray, image: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """`image` stretched so that the low/high percentiles of `values` map to 0/1 (no clipping)."""
    lo, hi = np.percentile(values, [low, high]) if values.size else (0.0, 1.0)
    return (image - lo) / max(float(hi - lo), 1e-6)


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of float values (histogram of 256 bins over their range)."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-6:
        return lo
    u8 = np.rint((values - lo) / (hi - lo) * 255).astype(np.uint8).reshape(-1, 1)
    t, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return lo + (t + 0.5) / 255.0 * (hi - lo)


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """connectedComponentsWithStats on a bool mask (8-connected): count, labels, stats, centroids."""
    return cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)


def _touching_border(labels: np.ndarray) -> np.ndarray:
    """Labels (> 0) of the components that touch the image border."""
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return np.unique(edge[edge > 0])


# --------------------------------------------------------------------------------------------- intensity ops


def clahe(image: np.ndarray, clip_limit: float = 2.0, tile_grid: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (CLAHE).

    Equalises the histogram of each of `tile_grid` x `tile_grid` tiles, with the slope of each tile's mapping
    limited to `clip_limit` times that of a flat histogram, which brings out rib, vessel and lung-texture
    contrast in both the bright mediastinum and the dark lungs without amplifying noise as much as plain
    adaptive equalisation (the clahe-wb-transfer recipe). It runs OpenCV's CLAHE on a 16-bit quantisation, so
    12-16 bit detail is not merged into 256 levels; `clip_limit` keeps the meaning it has on 8-bit images
    (the clip is taken relative to the number of grey levels the image actually uses, at most 65536).
    """
    image = _as_image(image)
    h, w = image.shape
    q = _quantise(image)
    # OpenCV clips each 16-bit bin at clip_limit * tile_area / 65536; an 8-bit image quantised to 16 bits
    # occupies only every 257th bin, so without this rescaling the clip would flatten it to almost nothing.
    levels = int(np.count_nonzero(np.bincount(q[::4, ::4].ravel(), minlength=_LEVELS + 1)))
    levels = min(max(levels, 256), _LEVELS + 1)
    grid = max(1, min(tile_grid, h // 2, w // 2))
    op = cv2.createCLAHE(clipLimit=clip_limit * (_LEVELS + 1) / levels, tileGridSize=(grid, grid))
    return _to_float(op.apply(q))


def white_balance(image: np.ndarray, percent: float = 0.05) -> np.ndarray:
    """Robust contrast stretch: the `percent` % darkest and brightest pixels saturate to 0 and 1.

    This is the clahe-wb-transfer recipe's white balance (a per-channel stretch discarding the extreme
    0.05 % of values at each end) reduced to one grey channel: it undoes the washed-out or dim exposure of
    many scanned or re-encoded radiographs, while burned-in text and isolated hot pixels cannot dictate the
    range. A constant image is returned unchanged.
    """
    image = _as_image(image)
    # Percentiles from a 16-bit histogram: exact to 1/65535 and several times faster than a partial sort.
    cdf = np.cumsum(np.bincount(_quantise(image).ravel(), minlength=_LEVELS + 1))
    cuts = np.asarray([percent / 100.0, 1.0 - percent / 100.0]) * cdf[-1]
    lo, hi = (float(level) / _LEVELS for level in cdf.searchsorted(cuts))
    if hi - lo < 1e-6:
        return image.copy()
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def equalize(image: np.ndarray) -> np.ndarray:
    """Global histogram equalisation (on a 16-bit quantisation).

    Spreads the grey levels so that every brightness is equally common: a strong, parameter-free contrast
    boost for very flat exposures, used by many older CXR pipelines; CLAHE is usually the gentler choice.
    A constant image is returned unchanged.
    """
    image = _as_image(image)
    q = _quantise(image)
    cdf = np.cumsum(np.bincount(q.ravel(), minlength=_LEVELS + 1))
    first = cdf[q.min()]
    if cdf[-1] == first:
        return image.copy()
    lut = ((cdf - first) / float(cdf[-1] - first)).clip(0.0, 1.0).astype(np.float32)
    return lut[q]


def gamma(image: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """Gamma correction `image ** gamma`: gamma < 1 brightens dark regions (lungs), gamma > 1 darkens them."""
    image = _as_image(image)
    return np.power(image, np.float32(gamma), dtype=np.float32)


def invert(image: np.ndarray) -> np.ndarray:
    """Negative image (1 - x): bone dark, air bright, as some datasets and MONOCHROME1 viewers show it."""
    return (1.0 - _as_image(image)).astype(np.float32)


def median(image: np.ndarray, size: int = 3) -> np.ndarray:
    """Median filter with a `size` x `size` window (3 or 5).

    Removes salt-and-pepper noise and JPEG speckle from re-encoded radiographs while keeping edges (rib and
    heart borders) sharp, unlike a blur.
    """
    image = _as_image(image)
    return np.clip(cv2.medianBlur(image, size), 0.0, 1.0)


def resize(image: np.ndarray, size: int = 256, pad: bool = True) -> np.ndarray:
    """Resize to `size` x `size` pixels.

    With `pad` (default) the aspect ratio is kept: the longer side becomes `size` and the image is centred on
    a black square, so anatomy is not distorted; with `pad=False` it is squashed to the square, as in most
    published CXR pipelines. Shrinking averages pixels (area interpolation), which avoids aliasing of fine
    rib and line detail.
    """
    image = _as_image(image)
    h, w = image.shape
    if pad:
        scale = size / max(h, w)
        th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    else:
        th, tw = size, size
    shrinking = th * tw < h * w
    out = cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    out = np.clip(out, 0.0, 1.0)
    if (th, tw) == (size, size):
        return out
    square: np.ndarray = np.zeros((size, size), dtype=np.float32)
    top, left = (size - th) // 2, (size - tw) // 2
    square[top : top + th, left : left + tw] = out
    return square


# --------------------------------------------------------------------------------------------- body crop


def fit_to_input(image: np.ndarray, size: int) -> np.ndarray:
    """Letterbox a preprocessed image to the model's square input, keeping its aspect ratio.

    Args:
        image: float32 ``(H, W)`` in [0, 1] (the output of the model's preprocessing pipeline).
        size: the side of the model's square input.

    Returns:
        float32 ``(size, size)`` in [0, 1]; the margins are padding.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
    fitted = np.asarray(resize(image, size=size, pad=True), dtype=np.float32)
    if fitted.shape != (size, size):
        raise ValueError(f"resize returned shape {fitted.shape}, expected ({size}, {size})")
    return fitted


def _trim_uniform_edges(small: np.ndarray) -> Box:
    """The box left after trimming featureless rows/columns (black padding, collimator bands) at each edge."""
    h, w = small.shape
    spread = max(float(np.percentile(small, 99) - np.percentile(small, 1)), 1e-6)

    def featureless(lines: np.ndarray) -> np.ndarray:
        return lines.std(axis=1) < 0.03 * spread

    rows, cols = featureless(small), featureless(small.T)
    max_h, max_w = h // 4, w // 4  # never trim more than a quarter per side

    def run(flags: np.ndarray, limit: int) -> int:
        n = 0
        while n < limit and flags[n]:
            n += 1
        return n

    return Box(run(rows, max_h), run(cols, max_w), h - run(rows[::-1], max_h), w - run(cols[::-1], max_w))


def _body_mask(small: np.ndarray) -> tuple[np.ndarray, Box]:
    """Body mask and body box on the analysis copy.

    The background is the dark region (direct exposure) connected to the border; the body is the largest
    remaining component after an opening that detaches burned-in labels and markers.
    """
    h, w = small.shape
    inner = _trim_uniform_edges(small)
    region = small[inner.top : inner.bottom, inner.left : inner.right]
    mask = np.zeros((h, w), dtype=bool)
    if region.size == 0 or float(region.max() - region.min()) < 1e-3:
        mask[inner.top : inner.bottom, inner.left : inner.right] = True
        return mask, inner
    norm = _robust_unit(region, cv2.GaussianBlur(region, (0, 0), 1.0))
    dark = norm < 0.5 * _otsu(norm)
    n, labels, _, _ = _components(dark)
    background = np.isin(labels, _touching_border(labels))
    body = ~background
    radius = max(1, round(0.012 * max(h, w)))
    body = cv2.morphologyEx(body.astype(np.uint8), cv2.MORPH_OPEN, _disk(radius)).astype(bool)
    n, labels, stats, _ = _components(body)
    if n <= 1:
        mask[inner.top : inner.bottom, inner.left : inner.right] = True
        return mask, inner
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, bw, bh = stats[biggest, :4]
    mask[inner.top : inner.bottom, inner.left : inner.right] = labels == biggest
    return mask, Box(inner.top + y, inner.left + x, inner.top + y + bh, inner.left + x + bw)


def _plausible_body(box: Box, shape: tuple[int, int]) -> bool:
    h, w = shape
    return box.height >= 0.4 * h and box.width >= 0.3 * w and box.area >= 0.2 * h * w


def _small_body(small: np.ndarray) -> tuple[np.ndarray, Box]:
    mask, box = _body_mask(small)
    if not _plausible_body(box, small.shape):
        _warn(
            f"could not find the body (the candidate, {box.height}x{box.width} px of {small.shape[0]}x"
            f"{small.shape[1]} at analysis size, is implausibly small); kept the full image"
        )
        return np.ones(small.shape, dtype=bool), Box.full(small.shape)
    return mask, box


def body_box(image: np.ndarray) -> Box:
    """The box around the patient's body, excluding black borders, collimator bands and burned-in labels.

    Falls back to the full image (with a PreprocessWarning) when no plausible body is found; the box is
    never empty.
    """
    image = _as_image(image)
    small, sy, sx = _analysis_copy(image)
    _, box = _small_body(small)
    return box.scaled(sy, sx, image.shape)


def crop_body(image: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Crop to the patient's body (see `body_box`), grown by `margin` times its size on each side.

    The black area outside the body, film labels and markers carry no diagnostic signal but do give a
    classifier shortcuts; cheXNet-transfer found that removing it helps.
    """
    image = _as_image(image)
    return crop(image, body_box(image).expanded(margin, image.shape))


# --------------------------------------------------------------------------------------------- lung crop


def _midline(norm: np.ndarray, mask: np.ndarray) -> int:
    """Column of the mediastinum/spine: the brightest column band in the middle of the chest."""
    h, w = norm.shape
    band = slice(h // 5, (7 * h) // 10)
    weights = mask[band].sum(axis=0)
    profile = np.where(weights > 0, (norm[band] * mask[band]).sum(axis=0) / np.maximum(weights, 1), 0.0)
    profile = cv2.GaussianBlur(profile.reshape(1, -1).astype(np.float32), (0, 0), max(1.0, w / 40)).ravel()
    lo, hi = (3 * w) // 10, (7 * w) // 10
    return lo + int(np.argmax(profile[lo:hi])) if hi > lo else w // 2


def _grow_lung(
    relief: np.ndarray, allowed: np.ndarray, frame: np.ndarray, levels: np.ndarray
) -> np.ndarray | None:
    """One lung as the dark region that grows with the threshold until it would leak out of the chest.

    At the lowest level, the largest dark region at lung height that does not touch `frame` is the core; at
    each higher level it is replaced by the region containing it, until that region reaches the top or bottom
    of the frame or its sides level with the shoulders (it has joined the neck, an armpit or the abdomen).
    The lower lung, often brighter than the neck (overlying soft tissue, effusions), is then added from a few
    levels higher by a watershed that splits the joined region at the ridge between the lung and the leak,
    keeping only what it adds below the top of the lung and near its sides.
    """
    h, w = relief.shape
    # Lower down, lungs may reach the frame at the chest wall; they never reach the top or the bottom, nor the
    # sides level with the shoulders and armpits.
    ends = frame.copy()
    ends[(35 * h) // 100 : h - max(1, round(0.03 * h))] = False
    current: np.ndarray | None = None
    leaked_at = None
    for k, level in enumerate(levels):
        n, labels, stats, centroids = _components((relief < level) & allowed)
        if current is None:
            touching = set(np.unique(labels[ends]).tolist())
            ok = [
                i for i in range(1, n)
                if i not in touching and stats[i, cv2.CC_STAT_AREA] >= 0.004 * h * w
                and 0.15 * h < centroids[i][1] < 0.7 * h
            ]  # fmt: skip
            if ok:
                current = labels == max(ok, key=lambda i: stats[i, cv2.CC_STAT_AREA])
            continue
        pick = int(np.bincount(labels[current]).argmax())
        if pick == 0 or stats[pick, cv2.CC_STAT_WIDTH] > _MAX_LUNG_WIDTH * w:
            break
        if np.any(labels[ends] == pick):
            leaked_at = k
            break
        current = labels == pick
    if current is None or leaked_at is None:
        return current
    joined = (relief < levels[min(leaked_at + _SPLIT_LEVELS, len(levels) - 1)]) & allowed
    _, labels = cv2.connectedComponents(joined.astype(np.uint8), connectivity=8)
    joined = labels == np.bincount(labels[current]).argmax()
    # Outside the joined region the relief is a wall, so neither flood can pass through it.
    walled = np.where(joined, np.rint(relief * 65534), 65535).astype(np.uint16)
    markers = np.zeros((h, w), dtype=np.int16)
    markers[joined & ends] = 1
    markers[current] = 2
    from scipy import ndimage  # only the lung crop needs it: the demo's default pipelines import no scipy

    lung = (ndimage.watershed_ift(walled, markers) == 2) & joined
    # Only the lower lung is missing at this point: what the split adds above the core or well beside it is
    # shoulder or armpit.
    ys, xs = np.nonzero(current)
    pad = round(0.1 * w)
    lung[: ys.min()] = False
    lung[:, : max(xs.min() - pad, 0)] = False
    lung[:, xs.max() + 1 + pad :] = False
    return lung | current


def _find_lungs(small: np.ndarray, mask: np.ndarray, body: Box) -> tuple[Box | None, str]:
    """The box around both lungs on the analysis copy, or None and the reason none was plausible.

    Each hemithorax (split at the mediastinum) is searched separately, so a lung is not lost because the
    other one, or the region outside the chest, is darker; see `_grow_lung`.
    """
    region = small[body.top : body.bottom, body.left : body.right]
    inside = mask[body.top : body.bottom, body.left : body.right]
    h, w = region.shape
    # Dark skin folds and air just inside the body outline are never lung.
    inside = cv2.erode(inside.astype(np.uint8), _disk(max(1, round(0.025 * max(h, w))))).astype(bool)
    if h < 64 or w < 64 or inside.sum() < 0.1 * h * w:
        return None, "the body region is too small to search"
    # Anatomy is large-scale structure that survives a blur; noise (or a blank image) does not.
    coarse = cv2.GaussianBlur(region, (0, 0), 0.02 * max(h, w))
    if coarse[inside].std() < 0.5 * max(float(region[inside].std()), 1e-3):
        return None, "the image has no large-scale structure"
    # CLAHE evens out exposure gradients (bright lower chest on AP films, dark neck), so that lungs are the
    # darkest regions locally; it also makes the search largely indifferent to a CLAHE step before it. A grey
    # opening then erases the ribs (bright bands narrower than the disk) that would otherwise cut the lung
    # fields into strips, and the blur smooths what is left.
    smooth = cv2.GaussianBlur(region, (0, 0), 1.0)  # CLAHE would amplify pixel noise in flat regions
    opened = cv2.morphologyEx(
        clahe(smooth, tile_grid=_SEARCH_TILES), cv2.MORPH_OPEN, _disk(max(1, round(_RIB_RADIUS * max(h, w))))
    )
    relief = cv2.GaussianBlur(opened, (0, 0), max(1.0, max(h, w) / 100))
    mid = _midline(relief, inside)
    # The frame is what lies outside the searched region: the body box's edges and the body outline.
    frame = ~cv2.erode(inside.astype(np.uint8), _disk(1)).astype(bool)
    fy, fx = max(1, round(0.03 * h)), max(1, round(0.03 * w))
    frame[:fy], frame[-fy:], frame[:, :fx], frame[:, -fx:] = True, True, True, True
    levels = np.percentile(relief[inside], _LUNG_PERCENTILES)
    half = max(1, w // 50)
    columns = np.arange(w)
    boxes: dict[bool, Box] = {}
    found = np.zeros((h, w), dtype=bool)
    for side in (True, False):  # True: the image's left half (the patient's right lung on a PA view)
        allowed = inside & ((columns < mid - half) if side else (columns > mid + half))[None, :]
        if not allowed.any():
            continue
        # Lungs are the dark class of their hemithorax: growing past Otsu's threshold only adds tissue.
        lung = _grow_lung(relief, allowed, frame, levels[levels <= _otsu(relief[allowed])])
        if lung is None:
            continue
        # Thin offshoots along the mediastinum or chest wall are halos and gaps, not lung.
        lung = cv2.morphologyEx(lung.astype(np.uint8), cv2.MORPH_OPEN, _disk(max(1, round(0.02 * max(h, w)))))
        n, labels, stats, _ = _components(lung.astype(bool))
        if n < 2:
            continue
        lung = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        found |= lung
        ys, xs = np.nonzero(lung)
        # A lung is tall and its apex is in the upper chest; anything else is a dark patch lower down.
        if ys.max() + 1 - ys.min() >= 0.25 * h and ys.min() < 0.45 * h:
            boxes[side] = Box(ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
    # Lungs are darker than the rest of the body; regions that are not were found in a misread image.
    if found.any() and (inside & ~found).any():
        lo, hi = np.percentile(region[inside], [5, 95])
        contrast = (region[inside & ~found].mean() - region[found].mean()) / max(hi - lo, 1e-6)
        if contrast < _MIN_LUNG_CONTRAST:
            return None, f"the lung candidates are not darker than the rest of the body ({contrast:.2f})"
    lungs, reason = _pair_box(boxes, mid, h, w)
    if lungs is None:
        return None, reason
    shifted = Box(
        body.top + lungs.top, body.left + lungs.left, body.top + lungs.bottom, body.left + lungs.right
    )
    return shifted, ""


def _pair_box(boxes: dict[bool, Box], mid: int, h: int, w: int) -> tuple[Box | None, str]:
    """The box around a plausible pair of lung boxes in an h x w body box, or None and the reason."""
    if len(boxes) == 1:
        # One lung found (a white-out, effusion or collapse hides the other): mirror it about the midline.
        ((side, one),) = boxes.items()
        boxes[not side] = Box(one.top, max(2 * mid - one.right, 0), one.bottom, min(2 * mid - one.left, w))
    if len(boxes) < 2:
        return None, "no lung-shaped dark region on either side of the mediastinum"
    a, b = boxes[True], boxes[False]
    if max(a.area, b.area) > 6 * min(a.area, b.area):
        return None, "the two dark regions differ too much in size to be lungs"
    if min(a.bottom, b.bottom) - max(a.top, b.top) < 0.5 * min(a.height, b.height):
        return None, "the two dark regions are not side by side"
    # Thresholds miss the apices, overlaid by the clavicles and first ribs: extend the box upwards. A lung
    # whose lateral part is hazy is found too narrow: the chest is roughly symmetric about the mediastinum,
    # so each side reaches at least as far out as the mirror image of the other.
    top = max(min(a.top, b.top) - round(_APEX_EXTENSION * max(a.height, b.height)), 0)
    left = max(min(a.left, 2 * mid - b.right), 0)
    right = min(max(b.right, 2 * mid - a.left), w)
    lungs = Box(top, left, max(a.bottom, b.bottom), right)
    # A box that would cut off much of the chest is worse than the body crop: reject rather than guess.
    if (
        lungs.width < 0.45 * w
        or lungs.height < 0.4 * h
        or lungs.top > 0.3 * h
        or not 0.5 <= lungs.width / lungs.height <= 2.2
    ):
        return None, f"the lung box ({lungs.height}x{lungs.width} px in a {h}x{w} px body box) is implausible"
    return lungs, ""


def lung_box(image: np.ndarray, margin: float = 0.05) -> Box:
    """The box around both lung fields, grown by `margin` times its size on each side.

    Classical and fast (no model): on a copy downscaled to ANALYSIS_SIDE pixels, inside the body box, after
    CLAHE and a grey opening that erases rib shadows, each side of the mediastinum is searched for a dark
    region that grows with the threshold until it would leak into the neck, an armpit or the abdomen (see
    `_grow_lung`). The box around both lungs is extended upwards to cover the apices. When no plausible
    pair is found (lateral views, very hazy or white-out chests, non-chest images) it warns with a
    PreprocessWarning and returns `body_box(image)`; the box is never empty.
    """
    image = _as_image(image)
    lungs, body, reason = _lungs_and_body(image)
    if lungs is None:
        _warn(f"could not find two plausible lungs ({reason}); fell back to the body crop")
        return body
    return lungs.expanded(margin, image.shape).within(body)


# What `find_lungs` found: the box around both lung fields, or None and the reason there is none.
LungSearch = tuple[Box | None, str]


def find_lungs(image: np.ndarray) -> LungSearch:
    """The box around both lung fields as `lung_box` finds it (no margin), or None and the reason none is.

    Unlike `lung_box` it neither falls back nor warns: for callers that measure against the lungs (e.g. how
    much of a heatmap lies on them) and must know when there are none.
    """
    token = _warning_sink.set([])  # the body search's fallback note is not this caller's concern
    try:
        image = _as_image(image)
        lungs, body, reason = _lungs_and_body(image)
    finally:
        _warning_sink.reset(token)
    return (lungs.within(body) if lungs is not None else None), reason


def _lungs_and_body(image: np.ndarray) -> tuple[Box | None, Box, str]:
    """The lung box (None if implausible), the body box, both at full size, and why no lungs were found."""
    small, sy, sx = _analysis_copy(image)
    mask, body = _small_body(small)
    lungs, reason = _find_lungs(small, mask, body)
    full_body = body.scaled(sy, sx, image.shape)
    return (lungs.scaled(sy, sx, image.shape) if lungs is not None else None), full_body, reason


def crop_lungs(image: np.ndarray, margin: float = 0.05) -> np.ndarray:
    """Crop to the lung fields plus `margin` (see `lung_box`); falls back to `crop_body` with a warning.

    Concentrates the classifier's input resolution on the lungs and removes the neck, abdomen, arms and
    labels; cheXNet-transfer's lung-cropped input beat the uncropped one.
    """
    image = _as_image(image)
    return crop(image, lung_box(image, margin))


# --------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Param:
    """A numeric or boolean op parameter: its type and allowed range or choices (bounds inclusive)."""

    type: type
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None

    def describe(self, default: Any) -> str:
        if self.choices is not None:
            allowed = " one of " + "/".join(str(c) for c in self.choices)
        elif self.low is not None and self.high is not None:
            allowed = f" in [{self.low}, {self.high}]"
        else:
            allowed = ""
        return f"{self.type.__name__}{allowed}, default {default}"

    def coerce(self, value: Any) -> Any:
        """`value` (JSON, or a CLI string) as this type; ValueError if ill-typed or out of range."""
        if isinstance(value, str):
            value = self._from_string(value)
        if self.type is bool:
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        elif self.type is int:
            if not float(value).is_integer():
                raise ValueError(f"expected an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"expected a finite number, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{value!r} is not one of {self.choices}")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ValueError(f"{value!r} is out of range [{self.low}, {self.high}]")
        return value

    def _from_string(self, text: str) -> Any:
        text = text.strip()
        if self.type is bool:
            lowered = text.lower()
            if lowered in ("true", "yes", "1", "on"):
                return True
            if lowered in ("false", "no", "0", "off"):
                return False
            raise ValueError(f"expected true or false, got {text!r}")
        try:
            return self.type(text)
        except ValueError:
            raise ValueError(f"expected {self.type.__name__}, got {text!r}") from None


@dataclass(frozen=True)
class OpSpec:
    """A registered op: its function and parameter specs (defaults come from the function's signature)."""

    fn: Callable[..., np.ndarray]
    params: Mapping[str, Param] = field(default_factory=dict)

    @property
    def defaults(self) -> dict[str, Any]:
        signature = inspect.signature(self.fn).parameters
        return {name: signature[name].default for name in self.params}

    @property
    def summary(self) -> str:
        return (self.fn.__doc__ or "").strip().splitlines()[0]

    def describe_params(self) -> str:
        if not self.params:
            return "none"
        defaults = self.defaults
        return "; ".join(f"{name} ({p.describe(defaults[name])})" for name, p in self.params.items())


OPS: dict[str, OpSpec] = {
    "clahe": OpSpec(clahe, {"clip_limit": Param(float, 0.1, 40.0), "tile_grid": Param(int, 1, 64)}),
    "white_balance": OpSpec(white_balance, {"percent": Param(float, 0.0, 10.0)}),
    "equalize": OpSpec(equalize),
    "gamma": OpSpec(gamma, {"gamma": Param(float, 0.1, 10.0)}),
    "invert": OpSpec(invert),
    "median": OpSpec(median, {"size": Param(int, choices=(3, 5))}),
    "crop_body": OpSpec(crop_body, {"margin": Param(float, 0.0, 0.5)}),
    "crop_lungs": OpSpec(crop_lungs, {"margin": Param(float, 0.0, 0.5)}),
    "resize": OpSpec(resize, {"size": Param(int, 8, 4096), "pad": Param(bool)}),
}
"""Every op a Pipeline may name, by name."""


def describe_ops() -> list[dict[str, Any]]:
    """Name, one-line summary and parameters (type, default, range) of every op, for help texts and UIs."""
    described = []
    for name, spec in OPS.items():
        defaults = spec.defaults
        params = [
            {"name": p, "type": s.type.__name__, "default": defaults[p], "low": s.low, "high": s.high,
             "choices": list(s.choices) if s.choices else None}
            for p, s in spec.params.items()
        ]  # fmt: skip
        described.append({"op": name, "summary": spec.summary, "params": params})
    return described


# --------------------------------------------------------------------------------------------- pipeline


@dataclass(frozen=True)
class Step:
    """One validated op call: the op's name and all its parameters (defaults filled in)."""

    op: str
    params: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        spec = OPS.get(self.op)
        if spec is None:
            close = difflib.get_close_matches(str(self.op), OPS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise PreprocessError(f"unknown preprocessing op {self.op!r}{hint}; valid: {', '.join(OPS)}")
        given = dict(self.params)
        unknown = [name for name in given if name not in spec.params]
        if unknown:
            raise PreprocessError(
                f"op '{self.op}' has no parameter {unknown[0]!r}; valid parameters: {spec.describe_params()}"
            )
        resolved = spec.defaults
        for name, value in given.items():
            try:
                resolved[name] = spec.params[name].coerce(value)
            except ValueError as err:
                raise PreprocessError(
                    f"op '{self.op}': bad value for {name}: {err}; valid parameters: {spec.describe_params()}"
                ) from None
        object.__setattr__(self, "params", tuple(resolved.items()))

    @classmethod
    def from_spec(cls, spec: str | Mapping[str, Any] | Step) -> Step:
        """A step from its JSON form: an op name, or a flat dict {"op": name, **params}."""
        if isinstance(spec, Step):
            return spec
        if isinstance(spec, str):
            return cls(spec.strip())
        if isinstance(spec, Mapping):
            if "op" not in spec:
                raise PreprocessError(f"a pipeline step needs an 'op' key; got {dict(spec)!r}")
            return cls(spec["op"], tuple((k, v) for k, v in spec.items() if k != "op"))
        raise PreprocessError(f"a pipeline step must be an op name or a dict with 'op'; got {spec!r}")

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return OPS[self.op].fn(image, **dict(self.params))

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, **dict(self.params)}

    def __str__(self) -> str:
        return ":".join([self.op, *(f"{k}={_format_value(v)}" for k, v in self.params)])


def _format_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class PipelineResult:
    """A pipeline's output image and the PreprocessWarning messages its ops raised (e.g. crop fallbacks)."""

    image: np.ndarray
    warnings: list[str]


@dataclass(frozen=True)
class Pipeline:
    """An immutable, validated sequence of preprocessing ops; empty means identity.

    Build it from its JSON form (`from_list`, `from_json`) or the CLI form (`parse("crop_lungs,
    clahe:clip_limit=3")`); `to_list`/`to_json` give the JSON form back with every parameter explicit, so a
    saved pipeline keeps its behaviour even if a default changes later. Steps run in the order given.
    """

    steps: tuple[Step, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.steps, str | Mapping):
            raise PreprocessError("Pipeline takes a list of steps; use Pipeline.parse() for a string")
        object.__setattr__(self, "steps", tuple(Step.from_spec(s) for s in self.steps))

    @classmethod
    def from_list(cls, items: Iterable[str | Mapping[str, Any]]) -> Pipeline:
        """From the JSON form: `[{"op": "clahe", "clip_limit": 2.0}, "crop_lungs"]`."""
        if isinstance(items, str | Mapping):
            raise PreprocessError(f"a pipeline must be a list of steps; got {items!r}")
        return cls(tuple(Step.from_spec(item) for item in items))

    @classmethod
    def from_json(cls, text: str) -> Pipeline:
        """From the JSON text of `to_json()`."""
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise PreprocessError(f"pipeline JSON is not valid JSON: {err}") from None
        if not isinstance(items, list):
            raise PreprocessError(f"pipeline JSON must be a list of steps; got {type(items).__name__}")
        return cls.from_list(items)

    @classmethod
    def parse(cls, text: str) -> Pipeline:
        """From the CLI form: comma-separated ops, each optionally with `:name=value` parameters.

        Example: `"white_balance,clahe:clip_limit=3:tile_grid=4,crop_lungs"`. An empty string is the identity.
        """
        steps = []
        for chunk in text.split(","):
            if not chunk.strip():
                continue
            op, *assignments = (part.strip() for part in chunk.split(":"))
            params = []
            for assignment in assignments:
                name, sep, value = assignment.partition("=")
                if not sep or not name.strip():
                    raise PreprocessError(
                        f"cannot parse {assignment!r} in step {chunk.strip()!r}; write parameters as"
                        " op:name=value, e.g. clahe:clip_limit=3"
                    )
                params.append((name.strip(), value.strip()))
            steps.append(Step(op, tuple(params)))
        return cls(tuple(steps))

    def to_list(self) -> list[dict[str, Any]]:
        """The JSON form, every parameter explicit."""
        return [step.to_dict() for step in self.steps]

    def to_json(self) -> str:
        return json.dumps(self.to_list())

    def __str__(self) -> str:
        return ",".join(str(step) for step in self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __add__(self, other: Pipeline) -> Pipeline:
        return Pipeline(self.steps + tuple(other.steps))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Run every step; PreprocessWarnings are emitted through `warnings` (use `apply` to collect them)."""
        image = _as_image(image)
        for step in self.steps:
            image = step(image)
        return image if self.steps else image.copy()

    def apply(self, image: np.ndarray) -> PipelineResult:
        """Run every step, collecting the ops' PreprocessWarning messages instead of emitting them."""
        token = _warning_sink.set([])
        try:
            out = self(image)
            collected = list(_warning_sink.get() or [])
        finally:
            _warning_sink.reset(token)
        return PipelineResult(out, collected)
