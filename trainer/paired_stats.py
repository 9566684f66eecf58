"""Is the difference real? Paired comparisons of models (or preprocessing variants) on the same images.

Each model gets its AUC with a patient-level bootstrap CI, and each pair the paired bootstrap of the AUC
difference: every resample draws the same patients for both, so what the two have in common (hard images,
easy ones) cancels out. The resampling is `trainer.metrics`' own (patient draw counts, weighted AUCs), so the
numbers agree with `evaluate_predictions` on the same predictions and seed. Decisions are compared with
McNemar's test on the images where exactly one of the two is right (exact binomial below
`MCNEMAR_EXACT_BELOW` such images, else chi-square with continuity correction). `Pair.sentence` says it in
words a student understands.

Conventions (shapes, tasks, thresholds, NaN = unknown) are those of `trainer.metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

from trainer.metrics import Evaluator, bootstrap_interval, prepare_arrays, resample_counts
from trainer.task import Task

MCNEMAR_EXACT_BELOW = 25  # discordant images; below this the chi-square approximation is poor


@dataclass(frozen=True)
class ModelAUC:
    """One model's AUC (macro over classes / mean over findings) with its bootstrap CI."""

    name: str
    auc: float | None
    ci: tuple[float, float] | None
    n_used: int  # resamples in which the AUC was defined


@dataclass(frozen=True)
class McNemar:
    """McNemar's test on two models' right/wrong decisions for the same images."""

    only_a: int  # images A gets right and B wrong
    only_b: int  # images B gets right and A wrong
    both: int
    neither: int
    p_value: float
    method: str  # "exact binomial" or "chi-square with continuity correction"


@dataclass(frozen=True)
class Pair:
    """Model B against model A on the same images.

    Attributes:
        difference: AUC(B) - AUC(A); None where an AUC is undefined.
        ci: the paired bootstrap percentile interval of the difference.
        sign_flip_share: share of resamples in which the difference is 0 or has the other sign.
        chance_share: share of resamples, shifted so that the models are equally good, in which the
            difference is at least as large (either sign) as the one observed: the bootstrap p-value.
        n_used: resamples in which both AUCs were defined.
        mcnemar: the test on the decisions; None when no image has a known label for both.
        sentence: the result in plain words.
    """

    a: str
    b: str
    difference: float | None
    ci: tuple[float, float] | None
    sign_flip_share: float | None
    chance_share: float | None
    n_used: int
    mcnemar: McNemar | None
    sentence: str


@dataclass(frozen=True)
class Comparison:
    """Every model's AUC and every pair, on `n_images` images of `n_patients` patients."""

    models: list[ModelAUC]
    pairs: list[Pair]
    n_images: int
    n_patients: int
    unit: str  # "patient" or "image": what the bootstrap resamples
    n_bootstrap: int
    seed: int
    confidence: float


