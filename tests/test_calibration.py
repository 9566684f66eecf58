"""Temperature scaling (known answers), its use on probabilities, calibration metrics, the stored form."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from trainer.calibration import (
    NO_CALIBRATION_NOTE,
    Calibration,
    CalibrationError,
    calibrate,
    calibration_metrics,
    compare_calibration,
    confidence_and_outcome,
    ece_chance_range,
    expected_calibration_error,
    fit_calibration,
    fit_scaling,
    logits_from_probabilities,
    read_calibration,
    reliability_bins,
)
from trainer.errors import ChexlabError
from trainer.task import Task


def _groups(multiple: float, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Binary logits: `multiple` times the calibrated ones plus `shift`; a group's positives: sigmoid(z).

    z = log 3 (3 of 4 positive), -log 3 (1 of 4) and 0 (1 of 2): at T = `multiple` and b = -shift / multiple
    every group's probability equals its empirical rate, the unique minimum of the NLL.
    """
    z = [math.log(3)] * 4 + [-math.log(3)] * 4 + [0.0] * 2
    y = [1, 1, 1, 0] + [1, 0, 0, 0] + [1, 0]
    return multiple * np.array(z) + shift, np.array(y, dtype=float)


@pytest.mark.parametrize("multiple", [0.5, 1.0, 2.0, 3.7])
def test_binary_temperature_recovers_the_known_multiple(multiple: float) -> None:
    logits, targets = _groups(multiple)
    (temperature,), offsets = fit_scaling(logits, targets, "binary", offsets=False)
    assert temperature == pytest.approx(multiple, rel=1e-5) and offsets == ()
    (again,), _ = fit_scaling(logits[:, None], targets, Task.BINARY, offsets=False)  # (N, 1) as a model's
    assert again == temperature  # deterministic


@pytest.mark.parametrize(("multiple", "shift"), [(1.0, 0.0), (2.0, 1.5), (0.5, -2.0), (3.0, -4.0)])
def test_binary_temperature_and_offset_recover_a_known_scale_and_shift(multiple: float, shift: float) -> None:
    logits, targets = _groups(multiple, shift)
    (temperature,), (offset,) = fit_scaling(logits, targets, "binary")  # offsets: the default for sigmoid
    assert temperature == pytest.approx(multiple, rel=1e-5)
    assert offset == pytest.approx(-shift / multiple, abs=1e-5)


def test_binary_hand_computed_case() -> None:
    # Four images with logit 2, three of them positive: sigmoid(2 / T) = 3/4, so T = 2 / ln 3.
    (temperature,), _ = fit_scaling(np.full(4, 2.0), np.array([1, 1, 1, 0.0]), "binary", offsets=False)
    assert temperature == pytest.approx(2 / math.log(3), rel=1e-5)
    # With an offset: logits 1 (3 of 4 positive) and -1 (2 of 4): sigmoid(1 / T + b) = 3/4 and
    # sigmoid(-1 / T + b) = 1/2, so b = 1/T = ln(3) / 2.
    z, y = np.array([1.0] * 4 + [-1.0] * 4), np.array([1, 1, 1, 0, 1, 1, 0, 0.0])
    (temperature,), (offset,) = fit_scaling(z, y, "binary")
    assert 1 / temperature == pytest.approx(math.log(3) / 2, rel=1e-5)
    assert offset == pytest.approx(math.log(3) / 2, rel=1e-5)


def test_multiclass_temperature_recovers_the_known_multiple() -> None:
    # softmax(2 log p / 2) = p = (0.5, 0.3, 0.2): 10 images with those class counts.
    rates = np.array([0.5, 0.3, 0.2])
    logits = np.tile(2 * np.log(rates), (10, 1))
    targets = np.array([0] * 5 + [1] * 3 + [2] * 2)
    (temperature,), offsets = fit_scaling(logits, targets, "multiclass")
    assert temperature == pytest.approx(2.0, rel=1e-5) and offsets == ()  # argmax must not move
    with pytest.raises(CalibrationError, match="would move argmax"):
        fit_scaling(logits, targets, "multiclass", offsets=True)


