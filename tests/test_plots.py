"""trainer.plots writes non-empty PNGs of the documented size, for every task and for degenerate inputs."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT
from tests.test_metrics import FINDINGS, _binary, _multiclass, _multilabel
from trainer.metrics import choose_thresholds, evaluate_predictions
from trainer.plots import DPI, plot_confusion, plot_roc, plot_training_curves


def _assert_size(path: Path, inches: tuple[float, float]) -> None:
    """A drawn PNG of figsize * DPI pixels, give or take the pixel matplotlib rounds away."""
    assert path.is_file() and path.stat().st_size > 5000, "PNG missing or suspiciously small"
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        # Mostly white pixels only would mean nothing was drawn.
        assert np.asarray(image.convert("L")).std() > 10
    assert abs(width - inches[0] * DPI) <= 1 and abs(height - inches[1] * DPI) <= 1, (width, height)


def test_roc_binary(tmp_path: Path) -> None:
    y, probs = _binary(300, seed=0)
    out = plot_roc("binary", ["pneumonia"], y, probs, tmp_path / "sub" / "roc.png", thresholds=[0.5])
    assert out == tmp_path / "sub" / "roc.png"
    _assert_size(out, (6.0, 5.6))


def test_roc_multiclass_without_thresholds(tmp_path: Path) -> None:
    y, probs = _multiclass(300, 4, seed=0)
    _assert_size(plot_roc("multiclass", list("abcd"), y, probs, tmp_path / "roc.png"), (6.0, 5.6))


def test_roc_multilabel_many_findings_skips_one_class_findings(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = [f"finding {i}" for i in range(14)]
    y = (rng.random((400, 14)) < 0.15).astype(float)
    y[:, -1] = 0.0  # no positives: skipped, not a crash
    y[rng.random(y.shape) < 0.1] = np.nan
    probs = 1 / (1 + np.exp(-(rng.normal(size=y.shape) + 1.5 * np.nan_to_num(y) - 1.5)))
    thresholds = choose_thresholds("multilabel", y, probs)
    out = plot_roc(
        "multilabel", names, y, probs, tmp_path / "roc.png", thresholds=thresholds, title="NIH test"
    )
    _assert_size(out, (9.5, 6.0))


def test_roc_with_no_evaluable_class_still_draws(tmp_path: Path) -> None:
    probs = np.linspace(0, 1, 20)
    _assert_size(plot_roc("binary", ["x"], np.zeros(20), probs, tmp_path / "roc.png"), (6.0, 5.6))


def test_roc_rejects_mismatched_names(tmp_path: Path) -> None:
    y, probs = _multilabel(50, seed=0)
    with pytest.raises(ValueError, match="3 label names for 4"):
        plot_roc("multilabel", FINDINGS[:3], y, probs, tmp_path / "roc.png")


def test_confusion_from_binary_and_multiclass_results(tmp_path: Path) -> None:
    y, probs = _binary(200, seed=1)
    result = evaluate_predictions("binary", ["pneumonia"], y, probs, None, [0.5], n_bootstrap=0)
    _assert_size(plot_confusion(result, tmp_path / "binary.png"), (5.4, 4.8))
    y, probs = _multiclass(200, 5, seed=1)
    result = evaluate_predictions("multiclass", list("abcde"), y, probs, None, None, n_bootstrap=0)
    side = 0.9 * 5 + 2.6
    _assert_size(plot_confusion(result["confusion_matrix"], tmp_path / "mc.png"), (side + 0.6, side))


def test_confusion_from_a_bare_matrix(tmp_path: Path) -> None:
    matrix = np.array([[50, 3, 0], [4, 40, 6], [0, 0, 0]])  # an empty row must not divide by zero
    out = plot_confusion(matrix, tmp_path / "cm.png", labels=["a", "b", "c"], title="counts")
    side = 0.9 * 3 + 2.6
    _assert_size(out, (side + 0.6, side))
    with pytest.raises(ValueError, match="square matrix"):
        plot_confusion(np.ones((2, 3)), tmp_path / "bad.png")


def test_confusion_for_multilabel_is_a_per_finding_chart(tmp_path: Path) -> None:
    y, probs = _multilabel(300, seed=2)
    y[:, 3] = np.where(np.isnan(y[:, 3]), np.nan, 0.0)
    result = evaluate_predictions("multilabel", FINDINGS, y, probs, None, None, n_bootstrap=50)
    expected = (8.5, 1.6 + 0.42 * len(FINDINGS))
    _assert_size(plot_confusion(result, tmp_path / "with_ci.png"), expected)
    _assert_size(plot_confusion(result["confusion_matrix"], tmp_path / "counts_only.png"), expected)


def _write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_training_curves_with_two_phases(tmp_path: Path) -> None:
    rows = [
        {
            "epoch": e,
            "phase": 1 if e <= 3 else 2,
            "train_loss": 0.7 / e,
            "val_loss": 0.6 / e + 0.1,
            "val_auc": 0.9 - 0.2 / e,
            "val_accuracy": 0.85 - 0.2 / e,
            "lr": 1e-3 if e <= 3 else 1e-4 / e,
            "images_per_s": 120.0,
            "seconds": 30.0,
        }
        for e in range(1, 11)
    ]
    rows[4]["val_loss"] = ""  # a missing value is skipped, not a crash
    out = plot_training_curves(_write_csv(tmp_path / "metrics.csv", rows), tmp_path / "curves.png")
    _assert_size(out, (13.0, 4.2))


def test_training_curves_minimal_columns(tmp_path: Path) -> None:
    rows = [{"epoch": e, "train_loss": 1.0 / e} for e in range(1, 4)]
    out = plot_training_curves(_write_csv(tmp_path / "metrics.csv", rows), tmp_path / "curves.png")
    _assert_size(out, (13.0, 4.2))
    (tmp_path / "empty.csv").write_text("step,loss\n")
    with pytest.raises(ValueError, match="metrics.csv"):
        plot_training_curves(tmp_path / "empty.csv", tmp_path / "x.png")


def test_plots_never_touch_pyplot(tmp_path: Path) -> None:
    code = (
        "import sys, numpy as np\n"
        "from trainer.plots import plot_roc\n"
        f"plot_roc('binary', ['x'], [0, 1, 0, 1], [0.1, 0.8, 0.3, 0.6], {str(tmp_path / 'r.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
