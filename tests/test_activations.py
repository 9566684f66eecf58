"""demo.activations: layers found on every backbone family, grids of the most active channels, a model whose
channels are known, in-place activations, and no hooks left behind."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
from torch import nn

import trainer.modeling  # noqa: F401  (registers chexlab_simple_cnn with timm)
from demo.activations import (
    FIRST_CONV,
    MAX_CHANNELS,
    ActivationLayer,
    activation_grids,
    activation_layers,
    default_layers,
)
from tests.test_cam import BACKBONES, assert_clean


@pytest.mark.parametrize(("name", "size"), BACKBONES)
def test_every_backbone_shows_its_first_convolution_and_a_middle_block(name, size):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=2).train()
    layers = activation_layers(model)
    assert layers[0].title.startswith(FIRST_CONV) and isinstance(
        model.get_submodule(layers[0].module), nn.Conv2d
    )
    assert [layer.module for layer in layers[1:]] == [
        entry["module"] for entry in model.feature_info if entry["module"] != layers[0].module
    ]
    first, middle = default_layers(model)
    assert first == layers[0] and middle in layers[1:] and middle != layers[-1]
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    grids = activation_grids(model, x, top=9, tile=32)
    assert [grid.layer for grid in grids] == [first, middle]
    for grid in grids:
        assert grid.image.dtype == np.uint8 and grid.image.ndim == 3 and grid.image.shape[2] == 3
        assert grid.shape[0] == grid.layer.channels and len(grid.channels) == 9
        assert grid.scores == sorted(grid.scores, reverse=True)
        assert len(set(grid.channels)) == 9 and all(0 <= c < grid.shape[0] for c in grid.channels)
    assert model.training  # restored
    assert_clean(model)


class KnownChannels(nn.Module):
    """A 1x1 convolution whose channel k is k times the image brightness (channel 0 is always zero)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 1, 1) / 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean((2, 3)))


def test_channels_are_ranked_by_activation_and_show_where_they_fire():
    model = KnownChannels()
    x = torch.zeros(1, 3, 8, 12)
    x[..., :, :6] = 1.0  # the left half is bright
    (grid,) = activation_grids(model, x, activation_layers(model)[:1], top=4, tile=24, colormap="gray")
    assert grid.channels == [3, 2, 1, 0]
    np.testing.assert_allclose(grid.scores, [1.5, 1.0, 0.5, 0.0], atol=1e-6)
    assert grid.shape == (4, 8, 12)
    tile_h, tile_w = 16, 24  # the longer side gets `tile`, the aspect ratio is kept
    assert grid.image.shape == (2 * tile_h + 2, 2 * tile_w + 2, 3)
    strongest = grid.image[:tile_h, :tile_w, 0]
    assert (strongest[:, : tile_w // 2] == 255).all() and (strongest[:, tile_w // 2 :] == 0).all()
    silent = grid.image[tile_h + 2 :, tile_w + 2 :, 0]  # channel 0: constant, shown as the colormap's low end
    assert (silent == 0).all()


def test_an_in_place_activation_after_the_layer_does_not_change_what_is_shown():
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=2).eval()
    reference = copy.deepcopy(model)
    reference.act1 = nn.ReLU()  # out-of-place: bn1's output stays as bn1 produced it
    layer = ActivationLayer("bn1", "bn1")  # followed by act1, an in-place ReLU in timm's ResNet
    x = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    (shown,) = activation_grids(model, x, [layer], top=8, tile=16)
    (expected,) = activation_grids(reference, x, [layer], top=8, tile=16)
    assert shown.channels == expected.channels
    np.testing.assert_array_equal(shown.image, expected.image)
    assert min(expected.scores) < max(expected.scores)


def test_bad_arguments_say_what_is_valid():
    model = KnownChannels()
    x = torch.zeros(1, 3, 8, 12)
    with pytest.raises(ValueError, match="no layer 'conv9'"):
        activation_grids(model, x, [ActivationLayer("conv9", "?")])
    with pytest.raises(ValueError, match="no \\(1, C, h, w\\) feature map"):
        activation_grids(model, x, [ActivationLayer("head", "head")])
    with pytest.raises(ValueError, match=f"between 1 and {MAX_CHANNELS}"):
        activation_grids(model, x, top=0)
    with pytest.raises(ValueError, match="one image"):
        activation_grids(model, x.repeat(2, 1, 1, 1))
    with pytest.raises(ValueError, match="unknown colormap"):
        activation_grids(model, x, colormap="virids")
    with pytest.raises(ValueError, match="no 2-D convolution"):
        activation_layers(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    assert_clean(model)
