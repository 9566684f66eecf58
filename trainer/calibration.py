"""Calibration by temperature (and offset), and how well a model's probabilities match how often it is right.

Temperature scaling (Guo et al. 2017) divides the logits by a temperature T fitted on labelled held-out data
(the validation split) by minimising the negative log-likelihood; T > 1 softens over-confident outputs.
Sigmoid outputs (binary, multi-label) also get an offset b, `z / T + b` (Platt scaling written with a
temperature): a loss that re-weights positives (`train.pos_weight`, as nih-findings is trained) shifts every
logit by about log(negatives / positives), which no temperature can undo; on nih-findings' test split the
offset takes the ECE from 0.20 to within its chance range, the temperature alone does not (0.20).
Softmax outputs (multi-class) get the temperature only, which keeps every argmax decision.

A binary or multi-class model gets one temperature; a multi-label model one temperature and one offset per
finding, each fitted on that finding's known labels only (NaN = unknown). Every map is increasing, so each
output's ranking (its AUC) is unchanged; thresholds must be chosen again on the calibrated probabilities.

A run stores probabilities, not logits, and with test-time augmentation they are averages over passes. The
calibration therefore acts on the logits *recovered from the final probabilities*: logit(p) for sigmoid
outputs, log(p) for softmax ones (softmax ignores the constant that log drops). For a single pass that is
exactly `logits / T + b`; with TTA it is applied to the averaged output. `Calibration.apply`
(probabilities) and `Calibration.scale_logits` (logits) are the two entry points; fit on the same kind of
output the inference path produces (the embedded models: single-pass logits, as `predict` and the demo run).

Metrics (`calibration_metrics`):
- ECE, 15 equal-width bins: binary and multi-class compare the top class's probability (binary: max(p, 1-p))
  with whether it is correct; multi-label compares each finding's probability with its label, pooled over
  findings and images (known labels only). ECE = sum over bins of (share of items) * |accuracy - confidence|.
- Brier score (scikit-learn's `brier_score_loss`): binary and pooled multi-label in [0, 1]; multi-class the
  original sum over classes, in [0, 2].
- NLL (scikit-learn's `log_loss`), pooled the same way.

On a test split of a few hundred images even a perfectly calibrated model shows an ECE of a few hundredths
by chance; `ece_chance_range` gives the range by drawing the outcomes from the calibrated probabilities.

Stored in a model folder's config.json, in the `chexlab` block (see `Calibration.to_dict`)::

    "calibration": {
      "method": "temperature",             # "temperature" (multi-class) or "temperature+offset"
      "temperatures": [1.83],              # binary/multi-class: 1 value; multi-label: one per finding
      "offsets": [-0.41],                  # sigmoid outputs: like the temperatures; multi-class: []
      "applies_to": "logits recovered from the probabilities",
      "fitted_on": "validation",
      "n_images": 112,
      "metrics": {"val": {"before": {"ece": .., "brier": .., "nll": .., "n": ..}, "after": {..},
                          "ece_chance_95": ..}, "test": {..}}
    }

A folder without the block loads as uncalibrated (temperature 1) with a note (`read_calibration`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from trainer.errors import ChexlabError
from trainer.task import Task

log = logging.getLogger(__name__)

ECE_BINS = 15
TEMPERATURE_BOUNDS = (0.05, 20.0)
"""The search range of T: beyond it a model's outputs carry (almost) no information or are hard decisions."""
OFFSET_BOUND = 20.0
CONFIG_KEY = "calibration"
APPLIES_TO = "logits recovered from the probabilities"
TEMPERATURE = "temperature"
TEMPERATURE_OFFSET = "temperature+offset"
NO_CALIBRATION_NOTE = (
    "this model carries no calibration (temperature 1): its probabilities are the raw outputs and may be "
    "over-confident; `python -m trainer calibrate` fits one on labelled data"
)
# Probabilities are clipped to [EPS, 1 - EPS] before taking logits: float32 sigmoid outputs reach 1.0 exactly.
_EPS = 1e-7


class CalibrationError(ChexlabError, ValueError):
    """Probabilities, labels or a stored calibration that cannot be used; the message says why."""


# ------------------------------------------------------------------------------------------ the maps


