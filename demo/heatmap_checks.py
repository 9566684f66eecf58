"""Two numbers beside a heatmap that a teacher can point at: is the map on the lungs, and does it matter?

- **Lung share**: the share of the heatmap's mass inside the lung fields that `trainer.preprocess.find_lungs`
  finds on the image the model saw (the box around both lungs), next to that box's share of the image, the
  share an evenly spread map would get. A map on a shoulder, a burned-in label or the abdomen scores low.
- **Deletion drop**: how much the explained class's probability falls when the most salient 20 % of the
  image (by the heatmap) is removed. Removal is ROAD's noisy linear imputation (Rong et al., "A Consistent
  and Efficient Evaluation Strategy for Attribution Methods", ICML 2022) as pytorch-grad-cam ships it
  (`pytorch_grad_cam.metrics.road.NoisyLinearImputer`): removed pixels are filled from their neighbours,
  so the model sees a plausible image rather than a black hole. The pixels are picked by rank, not by
  pytorch-grad-cam's percentile threshold, which removes every pixel when more than 80 % of a map is
  zero (ties at the threshold), and without the imputer's noise, so that the number is reproducible.

A large drop says the map points at what the decision rests on; a drop near zero (or a rise) says the map
is not what the model used. Neither says the model is right.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from trainer.calibration import Calibration
from trainer.preprocess import find_lungs
from trainer.task import Task

REMOVED_FRACTION = 0.2


@dataclass(frozen=True)
class LungShare:
    """How much of a heatmap lies on the lung fields.

    Attributes:
        share: the map's mass inside the lung box, in [0, 1]; None when no lungs were found or the map is
            empty.
        area: the lung box's share of the image (what an evenly spread map gets); None without lungs.
        note: why `share` is None, else "".
    """

    share: float | None
    area: float | None
    note: str = ""


@dataclass(frozen=True)
class DeletionCheck:
    """The explained class's probability before and after the most salient pixels are removed.

    Attributes:
        before: the probability on the image as it is.
        after: the probability once `removed` of the pixels (the most salient) are imputed; None when the map
            is empty (nothing is salient).
        removed: the fraction of pixels removed.
    """

    before: float
    after: float | None
    removed: float = REMOVED_FRACTION

    @property
    def drop(self) -> float | None:
        """before - after: positive when removing the salient pixels lowers the explained class."""
        return None if self.after is None else self.before - self.after


@dataclass(frozen=True)
class HeatmapCheck:
    """Both checks of one heatmap."""

    lungs: LungShare
    deletion: DeletionCheck


def lung_share(image: np.ndarray, heatmap: np.ndarray) -> LungShare:
    """The share of `heatmap`'s mass inside the lung box of `image`.

    Args:
        image: float32 (H, W) in [0, 1], the image the model saw (after its preprocessing and letterbox).
        heatmap: non-negative (h, w) map; resized to (H, W) when the sizes differ.
    """
    box, reason = find_lungs(image)
    if box is None:
        return LungShare(None, None, f"no lungs found ({reason})")
    heat = _resized(heatmap, image.shape)
    total = float(heat.sum())
    area = box.area / image.size
    if total <= 0:
        return LungShare(None, area, "the heatmap is empty")
    inside = float(heat[box.top : box.bottom, box.left : box.right].sum())
    return LungShare(inside / total, area)


def deletion_check(
    model: torch.nn.Module,
    input_tensor: torch.Tensor,
    heatmap: np.ndarray,
    *,
    task: Task | str,
    target_index: int,
    fraction: float = REMOVED_FRACTION,
    calibration: Calibration | None = None,
) -> DeletionCheck:
    """The explained class's probability before and after the most salient `fraction` of pixels is removed.

    Args:
        model: the classifier (logits out), in eval mode.
        input_tensor: the normalised image, (3, H, W) or (1, 3, H, W).
        heatmap: the map of that image, (h, w), resized to (H, W) when the sizes differ.
        task: the model's task.
        target_index: the explained class, in the explanation convention of `Task.class_index` (binary: 1 =
            positive, 0 = negative).
        fraction: the share of pixels removed, in (0, 1).
        calibration: the model's calibration, so that the probabilities are the ones the user sees.

    Raises:
        ValueError: `fraction` outside (0, 1) or an input that is not one image.
    """
    task = Task.parse(task)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    x = input_tensor.unsqueeze(0) if input_tensor.dim() == 3 else input_tensor
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"deletion_check takes one image, (C, H, W) or (1, C, H, W); got {list(x.shape)}")
    heat = _resized(heatmap, tuple(x.shape[-2:]))
    with torch.no_grad():
        before = _class_probability(model(x)[0], task, target_index, calibration)
        if not heat.any():
            return DeletionCheck(before, None, fraction)
        # Rank, ties broken by position: exactly `fraction` of the pixels, whatever the map's ties.
        order = np.argsort(-heat.ravel(), kind="stable")
        keep: np.ndarray = np.ones(heat.size, dtype=np.float32)
        keep[order[: round(fraction * heat.size)]] = 0.0
        mask = torch.from_numpy(keep.reshape(heat.shape))
        # here: pytorch_grad_cam pulls in scikit-learn, pandas, scipy and matplotlib (~2 s at start-up)
        from pytorch_grad_cam.metrics.road import NoisyLinearImputer

        imputed = NoisyLinearImputer(noise=0.0)(x[0].detach().cpu().float(), mask)
        after = _class_probability(
            model(imputed[None].to(x.device, x.dtype))[0], task, target_index, calibration
        )
    return DeletionCheck(before, after, fraction)


def check_heatmap(
    model: torch.nn.Module,
    image: np.ndarray,
    input_tensor: torch.Tensor,
    heatmap: np.ndarray,
    *,
    task: Task | str,
    target_index: int,
    calibration: Calibration | None = None,
) -> HeatmapCheck:
    """Both checks for one explained image (see `lung_share` and `deletion_check`)."""
    return HeatmapCheck(
        lung_share(image, heatmap),
        deletion_check(
            model, input_tensor, heatmap, task=task, target_index=target_index, calibration=calibration
        ),
    )


def _class_probability(
    logits: torch.Tensor, task: Task, index: int, calibration: Calibration | None
) -> float:
    """P(class `index`) from one image's logits (C,), in the explanation convention."""
    z = logits.detach().float().cpu()[None]
    if calibration is not None:
        z = calibration.scale_logits(z)
    probs = task.probabilities(z)[0]
    if task.single_logit:
        return float(probs) if index == 1 else 1.0 - float(probs)
    return float(probs[index])


def _resized(heatmap: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    heat = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0)
    if heat.ndim != 2:
        raise ValueError(f"a heatmap is 2-D (H, W); got shape {heat.shape}")
    if heat.shape != tuple(shape):
        heat = cv2.resize(heat, (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_LINEAR)
    return np.clip(heat, 0.0, None)
