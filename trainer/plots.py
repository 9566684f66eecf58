"""Evaluation and training plots written as PNG files: ROC curves, confusion matrices, training curves.

Figures are built as ``matplotlib.figure.Figure`` objects and rendered by the Agg canvas, never through
pyplot, so nothing here touches global plotting state (safe in the trainer, in tests and in UI threads).
Every PNG is exactly ``figsize * DPI`` pixels: layouts are constrained, never cropped with a tight bbox.
"""

from __future__ import annotations

import csv
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_auc_score, roc_curve

from trainer.metrics import one_vs_rest
from trainer.task import Task

DPI = 120
# More curves than this and the ROC legend moves beside the axes.
_LEGEND_INSIDE_MAX = 6


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=DPI)
    return out


def _line_style(rank: int) -> dict[str, Any]:
    """Ten distinct colours, then the same ones dashed (tab20's paired shades are too alike to tell apart)."""
    cmap: Colormap = colormaps["tab10"]
    return {"color": cmap(rank % cmap.N), "linestyle": "-" if rank < cmap.N else (0, (5, 2))}


def plot_roc(
    task: Task | str,
    label_names: Sequence[str],
    targets: Any,
    probs: Any,
    out_png: str | Path,
    thresholds: Sequence[float] | None = None,
    title: str | None = None,
) -> Path:
    """Plot ROC curves with their AUCs, the operating points and the chance line.

    Binary: one curve. Multiclass: one one-vs-rest curve per class, operating point = the argmax
    decisions. Multilabel: one curve per finding with both positive and negative known labels (the others
    are listed as skipped), legend sorted by AUC. Operating points are drawn where ``thresholds`` are given
    (binary/multilabel) and always for multiclass.

    Args:
        task: a Task or its name.
        label_names: the positive class for binary, else one name per class / finding.
        targets: targets in the task's shape (NaN = unknown for multilabel).
        probs: probabilities in the task's shape.
        out_png: where to write the PNG (6 x 5.6 in, or 9.5 x 6 in with more than 6 curves, at DPI).
        thresholds: decision thresholds (one per column) to mark on the curves.
        title: figure title; defaults to "ROC curve" / "ROC curves (one vs rest)".

    Returns:
        The path written.
    """
    task = Task.parse(task)
    y, p = one_vs_rest(task, targets, probs)
    names = [str(name) for name in label_names]
    if len(names) != p.shape[1]:
        raise ValueError(f"{len(names)} label names for {p.shape[1]} probability columns")
    if thresholds is not None and not task.exclusive and len(thresholds) != p.shape[1]:
        raise ValueError(f"{len(thresholds)} thresholds for {p.shape[1]} probability columns")
    decisions = np.eye(p.shape[1], dtype=bool)[p.argmax(axis=1)] if task.exclusive else None

    curves, skipped = [], []
    for c, name in enumerate(names):
        known = ~np.isnan(y[:, c])
        yc, pc = y[known, c], p[known, c]
        if yc.size == 0 or yc.min() == yc.max():
            skipped.append(name)
            continue
        fpr, tpr, _ = roc_curve(yc, pc)
        if decisions is not None:
            pred = decisions[known, c]
        elif thresholds is not None:
            pred = pc >= thresholds[c]
        else:
            pred = None
        point = None if pred is None else (float(pred[yc == 0].mean()), float(pred[yc == 1].mean()))
        curves.append((float(roc_auc_score(yc, pc)), name, fpr, tpr, point))
    curves.sort(key=lambda curve: -curve[0])

    many = len(curves) > _LEGEND_INSIDE_MAX
    fig = _new_figure(9.5 if many else 6.0, 6.0 if many else 5.6)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance (AUC 0.50)")
    for rank, (auc, name, fpr, tpr, point) in enumerate(curves):
        label = f"AUC {auc:.3f}" if task.single_logit else f"{name} ({auc:.3f})"
        style = _line_style(rank)
        ax.plot(fpr, tpr, linewidth=1.8, label=label, **style)
        if point is not None:
            ax.plot(*point, marker="o", markersize=7, color=style["color"], markeredgecolor="black", zorder=3)
            if task.single_logit and thresholds is not None:
                ax.annotate(
                    f"threshold {thresholds[0]:.3g}\nsens {point[1]:.2f}, spec {1 - point[0]:.2f}",
                    xy=point,
                    xytext=(12, -28),
                    textcoords="offset points",
                    fontsize=9,
                    arrowprops={"arrowstyle": "-", "color": "0.3"},
                )
    handles, labels = ax.get_legend_handles_labels()
    if any(curve[4] is not None for curve in curves):
        point_label = "argmax decision" if task.exclusive else "operating point"
        handles.append(
            Line2D([], [], marker="o", linestyle="", color="white", markeredgecolor="black", markersize=7)
        )
        labels.append(point_label)
    if skipped:
        handles.append(Line2D([], [], linestyle=""))
        labels.append(textwrap.fill("skipped (one class only): " + ", ".join(skipped), width=40))
    legend_title = "AUC" if task.single_logit else f"{task.member} (AUC)"
    if many:
        ax.legend(
            handles, labels, title=legend_title, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9
        )
    else:
        ax.legend(handles, labels, title=legend_title, loc="lower right", fontsize=9)
    if not curves:
        ax.text(0.5, 0.5, "no class has both positive\nand negative labels", ha="center", va="center")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.grid(alpha=0.3)
    default_title = "ROC curve" if task.single_logit else "ROC curves (one vs rest)"
    ax.set_title(title or default_title, fontsize=12)
    return _save(fig, out_png)