def logits_from_probabilities(probs: np.ndarray, task: Task | str) -> np.ndarray:
    """Logits (N, K) whose probabilities are `probs`: logit(p) (sigmoid tasks) or log(p) (softmax).

    Args:
        probs: binary (N,) or (N, 1) P(positive); otherwise (N, C).
        task: the model's task.
    """
    task = Task.parse(task)
    p = np.clip(_as_2d(probs, task), _EPS, 1.0 - _EPS)
    return np.log(p) if task.exclusive else np.log(p) - np.log1p(-p)


def scale_logits(
    logits: np.ndarray | torch.Tensor, temperatures: Sequence[float], offsets: Sequence[float] = ()
) -> Any:
    """`logits / T + b` along the last axis (one value for all outputs or one per output); numpy or torch."""
    t = np.asarray(temperatures, dtype=np.float64)
    b = np.asarray(offsets, dtype=np.float64) if len(offsets) else np.zeros(1)
    if isinstance(logits, torch.Tensor):
        as_tensor = lambda v: torch.as_tensor(v, dtype=logits.dtype, device=logits.device)  # noqa: E731
        return logits / as_tensor(t) + as_tensor(b)
    return np.asarray(logits, dtype=np.float64) / t + b


def probabilities_from_logits(logits: np.ndarray, task: Task | str) -> np.ndarray:
    """Probabilities from logits (N, K), shaped as the task's outputs: binary (N,), otherwise (N, C)."""
    task = Task.parse(task)
    z = np.asarray(logits, dtype=np.float64)
    # numpy, not scipy.special: serving a prediction must not import scipy (start-up time and memory)
    if task.exclusive:
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    p = np.exp(-np.logaddexp(0.0, -z))  # the logistic function, stable for both signs
    return p[:, 0] if task.single_logit else p


# ------------------------------------------------------------------------------------------ fitting


