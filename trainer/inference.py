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

from trainer.preprocess import Pipeline
from trainer.task import Task
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
def predict_tensors(model: nn.Module, tensors: torch.Tensor, task: Task | str) -> np.ndarray:
    """Probabilities for a batch (N, 3, S, S): (N,) for binary, (N, C) otherwise."""
    model.eval()
    return Task.parse(task).probabilities(model(tensors).float()).cpu().numpy()


# Kept for demo/predictor.py until it calls the `Task` methods these delegate to.


def output_names(task: Task | str, label_names: list[str], negative_name: str | None) -> list[str]:
    """The class names a user sees (`Task.output_names`)."""
    return Task.parse(task).output_names(label_names, negative_name)


def class_probabilities(
    probs: np.ndarray, task: Task | str, label_names: list[str], negative_name: str | None
) -> dict[str, float]:
    """One image's probabilities by name (`Task.class_probabilities`)."""
    return Task.parse(task).class_probabilities(probs, label_names, negative_name)


def decide(
    probs: np.ndarray,
    task: Task | str,
    label_names: list[str],
    thresholds: list[float],
    negative_name: str | None,
) -> list[str]:
    """The labels a model asserts for one image at its thresholds (`Task.decide`)."""
    return Task.parse(task).decide(probs, label_names, thresholds, negative_name)
