"""The reliability diagram: predicted probability against observed frequency, before and after calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes

from trainer.calibration import ECE_BINS, Reliability, confidence_and_outcome, reliability_bins
from trainer.plots import _new_figure, _save
from trainer.task import Task

BEFORE_COLOUR = "#d95f02"
AFTER_COLOUR = "#1b6ac9"


def plot_reliability(
    before: np.ndarray,
    after: np.ndarray,
    targets: np.ndarray,
    task: Task | str,
    out_png: str | Path,
    *,
    title: str | None = None,
    ece_chance: float | None = None,
    n_bins: int = ECE_BINS,
) -> Path:
    """Write a reliability diagram of the probabilities before and after calibration, on one figure.

    Top: the mean predicted probability of each of `n_bins` equal-width bins against the observed frequency
    (of correct top-class answers; multi-label: of the finding), dots sized by the images in the bin, with
    the diagonal of a perfectly calibrated model. Bottom: how many items fall in each bin.

    Args:
        before: probabilities as the model gives them ((N,) binary, else (N, C)).
        after: the calibrated probabilities, same shape.
        targets: the labels (see `trainer.calibration.confidence_and_outcome`).
        task: the model's task.
        out_png: where to write the PNG.
        title: the figure title (e.g. "test split, 149 images").
        ece_chance: the calibrated model's chance ECE (95th percentile), shown in the legend.
        n_bins: bins, as for the ECE.
    """
    task = Task.parse(task)
    bins = {
        "before": reliability_bins(*confidence_and_outcome(before, targets, task), n_bins=n_bins),
        "after": reliability_bins(*confidence_and_outcome(after, targets, task), n_bins=n_bins),
    }
    fig = _new_figure(6.4, 7.0)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    # The top class of a binary (C-class) model has P >= 1/2 (1/C); a finding's probability can be anything.
    low = (
        0.0 if task is Task.MULTILABEL else 1.0 / max(2, np.asarray(before).reshape(len(before), -1).shape[1])
    )
    top.plot([0, 1], [0, 1], linestyle="--", color="0.55", linewidth=1, label="perfectly calibrated")
    largest = max(int(b.counts.max()) for b in bins.values()) or 1
    for name, colour in (("before", BEFORE_COLOUR), ("after", AFTER_COLOUR)):
        _plot_bins(top, bins[name], colour, _label(name, bins[name], ece_chance), largest)
    centres = (bins["before"].edges[:-1] + bins["before"].edges[1:]) / 2
    width = 1.0 / n_bins
    bottom.bar(centres - width / 4, bins["before"].counts, width / 2, color=BEFORE_COLOUR, label="before")
    bottom.bar(centres + width / 4, bins["after"].counts, width / 2, color=AFTER_COLOUR, label="after")
    if task is Task.MULTILABEL:
        top.set_ylabel("observed frequency of the finding")
        bottom.set_xlabel("predicted probability of each finding (pooled)")
    else:
        top.set_ylabel("observed share of correct answers")
        bottom.set_xlabel("probability of the top class (confidence)")
    top.set_xlim(low, 1.0)
    top.set_ylim(-0.02, 1.03)  # room for the dots at 0 and 1
    top.grid(alpha=0.3)
    # Above the axes, never over the dots (sparse bins can sit anywhere).
    top.legend(loc="lower center", bbox_to_anchor=(0.5, 1.01), ncol=2, fontsize=8.5, frameon=False)
    fig.suptitle(title or "Reliability diagram", fontsize=11)
    bottom.set_ylabel("items per bin")
    bottom.grid(alpha=0.3, axis="y")
    bottom.legend(loc="upper left", fontsize=8)
    return _save(fig, out_png)


def _label(name: str, bins: Reliability, ece_chance: float | None) -> str:
    text = f"{name} calibration: ECE {bins.ece:.3f}"
    if name == "after" and ece_chance is not None:
        text += f"\n(a calibrated model: < {ece_chance:.3f} by chance, 95 %)"
    return text


def _plot_bins(ax: Axes, bins: Reliability, colour: str, label: str, largest: int) -> None:
    used = bins.counts > 0
    sizes = 20 + 220 * bins.counts[used] / largest
    ax.plot(bins.confidence[used], bins.accuracy[used], color=colour, linewidth=1.5, label=label)
    ax.scatter(bins.confidence[used], bins.accuracy[used], s=sizes, color=colour, alpha=0.85, zorder=3)