def compare_predictions(
    task: Task | str,
    label_names: Sequence[str],
    targets: Any,
    probs: Mapping[str, Any],
    patient_ids: Sequence[Any] | None,
    thresholds: Mapping[str, Sequence[float] | None] | None = None,
    *,
    n_bootstrap: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    min_count: int = 1,
) -> Comparison:
    """Compare models' predictions for the same labelled images.

    Args:
        task: the task all the models share.
        label_names: the class / finding names (binary: the positive class), as in `evaluate_predictions`.
        targets: the labels, in the task's shape.
        probs: model (or preprocessing variant) name -> its probabilities for the same images, in order.
        patient_ids: one id per image (images of one patient are resampled together); None: each image is
            its own patient.
        thresholds: name -> that model's decision thresholds (binary / multi-label; None = 0.5); ignored for
            multi-class, where the argmax decides.
        n_bootstrap: paired resamples (at least 1).
        seed: the resampling seed.
        confidence: coverage of the intervals.
        min_count: a class needs this many positive and negative labels to enter the AUC.

    Raises:
        ValueError: fewer than two models, predictions of different shapes, or invalid inputs.
    """
    task = Task.parse(task)
    if len(probs) < 2:
        raise ValueError(f"comparing needs at least two models' predictions; got {len(probs)}")
    if n_bootstrap < 1 or min_count < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(
            f"need n_bootstrap >= 1, min_count >= 1 and 0 < confidence < 1; "
            f"got {n_bootstrap}, {min_count}, {confidence}"
        )
    prepared = {name: prepare_arrays(task, targets, p) for name, p in probs.items()}
    y = next(iter(prepared.values()))[0]
    n_images, n_columns = next(iter(prepared.values()))[1].shape
    if len(label_names) != n_columns or any(p.shape != (n_images, n_columns) for _, p in prepared.values()):
        shapes = {name: p.shape for name, (_, p) in prepared.items()}
        raise ValueError(f"every model needs {len(label_names)} outputs for the same images; got {shapes}")
    groups, unit = _groups(patient_ids, n_images)
    n_patients = int(groups.max()) + 1
    if task.exclusive:
        n_pos = np.bincount(y, minlength=n_columns)
        n_neg = n_images - n_pos
    else:
        n_pos, n_neg = (y == 1).sum(axis=0), (y == 0).sum(axis=0)
    evaluable = (n_pos >= min_count) & (n_neg >= min_count)

    cuts = {name: _thresholds(task, (thresholds or {}).get(name), n_columns) for name in probs}
    evaluators = {
        name: Evaluator(task, y, p, cuts[name], groups, n_patients, evaluable)
        for name, (_, p) in prepared.items()
    }
    point = {
        name: float(evaluate(np.ones((1, n_patients)))[1]["auc"][0]) for name, evaluate in evaluators.items()
    }
    samples: dict[str, list[np.ndarray]] = {name: [] for name in probs}
    rng = np.random.default_rng(seed)
    for counts in resample_counts(n_patients, n_images, n_bootstrap, rng):
        for name, evaluate in evaluators.items():
            samples[name].append(evaluate(counts)[1]["auc"])
    boot = {name: np.concatenate(chunks) for name, chunks in samples.items()}

    models = []
    for name in probs:
        interval, used = bootstrap_interval(point[name], boot[name], confidence)
        ci = tuple(interval["ci"]) if interval["ci"] else None
        models.append(ModelAUC(name, interval["value"], ci, used))
    correct = {name: _correct(task, y, p, cuts[name]) for name, (_, p) in prepared.items()}
    pairs = [
        _pair(a, b, point, boot, correct, confidence, n_images, n_patients, unit)
        for a, b in combinations(list(probs), 2)
    ]
    return Comparison(models, pairs, n_images, n_patients, unit, n_bootstrap, seed, confidence)


def correct_decisions(
    task: Task | str, targets: Any, probs: Any, thresholds: Sequence[float] | None = None
) -> np.ndarray:
    """Whether each image's decision is right: 1.0 / 0.0, NaN where no label of the image is known.

    Shapes as in `trainer.metrics`. Binary and multi-label decide `p >= threshold` (None = 0.5), and a
    multi-label decision is right when every known finding is; multi-class decides by the argmax.
    """
    task = Task.parse(task)
    y, p = prepare_arrays(task, targets, probs)
    return _correct(task, y, p, _thresholds(task, thresholds, p.shape[1]))


