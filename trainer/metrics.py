"""Classification metrics with patient-level bootstrap confidence intervals, and threshold selection.

Task kinds (:class:`trainer.task.Task`, or their names) and the shapes this module expects (the same
everywhere in chexlab):

- ``"binary"``: one logit; ``probs`` (N,) or (N, 1) = P(positive); ``targets`` (N,) in {0, 1}.
- ``"multiclass"``: softmax over C classes; ``probs`` (N, C); ``targets`` (N,) integer class indices.
- ``"multilabel"``: one sigmoid per finding; ``probs`` (N, C); ``targets`` (N, C) float 0/1 with NaN for
  unknown labels, which are masked finding by finding.

Decisions: ``prob >= threshold`` for binary and multilabel (one threshold per finding), argmax for
multiclass (no thresholds). :func:`choose_thresholds` picks thresholds on validation data.

Confidence intervals resample *patients* with replacement and keep all of each drawn patient's images, so
that several images of one patient do not pass for independent evidence. A resample is a row of patient
draw counts and every image weighs as much as its patient's count, which turns each metric into a
weighted metric of all resamples at once: confusion counts are one matrix product with per-patient cell
totals, and ROC AUC is a weighted Mann-Whitney statistic over one sort of the scores (1000 resamples of
14 findings on 25 000 images take seconds). Resamples in which a metric is undefined (e.g. no positive
image drawn) are skipped and the number used is reported; intervals are percentile intervals.

Averages over classes (multiclass macro, multilabel mean) run over the *evaluable* classes: those with at
least ``min_count`` positive and ``min_count`` negative known labels. Within an average an undefined PPV or
NPV (the class is never, or always, predicted) counts as 0, as scikit-learn's ``zero_division=0`` does;
the per-class value itself stays ``None`` with a note. The multiclass headline sensitivity (the mean
per-class recall) is the balanced accuracy.

Schema of :func:`evaluate_predictions` (JSON-serialisable; ``None`` where a value is undefined)::

    {
      "task": "binary" | "multiclass" | "multilabel",
      "label_names": [str, ...],        # binary: [positive_name]
      "negative_name": str | None,      # binary only, e.g. "normal"; None for the other tasks
      "n_images": int, "n_patients": int,
      "thresholds": [float, ...],       # as used; [] for multiclass
      "headline": {                     # each {"value": float | None, "ci": [lo, hi] | None}
        "auc": ..., "accuracy": ..., "sensitivity": ..., "specificity": ...,
        "ppv": ..., "npv": ..., "f1": ...
      },                                # binary: the plain metrics; multiclass: macro AUC, accuracy and
                                        # macro averages; multilabel: mean AUC and means of the per-finding
                                        # metrics at their thresholds
      "per_class": {
        name: {"auc": {"value", "ci"}, "sensitivity": {...}, "specificity": {...}, "ppv": {...},
               "npv": {...}, "f1": {...}, "n_pos": int, "n_neg": int,
               "threshold": float | None, "note": str | None}
      },                                # binary: one entry, for the positive class; multiclass: one-vs-rest
      "confusion_matrix":               # rows = truth, columns = prediction
        binary:     {"labels": [negative_name, positive_name], "matrix": [[tn, fp], [fn, tp]]}
        multiclass: {"labels": label_names, "matrix": C x C}
        multilabel: {"labels": label_names, "per_class": {name: [[tn, fp], [fn, tp]]}},
      "bootstrap": {"n": int, "unit": "patient" | "image", "seed": int, "confidence": 0.95,
                    "n_used": {"headline": {metric: int}, "per_class": {name: {metric: int}}}}
    }
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from trainer.task import Task

logger = logging.getLogger(__name__)

CLASS_METRICS = ("auc", "sensitivity", "specificity", "ppv", "npv", "f1")
HEADLINE_METRICS = ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1")
# Below this many positives a class is still evaluated, but its note warns that the CI is wide.
FEW_POSITIVES = 10
# Resamples x images per bootstrap chunk: bounds each float64 work array at ~32 MB.
_MAX_CHUNK_CELLS = 4_000_000
# float32 softmax/sigmoid outputs can overshoot [0, 1] by a rounding error.
_PROB_TOLERANCE = 1e-5


def prepare_arrays(task: Task, targets: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate inputs and bring them to the internal shapes (see `Task.prediction_arrays`)."""
    y, p = task.prediction_arrays(targets, probs)
    if len(y) == 0:
        raise ValueError("no predictions to evaluate")
    if not np.isfinite(p).all():
        raise ValueError("probs contain NaN or infinity; check the model outputs")
    if p.min() < -_PROB_TOLERANCE or p.max() > 1 + _PROB_TOLERANCE:
        raise ValueError(
            "probs must be probabilities in [0, 1]; apply sigmoid or softmax to the logits first"
        )
    return y, np.clip(p, 0.0, 1.0)


