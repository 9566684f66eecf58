"""What the network sees: the feature maps of a layer for one image, as a grid of its most active channels.

The simple-cnn study showed the activation maps of its first convolutional layer; this does that for every
timm backbone chexlab trains, plus any later block from timm's `feature_info` (by default the middle one:
coarse enough to be past edges and textures, fine enough to still show where). One forward pass collects
every layer asked for, through forward hooks held under `demo.cam.model_lock` and removed afterwards.

Each tile is one channel, scaled to its own range (so that weak channels still show their pattern) and
enlarged without smoothing (the blocks are the layer's true resolution); channels are ranked by their mean
positive activation, i.e. by how strongly they fire on this image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn

from demo.cam import model_lock

FIRST_CONV = "first convolution"
MAX_CHANNELS = 64  # tiles per grid: bounds the image a public demo renders
_GAP = 2  # pixels between tiles


@dataclass(frozen=True)
class ActivationLayer:
    """A layer whose feature maps can be shown.

    Attributes:
        module: the module's name in the model (`model.get_submodule(module)`).
        title: the layer in words, e.g. "block 3 of 5 (blocks.2): 40 channels at 1/8 of the input".
        channels: its output channels (None when unknown before a forward pass).
        reduction: its stride relative to the input (None when unknown).
    """

    module: str
    title: str
    channels: int | None = None
    reduction: int | None = None


@dataclass(frozen=True)
class ActivationGrid:
    """A layer's most active channels for one image.

    Attributes:
        layer: the layer shown.
        image: uint8 RGB (H, W, 3), the tiles in rows, most active first (left to right, top to bottom).
        channels: the channel index of each tile.
        scores: each tile's mean positive activation (its rank).
        shape: the layer's output (C, h, w) for this image.
    """

    layer: ActivationLayer
    image: np.ndarray
    channels: list[int]
    scores: list[float]
    shape: tuple[int, int, int]


def activation_layers(model: nn.Module) -> list[ActivationLayer]:
    """The first convolution, then every block of timm's `feature_info` (shallow to deep).

    Raises:
        ValueError: the model has no 2-D convolution.
    """
    first = next((name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ValueError(f"{type(model).__name__} has no 2-D convolution to show")
    conv = model.get_submodule(first)
    assert isinstance(conv, nn.Conv2d)
    stride = conv.stride[0] if isinstance(conv.stride, tuple) else int(conv.stride)
    layers = [
        ActivationLayer(
            first, f"{FIRST_CONV} ({first}): {conv.out_channels} filters", conv.out_channels, stride
        )
    ]
    info = [entry for entry in (getattr(model, "feature_info", None) or []) if isinstance(entry, dict)]
    for number, entry in enumerate(info, start=1):
        name, channels, reduction = entry.get("module"), entry.get("num_chs"), entry.get("reduction")
        if not name or name == first:
            continue
        where = f" at 1/{reduction} of the input" if reduction else ""
        title = f"block {number} of {len(info)} ({name}): {channels} channels{where}"
        layers.append(ActivationLayer(name, title, channels, reduction))
    return layers


def default_layers(model: nn.Module) -> tuple[ActivationLayer, ActivationLayer]:
    """The first convolution and the middle `feature_info` block (the last one when there is no other)."""
    layers = activation_layers(model)
    blocks = layers[1:] or layers
    return layers[0], blocks[(len(blocks) - 1) // 2]


def activation_grids(
    model: nn.Module,
    input_tensor: torch.Tensor,
    layers: Sequence[ActivationLayer] | None = None,
    *,
    top: int = 16,
    tile: int = 96,
    colormap: str = "viridis",
) -> list[ActivationGrid]:
    """The most active channels of each layer for one image, from a single forward pass.

    Args:
        model: the classifier (its mode is restored afterwards; no gradients are computed).
        input_tensor: the normalised image, (3, H, W) or (1, 3, H, W).
        layers: from `activation_layers`; default `default_layers(model)`.
        top: channels per grid, 1 to `MAX_CHANNELS` (fewer when the layer has fewer).
        tile: the side of one tile in pixels, 16 to 256.
        colormap: a matplotlib colormap name.

    Raises:
        ValueError: a bad argument, a layer the model does not have, or a layer without (C, h, w) output.
    """
    if not 1 <= top <= MAX_CHANNELS:
        raise ValueError(f"top must be between 1 and {MAX_CHANNELS}; got {top}")
    if not 16 <= tile <= 256:
        raise ValueError(f"tile must be between 16 and 256 pixels; got {tile}")
    from matplotlib import colormaps  # here: importing the demo must not load matplotlib

    if colormap not in colormaps:
        raise ValueError(f"unknown colormap {colormap!r}; use a matplotlib name: viridis, inferno, gray, ...")
    x = input_tensor.unsqueeze(0) if input_tensor.dim() == 3 else input_tensor
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"activation_grids takes one image, (C, H, W) or (1, C, H, W); got {list(x.shape)}")
    chosen = list(layers) if layers is not None else list(default_layers(model))
    modules = []
    for layer in chosen:
        try:
            modules.append(model.get_submodule(layer.module))
        except AttributeError:
            raise ValueError(
                f"the model has no layer {layer.module!r}; see activation_layers(model)"
            ) from None
    outputs: dict[int, torch.Tensor] = {}

    def keeper(index: int) -> Callable[[nn.Module, object, torch.Tensor], None]:
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            # A clone: an in-place activation after this module would otherwise overwrite what was kept.
            outputs.setdefault(index, output.detach().float().clone())

        return hook

    with model_lock(model):
        was_training = model.training
        handles = [module.register_forward_hook(keeper(i)) for i, module in enumerate(modules)]
        try:
            model.eval()
            with torch.no_grad():
                model(x)
        finally:
            for handle in handles:
                handle.remove()
            model.train(was_training)
    grids = []
    for index, layer in enumerate(chosen):
        maps = outputs.get(index)
        if maps is None or maps.dim() != 4:
            shape = None if maps is None else list(maps.shape)
            raise ValueError(f"layer {layer.module!r} gave no (1, C, h, w) feature map; got {shape}")
        grids.append(_grid(layer, maps[0].cpu().numpy(), top, tile, colormap))
    return grids


def _grid(layer: ActivationLayer, maps: np.ndarray, top: int, tile: int, colormap: str) -> ActivationGrid:
    maps = np.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
    scores = np.clip(maps, 0, None).mean(axis=(1, 2))
    order = np.argsort(-scores, kind="stable")[: min(top, len(maps))]
    columns = math.ceil(math.sqrt(len(order)))
    rows = math.ceil(len(order) / columns)
    height, width = maps.shape[1:]
    tile_h = tile if height >= width else max(1, round(tile * height / width))
    tile_w = tile if width >= height else max(1, round(tile * width / height))
    canvas: np.ndarray = np.full(
        (rows * (tile_h + _GAP) - _GAP, columns * (tile_w + _GAP) - _GAP, 3), 255, np.uint8
    )
    from matplotlib import colormaps

    cmap = colormaps[colormap]
    for slot, channel in enumerate(order):
        fmap = maps[channel]
        low, high = float(fmap.min()), float(fmap.max())
        scaled = (fmap - low) / (high - low) if high > low else np.zeros_like(fmap)
        grow = tile_h >= height and tile_w >= width
        resized = cv2.resize(
            scaled.astype(np.float32),
            (tile_w, tile_h),
            interpolation=cv2.INTER_NEAREST if grow else cv2.INTER_AREA,
        )
        row, col = divmod(slot, columns)
        top_px, left_px = row * (tile_h + _GAP), col * (tile_w + _GAP)
        canvas[top_px : top_px + tile_h, left_px : left_px + tile_w] = np.rint(
            255 * cmap(np.clip(resized, 0, 1))[..., :3]
        ).astype(np.uint8)
    shape = (int(maps.shape[0]), int(height), int(width))
    return ActivationGrid(layer, canvas, [int(c) for c in order], [float(scores[c]) for c in order], shape)