def test_multilabel_gets_one_temperature_and_offset_per_finding_and_ignores_unknown_labels() -> None:
    a, ya = _groups(2.0, 1.0)
    b, yb = _groups(0.5, -1.0)
    logits = np.stack([a, b], axis=1)
    targets = np.stack([ya, yb], axis=1)
    # Unknown labels on extra images with wild logits must not move the fit.
    logits = np.vstack([logits, [[40.0, -40.0], [-30.0, 25.0]]])
    targets = np.vstack([targets, [[np.nan, np.nan], [np.nan, np.nan]]])
    temperatures, offsets = fit_scaling(logits, targets, "multilabel")
    assert temperatures == pytest.approx((2.0, 0.5), rel=1e-5)
    assert offsets == pytest.approx((-0.5, 2.0), abs=1e-5)


def test_a_finding_with_one_outcome_stays_uncalibrated() -> None:
    logits = np.array([[-2.0, 2.0], [-1.0, -1.0], [-0.5, 0.3], [0.5, 1.0], [1.0, 0.2], [2.0, 0.0]])
    targets = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, np.nan], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    temperatures, offsets = fit_scaling(logits, targets, "multilabel")
    assert temperatures[1] == 1.0 and offsets[1] == 0.0 and temperatures[0] != 1.0


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_labels_the_model_separates_perfectly_leave_it_uncalibrated(task: str) -> None:
    # On separable labels the NLL keeps falling as T -> 0: the fit must not return such a temperature.
    rng = np.random.default_rng(3)
    y = np.arange(12) % 2
    if task == "binary":
        logits = np.where(y == 1, 1.0, -1.0) * rng.uniform(0.5, 2.0, 12)
    else:
        logits = np.stack(
            [-(y * 2 - 1) * rng.uniform(0.5, 2.0, 12), (y * 2 - 1) * rng.uniform(0.5, 2.0, 12)], 1
        )
    temperatures, offsets = fit_scaling(logits, y, task)
    assert temperatures == (1.0,) and all(b == 0.0 for b in offsets)


def test_calibrate_on_probabilities_equals_calibrate_on_logits() -> None:
    logits, targets = _groups(3.0, 0.5)
    probs = 1 / (1 + np.exp(-logits))
    calibration = calibrate(probs, targets, "binary")
    assert calibration.temperatures == pytest.approx((3.0,), rel=1e-4)
    assert calibration.method == "temperature+offset" and len(calibration.offsets) == 1
    assert calibration.n_images == 10 and calibration.fitted_on == "validation"
    on_logits = fit_calibration(logits, targets, "binary")
    assert on_logits.temperatures == pytest.approx(calibration.temperatures, rel=1e-5)
    # Applied to the probabilities: each group now shows its empirical rate.
    assert calibration.apply(probs, "binary")[:4] == pytest.approx(np.full(4, 0.75), rel=1e-4)
    # On logits (a single pass): the same numbers, numpy or torch.
    (t,), (b,) = calibration.temperatures, calibration.offsets
    assert calibration.scale_logits(logits) == pytest.approx(logits / t + b)
    scaled = calibration.scale_logits(torch.tensor(logits[:, None], dtype=torch.float32))
    assert isinstance(scaled, torch.Tensor) and scaled.dtype == torch.float32


def test_apply_keeps_shapes_rankings_and_argmax() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random(20)
    calibrated = Calibration((2.5,)).apply(probs, "binary")
    assert calibrated.shape == probs.shape
    assert (np.argsort(calibrated) == np.argsort(probs)).all()
    assert (np.abs(calibrated - 0.5) <= np.abs(probs - 0.5) + 1e-12).all()  # T > 1 softens
    shifted = Calibration((2.5,), (-1.0,)).apply(probs, "binary")
    assert (np.argsort(shifted) == np.argsort(probs)).all() and (shifted < calibrated).all()
    multi = rng.dirichlet(np.ones(4), size=15)
    softened = Calibration((3.0,)).apply(multi, "multiclass")
    assert softened.sum(axis=1) == pytest.approx(np.ones(15))
    assert (softened.argmax(axis=1) == multi.argmax(axis=1)).all()
    per_finding = Calibration((1.0, 4.0), (0.0, 0.5)).apply(rng.random((6, 2)), "multilabel")
    assert per_finding.shape == (6, 2)
    assert Calibration.identity(1).apply(probs, "binary") == pytest.approx(probs)  # unchanged


