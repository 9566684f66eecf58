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
  `impute_linear` solves the same linear system as that imputer (equal to it, tested) but builds it in
  one vectorised pass: pytorch-grad-cam's row-by-row `lil_matrix` construction took 60 of its 190 ms on a
  224 x 224 image, and importing it pulls scikit-learn, pandas and matplotlib into the server.

A large drop says the map points at what the decision rests on; a drop near zero (or a rise) says the map
is not what the model used. Neither says the model is right.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from trainer.calibration import Calibration
from trainer.preprocess import LungSearch, find_lungs
from trainer.task import Task

REMOVED_FRACTION = 0.2
# ROAD's weights of the 8 neighbours, (row offset, column offset): weight (Rong et al., 2022).
NEIGHBOUR_WEIGHTS = {
    (1, 1): 1 / 12, (0, 1): 1 / 6, (-1, 1): 1 / 12, (1, -1): 1 / 12,
    (0, -1): 1 / 6, (-1, -1): 1 / 12, (1, 0): 1 / 6, (-1, 0): 1 / 6,
}  # fmt: skip


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


def lung_share(image: np.ndarray, heatmap: np.ndarray, lungs: LungSearch | None = None) -> LungShare:
    """The share of `heatmap`'s mass inside the lung box of `image`.

    Args:
        image: float32 (H, W) in [0, 1], the image the model saw (after its preprocessing and letterbox).
        heatmap: non-negative (h, w) map; resized to (H, W) when the sizes differ.
        lungs: `find_lungs(image)` when the caller has it (it depends on the image alone).
    """
    box, reason = find_lungs(image) if lungs is None else lungs
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
    logits: torch.Tensor | np.ndarray | None = None,
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
        logits: the model's logits for this image (C,) when the caller has them (the explanation's forward
            pass); saves running the model on the image as it is.

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
    with torch.inference_mode():  # no autograd bookkeeping at all (forward-only, nothing is explained)
        own = model(x)[0] if logits is None else torch.as_tensor(logits)
        before = _class_probability(own, task, target_index, calibration)
        if not heat.any():
            return DeletionCheck(before, None, fraction)
        # Rank, ties broken by position: exactly `fraction` of the pixels, whatever the map's ties.
        order = np.argsort(-heat.ravel(), kind="stable")
        removed: np.ndarray = np.zeros(heat.size, dtype=bool)
        removed[order[: round(fraction * heat.size)]] = True
        pixels = x[0].detach().cpu().float().numpy()
        imputed = torch.from_numpy(impute_linear(pixels, removed.reshape(heat.shape)))
        after = _class_probability(
            model(imputed[None].to(x.device, x.dtype))[0], task, target_index, calibration
        )
    return DeletionCheck(before, after, fraction)


def impute_linear(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """ROAD's linear imputation: each removed pixel becomes the weighted mean of its 8 neighbours.

    The removed pixels are the unknowns of one sparse linear system (known neighbours on the right-hand
    side, image borders dropping their weight), as in pytorch-grad-cam's `NoisyLinearImputer` without noise.

    Args:
        image: (C, H, W) values.
        removed: (H, W) bool, True where a pixel is to be imputed.

    Returns:
        float32 (C, H, W): `image` with the removed pixels imputed.
    """
    # here, not at the top: neither is needed to serve the page (start-up time and memory, issue 16)
    import qdldl
    from scipy import sparse

    channels, height, width = image.shape
    flat: np.ndarray = image.reshape(channels, -1).astype(np.float64)
    known = ~removed.ravel()
    unknown = np.flatnonzero(removed.ravel())
    result: np.ndarray = flat.astype(np.float32)
    n = unknown.size
    if n == 0:
        return result.reshape(image.shape)
    if n == known.size:
        raise ValueError("every pixel is to be imputed: there is nothing to impute them from")
    variable: np.ndarray = np.full(known.size, -1, dtype=np.int64)
    variable[unknown] = np.arange(n)
    row, col = np.divmod(unknown, width)
    weight_sum = np.zeros(n)
    rhs = np.zeros((n, channels))
    eq, var, weights = [np.arange(n)], [np.arange(n)], []
    for (dy, dx), weight in NEIGHBOUR_WEIGHTS.items():
        y, x = row + dy, col + dx
        inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
        weight_sum[inside] += weight
        neighbour = np.where(inside, y * width + x, 0)
        from_known = inside & known[neighbour]
        rhs[from_known] += weight * flat[:, neighbour[from_known]].T
        to_unknown = np.flatnonzero(inside & ~known[neighbour])
        eq.append(to_unknown)
        var.append(variable[neighbour[to_unknown]])
        weights.append(np.full(to_unknown.size, -weight))
    # The system (on the diagonal the summed weight of a pixel's neighbours, off it minus the weight of each
    # removed neighbour) is symmetric, as opposite neighbours weigh the same, and positive definite:
    # diagonally dominant, strictly so beside a known pixel, which every group of removed pixels has. A
    # sparse LDL^T factorisation (QDLDL reads the upper triangle) solves it 1.6x faster than SuperLU did
    # (10,035 unknowns, timed interleaved: 28 vs 44 ms).
    system = sparse.csc_matrix(
        (np.concatenate([weight_sum, *weights]), (np.concatenate(eq), np.concatenate(var))), shape=(n, n)
    )
    factors = qdldl.Solver(sparse.triu(system, format="csc"))
    result[:, unknown] = np.stack([factors.solve(column) for column in rhs.T])
    return result.reshape(image.shape)


def check_heatmap(
    model: torch.nn.Module,
    image: np.ndarray,
    input_tensor: torch.Tensor,
    heatmap: np.ndarray,
    *,
    task: Task | str,
    target_index: int,
    calibration: Calibration | None = None,
    logits: torch.Tensor | np.ndarray | None = None,
    lungs: LungSearch | None = None,
) -> HeatmapCheck:
    """Both checks for one explained image (see `lung_share` and `deletion_check`)."""
    return HeatmapCheck(
        lung_share(image, heatmap, lungs),
        deletion_check(
            model, input_tensor, heatmap, task=task, target_index=target_index, calibration=calibration,
            logits=logits,
        ),
    )  # fmt: skip


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
