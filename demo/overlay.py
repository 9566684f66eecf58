"""The heatmap overlay the UIs show: a heatmap in a matplotlib colour map, blended onto the radiograph.

Without torch (the comparison page imports it before the models load) and, for jet, without matplotlib.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from trainer.errors import ChexlabError

__all__ = ["OverlayError", "colour_table", "overlay"]

# jet as matplotlib defines it (matplotlib._cm._jet_data: x, value): the default overlay needs no matplotlib
_JET_SEGMENTS = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}
_LUT_SIZE = 256  # matplotlib's default number of colours per map


class OverlayError(ChexlabError, ValueError):
    """An overlay asked for with an image, heatmap, opacity or colour map that does not fit."""


@functools.cache
def colour_table(colormap: str) -> np.ndarray:
    """A matplotlib colormap's colours, read-only float64 (N, 3) RGB in [0, 1]; jet without matplotlib.

    Raises:
        OverlayError: not a matplotlib colormap name.
    """
    if colormap == "jet":
        table = _jet_table()
    else:
        from matplotlib import colormaps

        if colormap not in colormaps:
            raise OverlayError(f"unknown colormap {colormap!r}; use a matplotlib name: jet, inferno, viridis")
        cmap = colormaps[colormap]
        table = cmap(np.arange(cmap.N))[:, :3]
    table.setflags(write=False)
    return table


def _jet_table() -> np.ndarray:
    """matplotlib's jet: its `_create_lookup_table` for continuous segments, in the same arithmetic."""
    xind = (_LUT_SIZE - 1) * np.linspace(0, 1, _LUT_SIZE)
    channels = []
    for name in ("red", "green", "blue"):
        x, y = (np.array(column, dtype=np.float64) for column in zip(*_JET_SEGMENTS[name], strict=True))
        x = x * (_LUT_SIZE - 1)
        ind = np.asarray(np.searchsorted(x, xind))[1:-1]
        distance = (xind[1:-1] - x[ind - 1]) / (x[ind] - x[ind - 1])
        channels.append(np.concatenate([[y[0]], distance * (y[ind] - y[ind - 1]) + y[ind - 1], [y[-1]]]))
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0)


def overlay(
    image: np.ndarray, heatmap: np.ndarray, *, opacity: float = 0.4, colormap: str = "jet"
) -> np.ndarray:
    """Blend a heatmap, resized to the image, onto a grayscale image.

    Args:
        image: float (H, W) in [0, 1].
        heatmap: float (h, w) in [0, 1]; resized bilinearly to (H, W).
        opacity: 0 gives the plain grayscale image, 1 the pure colour map.
        colormap: a matplotlib colormap name (the colours are exactly matplotlib's).

    Returns:
        uint8 RGB (H, W, 3).
    """
    if image.ndim != 2 or heatmap.ndim != 2:
        raise OverlayError(f"overlay takes 2-D image and heatmap; got {image.shape} and {heatmap.shape}")
    if not 0.0 <= opacity <= 1.0:
        raise OverlayError(f"opacity must be in [0, 1]; got {opacity}")
    table = colour_table(colormap)
    height, width = image.shape
    heat = cv2.resize(np.asarray(heatmap, dtype=np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    # matplotlib's Colormap.__call__ for floats: index floor(x * N) in float32, 1.0 -> the last colour
    index = np.clip(np.nan_to_num(heat, nan=0.0), 0.0, 1.0) * np.float32(len(table))
    # rint(255 * ((1 - opacity) * gray + opacity * colour)) with the same roundings, in place: the colours
    # scaled once in the table, the gray part added to all three channels by broadcasting.
    rows = index.astype(np.int32)
    blend = np.take(opacity * table, np.minimum(rows, len(table) - 1, out=rows), axis=0)  # take: 5x indexing
    blend += ((1.0 - opacity) * np.clip(image, 0.0, 1.0))[..., None]
    blend *= 255.0
    return np.rint(blend, out=blend).astype(np.uint8)
