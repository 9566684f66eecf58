"""Loss functions for the three task kinds, and how model outputs become probabilities."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Sigmoid for binary (one logit) and multi-label outputs, softmax for multi-class ones."""
    if task == "multiclass":
        return logits.softmax(dim=-1)
    probs = logits.sigmoid()
    return probs[:, 0] if task == "binary" else probs


class MaskedBCELoss(nn.Module):
    """Binary cross-entropy that ignores unknown labels (NaN targets), as NIH-style labels need."""

    def __init__(self, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        known = ~torch.isnan(targets)
        losses = F.binary_cross_entropy_with_logits(
            logits, torch.where(known, targets, 0.0), pos_weight=self.pos_weight, reduction="none"
        )
        # A batch whose labels are all unknown contributes zero loss (and zero gradient), not NaN.
        return (losses * known).sum() / known.sum().clamp(min=1)


class BinaryLoss(MaskedBCELoss):
    """BCE on the single logit of a binary model."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return super().forward(logits[:, 0], targets.float())


def _positive_weight(targets: np.ndarray) -> torch.Tensor:
    """negatives / positives per output, over known labels; 1 where an output has no positives."""
    known = ~np.isnan(targets)
    pos = np.nansum(targets, axis=0)
    neg = known.sum(axis=0) - pos
    return torch.tensor(np.where(pos > 0, neg / np.maximum(pos, 1), 1.0), dtype=torch.float32)


def build_loss(
    task: str, train_targets: np.ndarray, num_classes: int, *, class_weights: bool, pos_weight: bool
) -> nn.Module:
    """The training loss for `task`, optionally re-weighted from the training labels.

    Args:
        task: binary | multiclass | multilabel.
        train_targets: the training split's targets (class indices, or 0/1 with NaN for unknown).
        num_classes: number of model outputs for multiclass.
        class_weights: multiclass only: weight each class by inverse frequency.
        pos_weight: binary / multilabel only: weight positives by negatives / positives.
    """
    if task == "multiclass":
        weight = None
        if class_weights:
            counts = np.bincount(train_targets.astype(int), minlength=num_classes).astype(np.float64)
            weight = torch.tensor(counts.sum() / (num_classes * np.maximum(counts, 1)), dtype=torch.float32)
        return nn.CrossEntropyLoss(weight=weight)
    targets = np.asarray(train_targets, dtype=np.float64)
    weight = _positive_weight(targets if targets.ndim == 2 else targets[:, None]) if pos_weight else None
    if task == "binary":
        return BinaryLoss(weight[0] if weight is not None else None)
    return MaskedBCELoss(weight)