def _correct(task: Task, y: np.ndarray, p: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    if task.exclusive:
        return (p.argmax(axis=1) == y).astype(float)
    known = ~np.isnan(y)
    wrong = known & ((p >= cuts) != (y == 1))
    return np.where(known.any(axis=1), (~wrong.any(axis=1)).astype(float), np.nan)


def mcnemar(a_correct: Sequence[float] | np.ndarray, b_correct: Sequence[float] | np.ndarray) -> McNemar:
    """McNemar's test on paired right (1) / wrong (0) decisions; NaN entries (unknown labels) are skipped.

    Only the discordant images count: under "equally good", each is as likely to favour A as B. Fewer than
    `MCNEMAR_EXACT_BELOW` of them: the exact two-sided binomial p-value; more: chi-square with continuity
    correction, (|b - c| - 1)^2 / (b + c) on 1 degree of freedom.
    """
    a, b = np.asarray(a_correct, dtype=float), np.asarray(b_correct, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"McNemar's test needs two equal-length 1-D arrays; got {a.shape} and {b.shape}")
    known = ~(np.isnan(a) | np.isnan(b))
    a, b = a[known] == 1, b[known] == 1
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    both, neither = int((a & b).sum()), int((~a & ~b).sum())
    discordant = only_a + only_b
    from scipy import stats  # here: the demo imports this module, and scipy is needed only for a test

    if discordant == 0:
        p_value, method = 1.0, "exact binomial"
    elif discordant < MCNEMAR_EXACT_BELOW:
        p_value = float(stats.binomtest(only_a, discordant, 0.5).pvalue)
        method = "exact binomial"
    else:
        statistic = (abs(only_a - only_b) - 1) ** 2 / discordant
        p_value, method = float(stats.chi2.sf(statistic, df=1)), "chi-square with continuity correction"
    return McNemar(only_a, only_b, both, neither, min(1.0, p_value), method)


def _groups(patient_ids: Sequence[Any] | None, n_images: int) -> tuple[np.ndarray, str]:
    if patient_ids is None:
        return np.arange(n_images), "image"
    ids = np.asarray([str(pid) for pid in patient_ids])
    if len(ids) != n_images:
        raise ValueError(f"{len(ids)} patient ids for {n_images} predictions")
    return np.unique(ids, return_inverse=True)[1], "patient"


def _thresholds(task: Task, given: Sequence[float] | None, n_columns: int) -> np.ndarray:
    if task.exclusive:
        return np.zeros(0)
    cuts = np.full(n_columns, 0.5) if given is None else np.asarray(given, dtype=float)
    if cuts.shape != (n_columns,) or not np.isfinite(cuts).all():
        raise ValueError(f"{task} needs {n_columns} finite thresholds per model; got {list(cuts)}")
    return cuts


def _pair(
    a: str,
    b: str,
    point: Mapping[str, float],
    boot: Mapping[str, np.ndarray],
    correct: Mapping[str, np.ndarray],
    confidence: float,
    n_images: int,
    n_patients: int,
    unit: str,
) -> Pair:
    observed = point[b] - point[a]
    deltas = boot[b] - boot[a]
    deltas = deltas[np.isfinite(deltas)]
    known = ~(np.isnan(correct[a]) | np.isnan(correct[b]))
    test = mcnemar(correct[a], correct[b]) if known.any() else None
    where = f"{n_images} images" + (f" of {n_patients} patients" if unit == "patient" else "")
    if not np.isfinite(observed) or deltas.size == 0:
        sentence = (
            f"The AUCs of {a} and {b} cannot be compared on these {where}: the labels need both classes."
        )
        return Pair(a, b, None, None, None, None, int(deltas.size), test, _with_mcnemar(sentence, a, b, test))
    interval, used = bootstrap_interval(observed, deltas, confidence)
    if observed == 0:
        flips, chance = 0.0, 1.0
    else:
        flips = float(np.mean(deltas <= 0) if observed > 0 else np.mean(deltas >= 0))
        # Shifting the resampled differences by the observed one centres them on "equally good".
        chance = float(np.mean(np.abs(deltas - observed) >= abs(observed) - 1e-12))
    sentence = _sentence(a, b, point[a], point[b], chance, where)
    return Pair(
        a, b, observed, tuple(interval["ci"]), flips, chance, used, test, _with_mcnemar(sentence, a, b, test)
    )


def _sentence(a: str, b: str, auc_a: float, auc_b: float, chance: float, where: str) -> str:
    difference = auc_b - auc_a
    if abs(difference) < 0.005:
        return f"{a} and {b} have the same AUC to two decimals ({auc_a:.2f}) on these {where}."
    better, worse = (b, a) if difference > 0 else (a, b)
    share = _percent(chance)
    return (
        f"{better}'s AUC is {abs(difference):.2f} higher than {worse}'s ({max(auc_a, auc_b):.2f} vs "
        f"{min(auc_a, auc_b):.2f}); a difference this size happens by chance in {share} of resamples of "
        f"these {where}."
    )


def _percent(share: float) -> str:
    return f"{100 * share:.0f} %" if share >= 0.005 else "fewer than 1 %"


def _images(count: int) -> str:
    return f"{count} image{'s' if count != 1 else ''}"


def _with_mcnemar(sentence: str, a: str, b: str, test: McNemar | None) -> str:
    if test is None:
        return sentence
    if test.only_a + test.only_b == 0:
        return f"{sentence} Their decisions are right and wrong on the same images."
    return (
        f"{sentence} On the decisions, {b} is right on {_images(test.only_b)} where {a} is wrong, and {a} on "
        f"{test.only_a} where {b} is wrong; if both were equally good, a split at least this uneven would "
        f"happen by chance in {_percent(test.p_value)} of cases (McNemar's test, {test.method})."
    )