def test_logits_from_saturated_probabilities_are_finite() -> None:
    logits = logits_from_probabilities(np.array([0.0, 1.0, 0.5]), "binary")
    assert np.isfinite(logits).all() and logits.shape == (3, 1) and logits[2, 0] == 0.0


def test_ece_hand_computed_binary_case() -> None:
    # Top-class confidence max(p, 1 - p) = 0.95, 0.83, 0.70, 0.62 (bins 14, 12, 10, 9 of 15); right, wrong,
    # right, right: ECE = (0.05 + 0.83 + 0.30 + 0.38) / 4 = 0.39.
    probs = np.array([0.95, 0.83, 0.30, 0.62])
    targets = np.array([1.0, 0.0, 0.0, 1.0])
    assert expected_calibration_error(probs, targets, "binary") == pytest.approx(0.39)
    # A fifth image in bin 14 (confidence 0.96, wrong): that bin has confidence 0.955 and accuracy 0.5.
    probs5, targets5 = np.append(probs, 0.04), np.append(targets, 1.0)
    expected = (2 * abs(0.955 - 0.5) + 0.83 + 0.30 + 0.38) / 5
    assert expected_calibration_error(probs5, targets5, "binary") == pytest.approx(expected)


def test_ece_multiclass_uses_the_top_class_and_multilabel_pools_findings() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4]])
    # Confidences 0.7 (right) and 0.5 (wrong): (0.3 + 0.5) / 2.
    assert expected_calibration_error(probs, np.array([0, 2]), "multiclass") == pytest.approx(0.4)
    ml = np.array([[0.9, 0.2], [0.3, 0.75]])
    labels = np.array([[1.0, np.nan], [0.0, 1.0]])
    # Known pairs (0.9, 1), (0.3, 0), (0.75, 1), each alone in a bin: (0.1 + 0.3 + 0.25) / 3.
    assert expected_calibration_error(ml, labels, "multilabel") == pytest.approx(0.65 / 3)
    confidence, outcome = confidence_and_outcome(ml, labels, "multilabel")
    assert confidence.tolist() == [0.9, 0.3, 0.75] and outcome.tolist() == [1.0, 0.0, 1.0]


def test_ece_agrees_with_torchmetrics() -> None:
    from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(3), size=300)
    y = rng.integers(0, 3, 300)
    ours = expected_calibration_error(p, y, "multiclass")
    theirs = multiclass_calibration_error(torch.tensor(p), torch.tensor(y), num_classes=3, n_bins=15)
    assert ours == pytest.approx(float(theirs), abs=1e-6)
    q, t = rng.random((200, 4)), (rng.random((200, 4)) < 0.3).astype(float)
    pooled = binary_calibration_error(torch.tensor(q.ravel()), torch.tensor(t.ravel()).long(), n_bins=15)
    assert expected_calibration_error(q, t, "multilabel") == pytest.approx(float(pooled), abs=1e-6)


def test_brier_and_nll_hand_computed() -> None:
    metrics = calibration_metrics(np.array([0.8, 0.4]), np.array([1.0, 0.0]), "binary")
    assert metrics["brier"] == pytest.approx((0.2**2 + 0.4**2) / 2)
    assert metrics["nll"] == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert metrics["n"] == 2
    multi = calibration_metrics(np.array([[0.6, 0.3, 0.1]]), np.array([1]), "multiclass")
    assert multi["brier"] == pytest.approx(0.6**2 + 0.7**2 + 0.1**2)  # the original, summed over classes
    assert multi["nll"] == pytest.approx(-math.log(0.3))


def test_reliability_bins_hold_counts_confidence_and_accuracy() -> None:
    bins = reliability_bins(np.array([0.05, 0.06, 0.95, 1.0]), np.array([0.0, 1.0, 1.0, 1.0]), n_bins=10)
    assert bins.counts.tolist() == [2, 0, 0, 0, 0, 0, 0, 0, 0, 2]  # 1.0 falls in the last bin
    assert bins.confidence[0] == pytest.approx(0.055) and bins.accuracy[0] == 0.5
    assert np.isnan(bins.accuracy[1])