def one_vs_rest(task: Task | str, targets: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate predictions and return them as one column per class (what ROC plots need).

    Args:
        task: a Task or its name.
        targets: targets in the task's shape.
        probs: probabilities in the task's shape.

    Returns:
        Targets (N, C) float 0/1 with NaN = unknown (multiclass indices become one-hot columns; binary has
        C = 1) and probabilities (N, C).
    """
    task = Task.parse(task)
    y, p = prepare_arrays(task, targets, probs)
    return task.indicators(y, p.shape[1]), p


def choose_thresholds(
    task: Task | str,
    targets: Any,
    probs: Any,
    method: str = "youden",
    target_sensitivity: float = 0.90,
) -> list[float]:
    """Pick decision thresholds on validation data.

    Args:
        task: a Task or its name.
        targets: validation targets in the task's shape (NaN = unknown for multilabel).
        probs: validation probabilities in the task's shape.
        method: "youden" maximises sensitivity + specificity - 1 over the ROC thresholds; "sensitivity"
            takes the highest threshold whose sensitivity is at least ``target_sensitivity``.
        target_sensitivity: the sensitivity the "sensitivity" method must reach, in (0, 1].

    Returns:
        One threshold for binary, one per finding for multilabel, and ``[]`` for multiclass (decisions
        are the argmax). A column whose known labels hold only one class gets 0.5, with a logged warning.
    """
    if method not in ("youden", "sensitivity"):
        raise ValueError(f"unknown threshold method {method!r}; valid: youden, sensitivity")
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"target_sensitivity must be in (0, 1]; got {target_sensitivity}")
    task = Task.parse(task)
    y, p = prepare_arrays(task, targets, probs)
    if task.exclusive:
        return []
    return [_threshold(y[:, c], p[:, c], method, target_sensitivity, c) for c in range(p.shape[1])]


def _threshold(y: np.ndarray, p: np.ndarray, method: str, target_sensitivity: float, column: int) -> float:
    known = ~np.isnan(y)
    y, p = y[known], p[known]
    if y.size == 0 or y.min() == y.max():
        logger.warning(
            "column %d: the validation labels hold only one class (%d known); threshold falls back to 0.5",
            column,
            y.size,
        )
        return 0.5
    from sklearn.metrics import roc_curve  # here: the demo imports this module, and sklearn costs ~1 s

    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    # The first ROC point (threshold +inf) predicts nothing positive: never a usable operating point.
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
    if method == "youden":
        best = int(np.argmax(tpr - fpr))
    else:
        # tpr rises as the threshold falls, and the last point has tpr = 1: the first hit is the highest.
        best = int(np.argmax(tpr >= target_sensitivity - 1e-12))
    return float(thresholds[best])


def _rates(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> dict[str, np.ndarray]:
    """Threshold metrics from (weighted) confusion counts; NaN where a denominator is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "accuracy": (tp + tn) / (tp + fp + fn + tn),
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "ppv": tp / (tp + fp),
            "npv": tn / (tn + fn),
            "f1": 2 * tp / (2 * tp + fp + fn),
        }


def _headline(task: Task, per: dict[str, np.ndarray], evaluable: np.ndarray) -> dict[str, np.ndarray]:
    """Headline metrics (B,) from per-class metrics (B, C); NaN where a needed class value is undefined."""
    if task.single_logit:
        return {name: per[name][:, 0] for name in HEADLINE_METRICS}
    head = {}
    for name in HEADLINE_METRICS:
        if name == "accuracy" and task.exclusive:
            head[name] = per["overall_accuracy"]
            continue
        values = per[name][:, evaluable]
        if name in ("ppv", "npv"):
            values = np.nan_to_num(values, nan=0.0)
        head[name] = values.mean(axis=1) if evaluable.any() else np.full(len(values), np.nan)
    return head


