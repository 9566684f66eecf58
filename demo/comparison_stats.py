"""Is the difference real? The paired statistics and the subgroup table of a finished comparison.

`difference_report` takes a `demo.comparison.Comparison` with labels and asks `trainer.paired_stats` for each
column's AUC with a patient-level bootstrap CI and, for each pair, the paired bootstrap CI of the AUC
difference and McNemar's test on the decisions, each said in a sentence. `subgroup_rows` scores every column
per sex / age band / view (`trainer.subgroups`) where the images carry them.

Which question: when every column that ran has the same classes (preprocessing variants, or models trained
alike) the columns are compared on those classes at their own thresholds; otherwise on the one question all
of them answer, "is the image abnormal?", with `demo.comparison.abnormal_score` (0.5 = the model's own call,
so McNemar's test compares the decisions shown in the grid). Only images that every compared column scored
and whose label maps take part; images the OOD gate flagged for any column are left out (their decisions
are withheld and their probabilities not meaningful), and the report says how many.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from demo.comparison import (
    Comparison,
    ImageItem,
    abnormal_score,
    has_abnormal_call,
    label_abnormal,
    label_target,
)
from trainer.paired_stats import ModelAUC, Pair, compare_predictions
from trainer.subgroups import subgroup_metrics
from trainer.task import Task

log = logging.getLogger(__name__)

__all__ = [
    "MIN_IMAGES",
    "MIN_GROUP_IMAGES",
    "DifferenceReport",
    "difference_report",
    "split_subgroups",
    "subgroup_rows",
]

MIN_IMAGES = 4  # below this many labelled images no resampling can tell a difference from chance
MIN_GROUP_IMAGES = 8  # smaller subgroups are shown as counts only (the training reports use 20)
N_BOOTSTRAP = 2000
COUNTS_ONLY = "counts only"
_KEYS = ("by", "group", "images")


@dataclass(frozen=True)
class _Question:
    """What the columns are scored on: their own classes, or "abnormal?"."""

    own_classes: bool
    task: str
    label_names: list[str]
    negative_name: str
    targets: np.ndarray
    probs: dict[str, np.ndarray]  # column name -> (N,) or (N, C)
    thresholds: dict[str, list[float] | None]
    patient_ids: list[str] | None
    images: list[ImageItem]


@dataclass(frozen=True)
class DifferenceReport:
    """The answer to "is the difference real?", in numbers and in words.

    Attributes:
        question: what was compared, in words.
        n_images: images in the comparison.
        models: each column's AUC with its CI (empty when nothing could be computed).
        pairs: each pair's paired difference and McNemar's test, with its sentence.
        notes: what was left out and why, in sentences.
    """

    question: str
    n_images: int
    models: tuple[ModelAUC, ...] = ()
    pairs: tuple[Pair, ...] = ()
    notes: tuple[str, ...] = ()

    def sentences(self) -> list[str]:
        """The pairs' sentences, then the notes."""
        return [pair.sentence for pair in self.pairs] + list(self.notes)

    def auc_rows(self) -> list[dict[str, object]]:
        """One table row per column: its AUC and 95 % interval."""
        return [
            {
                "column": model.name,
                "AUC": "" if model.auc is None else f"{model.auc:.2f}",
                "95 % interval": "" if model.ci is None else f"{model.ci[0]:.2f} to {model.ci[1]:.2f}",
            }
            for model in self.models
        ]

    def markdown(self) -> str:
        """The report as Markdown: the question, then a bullet per pair and note."""
        lines = [f"**Is the difference real?** {self.question}"]
        lines += [f"- {sentence}" for sentence in self.sentences()]
        return "\n".join(lines)


