"""Tests for trainer.transforms: fitting to the model input, normalisation, training augmentation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from trainer.preprocess import fit_to_input
from trainer.transforms import AugmentConfig, InputSpec, TrainAugment, to_model_tensor

STILL = {"rotation": 0.0, "scale": (1.0, 1.0), "translate": 0.0, "brightness": 0.0, "contrast": 0.0}


def asymmetric_image(size: int = 32) -> torch.Tensor:
    """A (1, S, S) image whose left half is bright and right half dark: a flip is easy to see."""
    image = torch.full((1, size, size), 0.2)
    image[:, :, : size // 2] = 0.8
    return image


def test_input_spec_from_timm_data_config() -> None:
    spec = InputSpec.from_data_config(
        {
            "input_size": (3, 48, 48),
            "mean": [0.485, 0.456, 0.406],
            "std": (0.229, 0.224, 0.225),
            "crop_pct": 0.9,
        }
    )
    assert spec == InputSpec(48, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"input_size": (3, 32, 48), "mean": (0.5,) * 3, "std": (0.5,) * 3}, "square"),
        ({"input_size": (1, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}, "3 channels"),
        ({"input_size": (3, 32, 32), "mean": (0.5,) * 3}, "std"),
        ({"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5, 0.0, 0.5)}, "positive"),
    ],
)
def test_input_spec_rejects_bad_configs(config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InputSpec.from_data_config(config)


def test_fit_to_input_letterboxes_keeping_aspect() -> None:
    tall = np.full((40, 20), 0.7, dtype=np.float32)
    fitted = fit_to_input(tall, 32)
    assert fitted.shape == (32, 32) and fitted.dtype == np.float32
    # 40x20 -> 32x16 centred: 8 padding columns either side, the image in between.
    assert np.all(fitted[:, :8] == 0) and np.all(fitted[:, -8:] == 0)
    np.testing.assert_allclose(fitted[:, 8:24], 0.7, atol=1e-6)


def test_fit_to_input_rejects_colour_arrays() -> None:
    with pytest.raises(ValueError, match="2-D"):
        fit_to_input(np.zeros((8, 8, 3), dtype=np.float32), 16)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_to_model_tensor_replicates_and_normalises(as_tensor: bool) -> None:
    rng = np.random.default_rng(0)
    image = rng.random((16, 16), dtype=np.float32)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    source = torch.from_numpy(image).unsqueeze(0) if as_tensor else image
    tensor = to_model_tensor(source, mean, std)
    assert tensor.shape == (3, 16, 16) and tensor.dtype == torch.float32
    for channel in range(3):
        restored = tensor[channel] * std[channel] + mean[channel]
        np.testing.assert_allclose(restored.numpy(), image, atol=1e-6)


def test_to_model_tensor_rejects_rgb() -> None:
    with pytest.raises(ValueError, match="grayscale"):
        to_model_tensor(torch.zeros(3, 8, 8), (0.5,) * 3, (0.5,) * 3)


def test_augment_config_defaults_are_mild_and_do_not_flip() -> None:
    cfg = AugmentConfig()
    assert cfg.hflip is False and cfg.enabled is True
    assert 0 < cfg.rotation <= 10 and cfg.scale == (0.9, 1.1)
    assert AugmentConfig(scale=[0.8, 1.2]).scale == (0.8, 1.2)  # a YAML list becomes a tuple


@pytest.mark.parametrize(
    ("field", "value"),
    [("scale", (1.2, 0.8)), ("scale", (0.9,)), ("rotation", -1), ("translate", 1.5), ("contrast", 1.0)],
)
def test_augment_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"augment.{field}"):
        AugmentConfig(**{field: value})


def test_train_augment_changes_the_image_within_range() -> None:
    torch.manual_seed(0)
    augment = TrainAugment()
    image = torch.rand(1, 32, 32)
    outputs = [augment(image) for _ in range(3)]
    for out in outputs:
        assert out.shape == image.shape and out.dtype == torch.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
    assert not torch.equal(outputs[0], image)
    assert not torch.equal(outputs[0], outputs[1])


def test_train_augment_is_reproducible_from_the_torch_seed() -> None:
    augment = TrainAugment()
    image = torch.rand(1, 32, 32)
    torch.manual_seed(5)
    first = augment(image)
    torch.manual_seed(5)
    assert torch.equal(first, augment(image))


def test_no_flip_unless_asked() -> None:
    image = asymmetric_image()
    still = TrainAugment(AugmentConfig(**STILL))  # hflip left at its default
    assert all(torch.equal(still(image), image) for _ in range(20))
    torch.manual_seed(0)
    flipping = TrainAugment(AugmentConfig(**STILL, hflip=True))
    results = [flipping(image) for _ in range(20)]
    assert any(torch.equal(r, image.flip(-1)) for r in results)
    assert any(torch.equal(r, image) for r in results)


def test_disabled_augment_is_identity() -> None:
    image = torch.rand(1, 16, 16)
    augment = TrainAugment(AugmentConfig(enabled=False))
    assert torch.equal(augment(image), image)


def test_train_augment_pickles_for_dataloader_workers() -> None:
    augment = pickle.loads(pickle.dumps(TrainAugment(AugmentConfig(rotation=3))))
    assert augment.config.rotation == 3
    assert augment(torch.rand(1, 16, 16)).shape == (1, 16, 16)


def test_train_augment_rejects_normalised_3_channel_input() -> None:
    with pytest.raises(ValueError, match=r"\(1, S, S\)"):
        TrainAugment()(torch.rand(3, 16, 16))