def plot_confusion(
    metrics_or_matrix: Mapping[str, Any] | Any,
    out_png: str | Path,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Plot a confusion matrix with counts and row-normalised percentages (rows = truth).

    Args:
        metrics_or_matrix: the dict from ``trainer.metrics.evaluate_predictions``, its
            ``"confusion_matrix"`` block, or a square count matrix (then pass ``labels``). For a multilabel
            result the plot is a per-finding bar chart of sensitivity and specificity at the thresholds
            (with their CIs when the full metrics dict is given), which reads better than 14 small 2x2s.
        out_png: where to write the PNG (size grows with the number of classes / findings).
        labels: class names for a bare matrix.
        title: figure title.

    Returns:
        The path written.
    """
    per_class_metrics: Mapping[str, Any] = {}
    if isinstance(metrics_or_matrix, Mapping):
        if "confusion_matrix" in metrics_or_matrix:
            block, per_class_metrics = metrics_or_matrix["confusion_matrix"], metrics_or_matrix["per_class"]
        else:
            block = metrics_or_matrix
        if "per_class" in block:
            return _plot_multilabel_rates(block, per_class_metrics, out_png, title)
        if "matrix" not in block:
            raise ValueError("expected an evaluate_predictions dict or its 'confusion_matrix' block")
        matrix, names = np.asarray(block["matrix"]), list(block["labels"])
    else:
        matrix = np.asarray(metrics_or_matrix)
        names = list(labels) if labels is not None else [str(i) for i in range(len(matrix))]
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(names):
        raise ValueError(
            f"need a square matrix with one label per row; got {matrix.shape} and {len(names)} labels"
        )

    n = len(names)
    size = max(4.8, 0.9 * n + 2.6)
    fig = _new_figure(size + 0.6, size)
    ax = fig.add_subplot()
    row_totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, row_totals, out=np.zeros(matrix.shape, dtype=float), where=row_totals > 0)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    colorbar = fig.colorbar(image, ax=ax, shrink=0.8)
    colorbar.set_label("share of the true class (row)")
    fontsize = 11 if n <= 4 else 9 if n <= 8 else 7
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{matrix[i, j]:d}\n{100 * share[i, j]:.1f}%",
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white" if share[i, j] > 0.55 else "black",
            )
    rotate = n > 4 or max(len(name) for name in names) > 10
    ax.set_xticks(range(n), names, rotation=35 if rotate else 0, ha="right" if rotate else "center")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"Confusion matrix (n = {int(matrix.sum())})", fontsize=12)
    return _save(fig, out_png)


def _plot_multilabel_rates(
    block: Mapping[str, Any], per_class_metrics: Mapping[str, Any], out_png: str | Path, title: str | None
) -> Path:
    """Horizontal bars of per-finding sensitivity and specificity from the 2x2 counts, CIs when known."""
    names = list(block["labels"])
    counts = np.asarray([block["per_class"][name] for name in names], dtype=float).reshape(-1, 2, 2)
    (tn, fp), (fn, tp) = counts[:, 0].T, counts[:, 1].T
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = {"sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp)}

    fig = _new_figure(8.5, 1.6 + 0.42 * len(names))
    ax = fig.add_subplot()
    rows = np.arange(len(names))
    height = 0.38
    for offset, (metric, color) in zip(
        (-height / 2, height / 2), (("sensitivity", "C3"), ("specificity", "C0")), strict=True
    ):
        values = np.nan_to_num(rates[metric])
        errors = np.zeros((2, len(names)))
        for k, name in enumerate(names):
            ci = per_class_metrics.get(name, {}).get(metric, {}).get("ci")
            if ci is not None and np.isfinite(rates[metric][k]):
                errors[:, k] = [values[k] - ci[0], ci[1] - values[k]]
        ax.barh(
            rows + offset,
            values,
            height=height,
            color=color,
            label=metric,
            xerr=errors,
            error_kw={"ecolor": "0.25", "capsize": 2, "linewidth": 1},
        )
    for k in range(len(names)):
        positives, negatives = int(tp[k] + fn[k]), int(tn[k] + fp[k])
        missing = "no positives" if positives == 0 else "no negatives" if negatives == 0 else ""
        label = f"{positives} pos / {negatives} neg" + (f"  ({missing})" if missing else "")
        ax.text(1.02, k, label, va="center", fontsize=8.5, transform=ax.get_yaxis_transform())
    ax.set_yticks(rows, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.005)
    ax.set_xlabel("rate at the finding's threshold")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False)
    ax.set_title(title or "Sensitivity and specificity per finding", fontsize=12, pad=24)
    return _save(fig, out_png)


def _read_metrics_csv(path: Path) -> dict[str, np.ndarray]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "epoch" not in rows[0]:
        raise ValueError(f"{path} has no rows or no 'epoch' column; expected the trainer's metrics.csv")

    def number(text: str | None) -> float:
        try:
            return float(text) if text not in (None, "") else math.nan
        except ValueError:
            return math.nan

    return {column: np.array([number(row.get(column)) for row in rows]) for column in rows[0]}


def _mark_phases(ax: Axes, epochs: np.ndarray, phases: np.ndarray | None) -> None:
    """Dotted lines where the phase changes (e.g. frozen backbone -> all layers), phase names on top."""
    if phases is None or len(np.unique(phases)) < 2:
        return
    changes = np.flatnonzero(np.diff(phases) != 0)
    boundaries = (epochs[changes] + epochs[changes + 1]) / 2
    for boundary in boundaries:
        ax.axvline(boundary, color="0.4", linestyle=":", linewidth=1.2)
    edges = np.r_[epochs[0], boundaries, epochs[-1]]
    # A secondary axis keeps the phase names off the curves and the legends.
    top = ax.secondary_xaxis("top")
    top.set_xticks((edges[:-1] + edges[1:]) / 2, [f"phase {phases[k]:g}" for k in np.r_[0, changes + 1]])
    top.tick_params(length=0, labelsize=9, labelcolor="0.3")


def plot_training_curves(metrics_csv: str | Path, out_png: str | Path) -> Path:
    """Plot losses, validation metrics and the learning rate per epoch from the trainer's metrics.csv.

    The CSV has the columns ``epoch, phase, train_loss, val_loss, val_<metric>..., lr, images_per_s,
    seconds``; missing columns or empty cells are skipped. Phase changes are drawn as dotted lines and the
    best epoch of the first validation metric is starred.

    Args:
        metrics_csv: the trainer's metrics.csv.
        out_png: where to write the PNG (13 x 4.2 in at DPI).

    Returns:
        The path written.
    """
    data = _read_metrics_csv(Path(metrics_csv))
    epochs = data["epoch"]
    phases = data.get("phase")
    if phases is not None and np.isnan(phases).any():
        phases = None
    has_lr = "lr" in data and np.isfinite(data["lr"]).any()
    fig = _new_figure(13.0, 4.2)
    axes = fig.subplots(1, 3 if has_lr else 2, width_ratios=[1, 1, 0.75] if has_lr else [1, 1])

    loss_ax = axes[0]
    for column, style in (("train_loss", "-"), ("val_loss", "--")):
        if column in data and np.isfinite(data[column]).any():
            loss_ax.plot(
                epochs, data[column], style, marker="o", markersize=3, label=column.replace("_", " ")
            )
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss")

    metric_ax = axes[1]
    metric_columns = [
        c for c in data if c.startswith("val_") and c != "val_loss" and np.isfinite(data[c]).any()
    ]
    for k, column in enumerate(metric_columns):
        values = data[column]
        metric_ax.plot(epochs, values, marker="o", markersize=3, color=f"C{k}", label=column[len("val_") :])
        if k == 0:
            best = int(np.nanargmax(values))
            metric_ax.plot(
                epochs[best],
                values[best],
                marker="*",
                markersize=14,
                color=f"C{k}",
                markeredgecolor="black",
                linestyle="",
                label=f"best {column[4:]} {values[best]:.3f}",
            )
    metric_ax.set(xlabel="epoch", ylabel="validation metric", title="Validation metrics")
    if not metric_columns:
        metric_ax.text(
            0.5, 0.5, "no val_<metric> columns", ha="center", va="center", transform=metric_ax.transAxes
        )

    if has_lr:
        axes[2].plot(epochs, data["lr"], marker="o", markersize=3, color="C4")
        axes[2].set(xlabel="epoch", ylabel="learning rate", title="Learning rate", yscale="log")

    for ax in axes:
        _mark_phases(ax, epochs, phases)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=9)
    return _save(fig, out_png)
