"""demo.cam: every CAM method on every backbone family chexlab trains, a model whose right answer is known,
one forward pass, no hooks or gradients left behind, thread safety, and the overlay (demo/overlay.py)."""

from __future__ import annotations

import copy
import threading

import cv2
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import trainer.modeling  # noqa: F401  (registers chexlab_simple_cnn with timm)
from demo.cam import explain, model_lock, prepare_for_cam, target_layer
from demo.methods import CAM_METHODS, SLOW_METHODS
from demo.overlay import colour_table, overlay

FAST_METHODS = [name for name in CAM_METHODS if name not in SLOW_METHODS]
# Methods that explain a chosen class; EigenCAM is class-agnostic (the first principal component).
CLASS_METHODS = [name for name in CAM_METHODS if name != "EigenCAM"]
# (name, input H x W): small, non-square inputs (to catch an H/W swap) with a feature map of at least 2 x 2.
BACKBONES = [
    ("densenet121", (64, 80)),
    ("tf_efficientnet_lite0", (64, 80)),
    ("resnet10t", (64, 80)),
    ("inception_v3", (107, 115)),
    ("chexlab_simple_cnn", (64, 80)),
]
# Score-CAM and Ablation-CAM run the model once per channel (320 to 2048 on the others): up to minutes on
# 2 cores, so they run on the two cheapest backbones (and on the tiny RegionModel below).
SLOW_BACKBONES = [
    pytest.param("resnet10t", (64, 80), marks=pytest.mark.slow),  # 512 channels: 5-25 s on 2 busy cores
    ("chexlab_simple_cnn", (64, 80)),
]
NUM_CLASSES = 3


