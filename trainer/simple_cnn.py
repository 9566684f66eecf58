"""The simple-cnn recipe's network, registered with timm as `chexlab_simple_cnn`.

Six 3x3 convolutions, each followed by 2x2 max-pooling, then dropout and two fully connected layers (the study
ends in a softmax; here the loss and the predictor apply it, so the model returns logits like every timm
classifier). Registering it with timm lets the rest of chexlab, `timm.models.save_for_hf` and
`timm.create_model("local-dir:...")` (with chexlab imported) treat it like any timm architecture.

Two choices the study leaves open, made to fit timm's model contract:
- the feature maps are global-average pooled before the first fully connected layer (where a Keras model
  would `Flatten`), so any input size works and `forward_head(pre_logits=True)` is well defined;
- the sixth max-pool is the first step of the head, so `forward_features` (and Grad-CAM on `stages.5`) keeps
  the 7x7 map of a 224 px input instead of 3x3.
"""

from __future__ import annotations

import torch
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn
from torch.nn import functional as F

__all__ = ["SimpleCNN"]

DEFAULT_WIDTHS = (32, 32, 64, 64, 128, 128)


class _ConvStage(nn.Module):
    """The previous stage's max-pool (none before the first stage), then a 3x3 convolution and ReLU."""

    def __init__(self, in_chs: int, out_chs: int, pool: bool) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size=3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(self.pool(x)))


class SimpleCNN(nn.Module):
    """Plain six-layer CNN with a two-layer fully connected head.

    Args:
        num_classes: outputs of the last layer (0 = no classifier: `forward` returns pre-logits features).
        in_chans: input channels.
        widths: output channels of the six convolutions.
        hidden: width of the first fully connected layer.
        drop_rate: dropout before each fully connected layer.
        global_pool: timm pooling type ("avg", "max", "avgmax", ...).
    """

    def __init__(
        self,
        num_classes: int = 1,
        in_chans: int = 3,
        widths: tuple[int, ...] = DEFAULT_WIDTHS,
        hidden: int = 128,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.num_features = widths[-1]
        self.head_hidden_size = hidden
        stages, chs = [], in_chans
        for index, width in enumerate(widths):
            stages.append(_ConvStage(chs, width, pool=index > 0))
            chs = width
        self.stages = nn.Sequential(*stages)
        self.feature_info = [
            dict(num_chs=width, reduction=2**index, module=f"stages.{index}")
            for index, width in enumerate(widths)
        ]
        self.head_pool = nn.MaxPool2d(2)
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.pre_fc = nn.Linear(self.num_features * self.global_pool.feat_mult(), hidden)
        self.fc = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        return dict(stem=r"^stages\.0\.", blocks=r"^stages\.(\d+)")

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> nn.Module | str:
        return "fc" if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh last layer with `num_classes` outputs (a new `global_pool` rebuilds `pre_fc` too)."""
        self.num_classes = num_classes
        if global_pool is not None and global_pool != self.global_pool.pool_type:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
            self.pre_fc = nn.Linear(self.num_features * self.global_pool.feat_mult(), self.head_hidden_size)
        self.fc = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(self.head_pool(x))
        x = F.dropout(x, p=self.drop_rate, training=self.training)
        x = F.dropout(F.relu(self.pre_fc(x)), p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


default_cfgs = generate_default_cfgs(
    {
        # No released weights: the cfg documents the input the network expects. CXRs are not center-cropped
        # (crop_pct 1.0, crop_mode "border": timm pads them to a square, as chexlab's preprocessing does).
        "chexlab_simple_cnn": dict(
            num_classes=1,
            input_size=(3, 224, 224),
            pool_size=(7, 7),
            crop_pct=1.0,
            crop_mode="border",
            interpolation="bilinear",
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            first_conv="stages.0.conv",
            classifier="fc",
            license="apache-2.0",
        )
    }
)


@register_model
def chexlab_simple_cnn(pretrained: bool = False, **kwargs) -> SimpleCNN:
    """The simple-cnn study's network (no pretrained weights exist; `pretrained` loads a given file)."""
    return build_model_with_cfg(
        SimpleCNN, "chexlab_simple_cnn", pretrained, feature_cfg=dict(flatten_sequential=True), **kwargs
    )
