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

Code elsewhere asks a Task what it needs (`num_outputs`, `probabilities`, `loss`, `target_array`, ...) or
branches on its flags (`single_logit`, `exclusive`, `multi_label`), never on the task's name. torch is
imported inside the methods that use it, so that model cards can use Task without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np

from trainer.errors import ChexlabError

if TYPE_CHECKING:  # torch is imported where it is used, so that model cards can use Task without it
    import torch
    from torch import nn


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
    def multi_label(self) -> bool:
        """Whether each output is a finding of its own: an image may have none, one or several.

        Only multi-label targets may be unknown (NaN); they are masked finding by finding.
        """
        return self is Task.MULTILABEL

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

    # ---------------------------------------------------------------------------------------- targets

    @property
    def target_dtype(self) -> torch.dtype:
        """The dtype of training targets: class indices for multi-class, floats (0/1, NaN) otherwise."""
        import torch

        return torch.long if self.exclusive else torch.float32

    def target_array(self, targets: Any, num_images: int, label_names: Sequence[str]) -> np.ndarray:
        """The targets of `num_images` images in this task's layout (see the module docstring).

        Raises:
            TaskError: a binary task without exactly one label name, or targets of the wrong shape.
        """
        if self.single_logit and len(label_names) != 1:
            raise TaskError(
                f"a binary table has one label name (the positive class), got {list(label_names)}"
            )
        array = np.asarray(targets, dtype=np.int64 if self.exclusive else np.float32)
        expected = (num_images, len(label_names)) if self.multi_label else (num_images,)
        if array.shape != expected:
            raise TaskError(f"{self.value} targets must have shape {expected}, got {array.shape}")
        return array

    def prediction_arrays(self, targets: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
        """Check targets and probabilities against this task's shapes and bring them to one layout.

        Returns:
            Binary and multi-label: targets (N, C) float with NaN = unknown and probs (N, C), C = 1 for
            binary. Multi-class: targets (N,) int64 class indices and probs (N, C).

        Raises:
            TaskError: shapes that do not fit the task, or target values outside its range.
        """
        y = np.asarray(targets, dtype=float)
        p = np.asarray(probs, dtype=float)
        if self.single_logit:
            y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
            p = p.reshape(-1) if p.ndim == 2 and p.shape[1] == 1 else p
            if y.ndim != 1 or p.shape != y.shape:
                raise TaskError(
                    f"binary task needs targets (N,) and probs (N,) or (N, 1); got {y.shape} and {p.shape}"
                )
            if not np.isin(y, (0.0, 1.0)).all():
                raise TaskError("binary targets must be 0 or 1 (use task 'multilabel' for unknown labels)")
            return y[:, None], p[:, None]
        if self.exclusive:
            if y.ndim != 1 or p.ndim != 2 or p.shape[0] != y.shape[0]:
                raise TaskError(
                    f"multiclass task needs targets (N,) and probs (N, C); got {y.shape} and {p.shape}"
                )
            in_range = (y >= 0) & (y < p.shape[1])
            if not (np.isfinite(y).all() and (y == np.round(y)).all() and in_range.all()):
                raise TaskError(f"multiclass targets must be class indices in 0..{p.shape[1] - 1}")
            return y.astype(np.int64), p
        if y.ndim != 2 or p.shape != y.shape:
            raise TaskError(
                f"multilabel task needs targets and probs of one shape (N, C); got {y.shape} and {p.shape}"
            )
        if not np.isin(y[~np.isnan(y)], (0.0, 1.0)).all():
            raise TaskError("multilabel targets must be 0, 1 or NaN (unknown)")
        return y, p

    def indicators(self, targets: np.ndarray, num_columns: int) -> np.ndarray:
        """One 0/1 column per output (NaN = unknown) from `prediction_arrays` targets: class indices become
        one-hot columns, the others are already in that form."""
        return np.eye(num_columns)[targets] if self.exclusive else targets

    # ------------------------------------------------------------------------------------------ training

    def loss(
        self, train_targets: np.ndarray, num_outputs: int, *, class_weights: bool, pos_weight: bool
    ) -> nn.Module:
        """The training loss for this task, optionally re-weighted from the training labels.

        Args:
            train_targets: the training split's targets (class indices, or 0/1 with NaN for unknown).
            num_outputs: the model's outputs.
            class_weights: multi-class only: weight each class by its inverse frequency.
            pos_weight: binary / multi-label only: weight positives by negatives / positives.
        """
        from torch import nn

        from trainer import losses

        if self.exclusive:
            weight = losses.inverse_frequency(train_targets, num_outputs) if class_weights else None
            return nn.CrossEntropyLoss(weight=weight)
        positive = losses.positive_weight(train_targets) if pos_weight else None
        if self.single_logit:
            return losses.BinaryLoss(positive[0] if positive is not None else None)
        return losses.MaskedBCELoss(positive)

    def logits_from_probabilities(self, probs: torch.Tensor) -> torch.Tensor:
        """Logits (N, C) that give back `probs` from `probabilities` (for softmax, up to a constant per row).

        Lets a loss be computed from gathered probabilities.
        """
        logits = probs.log() if self.exclusive else probs.logit()
        return logits[:, None] if self.single_logit else logits

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
