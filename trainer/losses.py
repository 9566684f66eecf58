"""Loss functions for chexlab's tasks, and the class weights they can be given (`Task.loss` picks one)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


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


def positive_weight(targets: np.ndarray) -> torch.Tensor:
    """negatives / positives per output of targets (N,) or (N, C) (NaN = unknown); 1 without positives."""
    values = np.asarray(targets, dtype=np.float64)
    values = values if values.ndim == 2 else values[:, None]
    known = ~np.isnan(values)
    pos = np.nansum(values, axis=0)
    neg = known.sum(axis=0) - pos
    return torch.tensor(np.where(pos > 0, neg / np.maximum(pos, 1), 1.0), dtype=torch.float32)


def inverse_frequency(class_indices: np.ndarray, num_classes: int) -> torch.Tensor:
    """One weight per class, total / (classes x count): rare classes weigh more (sklearn's "balanced")."""
    counts = np.bincount(class_indices.astype(int), minlength=num_classes).astype(np.float64)
    return torch.tensor(counts.sum() / (num_classes * np.maximum(counts, 1)), dtype=torch.float32)
