"""Model-input transforms: fit a preprocessed radiograph to a model's input and normalise it.

Everything here is derived from the model's data config (timm's ``resolve_model_data_config`` dict), so
training, evaluation and the demo turn an image into the same tensor. Training augmentation (``TrainAugment``)
works on the fitted ``(1, S, S)`` float tensor, before normalisation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.transforms import v2

__all__ = ["AugmentConfig", "InputSpec", "TrainAugment", "to_model_tensor"]


@dataclass(frozen=True)
class InputSpec:
    """What a model takes: a square ``size`` x ``size`` image normalised with ``mean``/``std`` per channel."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"input size must be a positive number of pixels, got {self.size}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != 3:
                raise ValueError(f"{name} needs 3 values (one per RGB channel), got {values!r}")
        if min(self.std) <= 0:
            raise ValueError(f"std values must be positive, got {self.std!r}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @classmethod
    def from_data_config(cls, config: Mapping) -> InputSpec:
        """Build from timm's data config, e.g. ``timm.data.resolve_model_data_config(model)``.

        Args:
            config: a mapping with ``input_size`` ``(3, H, W)``, ``mean`` and ``std``.

        Raises:
            ValueError: a key is missing, or the input is not square (chexlab letterboxes to a square).
        """
        missing = [key for key in ("input_size", "mean", "std") if key not in config]
        if missing:
            raise ValueError(f"model data config lacks {', '.join(missing)}; got keys {sorted(config)}")
        channels, height, width = config["input_size"]
        if channels != 3:
            raise ValueError(
                f"chexlab models take 3 channels (grayscale replicated); input_size is {config['input_size']}"
            )
        if height != width:
            raise ValueError(
                f"chexlab letterboxes radiographs to a square, but the model wants {height}x{width}; "
                "pick a model with a square input_size"
            )
        return cls(size=int(height), mean=tuple(config["mean"]), std=tuple(config["std"]))


def to_model_tensor(
    image: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Replicate a grayscale image to 3 channels and normalise it per channel.

    Args:
        image: ``(S, S)`` or ``(1, S, S)`` float in [0, 1] (numpy or torch).
        mean: per-channel mean (3 values) from the model's data config.
        std: per-channel standard deviation (3 values).

    Returns:
        float32 tensor ``(3, S, S)``.
    """
    tensor = torch.as_tensor(image, dtype=torch.float32)
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 3 or tensor.shape[0] != 1:
        raise ValueError(f"expected a grayscale (S, S) or (1, S, S) image, got shape {tuple(tensor.shape)}")
    # Pretrained backbones saw RGB photographs: three identical channels keep every 3-channel model usable.
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (tensor.expand(3, -1, -1) - mean_t) / std_t


@dataclass
class AugmentConfig:
    """Training augmentation settings; the field names are the YAML keys of the ``augment:`` block.

    The defaults are deliberately mild: they mimic how real radiographs of the same patient differ, not
    the arbitrary geometry of photographs.

    Attributes:
        enabled: False makes ``TrainAugment`` the identity (train without augmentation).
        rotation: maximum rotation in degrees. Patients are positioned within a few degrees of upright;
            larger rotations produce images no scanner would.
        scale: zoom range. Body habitus, source-to-detector distance and AP-versus-PA magnification change the
            apparent size of the thorax by roughly ten percent.
        translate: maximum shift as a fraction of the side. Collimation and centring vary a little.
        brightness: maximum relative change of brightness. Exposure (kVp, mAs) and vendor processing differ.
        contrast: maximum relative change of contrast, for the same reason.
        hflip: random left-right flips. Off by default because anatomy is not left-right symmetric (the heart
            lies on the left, situs inversus is itself a finding) and side-specific labels would become wrong.
    """

    enabled: bool = True
    rotation: float = 7.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05
    brightness: float = 0.1
    contrast: float = 0.1
    hflip: bool = False

    def __post_init__(self) -> None:
        # YAML gives lists; keep a tuple so the config stays hashable and compares equal after a round trip.
        scale = [float(v) for v in self.scale]
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"augment.scale must be [low, high] with 0 < low <= high, got {scale}")
        self.scale = (scale[0], scale[1])
        if not 0 <= self.rotation <= 180:
            raise ValueError(f"augment.rotation must be in [0, 180] degrees, got {self.rotation}")
        if not 0 <= self.translate < 1:
            raise ValueError(f"augment.translate must be a fraction in [0, 1), got {self.translate}")
        for name in ("brightness", "contrast"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"augment.{name} must be in [0, 1), got {getattr(self, name)}")


@dataclass
class TrainAugment:
    """Random training augmentation of a fitted ``(1, S, S)`` float image in [0, 1].

    Randomness comes from torch's global generator, which DataLoader seeds differently in every worker
    (``base_seed + worker_id``), so workers never repeat each other and a seeded run is reproducible.
    """

    config: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        cfg = self.config
        steps: list[v2.Transform] = []
        if cfg.enabled and cfg.hflip:
            steps.append(v2.RandomHorizontalFlip(p=0.5))
        if cfg.enabled and (cfg.rotation or cfg.translate or cfg.scale != (1.0, 1.0)):
            # Fill with 0, the letterbox padding value, so new margins look like the existing ones.
            steps.append(
                v2.RandomAffine(
                    degrees=cfg.rotation,
                    translate=(cfg.translate, cfg.translate),
                    scale=cfg.scale,
                    interpolation=v2.InterpolationMode.BILINEAR,
                    fill=0.0,
                )
            )
        if cfg.enabled and (cfg.brightness or cfg.contrast):
            steps.append(v2.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast))
        self._transform = v2.Compose(steps or [v2.Identity()])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Augment ``image`` (``(1, S, S)`` float in [0, 1]); returns a new tensor of the same shape."""
        if image.ndim != 3 or image.shape[0] != 1:
            raise ValueError(f"TrainAugment expects a (1, S, S) tensor, got shape {tuple(image.shape)}")
        return self._transform(image).clamp(0.0, 1.0)