def test_chance_range_covers_a_calibrated_model_and_shrinks_with_more_images() -> None:
    rng = np.random.default_rng(3)
    probs = rng.random(200)
    limit = ece_chance_range(probs, "binary", seed=0)
    assert ece_chance_range(probs, "binary", seed=0) == limit  # seeded
    # Labels really drawn from the probabilities: the ECE stays under the 95th percentile ~95 % of the time.
    under = [
        expected_calibration_error(probs, (rng.random(200) < probs).astype(float), "binary") <= limit
        for _ in range(300)
    ]
    assert 0.9 <= np.mean(under) <= 0.99
    more = rng.random(5000)
    assert ece_chance_range(more, "binary") < limit / 3
    assert 0.02 < limit < 0.12


def test_temperature_scaling_fixes_an_over_confident_model() -> None:
    rng = np.random.default_rng(4)
    true_logits = rng.normal(0, 1.5, 4000)
    targets = (rng.random(4000) < 1 / (1 + np.exp(-true_logits))).astype(float)
    over = 1 / (1 + np.exp(-(3 * true_logits + 1.0)))  # three times too confident, and shifted
    val, test = slice(0, 2000), slice(2000, None)
    calibration = calibrate(over[val], targets[val], "binary")
    assert calibration.temperatures[0] == pytest.approx(3.0, rel=0.1)
    assert calibration.offsets[0] == pytest.approx(-1 / 3, abs=0.1)
    report = compare_calibration(over[test], calibration.apply(over[test], "binary"), targets[test], "binary")
    before, after = report["before"], report["after"]
    assert after["ece"] < report["ece_chance_95"] < before["ece"]
    assert after["nll"] < before["nll"] and after["brier"] < before["brier"]


def test_stored_form_round_trips_through_json() -> None:
    calibration = Calibration((1.5, 0.8), (-1.0, 0.25), method="temperature+offset", n_images=40)
    calibration = calibration.with_metrics({"val": {"before": {"ece": 0.2}}})
    stored = json.loads(json.dumps({"calibration": calibration.to_dict()}))
    assert stored["calibration"]["method"] == "temperature+offset"
    back = read_calibration(stored, "multilabel", 2)
    assert back.temperatures == (1.5, 0.8) and back.offsets == (-1.0, 0.25)
    assert back.n_images == 40 and back.calibrated and back.method == "temperature+offset"
    assert back.metrics["val"]["before"]["ece"] == 0.2 and back.note is None


def test_a_folder_without_calibration_loads_with_temperature_one_and_a_note() -> None:
    calibration = read_calibration({"task": "multilabel"}, "multilabel", 3)
    assert calibration.temperatures == (1.0, 1.0, 1.0) and not calibration.calibrated
    assert calibration.note == NO_CALIBRATION_NOTE and "temperature 1" in calibration.note
    assert read_calibration({}, "multiclass", 4).temperatures == (1.0,)


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        ({"temperatures": [1.0, 2.0]}, r"stores 1 temperature\(s\)"),
        ({"temperatures": [-1.0]}, "must be positive"),
        ({"temperatures": [float("nan")]}, "finite numbers"),
        ({"temperatures": ["warm"]}, "must be numbers"),
        ({"temperatures": [1.0], "offsets": [0.1, 0.2]}, r"stores 1 offset\(s\)"),
        ({"method": "platt", "temperatures": [1.0]}, "unknown calibration method 'platt'"),
        ("1.5", "must be an object"),
    ],
)
def test_malformed_calibration_is_refused_with_a_reason(stored: object, message: str) -> None:
    with pytest.raises(CalibrationError, match=message) as caught:
        read_calibration({"calibration": stored}, "binary", 1)
    assert isinstance(caught.value, ChexlabError)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(CalibrationError, match=r"outputs must be \(N,\) or \(N, 1\)"):
        fit_scaling(np.zeros((4, 2)), np.zeros(4), "binary")
    with pytest.raises(CalibrationError, match="3 outputs but 2 targets"):
        fit_scaling(np.zeros(3), np.zeros(2), "binary")
    with pytest.raises(CalibrationError, match="class indices 0-2"):
        fit_scaling(np.zeros((2, 3)), np.array([0, 3]), "multiclass")
    with pytest.raises(CalibrationError, match="NaN or infinite"):
        calibration_metrics(np.array([np.nan]), np.array([1.0]), "binary")
