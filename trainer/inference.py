"""Inference with a loaded chexlab model: the one code path from a radiograph to probabilities and a decision.

`python -m trainer predict`, `evaluate` on new data, the Gradio demo and the Streamlit page all go through
`prepare_input`, so an image is preprocessed exactly as it was in training (the model's own pipeline from its
config.json, then the letterbox and normalisation of its data config).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trainer.losses import probabilities
from trainer.preprocess import Pipeline
from trainer.transforms import InputSpec, fit_to_input, to_model_tensor


@dataclass(frozen=True)
class ModelInput:
    """What the model sees for one image."""

    image: np.ndarray  # float32 (S, S) in [0, 1]: after the pipeline and the letterbox (what CAMs overlay)
    tensor: torch.Tensor  # (3, S, S), normalised
    warnings: tuple[str, ...]  # from the preprocessing ops (e.g. a lung-crop fallback)


def prepare_input(pixels: np.ndarray, pipeline: Pipeline, spec: InputSpec) -> ModelInput:
    """Run `pipeline` on a radiograph, letterbox it to the model's input and normalise it."""
    result = pipeline.apply(pixels)
    image = fit_to_input(result.image, spec.size)
    return ModelInput(
        image=image, tensor=to_model_tensor(image, spec.mean, spec.std), warnings=tuple(result.warnings)
    )


@torch.no_grad()
def predict_tensors(model: nn.Module, tensors: torch.Tensor, task: str) -> np.ndarray:
    """Probabilities for a batch (N, 3, S, S): (N,) for binary, (N, C) otherwise."""
    model.eval()
    return probabilities(model(tensors).float(), task).cpu().numpy()


def output_names(task: str, label_names: list[str], negative_name: str | None) -> list[str]:
    """The class names a user sees: a binary model's one logit stands for two classes."""
    if task == "binary":
        return [label_names[0], negative_name or f"not {label_names[0]}"]
    return list(label_names)


def class_probabilities(
    probs: np.ndarray, task: str, label_names: list[str], negative_name: str | None
) -> dict[str, float]:
    """One image's probabilities by name (see `output_names`)."""
    flat = [float(p) for p in np.asarray(probs).reshape(-1)]
    if task == "binary":
        flat = [flat[0], 1.0 - flat[0]]
    return dict(zip(output_names(task, label_names, negative_name), flat, strict=True))


def decide(
    probs: np.ndarray, task: str, label_names: list[str], thresholds: list[float], negative_name: str | None
) -> list[str]:
    """The labels a model asserts for one image, at its stored thresholds (argmax for multi-class).

    A binary model yields its positive or its negative name; a multi-label model yields every finding at or
    above its threshold (an empty list means none).
    """
    flat = np.asarray(probs, dtype=np.float64).reshape(-1)
    if task == "multiclass":
        return [label_names[int(flat.argmax())]]
    cuts = thresholds or [0.5] * len(flat)
    if task == "binary":
        positive, negative = output_names(task, label_names, negative_name)
        return [positive if flat[0] >= cuts[0] else negative]
    return [name for name, p, t in zip(label_names, flat, cuts, strict=True) if p >= t]
