"""demo.attributions: Integrated Gradients and SmoothGrad, tested like the CAMs (tests/test_cam.py): shape and
range on every backbone family, a model whose evidence is known, every task kind, the binary convention,
in-place activations, and nothing left behind on the model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch

import trainer.modeling  # noqa: F401  (registers chexlab_simple_cnn with timm)
from demo.attributions import explain_attribution
from demo.cam import explain, prepare_for_cam
from demo.methods import ATTRIBUTION_METHODS, INTEGRATED_GRADIENTS, MAX_STEPS, SMOOTHGRAD, describe
from demo.overlay import overlay
from tests.test_cam import BACKBONES, LazyBackbones, RegionModel, assert_clean, assert_peaks_in, check_heatmap

METHODS = list(ATTRIBUTION_METHODS)
HALF = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}  # the embedded models' normalisation


@pytest.fixture(scope="module")
def backbones() -> LazyBackbones:
    return LazyBackbones()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("name", "size"), BACKBONES)
def test_every_backbone_gives_a_heatmap_and_the_cams_prediction(backbones, name, size, method):
    model = backbones[name]
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    result = explain_attribution(model, x, task="multilabel", method=method, steps=2, **HALF)
    check_heatmap(result.heatmap, size)
    assert result.heatmap.max() > 0 and result.method == method  # a random network has gradients somewhere
    cam = explain(model, x, task="multilabel")  # tested against a plain forward pass in tests/test_cam.py
    np.testing.assert_allclose(result.logits, cam.logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.probabilities, cam.probabilities, rtol=1e-4, atol=1e-6)
    assert result.target_index == cam.target_index
    assert_clean(model)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_the_region_that_decides_each_class_lights_up(method, task):
    model = RegionModel([[1.0, 0.0], [0.0, 1.0]])
    x = torch.ones(1, 3, 32, 48)
    for target in (0, 1):
        result = explain_attribution(model, x, task=task, target_index=target, method=method, **HALF)
        check_heatmap(result.heatmap, (32, 48))
        assert result.target_index == target
        assert_peaks_in(result.heatmap, target)
    assert_clean(model)


def test_integrated_gradients_from_black_attributes_the_brightness_that_carries_the_score():
    model = RegionModel([[1.0, 0.0], [0.0, 1.0]])
    x = torch.ones(1, 3, 32, 48)
    x[..., :16, :12] = 5.0  # a bright patch in region 0, five times as bright as the rest of the region
    result = explain_attribution(model, x, task="multiclass", target_index=0, smoothing=0, **HALF)
    patch, rest = result.heatmap[:16, :12].mean(), result.heatmap[:16, 12:24].mean()
    # The path starts at black (-1 here): the ReLU passes nothing until a pixel reaches 0, so each pixel is
    # credited with its value above 0 (completeness: the attributions add up to the score): 1/5 of the patch.
    assert patch > 0.99 and rest == pytest.approx(0.2, abs=0.01)
    assert not result.heatmap[16:, :].any() and not result.heatmap[:, 24:].any()  # no gradient there


def test_integrated_gradients_from_a_blurred_copy_attributes_fine_detail_only():
    model = RegionModel([[1.0, 0.0], [0.0, 1.0]])
    x = torch.ones(1, 3, 32, 48)
    x[..., 2:14, 6] = 4.0  # a thin bright line in region 0; the rest is flat, so equal to its blurred copy
    result = explain_attribution(model, x, task="multiclass", target_index=0, baseline="blurred", smoothing=0)
    line = np.zeros(result.heatmap.shape, dtype=bool)
    line[2:14, 6] = True
    assert result.heatmap[line].mean() > 0.9 and result.heatmap[~line].mean() < 0.01


def test_binary_negative_class_is_minus_the_logit():
    model = RegionModel([[1.0, -1.0]])  # logit = region 0 - region 1: region 1 is the evidence for "negative"
    x = torch.ones(1, 3, 32, 48)
    x[..., 16:, 24:] = 2.0  # region 1 brighter: logit < 0
    result = explain_attribution(model, x, task="binary", **HALF)
    logit = model(x).detach()[0]
    assert result.probabilities.shape == (1,) and result.logits.shape == (1,)
    np.testing.assert_allclose(result.probabilities, logit.sigmoid().numpy(), rtol=1e-6)
    assert result.probabilities[0] < 0.5 and result.target_index == 0  # default: the top class, negative
    assert_peaks_in(result.heatmap, 1)
    positive = explain_attribution(model, x, task="binary", target_index=1, **HALF)
    assert positive.target_index == 1
    assert_peaks_in(positive.heatmap, 0)
    # SmoothGrad shows gradient magnitudes: the same map for a score and its negation.
    sg = [
        explain_attribution(model, x, task="binary", target_index=k, method=SMOOTHGRAD).heatmap
        for k in (0, 1)
    ]
    np.testing.assert_allclose(sg[0], sg[1], atol=1e-6)


def test_multiclass_probabilities_are_softmax():
    model = RegionModel([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    x = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    result = explain_attribution(model, x[0], task="multiclass", method=SMOOTHGRAD)  # (C, H, W) accepted
    expected = model(x).detach()[0].softmax(-1).numpy()
    np.testing.assert_allclose(result.probabilities, expected, rtol=1e-6)
    assert result.target_index == int(expected.argmax())


def test_densenet_in_place_activations_give_the_same_attributions():
    torch.manual_seed(0)
    model = timm.create_model("densenet121", pretrained=False, num_classes=2).eval()
    assert any(getattr(m, "inplace", False) for m in model.modules())
    prepared = prepare_for_cam(copy.deepcopy(model))
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for method in METHODS:
        raw = explain_attribution(model, x, task="multiclass", method=method, steps=3, **HALF)
        fixed = explain_attribution(prepared, x, task="multiclass", method=method, steps=3, **HALF)
        np.testing.assert_allclose(raw.heatmap, fixed.heatmap, atol=1e-5)


def test_smoothgrad_is_seeded_and_leaves_the_callers_random_state_alone():
    torch.manual_seed(0)
    model = timm.create_model("chexlab_simple_cnn", pretrained=False, num_classes=2).eval()  # not linear
    x = torch.rand(1, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = explain_attribution(model, x, task="multiclass", method=SMOOTHGRAD, seed=5).heatmap
    assert torch.equal(torch.rand(1), expected_next)
    np.testing.assert_array_equal(
        first, explain_attribution(model, x, task="multiclass", method=SMOOTHGRAD, seed=5).heatmap
    )
    other = explain_attribution(model, x, task="multiclass", method=SMOOTHGRAD, seed=6).heatmap
    assert not np.array_equal(first, other)


def test_no_leaks_frozen_training_model_and_inference_mode():
    model = RegionModel([[1.0, 0.0], [0.0, 1.0]]).train()
    model.requires_grad_(False)
    for method in METHODS:
        with torch.inference_mode():
            x = torch.ones(1, 3, 32, 48)
            result = explain_attribution(model, x, task="multilabel", target_index=1, method=method, **HALF)
        assert_peaks_in(result.heatmap, 1)
        assert model.training
        assert_clean(model)


def test_no_evidence_gives_an_all_zero_map():
    model = RegionModel([[-1.0, 0.0], [0.0, 1.0]])  # class 0: only evidence against it
    x = torch.ones(1, 3, 32, 48)
    result = explain_attribution(model, x, task="multiclass", target_index=0, **HALF)
    check_heatmap(result.heatmap, (32, 48))
    assert not result.heatmap.any()


def test_bad_arguments_say_what_is_valid():
    model = RegionModel([[1.0, 0.0], [0.0, 1.0]])
    x = torch.ones(1, 3, 32, 48)
    with pytest.raises(ValueError, match="unknown attribution method 'IG'; valid: Integrated Gradients"):
        explain_attribution(model, x, task="multiclass", method="IG")
    with pytest.raises(ValueError, match="unknown task 'regression'"):
        explain_attribution(model, x, task="regression")
    with pytest.raises(ValueError, match="unknown baseline 'white'; valid: black, blurred"):
        explain_attribution(model, x, task="multiclass", baseline="white")
    with pytest.raises(ValueError, match="needs the model's input mean and std"):
        explain_attribution(model, x, task="multiclass")
    with pytest.raises(ValueError, match=f"between 1 and {MAX_STEPS}"):
        explain_attribution(model, x, task="multiclass", steps=MAX_STEPS + 1, **HALF)
    with pytest.raises(ValueError, match="one image"):
        explain_attribution(model, x.repeat(2, 1, 1, 1), task="multiclass", **HALF)
    with pytest.raises(ValueError, match="binary model has one logit"):
        explain_attribution(model, x, task="binary", **HALF)
    with pytest.raises(ValueError, match="out of range"):
        explain_attribution(model, x, task="multiclass", target_index=2, **HALF)
    assert_clean(model)


def test_the_heatmap_overlays_like_a_cam_and_each_method_is_described():
    model = RegionModel([[1.0, 0.0], [0.0, 1.0]])
    result = explain_attribution(model, torch.ones(1, 3, 32, 48), task="multiclass", **HALF)
    assert overlay(np.zeros((64, 96), np.float32), result.heatmap).shape == (64, 96, 3)
    text = describe(INTEGRATED_GRADIENTS, steps=20, baseline="blurred")
    assert "20 steps" in text and "blurred copy" in text
    assert "noisy copies" in describe(SMOOTHGRAD) and "baseline" not in describe(SMOOTHGRAD).lower()
    with pytest.raises(ValueError, match="unknown baseline"):
        describe(INTEGRATED_GRADIENTS, baseline="grey")
