"""Inference with a loaded chexlab model: the one code path from a radiograph to probabilities and a decision.

`InputTransform` is the model-input transform: the model's own preprocessing pipeline (from its config.json),
then the letterbox and normalisation of its data config. The training Dataset, `python -m trainer predict`,
`evaluate`, the Gradio demo and the Streamlit page all use it, so an image reaches the model exactly as it did
in training; it also gives the demo's display images (the radiograph before and after preprocessing).

`judge` is what every path does with a model's output for one image: the stored calibration applied, the
OOD gate's verdict (`trainer.ood.assess`), and the decision at the thresholds, withheld when the image is
flagged. Thresholds are chosen on calibrated probabilities, so they apply to these.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from trainer.io import XRay
from trainer.ood import Verdict, assess
from trainer.preprocess import Pipeline, fit_to_input
from trainer.task import Task
from trainer.transforms import InputSpec, to_model_tensor

if TYPE_CHECKING:
    from trainer.export import ModelInfo


@dataclass(frozen=True, eq=False)
class ModelInput:
    """What the model sees for one image."""

    image: np.ndarray  # float32 (S, S) in [0, 1]: after the pipeline and the letterbox (what CAMs overlay)
    tensor: torch.Tensor  # (3, S, S), normalised
    warnings: tuple[str, ...]  # from the preprocessing ops (e.g. a lung-crop fallback)


@dataclass(frozen=True, eq=False)
class DisplayedInput:
    """The model input and what people see beside it, letterboxed to one display side (same geometry)."""

    seen: ModelInput
    before: np.ndarray  # float32 (D, D): the radiograph as read
    after: np.ndarray  # float32 (D, D): after the pipeline
    preprocessed: np.ndarray  # float32 (H', W'): after the pipeline at its own size (no letterbox)


@dataclass(frozen=True)
class InputTransform:
    """Pipeline -> letterbox to the model's square input -> per-channel normalisation."""

    pipeline: Pipeline
    spec: InputSpec

    @classmethod
    def for_model(cls, info: ModelInfo) -> InputTransform:
        """The transform a loaded model was trained with (its pipeline and data config)."""
        return cls(info.pipeline, InputSpec.from_data_config(info.data_config))

    def with_pipeline(self, pipeline: Pipeline) -> InputTransform:
        """The same letterbox and normalisation after another preprocessing pipeline."""
        return self if pipeline == self.pipeline else replace(self, pipeline=pipeline)

    def fit(self, pixels: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
        """Pipeline and letterbox (the deterministic part): float32 (S, S), and the ops' warnings."""
        fitted, _, notes = self._fit(pixels)
        return fitted, notes

    def normalise(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """A fitted (S, S) or (1, S, S) image as the model's (3, S, S) input tensor."""
        return to_model_tensor(image, self.spec.mean, self.spec.std)

    def __call__(self, pixels: np.ndarray) -> ModelInput:
        """The model input for a radiograph (float32 (H, W) in [0, 1], as read)."""
        fitted, _, notes = self._fit(pixels)
        return ModelInput(fitted, self.normalise(fitted), notes)

    def display(self, pixels: np.ndarray, side: int) -> DisplayedInput:
        """The model input, and the radiograph before and after the pipeline letterboxed to `side`."""
        fitted, preprocessed, notes = self._fit(pixels)
        after = fitted if side == self.spec.size else fit_to_input(preprocessed, side)
        seen = ModelInput(fitted, self.normalise(fitted), notes)
        return DisplayedInput(seen, fit_to_input(pixels, side), after, preprocessed)

    def _fit(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        """(letterboxed, preprocessed at full size, warnings)."""
        result = self.pipeline.apply(pixels)
        return fit_to_input(result.image, self.spec.size), result.image, tuple(result.warnings)


@torch.no_grad()
def predict_tensors(model: nn.Module, tensors: torch.Tensor, task: Task | str) -> np.ndarray:
    """Probabilities for a batch (N, 3, S, S): (N,) for binary, (N, C) otherwise."""
    model.eval()
    return Task.parse(task).probabilities(model(tensors).float()).cpu().numpy()


@dataclass(frozen=True, eq=False)
class Judged:
    """A model's answer for one image, as every inference path reports it.

    Attributes:
        probabilities: calibrated; binary: a 0-d array, P(positive); otherwise (C,).
        decided: the classes asserted at the model's thresholds; empty when the decision is withheld.
        verdict: the OOD gate's verdict (flagged images get no decision).
    """

    probabilities: np.ndarray
    decided: list[str]
    verdict: Verdict

    @property
    def withheld(self) -> bool:
        return self.verdict.flagged


def judge(info: ModelInfo, raw: np.ndarray, xray: XRay, features: np.ndarray | torch.Tensor | None) -> Judged:
    """Calibrate one image's raw probabilities, run the OOD gate and decide (see the module docstring).

    Args:
        info: the model's info (its calibration, OOD statistics, thresholds).
        raw: the model's probabilities for this image, as `predict_tensors` gives them (one row).
        xray: the image as read (for the image-level checks).
        features: its pooled features (`trainer.ood.features_and_logits`), None to skip the feature score.
    """
    return judge_verdict(info, raw, assess(xray, features, info.ood))


def judge_verdict(info: ModelInfo, raw: np.ndarray, verdict: Verdict) -> Judged:
    """`judge` with the OOD verdict already reached (`trainer.ood.verdict`, for batches read by workers)."""
    probs = info.calibrated(np.asarray(raw, dtype=np.float64)[None])[0]
    decided = (
        []
        if verdict.flagged
        else info.task.decide(probs, info.label_names, info.thresholds, info.negative_name)
    )
    return Judged(probs, decided, verdict)
