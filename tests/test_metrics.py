"""trainer.metrics against scikit-learn; thresholds, patient-level bootstrap, degenerate inputs, schema."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from trainer import metrics
from trainer.metrics import choose_thresholds, evaluate_predictions

FINDINGS = ["Atelectasis", "Cardiomegaly", "Effusion", "Hernia"]


def _binary(n: int, seed: int, signal: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    probs = 1 / (1 + np.exp(-(rng.normal(size=n) + signal * y - signal / 2)))
    return y, probs


def _multiclass(n: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += 1.2
    probs = np.exp(logits)
    return y, probs / probs.sum(axis=1, keepdims=True)


def _multilabel(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(FINDINGS))) < [0.3, 0.2, 0.1, 0.05]).astype(float)
    probs = 1 / (1 + np.exp(-(rng.normal(size=y.shape) + 1.5 * y - 1.5)))
    y[rng.random(y.shape) < 0.2] = np.nan
    return y, probs


def _width(ci: list[float]) -> float:
    return ci[1] - ci[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_metrics_match_sklearn(seed: int) -> None:
    y, probs = _binary(300, seed)
    threshold = [0.4 + 0.1 * seed]
    result = evaluate_predictions("binary", ["pneumonia"], y, probs, None, threshold, n_bootstrap=50)
    pred = (probs >= threshold[0]).astype(int)
    head = result["headline"]
    assert head["auc"]["value"] == pytest.approx(roc_auc_score(y, probs), abs=1e-12)
    assert head["accuracy"]["value"] == pytest.approx(accuracy_score(y, pred))
    assert head["sensitivity"]["value"] == pytest.approx(recall_score(y, pred))
    assert head["specificity"]["value"] == pytest.approx(recall_score(y, pred, pos_label=0))
    assert head["ppv"]["value"] == pytest.approx(precision_score(y, pred))
    assert head["npv"]["value"] == pytest.approx(precision_score(y, pred, pos_label=0))
    assert head["f1"]["value"] == pytest.approx(f1_score(y, pred))
    assert result["confusion_matrix"] == {
        "labels": ["normal", "pneumonia"],
        "matrix": confusion_matrix(y, pred).tolist(),
    }
    entry = result["per_class"]["pneumonia"]
    assert entry["sensitivity"] == head["sensitivity"] and entry["auc"] == head["auc"]
    assert (entry["n_pos"], entry["n_neg"], entry["threshold"]) == (
        int(y.sum()),
        int((y == 0).sum()),
        threshold[0],
    )


def test_binary_accepts_column_probs_and_ties() -> None:
    y, probs = _binary(200, 3)
    rounded = probs.round(1)  # many tied scores: AUC must count ties one half, as sklearn does
    result = evaluate_predictions("binary", ["x"], y, rounded[:, None], None, [0.5], n_bootstrap=0)
    assert result["headline"]["auc"]["value"] == pytest.approx(roc_auc_score(y, rounded), abs=1e-12)


def test_multiclass_metrics_match_sklearn() -> None:
    names = ["covid", "normal", "viral", "opacity"]
    y, probs = _multiclass(400, 4, seed=0)
    result = evaluate_predictions("multiclass", names, y, probs, None, [], n_bootstrap=50)
    pred = probs.argmax(axis=1)
    head = result["headline"]
    assert head["auc"]["value"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"), abs=1e-12)
    assert head["accuracy"]["value"] == pytest.approx(accuracy_score(y, pred))
    assert head["sensitivity"]["value"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert head["ppv"]["value"] == pytest.approx(precision_score(y, pred, average="macro"))
    assert head["f1"]["value"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert result["confusion_matrix"] == {"labels": names, "matrix": confusion_matrix(y, pred).tolist()}
    recalls = recall_score(y, pred, average=None)
    precisions = precision_score(y, pred, average=None)
    for c, name in enumerate(names):
        entry = result["per_class"][name]
        assert entry["auc"]["value"] == pytest.approx(roc_auc_score(y == c, probs[:, c]), abs=1e-12)
        assert entry["sensitivity"]["value"] == pytest.approx(recalls[c])
        assert entry["ppv"]["value"] == pytest.approx(precisions[c])
        assert entry["specificity"]["value"] == pytest.approx(recall_score(y != c, pred != c))
        assert entry["threshold"] is None
    assert result["thresholds"] == []


def test_multiclass_class_never_predicted_counts_zero_in_macro_ppv() -> None:
    y, probs = _multiclass(300, 3, seed=4)
    probs[:, 2] = 0.0  # class 2 never wins the argmax
    probs /= probs.sum(axis=1, keepdims=True)
    result = evaluate_predictions("multiclass", ["a", "b", "c"], y, probs, None, None, n_bootstrap=20)
    pred = probs.argmax(axis=1)
    assert result["per_class"]["c"]["ppv"]["value"] is None
    assert "PPV undefined" in result["per_class"]["c"]["note"]
    expected = precision_score(y, pred, average="macro", labels=[0, 1, 2], zero_division=0)
    assert result["headline"]["ppv"]["value"] == pytest.approx(expected)


def test_multilabel_masks_unknown_labels_per_finding() -> None:
    y, probs = _multilabel(500, seed=0)
    thresholds = [0.3, 0.4, 0.5, 0.6]
    result = evaluate_predictions("multilabel", FINDINGS, y, probs, None, thresholds, n_bootstrap=50)
    aucs = []
    for c, name in enumerate(FINDINGS):
        known = ~np.isnan(y[:, c])
        truth, pred = y[known, c], probs[known, c] >= thresholds[c]
        entry = result["per_class"][name]
        assert entry["auc"]["value"] == pytest.approx(roc_auc_score(truth, probs[known, c]), abs=1e-12)
        assert entry["sensitivity"]["value"] == pytest.approx(recall_score(truth, pred))
        assert entry["ppv"]["value"] == pytest.approx(precision_score(truth, pred))
        assert (entry["n_pos"], entry["n_neg"]) == (int(truth.sum()), int((truth == 0).sum()))
        assert result["confusion_matrix"]["per_class"][name] == confusion_matrix(truth, pred).tolist()
        assert f"{(~known).sum()} unknown labels masked" in entry["note"]
        aucs.append(entry["auc"]["value"])
    assert result["headline"]["auc"]["value"] == pytest.approx(np.mean(aucs))
    # Predictions on unknown labels must not matter at all.
    scrambled = probs.copy()
    scrambled[np.isnan(y)] = np.random.default_rng(9).random(np.isnan(y).sum())
    again = evaluate_predictions("multilabel", FINDINGS, y, scrambled, None, thresholds, n_bootstrap=50)
    assert again == result


def test_multilabel_finding_without_positives_is_reported_not_dropped() -> None:
    y, probs = _multilabel(300, seed=1)
    y[:, 3] = np.where(np.isnan(y[:, 3]), np.nan, 0.0)  # Hernia: no positive among the known labels
    result = evaluate_predictions("multilabel", FINDINGS, y, probs, None, None, n_bootstrap=50)
    hernia = result["per_class"]["Hernia"]
    assert hernia["auc"] == {"value": None, "ci": None}
    assert hernia["sensitivity"]["value"] is None
    assert hernia["specificity"]["value"] is not None
    assert hernia["n_pos"] == 0
    assert "no positive labels" in hernia["note"] and "excluded from averages" in hernia["note"]
    others = [result["per_class"][name]["auc"]["value"] for name in FINDINGS[:3]]
    assert result["headline"]["auc"]["value"] == pytest.approx(np.mean(others))
    assert result["headline"]["auc"]["ci"] is not None
    json.dumps(result)
    y[:, 3] = np.nan  # nothing known at all
    result = evaluate_predictions("multilabel", FINDINGS, y, probs, None, None, n_bootstrap=20)
    assert result["per_class"]["Hernia"]["note"].startswith("no known labels (300 unknown)")
    assert all(result["per_class"]["Hernia"][m]["value"] is None for m in ("auc", "specificity", "ppv"))
    assert result["headline"]["auc"]["value"] == pytest.approx(np.mean(others))


def test_min_count_withholds_auc_of_rare_finding() -> None:
    y, probs = _multilabel(300, seed=2)
    known_pos = np.flatnonzero(y[:, 2] == 1)
    y[known_pos[3:], 2] = 0.0  # Effusion keeps 3 positives
    result = evaluate_predictions("multilabel", FINDINGS, y, probs, None, None, n_bootstrap=20, min_count=5)
    effusion = result["per_class"]["Effusion"]
    assert effusion["auc"]["value"] is None and effusion["n_pos"] == 3
    assert "fewer than min_count=5" in effusion["note"]
    default = evaluate_predictions("multilabel", FINDINGS, y, probs, None, None, n_bootstrap=20)
    assert default["per_class"]["Effusion"]["auc"]["value"] is not None
    assert "wide confidence intervals" in default["per_class"]["Effusion"]["note"]


def test_binary_single_class_gives_nulls_with_notes() -> None:
    probs = np.random.default_rng(0).random(50)
    result = evaluate_predictions("binary", ["pneumonia"], np.zeros(50), probs, None, [0.5], n_bootstrap=30)
    head = result["headline"]
    assert head["auc"] == {"value": None, "ci": None}
    assert head["sensitivity"]["value"] is None
    assert head["specificity"]["value"] == pytest.approx(np.mean(probs < 0.5))
    assert "no positive labels" in result["per_class"]["pneumonia"]["note"]
    assert result["bootstrap"]["n_used"]["headline"]["auc"] == 0
    json.dumps(result)


def test_youden_finds_the_known_optimum() -> None:
    negatives = [0.1, 0.2, 0.3, 0.45]
    positives = [0.4, 0.6, 0.7, 0.8, 0.9]
    y = np.r_[np.zeros(len(negatives)), np.ones(len(positives))]
    probs = np.r_[negatives, positives]
    # t = 0.6: sensitivity 4/5, specificity 1 (J = 0.8); t = 0.4: 1 and 3/4 (J = 0.75).
    assert choose_thresholds("binary", y, probs) == [0.6]

    y, probs = _binary(400, 5)

    def youden(t: float) -> float:
        pred = probs >= t
        return pred[y == 1].mean() + (~pred[y == 0]).mean() - 1

    (chosen,) = choose_thresholds("binary", y, probs, method="youden")
    assert youden(chosen) == pytest.approx(max(youden(t) for t in np.unique(probs)))


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_target_sensitivity_is_reached_at_the_highest_threshold(target: float) -> None:
    y, probs = _multilabel(400, seed=3)
    thresholds = choose_thresholds("multilabel", y, probs, method="sensitivity", target_sensitivity=target)
    assert len(thresholds) == len(FINDINGS)
    for c, threshold in enumerate(thresholds):
        known = ~np.isnan(y[:, c])
        truth, scores = y[known, c], probs[known, c]
        assert (scores[truth == 1] >= threshold).mean() >= target
        higher = scores[scores > threshold]
        if higher.size:  # the next score up no longer reaches the target
            assert (scores[truth == 1] >= higher.min()).mean() < target


def test_degenerate_validation_set_falls_back_to_half(caplog: pytest.LogCaptureFixture) -> None:
    y, probs = _multilabel(100, seed=4)
    y[:, 1] = np.where(np.isnan(y[:, 1]), np.nan, 0.0)
    with caplog.at_level(logging.WARNING, logger="trainer.metrics"):
        thresholds = choose_thresholds("multilabel", y, probs)
    assert thresholds[1] == 0.5 and thresholds[0] != 0.5
    assert "only one class" in caplog.text and "column 1" in caplog.text
    with caplog.at_level(logging.WARNING, logger="trainer.metrics"):
        assert choose_thresholds("binary", np.ones(10), np.linspace(0, 1, 10)) == [0.5]


def test_multiclass_thresholds_are_the_argmax() -> None:
    y, probs = _multiclass(50, 3, seed=0)
    assert choose_thresholds("multiclass", y, probs) == []
    with pytest.raises(ValueError, match="argmax"):
        evaluate_predictions("multiclass", ["a", "b", "c"], y, probs, None, [0.5, 0.5, 0.5])


def test_bootstrap_ci_contains_estimate_and_narrows_with_more_patients() -> None:
    widths = []
    for n in (200, 2000):
        y, probs = _binary(n, seed=6)
        patients = np.arange(n) // 2  # two images per patient
        result = evaluate_predictions("binary", ["x"], y, probs, patients, [0.5], n_bootstrap=400)
        for metric in ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1"):
            entry = result["headline"][metric]
            assert entry["ci"][0] <= entry["value"] <= entry["ci"][1], metric
        assert result["n_patients"] == n // 2
        widths.append(_width(result["headline"]["auc"]["ci"]))
    assert widths[1] < 0.5 * widths[0]  # ~ 1/sqrt(10)


def test_bootstrap_resamples_patients_not_images() -> None:
    n = 300
    y, probs = _binary(n, seed=7)
    patients = np.arange(n)

    def auc_width(rep: int, ids: np.ndarray) -> float:
        result = evaluate_predictions(
            "binary", ["x"], np.repeat(y, rep), np.repeat(probs, rep), ids, [0.5], n_bootstrap=500, seed=1
        )
        return _width(result["headline"]["auc"]["ci"])

    base = auc_width(1, patients)
    same_patients = auc_width(5, np.repeat(patients, 5))  # 5 images of each patient: no new information
    more_patients = auc_width(5, np.arange(5 * n))  # as if 5x more patients
    assert 0.75 * base < same_patients < 1.33 * base
    assert more_patients < 0.6 * base


def test_bootstrap_reports_skipped_resamples_and_is_seeded() -> None:
    y, probs = _binary(60, seed=8)
    y[:] = 0
    y[:2] = 1  # both positives from one patient: ~37 % of resamples draw no positive at all
    patients = np.r_[0, 0, np.arange(1, 59)]
    result = evaluate_predictions("binary", ["x"], y, probs, patients, [0.5], n_bootstrap=300, seed=3)
    used = result["bootstrap"]["n_used"]["headline"]["auc"]
    assert 100 < used < 300
    assert result["bootstrap"]["n_used"]["headline"]["specificity"] == 300
    assert result["bootstrap"]["n_used"]["per_class"]["x"]["auc"] == used
    again = evaluate_predictions("binary", ["x"], y, probs, patients, [0.5], n_bootstrap=300, seed=3)
    other = evaluate_predictions("binary", ["x"], y, probs, patients, [0.5], n_bootstrap=300, seed=4)
    assert again == result
    assert other["headline"]["specificity"]["ci"] != result["headline"]["specificity"]["ci"]


def test_bootstrap_does_not_depend_on_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    y, probs = _multilabel(200, seed=9)
    patients = np.arange(200) // 3
    whole = evaluate_predictions("multilabel", FINDINGS, y, probs, patients, None, n_bootstrap=100)
    monkeypatch.setattr(metrics, "_MAX_CHUNK_CELLS", 200 * 7)  # 15 chunks of 7 resamples
    assert evaluate_predictions("multilabel", FINDINGS, y, probs, patients, None, n_bootstrap=100) == whole


def test_bootstrap_is_vectorised(monkeypatch: pytest.MonkeyPatch) -> None:
    """1,000 resamples of 1,000 images are scored as one batch of draws, not one at a time (no clock)."""
    y, probs = _binary(1000, seed=10)
    patients = np.arange(1000) // 2
    chunks: list[tuple[int, ...]] = []
    real = metrics.resample_counts

    def counted(*args: object, **kwargs: object):
        for chunk in real(*args, **kwargs):  # type: ignore[arg-type]
            chunks.append(chunk.shape)
            yield chunk

    monkeypatch.setattr(metrics, "resample_counts", counted)
    evaluate_predictions("binary", ["x"], y, probs, patients, [0.5], n_bootstrap=1000)
    assert chunks == [(1000, 500)]


HEAD_KEYS = {"auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1"}
CLASS_KEYS = {"auc", "sensitivity", "specificity", "ppv", "npv", "f1", "n_pos", "n_neg", "threshold", "note"}


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_schema_is_complete_and_json_serialisable(task: str) -> None:
    if task == "binary":
        y, probs = _binary(120, seed=11)
        names, thresholds = ["pneumonia"], [0.5]
    elif task == "multiclass":
        y, probs = _multiclass(120, 3, seed=11)
        names, thresholds = ["a", "b", "c"], []
    else:
        y, probs = _multilabel(120, seed=11)
        names, thresholds = FINDINGS, [0.5] * 4
    patients = [f"p{i // 3}" for i in range(120)]
    result = evaluate_predictions(
        task, names, y, probs, patients, thresholds, negative_name="healthy", n_bootstrap=30, seed=2
    )
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    assert set(result) == {
        "task",
        "label_names",
        "negative_name",
        "n_images",
        "n_patients",
        "thresholds",
        "headline",
        "per_class",
        "confusion_matrix",
        "bootstrap",
    }
    assert (result["task"], result["label_names"], result["thresholds"]) == (task, names, thresholds)
    assert (result["n_images"], result["n_patients"]) == (120, 40)
    assert result["negative_name"] == ("healthy" if task == "binary" else None)
    assert set(result["headline"]) == HEAD_KEYS
    for entry in result["headline"].values():
        assert set(entry) == {"value", "ci"}
    assert list(result["per_class"]) == names
    for entry in result["per_class"].values():
        assert set(entry) == CLASS_KEYS
        assert all(
            set(entry[m]) == {"value", "ci"} for m in CLASS_KEYS - {"n_pos", "n_neg", "threshold", "note"}
        )
    confusion = result["confusion_matrix"]
    if task == "binary":
        assert confusion["labels"] == ["healthy", "pneumonia"] and np.shape(confusion["matrix"]) == (2, 2)
    elif task == "multiclass":
        assert confusion["labels"] == names and np.shape(confusion["matrix"]) == (3, 3)
    else:
        assert confusion["labels"] == names and set(confusion["per_class"]) == set(names)
        assert all(np.shape(m) == (2, 2) for m in confusion["per_class"].values())
    boot = result["bootstrap"]
    assert {k: boot[k] for k in ("n", "unit", "seed", "confidence")} == {
        "n": 30,
        "unit": "patient",
        "seed": 2,
        "confidence": 0.95,
    }
    assert set(boot["n_used"]["headline"]) == HEAD_KEYS and set(boot["n_used"]["per_class"]) == set(names)


def test_no_bootstrap_and_no_patient_ids() -> None:
    y, probs = _binary(80, seed=12)
    result = evaluate_predictions("binary", ["x"], y, probs, None, None, n_bootstrap=0)
    assert result["thresholds"] == [0.5]
    assert result["bootstrap"]["unit"] == "image" and result["n_patients"] == 80
    assert all(entry["ci"] is None and entry["value"] is not None for entry in result["headline"].values())


@pytest.mark.parametrize(
    ("task", "names", "targets", "probs", "message"),
    [
        ("binaryy", ["x"], [0, 1], [0.2, 0.8], "unknown task"),
        ("binary", ["normal", "x"], [0, 1], [0.2, 0.8], "one name, the positive class"),
        ("binary", ["x"], [0, 1], [-2.0, 3.0], "apply sigmoid or softmax"),
        ("binary", ["x"], [0, np.nan], [0.2, 0.8], "must be 0 or 1"),
        ("binary", ["x"], [0, 1], [0.2, np.nan], "NaN or infinity"),
        ("multiclass", ["a", "b"], [0, 2], [[0.5, 0.5], [0.1, 0.9]], "class indices in 0..1"),
        ("multilabel", ["a", "b"], [[0, 1]], [[0.1, 0.2], [0.3, 0.4]], "one shape"),
        ("multilabel", ["a", "b"], [[0, 2]], [[0.1, 0.2]], "0, 1 or NaN"),
        ("multilabel", ["a", "a"], [[0, 1]], [[0.1, 0.2]], "unique"),
    ],
)
def test_invalid_inputs_raise_clear_errors(task, names, targets, probs, message) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate_predictions(task, names, targets, probs, None, None, n_bootstrap=0)


def test_invalid_threshold_arguments() -> None:
    y, probs = _binary(20, seed=13)
    with pytest.raises(ValueError, match="2 finite thresholds"):
        evaluate_predictions(
            "multilabel", ["a", "b"], np.c_[y, y], np.c_[probs, probs], None, [0.5], n_bootstrap=0
        )
    with pytest.raises(ValueError, match="unknown threshold method"):
        choose_thresholds("binary", y, probs, method="f1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target_sensitivity"):
        choose_thresholds("binary", y, probs, method="sensitivity", target_sensitivity=1.5)
    with pytest.raises(ValueError, match="patient ids"):
        evaluate_predictions("binary", ["x"], y, probs, [1, 2, 3], None, n_bootstrap=0)
