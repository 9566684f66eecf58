"""trainer.paired_stats against answers worked out by hand: McNemar's test, a two-patient bootstrap whose
resamples can be enumerated, identical models, a clearly better model, and agreement with trainer.metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.metrics import evaluate_predictions
from trainer.paired_stats import MCNEMAR_EXACT_BELOW, compare_predictions, correct_decisions, mcnemar


def _pairs(only_a: int, only_b: int, both: int, neither: int) -> tuple[list[int], list[int]]:
    a = [1] * only_a + [0] * only_b + [1] * both + [0] * neither
    b = [0] * only_a + [1] * only_b + [1] * both + [0] * neither
    return a, b


def test_mcnemar_exact_binomial_by_hand():
    # 1 vs 6 discordant images: p = 2 * P(X <= 1), X ~ Binomial(7, 1/2) = 2 * (1 + 7) / 128 = 0.125.
    result = mcnemar(*_pairs(1, 6, 10, 3))
    assert (result.only_a, result.only_b, result.both, result.neither) == (1, 6, 10, 3)
    assert result.method == "exact binomial" and result.p_value == pytest.approx(16 / 128)
    # 0 vs 5: 2 / 32.
    assert mcnemar(*_pairs(5, 0, 0, 0)).p_value == pytest.approx(2 / 32)


def test_mcnemar_chi_square_by_hand():
    # 10 vs 30: (|10 - 30| - 1)^2 / 40 = 9.025 on 1 df; P(chi2_1 > x) = erfc(sqrt(x / 2)).
    assert MCNEMAR_EXACT_BELOW <= 40
    result = mcnemar(*_pairs(10, 30, 5, 5))
    assert result.method == "chi-square with continuity correction"
    assert result.p_value == pytest.approx(math.erfc(math.sqrt(9.025 / 2)), rel=1e-9)


def test_mcnemar_without_discordant_images_and_with_unknown_labels():
    assert mcnemar([1, 0, 1], [1, 0, 1]).p_value == 1.0
    result = mcnemar([1, np.nan, 0, 1], [0, 1, np.nan, 0])  # only images 0 and 3 are known for both
    assert (result.only_a, result.only_b, result.both, result.neither) == (2, 0, 0, 0)
    assert result.p_value == pytest.approx(0.5)
    with pytest.raises(ValueError, match="equal-length"):
        mcnemar([1, 0], [1])


def two_patients() -> tuple[list[float], dict[str, list[float]], list[str]]:
    """A ranks patient P1's images right and P2's wrong; B ranks both right.

    The resamples of two patients are (P1, P1) with probability 1/4: AUCs 1 and 1, difference 0; (P1, P2)
    with 1/2: A = 3/4 (0.2 < 0.8 is its one lost pair of four), B = 1, difference 1/4; (P2, P2) with 1/4:
    A = 0, B = 1, difference 1. The observed difference is 1/4.
    """
    targets = [1.0, 0.0, 1.0, 0.0]
    probs = {"A": [0.9, 0.1, 0.2, 0.8], "B": [0.9, 0.1, 0.8, 0.2]}
    return targets, probs, ["P1", "P1", "P2", "P2"]


def test_a_bootstrap_of_two_patients_matches_its_enumeration():
    targets, probs, patients = two_patients()
    result = compare_predictions("binary", ["abnormal"], targets, probs, patients, n_bootstrap=20_000)
    assert [m.auc for m in result.models] == [0.75, 1.0]
    assert (result.n_images, result.n_patients, result.unit) == (4, 2, "patient")
    (pair,) = result.pairs
    assert (pair.a, pair.b, pair.difference) == ("A", "B", 0.25)
    assert pair.sign_flip_share == pytest.approx(0.25, abs=0.015)  # only (P1, P1): difference 0
    # Centred on 0, the differences are -1/4, 0 and 3/4: at least 1/4 away in (P1, P1) and (P2, P2).
    assert pair.chance_share == pytest.approx(0.5, abs=0.015)
    assert pair.ci == (0.0, 1.0)
    assert pair.sentence.startswith(
        "B's AUC is 0.25 higher than A's (1.00 vs 0.75); a difference this size happens by chance in "
    )
    assert "% of resamples of these 4 images of 2 patients." in pair.sentence
    # Decisions at 0.5: A is wrong on both of P2's images, B right everywhere: 0 vs 2, exact p = 2 / 4.
    assert pair.mcnemar is not None
    assert (pair.mcnemar.only_a, pair.mcnemar.only_b, pair.mcnemar.p_value) == (0, 2, 0.5)
    assert "B is right on 2 images where A is wrong" in pair.sentence and "50 % of cases" in pair.sentence


def test_resampling_images_instead_of_patients_gives_other_answers():
    targets, probs, _ = two_patients()
    result = compare_predictions("binary", ["abnormal"], targets, probs, None, n_bootstrap=4000)
    assert result.unit == "image" and result.n_patients == 4
    assert result.pairs[0].chance_share != pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_identical_models_differ_by_nothing(task):
    targets, probs = synthetic(task, n=40, skill=1.0)
    result = compare_predictions(
        task, LABELS[task], targets, {"A": probs, "B": probs.copy()}, None, n_bootstrap=200
    )
    (pair,) = result.pairs
    assert pair.difference == 0.0 and pair.ci == (0.0, 0.0)
    assert pair.sign_flip_share == 0.0 and pair.chance_share == 1.0
    assert pair.mcnemar is not None and pair.mcnemar.p_value == 1.0
    assert "have the same AUC" in pair.sentence and "right and wrong on the same images" in pair.sentence


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_a_clearly_better_model_is_found_better(task):
    targets, good = synthetic(task, n=120, skill=3.0, seed=1)
    _, noise = synthetic(task, n=120, skill=0.0, seed=2)
    result = compare_predictions(
        task, LABELS[task], targets, {"guess": noise, "model": good}, None, n_bootstrap=500
    )
    (pair,) = result.pairs
    assert pair.difference is not None and pair.difference > 0.2
    assert pair.ci is not None and pair.ci[0] > 0
    assert pair.chance_share is not None and pair.chance_share < 0.01
    assert pair.sign_flip_share == 0.0
    assert pair.sentence.startswith("model's AUC is") and "fewer than 1 % of resamples" in pair.sentence
    assert pair.mcnemar is not None and pair.mcnemar.only_b > pair.mcnemar.only_a


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_each_models_auc_and_ci_are_those_of_evaluate_predictions(task):
    targets, probs = synthetic(task, n=60, skill=1.0, seed=3)
    _, other = synthetic(task, n=60, skill=0.5, seed=4)
    patients = [f"p{i // 2}" for i in range(60)]
    result = compare_predictions(
        task, LABELS[task], targets, {"A": probs, "B": other}, patients, n_bootstrap=300, seed=7
    )
    for model, p in zip(result.models, (probs, other), strict=True):
        expected = evaluate_predictions(
            task,
            LABELS[task],
            targets,
            p,
            patients,
            None if task == "multiclass" else [0.5] * len(LABELS[task]),
            n_bootstrap=300,
            seed=7,
        )["headline"]["auc"]
        assert model.auc == pytest.approx(expected["value"])
        assert model.ci == pytest.approx(tuple(expected["ci"]))


def test_three_models_give_every_pair():
    targets, probs = synthetic("binary", n=30, skill=1.0)
    result = compare_predictions(
        "binary", ["x"], targets, {"a": probs, "b": probs, "c": 1 - probs}, None, n_bootstrap=50
    )
    assert [(p.a, p.b) for p in result.pairs] == [("a", "b"), ("a", "c"), ("b", "c")]


def test_undefined_auc_is_said_in_words():
    result = compare_predictions(
        "binary", ["x"], [1, 1, 1], {"A": [0.2, 0.6, 0.9], "B": [0.9, 0.9, 0.9]}, None, n_bootstrap=20
    )
    (pair,) = result.pairs
    assert pair.difference is None and pair.chance_share is None
    assert "cannot be compared" in pair.sentence and "A is right on 0 images" not in pair.sentence
    assert pair.mcnemar is not None and (pair.mcnemar.only_a, pair.mcnemar.only_b) == (0, 1)


def test_correct_decisions_per_task():
    np.testing.assert_array_equal(correct_decisions("binary", [1, 0, 1], [0.7, 0.7, 0.2], [0.5]), [1, 0, 0])
    np.testing.assert_array_equal(
        correct_decisions("multiclass", [0, 2], [[0.6, 0.3, 0.1], [0.5, 0.1, 0.4]]), [1, 0]
    )
    targets = [[1, 0], [np.nan, 1], [np.nan, np.nan]]
    probs = [[0.9, 0.2], [0.1, 0.3], [0.5, 0.5]]
    # Row 0 right on both; row 1: the unknown is ignored, the known finding is missed; row 2: nothing known.
    np.testing.assert_array_equal(correct_decisions("multilabel", targets, probs, [0.5, 0.5]), [1, 0, np.nan])


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match="at least two models"):
        compare_predictions("binary", ["x"], [0, 1], {"A": [0.1, 0.9]}, None)
    with pytest.raises(ValueError, match="same images"):
        compare_predictions(
            "multiclass", ["a", "b"], [0, 1], {"A": [[1, 0], [0, 1]], "B": [[1, 0, 0], [0, 1, 0]]}, None
        )
    with pytest.raises(ValueError, match="unknown task"):
        compare_predictions("regression", ["x"], [0, 1], {"A": [0.1, 0.9], "B": [0.2, 0.8]}, None)
    with pytest.raises(ValueError, match="finite thresholds"):
        compare_predictions(
            "binary", ["x"], [0, 1], {"A": [0.1, 0.9], "B": [0.2, 0.8]}, None, {"A": [0.5, 0.5]}
        )


LABELS = {"binary": ["abnormal"], "multiclass": ["a", "b", "c"], "multilabel": ["f1", "f2"]}


def synthetic(task: str, *, n: int, skill: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Balanced targets and probabilities whose separation grows with `skill` (0 = pure noise)."""
    rng = np.random.default_rng(seed)
    if task == "multiclass":
        targets: np.ndarray = np.arange(n) % 3
        logits = rng.normal(size=(n, 3)) + skill * np.eye(3)[targets]
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return targets, probs
    columns = 1 if task == "binary" else 2
    targets = (np.arange(n)[:, None] + np.arange(columns)) % 2
    probs = 1 / (1 + np.exp(-(rng.normal(size=(n, columns)) + skill * (2 * targets - 1))))
    if task == "binary":
        return targets[:, 0].astype(float), probs[:, 0]
    return targets.astype(float), probs
