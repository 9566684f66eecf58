"""The three kinds of classification task, and everything that depends on the kind.

- `Task.BINARY`: one logit; P(positive) = sigmoid(logit). Users see two classes, the positive one (the
  model's single label name) and its negative (e.g. "normal"). Targets (N,) float32 in {0, 1}.
- `Task.MULTICLASS`: one logit per class, softmax; the classes exclude each other and the most likely one is
  the decision (no thresholds). Targets (N,) int64 class indices.
- `Task.MULTILABEL`: one logit per finding, sigmoid each; every finding at or above its own threshold is
  asserted. Targets (N, C) float32 0/1 with NaN = unknown.

Explanations use one convention for a binary model's two classes: index 1 explains the positive class (the
logit itself), index 0 the negative one (the negated logit), matching the targets. Other tasks explain
output `i` by index `i`. `class_index`, `class_name`, `default_class_index` and `class_score` are the only
places that know it.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import numpy as np
import torch

from trainer.errors import ChexlabError


class TaskError(ChexlabError, ValueError):
    """An unknown task name, or labels, outputs or thresholds that do not fit a task."""


class Task(StrEnum):
    """A classification task kind; its value is the name used in configs and config.json."""

    BINARY = "binary"
    MULTICLASS = "multiclass"
    MULTILABEL = "multilabel"

    @classmethod
    def parse(cls, value: str | Task) -> Task:
        """The task named `value`.

        Raises:
            TaskError: not a task name.
        """
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(task.value for task in cls)
            raise TaskError(f"unknown task {value!r}; valid: {valid}") from None

    # ------------------------------------------------------------------------------------------ shape

    @property
    def exclusive(self) -> bool:
        """Whether exactly one class applies to an image (argmax decides; no thresholds)."""
        return self is Task.MULTICLASS

    @property
    def single_logit(self) -> bool:
        """Whether the model has one output standing for two classes (positive and negative)."""
        return self is Task.BINARY

    @property
    def display_name(self) -> str:
        """The task in words: "binary", "multi-class" or "multi-label"."""
        return {Task.BINARY: "binary", Task.MULTICLASS: "multi-class", Task.MULTILABEL: "multi-label"}[self]

    @property
    def member(self) -> str:
        """What one output is called: "class" or "finding"."""
        return "finding" if self is Task.MULTILABEL else "class"

    @property
    def averaging(self) -> str:
        """How per-class numbers are summarised into one: "" (binary: one class), "macro" or "mean"."""
        return {Task.BINARY: "", Task.MULTICLASS: "macro", Task.MULTILABEL: "mean"}[self]

    def num_outputs(self, num_labels: int) -> int:
        """The model outputs (logits) for `num_labels` label names (binary: 1 name, 1 output)."""
        return num_labels

    def num_thresholds(self, num_labels: int) -> int:
        """Decision thresholds a model of this task stores: none for multi-class, else one per output."""
        return 0 if self.exclusive else num_labels

    def check_outputs(
        self, label_names: Sequence[str], num_outputs: int, thresholds: Sequence[float]
    ) -> None:
        """Check that label names, the model's outputs and its thresholds fit this task.

        Raises:
            TaskError: a binary model without exactly one label name, or mismatched counts or non-finite
                thresholds.
        """
        if self.single_logit and len(label_names) != 1:
            raise TaskError(f"a binary model has one label name, its positive class; got {list(label_names)}")
        expected = self.num_outputs(len(label_names))
        if num_outputs != expected:
            raise TaskError(
                f"a {self.value} model with labels {list(label_names)} needs {expected} outputs, "
                f"not {num_outputs}"
            )
        wanted = self.num_thresholds(len(label_names))
        if len(thresholds) != wanted or not all(np.isfinite(t) for t in thresholds):
            rule = "argmax decides" if self.exclusive else "one per output"
            raise TaskError(
                f"a {self.value} model with {len(label_names)} labels needs {wanted} finite thresholds "
                f"({rule}); got {list(thresholds)}"
            )

    @property
    def target_dtype(self) -> torch.dtype:
        """The dtype of training targets: class indices for multi-class, floats (0/1, NaN) otherwise."""
        return torch.long if self.exclusive else torch.float32

    # ---------------------------------------------------------------------------------------- outputs

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities from a batch of logits (N, C): (N,) P(positive) for binary, else (N, C)."""
        if self.exclusive:
            return logits.softmax(dim=-1)
        probs = logits.sigmoid()
        return probs[:, 0] if self.single_logit else probs

    def output_names(self, label_names: Sequence[str], negative_name: str | None) -> list[str]:
        """The class names a user sees: a binary model's one logit stands for two classes."""
        if self.single_logit:
            return [label_names[0], negative_name or f"not {label_names[0]}"]
        return list(label_names)

    def class_probabilities(
        self, probs: np.ndarray, label_names: Sequence[str], negative_name: str | None
    ) -> dict[str, float]:
        """One image's probabilities by class name (see `output_names`)."""
        flat = [float(p) for p in np.asarray(probs).reshape(-1)]
        if self.single_logit:
            flat = [flat[0], 1.0 - flat[0]]
        return dict(zip(self.output_names(label_names, negative_name), flat, strict=True))

    def decide(
        self,
        probs: np.ndarray,
        label_names: Sequence[str],
        thresholds: Sequence[float],
        negative_name: str | None,
    ) -> list[str]:
        """The classes a model asserts for one image at its thresholds (argmax for multi-class).

        A binary model yields its positive or its negative name; a multi-label model yields every finding at
        or above its threshold (an empty list means none).
        """
        flat = np.asarray(probs, dtype=np.float64).reshape(-1)
        if self.exclusive:
            return [label_names[int(flat.argmax())]]
        cuts = list(thresholds) or [0.5] * len(flat)
        if self.single_logit:
            positive, negative = self.output_names(label_names, negative_name)
            return [positive if flat[0] >= cuts[0] else negative]
        return [name for name, p, t in zip(label_names, flat, cuts, strict=True) if p >= t]

    # ------------------------------------------------------------------- the classes an explanation names

    def num_explainable(self, num_outputs: int) -> int:
        """How many classes an explanation can target: two for a binary model's one logit."""
        return 2 if self.single_logit else num_outputs

    def class_index(self, output_names: Sequence[str], name: str) -> int:
        """The explanation index of a class name from `output_names` (binary: 1 = positive, 0 = negative).

        Raises:
            TaskError: `name` is not one of `output_names`.
        """
        if name not in output_names:
            raise TaskError(f"unknown class {name!r}; valid: {', '.join(output_names)}")
        if self.single_logit:
            return 1 if name == output_names[0] else 0
        return list(output_names).index(name)

    def class_name(self, output_names: Sequence[str], index: int) -> str:
        """The class name an explanation index stands for (inverse of `class_index`)."""
        if self.single_logit:
            return output_names[0] if index == 1 else output_names[1]
        return output_names[index]

    def default_class_index(self, logits: torch.Tensor) -> int:
        """The index explained when none is asked for: the top class (binary: positive if P >= 0.5)."""
        return int(logits[0] >= 0) if self.single_logit else int(logits.argmax())

    def class_score(self, logits: torch.Tensor, index: int) -> torch.Tensor:
        """The scalar an explanation of class `index` follows, from one image's logits (C,).

        Binary: the logit for the positive class and its negation for the negative one, so that a map of the
        negative class shows the evidence for it.
        """
        if self.single_logit:
            return logits[0] if index == 1 else -logits[0]
        return logits[index]