class RegionFeatures(nn.Module):
    """Channel c = the 4x4-pooled image brightness inside region c of the feature map, zero elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        masks = torch.zeros(2, 8, 12)
        masks[0, :4, :6] = 1  # region 0: the top-left quarter
        masks[1, 4:, 6:] = 1  # region 1: the bottom-right quarter
        self.register_buffer("masks", masks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x.mean(1, keepdim=True), 4) * self.masks


class RegionModel(nn.Module):
    """logits = head @ (mean of each region channel): logit k's evidence lies in the regions head[k] weights.

    The CAM of class k must therefore light up region k of the 32 x 48 input, and nothing else.
    """

    def __init__(self, head: list[list[float]], inplace: bool = False) -> None:
        super().__init__()
        self.features = RegionFeatures()
        self.act = nn.ReLU(inplace=inplace)
        self.head = nn.Linear(2, len(head), bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor(head))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.features(x)).mean((2, 3)))


REGIONS = [(slice(0, 16), slice(0, 24)), (slice(16, 32), slice(24, 48))]  # the two regions on the input


def assert_peaks_in(heatmap: np.ndarray, region: int) -> None:
    inside = np.zeros(heatmap.shape, dtype=bool)
    inside[REGIONS[region]] = True
    peak = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    assert inside[peak], f"peak at {peak}, outside region {region}"
    assert heatmap[inside].mean() > 2 * heatmap[~inside].mean() + 0.1


def assert_clean(model: nn.Module) -> None:
    """No hook left on any module and no gradient left on any parameter."""
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks
    assert all(p.grad is None for p in model.parameters())


def check_heatmap(heatmap: np.ndarray, shape: tuple[int, int]) -> None:
    assert heatmap.shape == shape and heatmap.dtype == np.float32
    assert np.isfinite(heatmap).all() and heatmap.min() >= 0.0 and heatmap.max() <= 1.0


class LazyBackbones(dict):
    """Each backbone built on first use (tests may be deselected), random weights, ready for CAM."""

    def __missing__(self, name: str) -> nn.Module:
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES).eval()
        self[name] = prepare_for_cam(model)
        return model


@pytest.fixture(scope="module")
def backbones() -> LazyBackbones:
    return LazyBackbones()


def run_backbone(backbones: dict[str, nn.Module], name: str, size: tuple[int, int], method: str) -> None:
    model = backbones[name]
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    result = explain(model, x, task="multilabel", method=method)
    check_heatmap(result.heatmap, size)
    with torch.no_grad():
        logits = model(x)[0]
    # The probabilities come from the CAM's own forward pass: they must equal a plain one.
    np.testing.assert_allclose(result.logits, logits.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.probabilities, logits.sigmoid().numpy(), rtol=1e-4, atol=1e-6)
    assert result.target_index == int(logits.argmax()) and result.method == method
    assert_clean(model)
    assert target_layer(model) is model.get_submodule(model.feature_info[-1]["module"])


@pytest.mark.parametrize("method", FAST_METHODS)
@pytest.mark.parametrize(("name", "size"), BACKBONES)
def test_fast_methods_on_every_backbone(backbones, name, size, method):
    run_backbone(backbones, name, size, method)


@pytest.mark.parametrize("method", list(SLOW_METHODS))
@pytest.mark.parametrize(("name", "size"), SLOW_BACKBONES)
def test_slow_methods_on_small_backbones(backbones, name, size, method):
    run_backbone(backbones, name, size, method)


@pytest.mark.parametrize("method", CLASS_METHODS)
@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_cam_finds_the_region_that_decides_each_class(method, task):
    model = RegionModel([[1.0, 0.0], [0.0, 1.0]])
    layer = model.features
    x = torch.ones(1, 3, 32, 48)
    for target in (0, 1):
        result = explain(model, x, task=task, target_index=target, method=method, layer=layer)
        check_heatmap(result.heatmap, (32, 48))
        assert result.target_index == target
        assert_peaks_in(result.heatmap, target)
    assert_clean(model)
    assert model.features is layer  # Ablation-CAM swaps it out while it runs


def test_eigencam_is_not_constant_on_a_localised_input():
    model = RegionModel([[1.0, 0.0], [0.0, 1.0]])
    x = torch.ones(1, 3, 32, 48)
    result = explain(model, x, task="multiclass", method="EigenCAM", layer=model.features)
    check_heatmap(result.heatmap, (32, 48))
    assert result.heatmap.max() - result.heatmap.min() > 0.5
    assert result.target_index == 0  # equal logits: argmax picks the first; EigenCAM never calls its target


@pytest.mark.parametrize("method", ["Grad-CAM", "HiResCAM", "LayerCAM", "XGrad-CAM", "Grad-CAM++"])
def test_binary_negative_target_uses_minus_logit(method):
    model = RegionModel([[1.0, -1.0]])  # logit = region 0 - region 1: region 1 is the evidence for "negative"
    x = torch.ones(1, 3, 32, 48)
    x[..., 16:, 24:] = 2.0  # region 1 brighter: logit < 0, P(positive) < 0.5
    result = explain(model, x, task="binary", method=method, layer=model.features)
    logit = model(x).detach()[0]
    assert result.probabilities.shape == (1,) and result.logits.shape == (1,)
    np.testing.assert_allclose(result.probabilities, logit.sigmoid().numpy(), rtol=1e-6)
    assert result.probabilities[0] < 0.5 and result.target_index == 0  # default: the top class, negative
    assert_peaks_in(result.heatmap, 1)
    positive = explain(model, x, task="binary", target_index=1, method=method, layer=model.features)
    assert positive.target_index == 1
    assert_peaks_in(positive.heatmap, 0)


def test_multiclass_probabilities_are_softmax():
    model = RegionModel([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    x = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    result = explain(model, x[0], task="multiclass", layer=model.features)  # (C, H, W) is accepted too
    expected = model(x).detach()[0].softmax(-1).numpy()
    np.testing.assert_allclose(result.probabilities, expected, rtol=1e-6)
    assert result.target_index == int(expected.argmax())


def test_prepare_for_cam_fixes_inplace_activations():
    x = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    reference = RegionModel([[1.0, -1.0]])
    inplace = RegionModel([[1.0, -1.0]], inplace=True)

    def heatmap(model: RegionModel, method: str) -> np.ndarray:
        return explain(model, x, task="binary", target_index=1, method=method, layer=model.features).heatmap

    expected = heatmap(reference, "XGrad-CAM")
    # pytorch-grad-cam keeps the layer's output itself: without the fix the in-place ReLU overwrites it.
    assert not np.allclose(heatmap(inplace, "XGrad-CAM"), expected, atol=1e-3)
    # Grad-CAM's own path hands the rest of the network a copy: right even before the fix.
    np.testing.assert_allclose(heatmap(inplace, "Grad-CAM"), heatmap(reference, "Grad-CAM"), atol=1e-6)
    assert prepare_for_cam(inplace) is inplace and inplace.act.inplace is False
    np.testing.assert_allclose(heatmap(inplace, "XGrad-CAM"), expected, atol=1e-6)


def test_prepare_for_cam_fixes_a_layer_inside_a_timm_block():
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=2).eval()
    reference = copy.deepcopy(model)
    reference.layer4[-1].act1 = nn.ReLU()  # out-of-place by construction: the true map
    x = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(0))

    def heatmap(net: nn.Module) -> np.ndarray:
        layer = net.layer4[-1].bn1  # followed by act1, an in-place ReLU in timm's block
        return explain(net, x, task="multiclass", target_index=0, method="EigenCAM", layer=layer).heatmap

    expected = heatmap(reference)
    assert not np.allclose(heatmap(model), expected, atol=1e-3)
    np.testing.assert_allclose(heatmap(prepare_for_cam(model)), expected, atol=1e-5)


def test_prepare_for_cam_on_densenet_keeps_outputs():
    model = timm.create_model("densenet121", pretrained=False, num_classes=2).eval()
    model.set_grad_checkpointing(True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        assert any(getattr(m, "inplace", False) for m in model.modules())
        prepare_for_cam(model)
        after = model(x)
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    assert not any(getattr(m, "grad_checkpointing", False) for m in model.modules())
    torch.testing.assert_close(before, after)


def test_no_leaks_frozen_training_model_and_inference_mode():
    model = RegionModel([[1.0, 0.0], [0.0, 1.0]]).train()
    model.requires_grad_(False)  # a deployed model may be frozen: the CAM must still get its gradients
    with torch.inference_mode():
        x = torch.ones(1, 3, 32, 48)
        result = explain(model, x, task="multilabel", target_index=1, layer=model.features)
    assert_peaks_in(result.heatmap, 1)
    assert model.training  # the mode it came in with
    assert_clean(model)


def test_concurrent_calls_on_one_model_do_not_interfere():
    model = RegionModel([[1.0, 0.0], [0.0, 1.0]])
    x = torch.ones(1, 3, 32, 48)

    def heatmap(k: int) -> np.ndarray:
        return explain(model, x, task="multiclass", target_index=k, layer=model.features).heatmap

    expected = [heatmap(0), heatmap(1)]
    results: list[tuple[int, np.ndarray]] = []

    def work(k: int) -> None:
        for _ in range(5):
            results.append((k, heatmap(k)))

    threads = [threading.Thread(target=work, args=(i % 2,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 30
    for k, heatmap in results:
        np.testing.assert_array_equal(heatmap, expected[k])
    assert model_lock(model) is model_lock(model)
    assert model_lock(model) is not model_lock(RegionModel([[1.0, 1.0]]))
    assert_clean(model)


def test_bad_arguments_say_what_is_valid():
    model = RegionModel([[1.0, 0.0], [0.0, 1.0]])
    x = torch.ones(1, 3, 32, 48)
    with pytest.raises(ValueError, match="unknown CAM method 'GradCam'; valid: Grad-CAM"):
        explain(model, x, task="multiclass", method="GradCam", layer=model.features)
    with pytest.raises(ValueError, match="unknown task 'regression'"):
        explain(model, x, task="regression", layer=model.features)
    with pytest.raises(ValueError, match="one image"):
        explain(model, x.repeat(2, 1, 1, 1), task="multiclass", layer=model.features)
    with pytest.raises(ValueError, match="binary model has one logit"):
        explain(model, x, task="binary", layer=model.features)
    with pytest.raises(ValueError, match="out of range"):
        explain(model, x, task="multiclass", target_index=2, layer=model.features)
    with pytest.raises(ValueError, match="out of range"):
        binary = RegionModel([[1.0, -1.0]])
        explain(binary, x, task="binary", target_index=2, method="EigenCAM", layer=binary.features)
    assert_clean(model)


def test_an_index_error_inside_the_model_is_not_swallowed():
    class Broken(RegionModel):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.features(x)
            raise IndexError("list index out of range")

    model = Broken([[1.0, 0.0]])
    with pytest.raises(RuntimeError, match="Grad-CAM failed"):
        explain(model, torch.ones(1, 3, 32, 48), task="multilabel", layer=model.features)
    assert_clean(model)


def test_slow_methods_have_a_reason_and_exist():
    assert set(SLOW_METHODS) == {"Score-CAM", "Ablation-CAM"} <= set(CAM_METHODS)
    assert all(isinstance(reason, str) and reason and "\n" not in reason for reason in SLOW_METHODS.values())
    assert len(FAST_METHODS) == 6


def test_overlay_blends_from_gray_to_colour_map():
    image = np.linspace(0, 1, 40 * 60, dtype=np.float32).reshape(40, 60)
    heatmap = np.zeros((4, 6), dtype=np.float32)
    heatmap[:, :3] = 1.0  # hot on the left
    plain = overlay(image, heatmap, opacity=0.0)
    assert plain.shape == (40, 60, 3) and plain.dtype == np.uint8
    np.testing.assert_array_equal(plain, np.repeat(np.rint(image * 255).astype(np.uint8)[..., None], 3, -1))
    pure = overlay(image, heatmap, opacity=1.0)
    np.testing.assert_array_equal(pure, overlay(1.0 - image, heatmap, opacity=1.0))  # the image is gone
    hot, cold = pure[:, :20].mean((0, 1)), pure[:, -20:].mean((0, 1))  # jet runs from dark blue to dark red
    assert hot[0] > 100 and hot[2] < 30 and cold[2] > 100 and cold[0] < 30
    half = overlay(image, heatmap).astype(int)
    assert np.abs(half - (0.6 * plain + 0.4 * pure)).max() <= 1
    assert not np.array_equal(overlay(image, heatmap, opacity=1.0, colormap="inferno"), pure)


def test_overlay_rejects_bad_arguments():
    image = np.zeros((8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="opacity"):
        overlay(image, image, opacity=1.5)
    with pytest.raises(ValueError, match="unknown colormap 'jett'"):
        overlay(image, image, colormap="jett")
    with pytest.raises(ValueError, match="2-D"):
        overlay(np.zeros((8, 8, 3)), image)


def test_jet_table_is_matplotlibs_jet():
    from matplotlib import colormaps

    jet = colormaps["jet"]
    np.testing.assert_array_equal(colour_table("jet"), jet(np.arange(jet.N))[:, :3])
    assert not colour_table("jet").flags.writeable  # a shared cache


@pytest.mark.parametrize("colormap", ["jet", "inferno"])
def test_overlay_colours_are_matplotlibs(colormap):
    from matplotlib import colormaps

    rng = np.random.default_rng(0)
    image = rng.random((37, 53), dtype=np.float32)
    heatmap = rng.random((7, 9), dtype=np.float32)
    heatmap[0, :3] = [0.0, 1.0, 255.5 / 256]  # both ends and a colour boundary
    heat = cv2.resize(heatmap, (53, 37), interpolation=cv2.INTER_LINEAR)
    colour = colormaps[colormap](np.clip(heat, 0.0, 1.0))[..., :3]
    gray = np.repeat(image[..., None], 3, axis=-1)
    for opacity in (0.0, 0.4, 1.0):
        expected = np.rint(255.0 * ((1.0 - opacity) * gray + opacity * colour)).astype(np.uint8)
        np.testing.assert_array_equal(overlay(image, heatmap, opacity=opacity, colormap=colormap), expected)