def fit_scaling(
    logits: np.ndarray, targets: np.ndarray, task: Task | str, *, offsets: bool | None = None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The temperatures (and offsets) that minimise the NLL of `logits / T + b` on `targets`.

    Deterministic: a bounded Brent search on log T (temperature only), or L-BFGS on (1/T, b) (with offsets);
    the NLL is convex in (1/T, b), so both find its one minimum.

    Args:
        logits: binary (N,) or (N, 1); otherwise (N, C).
        targets: binary (N,) 0/1; multi-class (N,) class indices; multi-label (N, C) 0/1 with NaN = unknown.
            Binary NaN targets are ignored too.
        task: the model's task.
        offsets: fit an offset per sigmoid output; None: for binary and multi-label models, not multi-class.

    Returns:
        (temperatures, offsets): one temperature (binary, multi-class) or one per finding (multi-label);
        offsets alike, or () without them. An output whose known labels hold a single outcome keeps T = 1,
        b = 0 (nothing to fit), with a warning in the log; so does one whose labels the model separates
        perfectly (typically a small validation split: the NLL then keeps falling as T -> 0, and such a
        temperature would make every later output falsely certain).

    Raises:
        CalibrationError: mismatched shapes, no labelled image, or offsets asked for a multi-class model.
    """
    task = Task.parse(task)
    with_offsets = not task.exclusive if offsets is None else offsets
    z = _as_2d(logits, task)
    if task.exclusive:
        if with_offsets:
            raise CalibrationError("multi-class calibration is a temperature only: offsets would move argmax")
        y = np.asarray(targets).reshape(-1)
        _check_rows(z, y)
        if not np.isfinite(y).all() or ((y < 0) | (y >= z.shape[1]) | (y != np.round(y))).any():
            raise CalibrationError(f"multi-class targets must be class indices 0-{z.shape[1] - 1}")
        if (z.argmax(axis=1) == y).all():
            log.warning(_SEPARATED, "the classes")
            return (1.0,), ()
        return (_fit_temperature(lambda t: _softmax_nll(z, y.astype(int), t), "the classes"),), ()
    y = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    _check_rows(z, y)
    if y.shape[1] != z.shape[1]:
        raise CalibrationError(f"{z.shape[1]} outputs but {y.shape[1]} target columns")
    temperatures, biases = [], []
    for k in range(z.shape[1]):
        known = ~np.isnan(y[:, k])
        zk, yk = z[known, k], y[known, k]
        if zk.size == 0 or yk.min() == yk.max():
            log.warning("output %d has %d known labels, all of one outcome: kept uncalibrated", k, zk.size)
            temperatures.append(1.0)
            biases.append(0.0)
        elif zk[yk == 0].max() < zk[yk == 1].min():
            log.warning(_SEPARATED, f"output {k}")
            temperatures.append(1.0)
            biases.append(0.0)
        elif with_offsets:
            temperature, bias = _fit_affine(zk, yk, f"output {k}")
            temperatures.append(temperature)
            biases.append(bias)
        else:
            nll = lambda t, zk=zk, yk=yk: _sigmoid_nll(zk, yk, t)  # noqa: E731
            temperatures.append(_fit_temperature(nll, f"output {k}"))
    return tuple(temperatures), tuple(biases)


_SEPARATED = (
    "the model separates the labels of %s perfectly: the fit would sharpen without limit, kept uncalibrated"
)


def _fit_temperature(nll: Any, what: str) -> float:
    from scipy.optimize import minimize_scalar  # fitting only: serving never imports scipy

    low, high = (math.log(b) for b in TEMPERATURE_BOUNDS)
    result = minimize_scalar(
        lambda u: nll(math.exp(u)), bounds=(low, high), method="bounded", options={"xatol": 1e-7}
    )
    temperature = math.exp(float(result.x))
    if min(abs(result.x - low), abs(result.x - high)) < 1e-3:
        log.warning("the temperature of %s reached the search bound (%.3g)", what, temperature)
    return temperature


def _fit_affine(z: np.ndarray, y: np.ndarray, what: str) -> tuple[float, float]:
    """(T, b) minimising the mean BCE of sigmoid(z / T + b): a logistic regression on the one feature z."""
    from scipy.optimize import minimize
    from scipy.special import expit

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        s = params[0] * z + params[1]
        residual = expit(s) - y
        gradient = np.array([np.mean(residual * z), np.mean(residual)])
        return float(np.mean(np.logaddexp(0.0, s) - y * s)), gradient

    low, high = TEMPERATURE_BOUNDS
    result = minimize(
        loss,
        np.array([1.0, 0.0]),
        jac=True,
        method="L-BFGS-B",
        bounds=[(1 / high, 1 / low), (-OFFSET_BOUND, OFFSET_BOUND)],
        options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 500},
    )
    inverse, bias = (float(v) for v in result.x)
    if inverse in (1 / high, 1 / low) or abs(bias) == OFFSET_BOUND:
        log.warning("the calibration of %s reached a search bound (T %.3g, b %.3g)", what, 1 / inverse, bias)
    return 1.0 / inverse, bias


def _sigmoid_nll(z: np.ndarray, y: np.ndarray, t: float) -> float:
    s = z / t
    return float(np.mean(np.logaddexp(0.0, s) - y * s))


def _softmax_nll(z: np.ndarray, y: np.ndarray, t: float) -> float:
    from scipy.special import logsumexp

    s = z / t
    return float(np.mean(logsumexp(s, axis=1) - s[np.arange(len(y)), y]))


# ------------------------------------------------------------------------------------------ the record


@dataclass(frozen=True)
class Calibration:
    """A model's calibration and where it came from (the `calibration` entry of config.json).

    Attributes:
        temperatures: one (binary, multi-class) or one per finding (multi-label); all 1 = uncalibrated.
        offsets: the sigmoid outputs' offsets b (as many as temperatures), or () for none.
        method: "temperature", "temperature+offset", or "none" for a model without calibration.
        fitted_on: the data it was fitted on (e.g. "validation"), None when uncalibrated.
        n_images: images used for the fit.
        metrics: before/after metrics per split (see `compare_calibration`), e.g. {"val": ..., "test": ...}.
        note: why the model is uncalibrated, for the user (not stored).
    """

    temperatures: tuple[float, ...]
    offsets: tuple[float, ...] = ()
    method: str = TEMPERATURE
    fitted_on: str | None = "validation"
    n_images: int = 0
    metrics: Mapping[str, Any] = field(default_factory=dict)
    note: str | None = None

    @classmethod
    def identity(cls, num_temperatures: int, note: str | None = NO_CALIBRATION_NOTE) -> Calibration:
        """No calibration: every temperature 1."""
        return cls((1.0,) * num_temperatures, method="none", fitted_on=None, note=note)

    @property
    def calibrated(self) -> bool:
        return self.method != "none"

    def apply(self, probs: np.ndarray, task: Task | str) -> np.ndarray:
        """Calibrated probabilities, shaped as `probs` ((N,) or (N, C)); unchanged when uncalibrated."""
        probs = np.asarray(probs, dtype=np.float64)
        if all(t == 1.0 for t in self.temperatures) and not any(self.offsets):
            return probs
        logits = self.scale_logits(logits_from_probabilities(probs, task))
        return probabilities_from_logits(logits, task).reshape(probs.shape)

    def scale_logits(self, logits: np.ndarray | torch.Tensor) -> Any:
        """Calibrated logits, `logits / T + b` (numpy or torch)."""
        return scale_logits(logits, self.temperatures, self.offsets)

    def with_metrics(self, metrics: Mapping[str, Any]) -> Calibration:
        """A copy carrying before/after metrics per split."""
        return replace(self, metrics=dict(metrics))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored as `config.json["chexlab"]["calibration"]`."""
        return {
            "method": self.method,
            "temperatures": [float(t) for t in self.temperatures],
            "offsets": [float(b) for b in self.offsets],
            "applies_to": APPLIES_TO,
            "fitted_on": self.fitted_on,
            "n_images": int(self.n_images),
            "metrics": dict(self.metrics),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], task: Task | str, num_outputs: int) -> Calibration:
        """Read the JSON form back, checked against the model's task and outputs.

        Raises:
            CalibrationError: an unknown method, a wrong number of temperatures or offsets, or values that are
                not finite numbers (temperatures: positive).
        """
        task = Task.parse(task)
        method = values.get("method", TEMPERATURE)
        if method not in (TEMPERATURE, TEMPERATURE_OFFSET, "none"):
            valid = ", ".join((TEMPERATURE, TEMPERATURE_OFFSET, "none"))
            raise CalibrationError(f"unknown calibration method {method!r}; valid: {valid}")
        wanted = num_temperatures(task, num_outputs)
        temperatures = _numbers(values.get("temperatures"), wanted, "temperature")
        raw_offsets = values.get("offsets") or []
        offsets = _numbers(raw_offsets, wanted, "offset") if raw_offsets else ()
        if task.exclusive and offsets:
            raise CalibrationError("a multi-class model's calibration has no offsets; recalibrate it")
        if not all(t > 0 for t in temperatures):
            raise CalibrationError(f"temperatures must be positive; got {list(temperatures)}")
        return cls(
            temperatures,
            offsets,
            method=method,
            fitted_on=values.get("fitted_on"),
            n_images=int(values.get("n_images") or 0),
            metrics=dict(values.get("metrics") or {}),
        )