def difference_report(
    comparison: Comparison, *, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0
) -> DifferenceReport | None:
    """Paired statistics for a labelled comparison; None when no image has a label.

    A tiny set, labels of one class only, or fewer than two columns with results give a report whose
    notes say so, never an error.
    """
    if not comparison.labelled:
        return None
    question, notes = _question(comparison)
    if question is None:
        return DifferenceReport("Nothing could be compared.", 0, notes=tuple(notes))
    n = len(question.images)
    on = f"Compared on {n} labelled image{'s' if n != 1 else ''}"
    asked = (
        f"{on}, by the columns' own classes."
        if question.own_classes
        else f"{on}, on the question every model answers: is the image abnormal? (These AUCs are for "
        "that question, so they can differ from the summary's, over each model's own classes.)"
    )
    if n < MIN_IMAGES:
        notes.insert(
            0,
            f"Only {n} labelled image{'s' if n != 1 else ''} can be compared: too few to tell a real "
            f"difference from chance (at least {MIN_IMAGES} are needed, and a few dozen say much more).",
        )
        return DifferenceReport(asked, n, notes=tuple(notes))
    if _one_class(question):
        notes.insert(
            0,
            "All the labelled images are of one class, so no AUC can be computed (it ranks positives "
            "above negatives); only the decisions are compared.",
        )
    try:
        result = compare_predictions(
            question.task, question.label_names, question.targets, question.probs, question.patient_ids,
            question.thresholds, n_bootstrap=n_bootstrap, seed=seed,
        )  # fmt: skip
    except ValueError as err:  # inputs the statistics cannot take: say so in place
        log.info("paired statistics not computed: %s", err)
        return DifferenceReport(asked, n, notes=(f"The statistics could not be computed: {err}.", *notes))
    unit = "patients" if result.unit == "patient" else "images"
    notes.append(
        f"Intervals: {result.n_bootstrap} bootstrap resamples of the {result.n_patients} {unit} "
        f"({100 * result.confidence:.0f} %); on a few images they are wide, and that is the honest answer."
    )
    return DifferenceReport(asked, n, tuple(result.models), tuple(result.pairs), tuple(notes))


def subgroup_rows(comparison: Comparison, *, min_images: int = MIN_GROUP_IMAGES) -> list[dict[str, object]]:
    """A row per subgroup (sex, age band, view) with its images and, per column, the AUC with its interval,
    sensitivity and specificity at the model's own decision; groups under `min_images` as counts only.

    Empty when the images carry no subgroup values, or nothing labelled could be compared.
    """
    question, _ = _question(comparison)
    if question is None:
        return []
    names = list(dict.fromkeys(key for item in question.images for key, _ in item.groups))
    if not names:
        return []
    columns = {name: [dict(item.groups).get(name) for item in question.images] for name in names}
    table: dict[tuple[str, str], dict[str, object]] = {}
    for column, probs in question.probs.items():
        result = subgroup_metrics(
            question.task, question.label_names, question.targets, probs, question.patient_ids,
            question.thresholds.get(column), columns, negative_name=question.negative_name, n_bootstrap=500,
            min_images=min_images,
        )  # fmt: skip
        for by, groups in result["columns"].items():
            for group in groups:
                row = table.setdefault(
                    (by, group["group"]),
                    {"by": by, "group": group["group"], "images": group["n_images"]},
                )
                if group["auc"] is None and group["sensitivity"] is None:
                    row[column] = COUNTS_ONLY
                else:
                    row[column] = "; ".join(
                        f"{short} {_metric(group[name]) or 'n/a'}"
                        for short, name in (("AUC", "auc"), ("sens", "sensitivity"), ("spec", "specificity"))
                    )
    return list(table.values())


def split_subgroups(rows: list[dict[str, object]]) -> tuple[list[dict[str, object]], str]:
    """The subgroup rows with numbers, and the counts-only groups in one sentence (a table of "counts
    only" says less than a line), e.g. "Counts only (fewer than 8 images): sex F 4, M 7; view PA 7."."""
    scored = [
        row for row in rows if any(value != COUNTS_ONLY for key, value in row.items() if key not in _KEYS)
    ]
    counted = [row for row in rows if row not in scored]
    by: dict[str, list[str]] = {}
    for row in counted:
        by.setdefault(str(row["by"]), []).append(f"{row['group']} {row['images']}")
    if not by:
        return scored, ""
    groups = "; ".join(f"{name} {', '.join(parts)}" for name, parts in by.items())
    return scored, f"Counts only (groups of fewer than {MIN_GROUP_IMAGES} images): {groups}."