class _RankAUC:
    """ROC AUC of one column for many resamples at once: the Mann-Whitney statistic, ties counted one half.

    A resample only changes how often each image counts (its patient's draw count), never the order of the
    scores, so the sort and each positive's place among the negatives are computed once.
    """

    def __init__(self, groups: np.ndarray, positive: np.ndarray, scores: np.ndarray) -> None:
        neg_scores = scores[~positive]
        order = np.argsort(neg_scores, kind="stable")
        sorted_neg = neg_scores[order]
        self.pos_groups = groups[positive]
        self.neg_groups = groups[~positive][order]
        self.below = np.searchsorted(sorted_neg, scores[positive], side="left")
        self.not_above = np.searchsorted(sorted_neg, scores[positive], side="right")

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        """AUC (B,) for patient draw counts (B, P); NaN where a resample lacks positives or negatives."""
        w_pos = counts[:, self.pos_groups]
        cum_neg = np.zeros((len(counts), len(self.neg_groups) + 1))
        np.cumsum(counts[:, self.neg_groups], axis=1, out=cum_neg[:, 1:])
        # Negative weight below a positive counts fully and tied weight half: (C[below] + C[not_above]) / 2.
        wins = (w_pos * (cum_neg[:, self.below] + cum_neg[:, self.not_above])).sum(axis=1) / 2
        pairs = w_pos.sum(axis=1) * cum_neg[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(pairs > 0, wins / pairs, np.nan)


class Evaluator:
    """Every metric of one set of predictions, for many resamples at once.

    A resample is a row of patient draw counts; an image weighs as much as its patient's count. Confusion
    counts are then one matrix product with per-patient cell totals, and AUCs come from :class:`_RankAUC`.
    """

    def __init__(
        self,
        task: Task,
        y: np.ndarray,
        p: np.ndarray,
        thresholds: np.ndarray,
        groups: np.ndarray,
        n_patients: int,
        evaluable: np.ndarray,
    ) -> None:
        self.task, self.evaluable, self.n_columns = task, evaluable, p.shape[1]
        if task.exclusive:
            n_cells = self.n_columns**2
            cells = y * self.n_columns + p.argmax(axis=1)
            self.cells = np.bincount(groups * n_cells + cells, minlength=n_patients * n_cells)
            self.cells = self.cells.reshape(n_patients, n_cells).astype(float)
            self.aucs = [_RankAUC(groups, y == c, p[:, c]) for c in range(self.n_columns)]
        else:
            known = ~np.isnan(y)
            pos = known & (y == 1)
            neg = known & (y == 0)
            pred = p >= thresholds
            indicators = np.concatenate([neg & ~pred, neg & pred, pos & ~pred, pos & pred], axis=1)
            self.cells = np.zeros((n_patients, indicators.shape[1]))
            np.add.at(self.cells, groups, indicators)
            self.aucs = [
                _RankAUC(groups[known[:, c]], pos[known[:, c], c], p[known[:, c], c])
                for c in range(self.n_columns)
            ]

    def __call__(self, counts: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Per-class metrics (B, C) plus "counts", and headline metrics (B,), for draw counts (B, P)."""
        table = counts @ self.cells
        n = len(counts)
        if self.task.exclusive:
            confusion = table.reshape(n, self.n_columns, self.n_columns)
            tp = np.diagonal(confusion, axis1=1, axis2=2)
            fp = confusion.sum(axis=1) - tp
            fn = confusion.sum(axis=2) - tp
            total = confusion.sum(axis=(1, 2))
            per = _rates(tp, fp, fn, total[:, None] - tp - fp - fn)
            per["overall_accuracy"] = tp.sum(axis=1) / total
            per["counts"] = confusion
        else:
            tn, fp, fn, tp = table.reshape(n, 4, self.n_columns).transpose(1, 0, 2)
            per = _rates(tp, fp, fn, tn)
            per["counts"] = np.stack([tn, fp, fn, tp], axis=2).reshape(n, self.n_columns, 2, 2)
        per["auc"] = np.stack([auc(counts) for auc in self.aucs], axis=1)
        per["auc"][:, ~self.evaluable] = np.nan
        return per, _headline(self.task, per, self.evaluable)


def resample_counts(
    n_patients: int, n_images: int, n_resamples: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Yield chunks of patient draw counts (b, P), each row one resample of P patients with replacement."""
    chunk = max(1, _MAX_CHUNK_CELLS // max(n_images, n_patients))
    done = 0
    while done < n_resamples:
        size = min(chunk, n_resamples - done)
        # Drawing P patients with replacement == a uniform multinomial count per patient.
        yield rng.multinomial(n_patients, np.full(n_patients, 1.0 / n_patients), size=size).astype(float)
        done += size


def _value(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def bootstrap_interval(point: float, samples: np.ndarray, confidence: float) -> tuple[dict[str, Any], int]:
    """{"value", "ci"} and the number of resamples in which the metric was defined."""
    valid = samples[np.isfinite(samples)]
    value = _value(point)
    if value is None or valid.size == 0:
        return {"value": value, "ci": None}, int(valid.size)
    tail = 50.0 * (1.0 - confidence)
    lo, hi = np.percentile(valid, [tail, 100.0 - tail])
    return {"value": value, "ci": [float(lo), float(hi)]}, int(valid.size)


def _class_note(
    task: Task, n_pos: int, n_neg: int, n_unknown: int, min_count: int, ppv: float, npv: float
) -> str | None:
    """Why a class's numbers are missing or fragile, in words for the model card; None when all is well."""
    n_known = n_pos + n_neg
    if n_known == 0:
        return f"no known labels ({n_unknown} unknown): not evaluated; excluded from averages"
    notes = []
    if n_pos == 0:
        notes.append(
            f"no positive labels among {n_known}: AUC and sensitivity undefined; excluded from averages"
        )
    elif n_neg == 0:
        notes.append(
            f"no negative labels among {n_known}: AUC and specificity undefined; excluded from averages"
        )
    elif min(n_pos, n_neg) < min_count:
        notes.append(
            f"only {n_pos} positive and {n_neg} negative labels (fewer than min_count={min_count}): "
            "AUC not reported; excluded from averages"
        )
    elif n_pos < FEW_POSITIVES:
        notes.append(f"only {n_pos} positive labels: wide confidence intervals")
    decision = "the argmax prediction" if task.exclusive else "predicted positive"
    if not np.isfinite(ppv):
        notes.append(f"never {decision}: PPV undefined")
    if not np.isfinite(npv):
        notes.append(f"always {decision}: NPV undefined")
    if n_unknown:
        notes.append(f"{n_unknown} unknown labels masked")
    return "; ".join(notes) or None


def evaluate_predictions(
    task: Task | str,
    label_names: Sequence[str],
    targets: Any,
    probs: Any,
    patient_ids: Sequence[Any] | None,
    thresholds: Sequence[float] | None,
    *,
    negative_name: str | None = "normal",
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    min_count: int = 1,
) -> dict[str, Any]:
    """Evaluate predictions: point metrics, patient-level bootstrap CIs and confusion matrices.

    Args:
        task: a Task or its name.
        label_names: the positive class name for binary, else one name per class / finding.
        targets: targets in the task's shape (see the module docstring).
        probs: probabilities in the task's shape.
        patient_ids: one id per image; images of one patient are resampled together. ``None`` treats
            every image as its own patient (the bootstrap unit is then reported as "image").
        thresholds: one for binary, one per finding for multilabel, ``[]`` or ``None`` for multiclass;
            ``None`` for binary/multilabel means 0.5 everywhere.
        negative_name: the name of the negative class (binary only), used in the confusion matrix; None
            names it "not <positive>", as `Task.output_names` does.
        n_bootstrap: number of resamples; 0 skips the intervals (all ``ci`` are ``None``).
        seed: seed of the resampling generator.
        confidence: coverage of the percentile intervals.
        min_count: a class needs at least this many positive and negative labels to get an AUC and to
            enter the averages.

    Returns:
        A JSON-serialisable dict in the schema of the module docstring.
    """
    task = Task.parse(task)
    y, p = prepare_arrays(task, targets, probs)
    names = [str(name) for name in label_names]
    n_images, n_columns = p.shape
    if len(names) != n_columns:
        expected = "one name, the positive class," if task.single_logit else f"{n_columns} names"
        raise ValueError(f"{task} predictions need {expected} in label_names; got {len(names)}: {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"label_names must be unique; got {names}")
    if n_bootstrap < 0 or min_count < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(
            f"need n_bootstrap >= 0, min_count >= 1 and 0 < confidence < 1; "
            f"got {n_bootstrap}, {min_count}, {confidence}"
        )

    if task.exclusive:
        if thresholds:
            raise ValueError("multiclass decisions are the argmax: pass thresholds=[] or None")
        used_thresholds: list[float] = []
    elif thresholds is None:
        used_thresholds = [0.5] * n_columns
    else:
        used_thresholds = [float(t) for t in thresholds]
        if len(used_thresholds) != n_columns or not np.isfinite(used_thresholds).all():
            raise ValueError(f"{task} needs {n_columns} finite thresholds; got {list(thresholds)}")
    thr = np.asarray(used_thresholds, dtype=float)

    if patient_ids is None:
        groups, unit = np.arange(n_images), "image"
    else:
        ids = np.asarray([str(pid) for pid in patient_ids])
        if len(ids) != n_images:
            raise ValueError(f"{len(ids)} patient ids for {n_images} predictions")
        groups, unit = np.unique(ids, return_inverse=True)[1], "patient"
    n_patients = int(groups.max()) + 1

    if task.exclusive:
        n_pos = np.bincount(y, minlength=n_columns)
        n_neg = n_images - n_pos
        n_unknown = np.zeros(n_columns, dtype=int)
    else:
        n_pos = (y == 1).sum(axis=0)
        n_neg = (y == 0).sum(axis=0)
        n_unknown = np.isnan(y).sum(axis=0)
    evaluable = (n_pos >= min_count) & (n_neg >= min_count)

    evaluate = Evaluator(task, y, p, thr, groups, n_patients, evaluable)
    per, head = evaluate(np.ones((1, n_patients)))
    boot_per = {name: np.empty((0, n_columns)) for name in CLASS_METRICS}
    boot_head = {name: np.empty(0) for name in HEADLINE_METRICS}
    rng = np.random.default_rng(seed)
    for counts in resample_counts(n_patients, n_images, n_bootstrap, rng):
        chunk_per, chunk_head = evaluate(counts)
        boot_per = {name: np.concatenate([boot_per[name], chunk_per[name]]) for name in CLASS_METRICS}
        boot_head = {name: np.concatenate([boot_head[name], chunk_head[name]]) for name in HEADLINE_METRICS}

    headline: dict[str, Any] = {}
    used_head: dict[str, int] = {}
    for name in HEADLINE_METRICS:
        headline[name], used_head[name] = bootstrap_interval(
            float(head[name][0]), boot_head[name], confidence
        )

    per_class: dict[str, dict[str, Any]] = {}
    used_per: dict[str, dict[str, int]] = {}
    for c, label in enumerate(names):
        entry: dict[str, Any] = {}
        used: dict[str, int] = {}
        for name in CLASS_METRICS:
            entry[name], used[name] = bootstrap_interval(
                float(per[name][0, c]), boot_per[name][:, c], confidence
            )
        entry["n_pos"], entry["n_neg"] = int(n_pos[c]), int(n_neg[c])
        entry["threshold"] = used_thresholds[c] if used_thresholds else None
        entry["note"] = _class_note(
            task,
            int(n_pos[c]),
            int(n_neg[c]),
            int(n_unknown[c]),
            min_count,
            float(per["ppv"][0, c]),
            float(per["npv"][0, c]),
        )
        per_class[label], used_per[label] = entry, used

    matrices = per["counts"][0].round().astype(int).tolist()
    if task.single_logit:
        positive, negative = task.output_names(names, negative_name)
        confusion = {"labels": [negative, positive], "matrix": matrices[0]}
    elif task.exclusive:
        confusion = {"labels": names, "matrix": matrices}
    else:
        confusion = {"labels": names, "per_class": dict(zip(names, matrices, strict=True))}

    return {
        "task": task.value,
        "label_names": names,
        "negative_name": negative_name if task.single_logit else None,
        "n_images": int(n_images),
        "n_patients": n_patients,
        "thresholds": used_thresholds,
        "headline": headline,
        "per_class": per_class,
        "confusion_matrix": confusion,
        "bootstrap": {
            "n": int(n_bootstrap),
            "unit": unit,
            "seed": int(seed),
            "confidence": float(confidence),
            "n_used": {"headline": used_head, "per_class": used_per},
        },
    }