def _numbers(raw: Any, wanted: int, what: str) -> tuple[float, ...]:
    if not isinstance(raw, list) or len(raw) != wanted:
        raise CalibrationError(
            f"this model stores {wanted} {what}(s) (one per finding of a multi-label model, else one); "
            f"config.json has {raw!r}: recalibrate the model"
        )
    try:
        values = tuple(float(v) for v in raw)
    except (TypeError, ValueError):
        raise CalibrationError(f"{what}s must be numbers; config.json has {raw!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise CalibrationError(f"{what}s must be finite numbers; got {list(values)}")
    return values


def num_temperatures(task: Task | str, num_outputs: int) -> int:
    """One temperature for binary and multi-class models, one per finding for multi-label ones."""
    return num_outputs if Task.parse(task) is Task.MULTILABEL else 1


def fit_calibration(
    logits: np.ndarray,
    targets: np.ndarray,
    task: Task | str,
    *,
    offsets: bool | None = None,
    fitted_on: str = "validation",
) -> Calibration:
    """Fit a calibration on held-out logits (see `fit_scaling` for the arguments)."""
    temperatures, biases = fit_scaling(logits, targets, task, offsets=offsets)
    method = TEMPERATURE_OFFSET if biases else TEMPERATURE
    return Calibration(temperatures, biases, method=method, fitted_on=fitted_on, n_images=len(logits))


def calibrate(
    probs: np.ndarray,
    targets: np.ndarray,
    task: Task | str,
    *,
    offsets: bool | None = None,
    fitted_on: str = "validation",
) -> Calibration:
    """Fit a calibration on held-out probabilities (e.g. a run's validation predictions, TTA or not)."""
    logits = logits_from_probabilities(probs, task)
    return fit_calibration(logits, targets, task, offsets=offsets, fitted_on=fitted_on)


def read_calibration(chexlab: Mapping[str, Any], task: Task | str, num_outputs: int) -> Calibration:
    """The calibration a config.json's `chexlab` block stores; temperature 1 with a note when it has none.

    Raises:
        CalibrationError: the stored entry is malformed (see `Calibration.from_dict`).
    """
    stored = chexlab.get(CONFIG_KEY)
    if stored is None:
        return Calibration.identity(num_temperatures(task, num_outputs))
    if not isinstance(stored, Mapping):
        raise CalibrationError(f"config.json's chexlab.{CONFIG_KEY} must be an object, not {stored!r}")
    return Calibration.from_dict(stored, task, num_outputs)


# ------------------------------------------------------------------------------------------ metrics


@dataclass(frozen=True)
class Reliability:
    """Equal-width confidence bins: per bin the mean confidence, the share correct and the item count.

    Bins without items have confidence and accuracy NaN.
    """

    edges: np.ndarray  # (B + 1,)
    confidence: np.ndarray  # (B,)
    accuracy: np.ndarray  # (B,)
    counts: np.ndarray  # (B,) int

    @property
    def ece(self) -> float:
        """Expected calibration error: the count-weighted mean |accuracy - confidence|."""
        used = self.counts > 0
        if not used.any():
            return float("nan")
        gaps = np.abs(self.accuracy[used] - self.confidence[used])
        return float(np.sum(self.counts[used] * gaps) / self.counts.sum())


def confidence_and_outcome(
    probs: np.ndarray, targets: np.ndarray, task: Task | str
) -> tuple[np.ndarray, np.ndarray]:
    """The (confidence, outcome) pairs calibration is measured on, unknown labels left out.

    Binary: max(p, 1 - p) and whether the class at 0.5 is right; multi-class: the top probability and whether
    the argmax is right; multi-label: every known (image, finding) probability and its 0/1 label.
    """
    task = Task.parse(task)
    p = _as_2d(probs, task)
    if task.exclusive:
        y = np.asarray(targets).reshape(-1)
        _check_rows(p, y)
        return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)
    y = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    _check_rows(p, y)
    known = ~np.isnan(y)
    if task.single_logit:
        q, t = p[known[:, 0], 0], y[known[:, 0], 0]
        return np.maximum(q, 1.0 - q), ((q >= 0.5) == (t == 1)).astype(np.float64)
    return p[known], y[known]


