"""`model.init: timm` offline: timm's weights from a pre-filled Hugging Face cache with HF_HUB_OFFLINE=1."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save

from tests.conftest import shared_path
from tests.hub_cache import fill_hub_cache
from trainer.config import load_config
from trainer.model_source import ModelSourceError
from trainer.modeling import create_classifier


def _cache_imagenet_weights(arch: str, tag: str, weights: bytes) -> None:
    """timm's own Hub repository for arch.tag (``timm/<arch>.<tag>``) holding ``weights``."""
    fill_hub_cache(f"timm/{arch}.{tag}", {"model.safetensors": weights})


def test_timm_init_from_the_offline_cache() -> None:
    imagenet = timm.create_model("test_efficientnet")  # 1000 classes, random: stands in for the release
    _cache_imagenet_weights("test_efficientnet", "r160_in1k", save(imagenet.state_dict()))
    cfg = load_config(None, ["model.arch=test_efficientnet", "model.init=timm"])
    for init in (cfg.model.init, "timm:r160_in1k"):
        model = create_classifier(cfg.model.arch, 3, init=init)
        state = model.state_dict()
        backbone = [k for k in imagenet.state_dict() if not k.startswith("classifier.")]
        assert all(torch.equal(state[k], imagenet.state_dict()[k]) for k in backbone)
        assert model.get_classifier().out_features == 3  # a fresh head for this run's labels
    with pytest.raises(ModelSourceError, match="could not fetch timm's pretrained weights"):
        create_classifier("test_resnet", 2, init="timm")  # not in the cache


@pytest.mark.shared
def test_real_imagenet_weights_from_the_offline_cache() -> None:
    path = shared_path("weights", "tf_efficientnet_lite0.in1k.timm.safetensors")
    _cache_imagenet_weights("tf_efficientnet_lite0", "in1k", path.read_bytes())
    model = create_classifier("tf_efficientnet_lite0", 1, init="timm")
    reference = timm.create_model(
        "tf_efficientnet_lite0", pretrained=True, pretrained_cfg_overlay={"file": str(path)}, num_classes=1
    )
    assert torch.equal(model.conv_stem.weight, reference.conv_stem.weight)