def _metric(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("value") is None:
        return ""
    ci = entry.get("ci")
    return f"{entry['value']:.2f}" + (f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci else "")


def _question(comparison: Comparison) -> tuple[_Question | None, list[str]]:
    """The images, targets and scores every compared column shares, and notes on what was left out."""
    notes: list[str] = []
    failed = comparison.failed_columns()
    ran = [(c, column) for c, column in enumerate(comparison.columns) if column.info is not None]
    ran = [(c, column) for c, column in ran if column.name not in failed]
    if failed:
        notes.append(f"Left out (no results): {', '.join(failed)}.")
    own = len({tuple(column.info.label_names) for _, column in ran if column.info is not None}) == 1
    if not own:  # "abnormal?" needs a normal class to tell by
        no_call = [column.name for _, column in ran if column.info and not has_abnormal_call(column.info)]
        if no_call:
            notes.append(f"Left out (no normal class, so no abnormal call): {', '.join(no_call)}.")
            ran = [(c, column) for c, column in ran if column.name not in no_call]
    if len(ran) < 2:
        notes.insert(
            0, f"Only {len(ran)} column{'s' if len(ran) != 1 else ''} can be compared: pairs need two."
        )
        return None, notes
    infos = {column.name: column.info for _, column in ran if column.info is not None}
    first = next(iter(infos.values()))
    images, targets, flagged, unscored = [], [], 0, 0
    probs: dict[str, list[Any]] = {name: [] for name in infos}
    for row in comparison.rows:
        cells = [row.cells[c] for c, _ in ran]
        target = label_target(first, row.image.label) if own else label_abnormal(row.image.label)
        if target is None:
            continue
        if any(cell.prediction is None for cell in cells):
            unscored += 1
            continue
        if any(cell.withheld for cell in cells):
            flagged += 1
            continue
        images.append(row.image)
        targets.append(target)
        for (_, column), cell in zip(ran, cells, strict=True):
            assert cell.prediction is not None and column.info is not None
            p = cell.prediction.probabilities
            if not own:
                probs[column.name].append(abnormal_score(column.info, p))
            elif Task.parse(column.info.task).single_logit:
                probs[column.name].append(p[column.info.label_names[0]])
            else:
                probs[column.name].append([p[name] for name in column.info.label_names])
    if flagged:
        notes.append(
            f"{flagged} labelled image{'s were' if flagged != 1 else ' was'} flagged as unlike the training "
            "images for at least one column and left out: those decisions are withheld."
        )
    if unscored:
        notes.append(
            f"{unscored} labelled image{'s' if unscored != 1 else ''} left out: a column gave no result."
        )
    if not images:
        notes.insert(0, "No labelled image has a result in every compared column.")
        return None, notes
    task = first.task if own else "binary"
    has_patients = all(item.patient_id for item in images)
    return (
        _Question(
            own_classes=own,
            task=task,
            label_names=list(first.label_names) if own else ["abnormal"],
            negative_name=(first.negative_name or "normal") if own else "normal",
            targets=np.asarray(targets, dtype=np.int64 if Task.parse(task).exclusive else np.float64),
            probs={name: np.asarray(values, dtype=np.float64) for name, values in probs.items()},
            thresholds={
                name: (None if Task.parse(task).exclusive else list(info.thresholds)) if own else [0.5]
                for name, info in infos.items()
            },
            patient_ids=[str(item.patient_id) for item in images] if has_patients else None,
            images=images,
        ),
        notes,
    )


def _one_class(question: _Question) -> bool:
    y = question.targets
    if Task.parse(question.task).exclusive:
        return len(np.unique(y)) < 2
    flat = y.reshape(len(y), -1)
    return not any(len(np.unique(flat[:, k])) > 1 for k in range(flat.shape[1]))