def reliability_bins(confidence: np.ndarray, outcome: np.ndarray, n_bins: int = ECE_BINS) -> Reliability:
    """Bin (confidence, outcome) pairs into `n_bins` equal-width bins [k/B, (k+1)/B) (the last closed)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = _bin_index(confidence, n_bins)
    counts = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(index, weights=confidence, minlength=n_bins) / counts
        acc = np.bincount(index, weights=outcome, minlength=n_bins) / counts
    return Reliability(edges, conf, acc, counts)


def expected_calibration_error(
    probs: np.ndarray, targets: np.ndarray, task: Task | str, n_bins: int = ECE_BINS
) -> float:
    """ECE with `n_bins` equal-width bins (see the module docstring for what is compared per task)."""
    return reliability_bins(*confidence_and_outcome(probs, targets, task), n_bins=n_bins).ece


def calibration_metrics(
    probs: np.ndarray, targets: np.ndarray, task: Task | str, n_bins: int = ECE_BINS
) -> dict[str, float]:
    """ECE, Brier score and NLL of `probs` on `targets`, and `n`, the number of scored items."""
    from sklearn.metrics import brier_score_loss, log_loss

    task = Task.parse(task)
    confidence, outcome = confidence_and_outcome(probs, targets, task)
    if task.exclusive:
        p = _as_2d(probs, task)
        p = p / p.sum(axis=1, keepdims=True)  # float32 softmax outputs miss 1 by ~1e-7; scikit-learn warns
        y = np.asarray(targets).reshape(-1).astype(int)
        labels = list(range(p.shape[1]))
        brier = brier_score_loss(y, p, labels=labels)
        nll = log_loss(y, p, labels=labels)
    else:
        p2, y2 = _as_2d(probs, task), np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
        known = ~np.isnan(y2)
        p, y = p2[known], y2[known].astype(int)
        brier = brier_score_loss(y, p, pos_label=1)
        nll = log_loss(y, np.clip(p, _EPS, 1.0 - _EPS), labels=[0, 1])
    return {
        "ece": reliability_bins(confidence, outcome, n_bins).ece,
        "brier": float(brier),
        "nll": float(nll),
        "n": int(confidence.size),
    }


def ece_chance_range(
    probs: np.ndarray,
    task: Task | str,
    *,
    targets: np.ndarray | None = None,
    quantile: float = 0.95,
    draws: int = 2000,
    seed: int = 0,
    n_bins: int = ECE_BINS,
) -> float:
    """The ECE a perfectly calibrated model would stay under, with probability `quantile`, on these items.

    Outcomes are drawn from the probabilities themselves (each top class is right with its confidence; each
    finding present with its probability), `draws` times, seeded; the bins are fixed by the confidences.

    Args:
        probs: the (calibrated) probabilities.
        task: the model's task.
        targets: only used to leave out the same unknown (NaN) labels as the real ECE does.
        quantile: 0.95 gives the 95th percentile.
        draws: simulated label sets.
        seed: the random seed.
        n_bins: ECE bins.
    """
    task = Task.parse(task)
    p = _as_2d(probs, task)
    if targets is None:
        targets = np.zeros(len(p)) if task.exclusive else np.zeros(p.shape)
    confidence, _ = confidence_and_outcome(probs, targets, task)
    if confidence.size == 0:
        return float("nan")
    index = _bin_index(confidence, n_bins)
    counts = np.bincount(index, minlength=n_bins)
    mean_confidence = np.bincount(index, weights=confidence, minlength=n_bins)
    rng = np.random.default_rng(seed)
    one_hot = np.zeros((confidence.size, n_bins))
    one_hot[np.arange(confidence.size), index] = 1.0
    eces = np.empty(draws)
    for start in range(0, draws, 250):  # chunks keep the (draws, items) matrix small
        outcomes = rng.random((min(250, draws - start), confidence.size)) < confidence
        correct = outcomes @ one_hot  # (chunk, bins): outcomes per bin
        eces[start : start + len(correct)] = np.abs(correct - mean_confidence).sum(axis=1) / counts.sum()
    return float(np.quantile(eces, quantile))


def compare_calibration(
    before: np.ndarray,
    after: np.ndarray,
    targets: np.ndarray,
    task: Task | str,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics before and after calibration on one split, and the calibrated ECE's chance range.

    Returns:
        {"before": {...}, "after": {...}, "ece_chance_95": float}, the form stored per split in
        `Calibration.metrics`.
    """
    return {
        "before": calibration_metrics(before, targets, task),
        "after": calibration_metrics(after, targets, task),
        "ece_chance_95": ece_chance_range(after, task, targets=targets, seed=seed),
    }


# ------------------------------------------------------------------------------------------ helpers


def _as_2d(values: np.ndarray, task: Task) -> np.ndarray:
    """(N, K) float64: a binary model's (N,) outputs become (N, 1)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1 and task.single_logit:
        array = array[:, None]
    if array.ndim != 2 or (task.single_logit and array.shape[1] != 1):
        want = "(N,) or (N, 1)" if task.single_logit else "(N, C)"
        raise CalibrationError(f"a {task.value} model's outputs must be {want}; got shape {array.shape}")
    if not np.isfinite(array).all():
        raise CalibrationError("the model outputs contain NaN or infinite values")
    return array


def _check_rows(values: np.ndarray, targets: np.ndarray) -> None:
    if len(values) != len(targets):
        raise CalibrationError(f"{len(values)} outputs but {len(targets)} targets")
    if len(values) == 0:
        raise CalibrationError("no images to calibrate on")


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    return np.minimum((confidence * n_bins).astype(int), n_bins - 1)
