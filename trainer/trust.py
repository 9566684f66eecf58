"""The calibration and OOD sections of a report (fit, evaluate, calibrate): one place for their layout.

metrics.json (fit) holds, beside "val" and "test"::

    "calibration": Calibration.to_dict(), its "metrics" {split: {"before", "after", "ece_chance_95"}},
    "ood": FeatureStatistics.config_entry() + {"test_flagged": share of test images, "n_test": int}

`evaluate` writes the same "calibration" for the split it scores, and "ood" with "split", "flagged" and
"n_scored" for that split.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from trainer.calibration import Calibration, compare_calibration
from trainer.ood import FeatureStatistics
from trainer.task import Task

log = logging.getLogger(__name__)

RELIABILITY_PNG = "reliability.png"


def with_split_metrics(
    calibration: Calibration, splits: Mapping[str, tuple[np.ndarray, np.ndarray]], task: Task | str
) -> Calibration:
    """`calibration` carrying before/after metrics for each split's (raw probabilities, targets)."""
    metrics = {
        name: compare_calibration(probs, calibration.apply(probs, task), targets, task)
        for name, (probs, targets) in splits.items()
    }
    return calibration.with_metrics({**calibration.metrics, **metrics})


def write_reliability(
    calibration: Calibration,
    probs: np.ndarray,
    targets: np.ndarray,
    task: Task | str,
    out_png: Path,
    split: str,
) -> Path:
    """The reliability diagram of one split, before and after `calibration` (its chance ECE in the legend)."""
    from trainer.calibration_plots import plot_reliability

    chance = (calibration.metrics.get(split) or {}).get("ece_chance_95")
    return plot_reliability(
        probs,
        calibration.apply(probs, task),
        targets,
        task,
        out_png,
        title=f"{split} split, {len(probs)} images",
        ece_chance=chance,
    )


def flagged_share(stats: FeatureStatistics, features: np.ndarray) -> float:
    """The share of images whose feature score exceeds the gate's threshold."""
    return float(np.mean(stats.flagged(stats.score(features)))) if len(features) else 0.0


def ood_section(stats: FeatureStatistics, test_features: np.ndarray) -> dict[str, Any]:
    """fit's metrics.json "ood": the stored entry, and the share of test images the feature score flags."""
    return {
        **stats.config_entry(),
        "test_flagged": flagged_share(stats, test_features),
        "n_test": len(test_features),
    }


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """Before/after ECE, Brier and NLL per split, and the gate's flagged share, in words, from a metrics.json
    (fit's or evaluate's) or any mapping with its "calibration" and "ood" sections."""
    lines = []
    ood = report.get("ood") or {}
    for split, entry in ((report.get("calibration") or {}).get("metrics") or {}).items():
        b, a = entry["before"], entry["after"]
        lines.append(
            f"{split}: ECE {b['ece']:.3f} -> {a['ece']:.3f} (chance 95 %: {entry['ece_chance_95']:.3f}), "
            f"Brier {b['brier']:.3f} -> {a['brier']:.3f}, NLL {b['nll']:.3f} -> {a['nll']:.3f}"
        )
    if "flagged" in ood:
        lines.append(
            f"{ood['split']}: {100 * ood['flagged']:.1f} % of {ood['n_scored']} images flagged by the gate"
        )
    if "test_flagged" in ood:
        lines.append(f"test: {100 * ood['test_flagged']:.1f} % of {ood['n_test']} images flagged by the gate")
    if "note" in ood:
        lines.append(f"OOD gate: {ood['note']}")
    return lines
