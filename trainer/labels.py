"""Label tables: the images of a dataset with their patient ids and targets, and labels derived from them.

A :class:`LabelTable` comes from a label source - :func:`trainer.label_readers.read_folder_labels`,
:func:`trainer.label_readers.read_csv_labels`, :func:`trainer.nih.read_nih_labels`,
:func:`trainer.hf_datasets.read_hf_labels` or :func:`trainer.tfrecords.read_tfrecord_labels` - and can then
be narrowed (:func:`select_findings`) or turned into normal-versus-abnormal labels (:func:`derive_binary`).
Its images are named by reference strings that its :class:`~trainer.image_sources.ImageSource` reads.

Targets follow the task kinds used everywhere in chexlab (:class:`trainer.task.Task`): binary (N,) float32 in
{0, 1}; multiclass (N,) int64 class indices; multilabel (N, C) float32 0/1 with NaN = unknown.

Every problem with labels or image files raises :class:`DataError`, whose message lists all the problems found
(see :func:`problem_report`).
"""

from __future__ import annotations

import difflib
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from trainer.errors import ChexlabError
from trainer.image_sources import FileImages, ImageSource
from trainer.task import Task

__all__ = ["DataError", "LabelTable", "derive_binary", "select_findings"]

MAX_LISTED_PROBLEMS = 50


class DataError(ChexlabError, ValueError):
    """Labels or image files that cannot be used; the message lists every problem found."""


def problem_report(header: str, problems: Sequence[str], advice: str = "") -> str:
    """``header:``, at most MAX_LISTED_PROBLEMS problem lines, a count of the rest, then ``advice``."""
    lines = [f"{header}:", *(f"  {p}" for p in problems[:MAX_LISTED_PROBLEMS])]
    if len(problems) > MAX_LISTED_PROBLEMS:
        lines.append(f"  ... and {len(problems) - MAX_LISTED_PROBLEMS} more")
    if advice:
        lines.append(advice)
    return "\n".join(lines)


def loose_key(name: str) -> str:
    """Column/label names compared loosely: 'No Finding' == 'No_Finding' == 'no-finding'."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` with the closest of ``choices``, or "" when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


@dataclass
class LabelTable:
    """Images with their patient ids and targets, ready to split and load.

    Attributes:
        refs: one image reference per row (see :mod:`trainer.image_sources`): for files, the path relative
            to the data root with forward slashes; ``split.csv`` and messages show them.
        patient_ids: one per image; images of one patient always share a split.
        targets: per task, see the module docstring.
        label_names: binary: ``[positive class]``; multiclass: class names (index = target);
            multilabel: finding names (column = target column).
        task: the task kind (a Task or its name).
        images: reads the images by reference.
        line_numbers: source line of each row (CSV line, header = line 1), None where rows have no lines.
        official_split: "trainval"/"test" per row from official lists (NIH; a dataset's test split), or
            None.
        negative_name: binary only: the name of target 0 (e.g. "normal").
        source: where the labels came from (CSV path, folder, dataset), for messages.
    """

    refs: list[str]
    patient_ids: list[str]
    targets: np.ndarray
    label_names: list[str]
    task: Task
    images: ImageSource
    line_numbers: list[int] | None = None
    official_split: list[str] | None = None
    negative_name: str | None = None
    source: str = ""

    @classmethod
    def from_paths(
        cls, paths: Sequence[str | os.PathLike], root: str | os.PathLike, **fields: Any
    ) -> LabelTable:
        """A table of image files (absolute or relative to ``root``); ``fields`` are the other attributes."""
        images = FileImages(root)
        return cls(refs=[images.ref(p) for p in paths], images=images, **fields)

    def __post_init__(self) -> None:
        self.task = Task.parse(self.task)
        self.refs = [str(r) for r in self.refs]
        self.patient_ids = [str(p) for p in self.patient_ids]
        self.label_names = list(self.label_names)
        n = len(self.refs)
        self.targets = self.task.target_array(self.targets, n, self.label_names)
        for name, values in (
            ("patient_ids", self.patient_ids),
            ("line_numbers", self.line_numbers),
            ("official_split", self.official_split),
        ):
            if values is not None and len(values) != n:
                raise ValueError(f"{name} has {len(values)} entries for {n} images")
        if self.official_split is not None and not set(self.official_split) <= {"trainval", "test"}:
            raise ValueError(
                f"official_split values must be 'trainval' or 'test', got {set(self.official_split)}"
            )

    def __len__(self) -> int:
        return len(self.refs)

    @property
    def root(self) -> Path:
        """The folder of the images' source (data root, dataset folder, records folder)."""
        return self.images.root

    @property
    def paths(self) -> list[Path]:
        """The absolute image paths of a table of files.

        Raises:
            DataError: the images are not files (they are rows of a dataset or records).
        """
        if not isinstance(self.images, FileImages):
            raise DataError(f"the images of {self.source} are {self.images.describe()}, not separate files")
        return [self.images.path(r) for r in self.refs]

    @property
    def num_outputs(self) -> int:
        """Number of model outputs (logits) this task needs."""
        return self.task.num_outputs(len(self.label_names))

    def ref(self, index: int) -> str:
        """The image reference of row ``index`` (for files: the path relative to the root, maybe '../x')."""
        return self.refs[index]

    def where(self, index: int) -> str:
        """'line 12: images/a.png' (or just the reference when rows have no line numbers), for messages."""
        prefix = f"line {self.line_numbers[index]}: " if self.line_numbers is not None else ""
        return prefix + self.refs[index]

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabelTable:
        """The rows at ``indices`` (integer positions or a boolean mask), in that order."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64)
        rows = idx.tolist()
        lines, official = self.line_numbers, self.official_split
        return replace(
            self,
            refs=[self.refs[i] for i in rows],
            patient_ids=[self.patient_ids[i] for i in rows],
            targets=self.targets[idx],
            line_numbers=None if lines is None else [lines[i] for i in rows],
            official_split=None if official is None else [official[i] for i in rows],
        )

    def label_counts(self) -> dict[str, int]:
        """Images per class (binary, multiclass) or known positives per finding (multilabel)."""
        if self.task.single_logit:
            positives = int(np.sum(self.targets == 1))
            return {self.negative_name or "negative": len(self) - positives, self.label_names[0]: positives}
        if self.task.exclusive:
            counts = np.bincount(self.targets, minlength=len(self.label_names))
            return {name: int(c) for name, c in zip(self.label_names, counts, strict=True)}
        return {
            name: int(c) for name, c in zip(self.label_names, np.sum(self.targets == 1, axis=0), strict=True)
        }


# ---------------------------------------------------------------------------------------- label derivations


def derive_binary(
    table: LabelTable,
    normal_label: str = "No Finding",
    positive_name: str = "abnormal",
    negative_name: str = "normal",
) -> LabelTable:
    """Normal-versus-abnormal binary labels from a multilabel table.

    The rule, per image (the normal column is matched loosely: "No Finding", "No_Finding"...):

    1. any finding column is 1 -> abnormal (if the normal column says 1 as well, the contradiction is warned
       about and the positive finding wins);
    2. otherwise the normal column decides when it is known: 1 -> normal, 0 -> abnormal (a finding outside the
       table's columns);
    3. otherwise (no normal column, or it is blank): all findings 0 -> normal; some unknown -> the image is
       dropped with a warning, since it could be either.

    Raises:
        DataError: the table is not multilabel or has no columns to decide from.
    """
    if not table.task.multi_label:
        raise DataError(
            f"derive_binary needs a multilabel table, got {table.task}; for a single label column use "
            "read_csv_labels(..., positive=...) or negative=..."
        )
    keys = [loose_key(n) for n in table.label_names]
    normal_col = keys.index(loose_key(normal_label)) if loose_key(normal_label) in keys else None
    finding_cols = [i for i in range(len(keys)) if i != normal_col]
    findings = table.targets[:, finding_cols]
    n = len(table)
    normal = table.targets[:, normal_col] if normal_col is not None else np.full(n, np.nan, dtype=np.float32)
    positive = np.any(findings == 1, axis=1)
    all_zero = np.all(findings == 0, axis=1)

    result: np.ndarray = np.full(n, np.nan, dtype=np.float32)
    result[positive] = 1.0
    undecided = ~positive
    result[undecided & (normal == 1)] = 0.0
    result[undecided & (normal == 0)] = 1.0
    result[undecided & np.isnan(normal) & all_zero] = 0.0

    conflicts = np.flatnonzero(positive & (normal == 1))
    if conflicts.size and normal_col is not None:  # conflicts need a normal column
        warnings.warn(
            problem_report(
                f"{conflicts.size} images have {table.label_names[normal_col]} = 1 and a positive finding; "
                "labelled abnormal",
                [table.where(int(i)) for i in conflicts],
            ),
            stacklevel=2,
        )
    unknown = np.flatnonzero(np.isnan(result))
    if unknown.size:
        warnings.warn(
            problem_report(
                f"{unknown.size} images have no positive finding but unknown ones; dropped as neither normal "
                "nor abnormal",
                [table.where(int(i)) for i in unknown],
            ),
            stacklevel=2,
        )
    keep = np.flatnonzero(~np.isnan(result))
    if not keep.size:
        raise DataError(f"{table.source}: no image could be labelled normal or abnormal")
    kept = table.subset(keep)
    return replace(
        kept, targets=result[keep], label_names=[positive_name], task=Task.BINARY, negative_name=negative_name
    )


def select_findings(
    table: LabelTable, names: Sequence[str] | None = None, *, min_positives: int = 0
) -> LabelTable:
    """Keep some findings of a multilabel table, and drop those with too few positives.

    Args:
        table: a multilabel table.
        names: findings to keep, in this order (matched loosely); None keeps all.
        min_positives: findings with fewer known positives are dropped with a warning (too few to learn or
            to evaluate).

    Raises:
        DataError: not multilabel, an unknown name (with suggestions), or no finding left.
    """
    if not table.task.multi_label:
        raise DataError(f"select_findings needs a multilabel table, got {table.task}")
    by_key = {loose_key(n): i for i, n in enumerate(table.label_names)}
    if names is None:
        columns = list(range(len(table.label_names)))
    else:
        unknown = [n for n in names if loose_key(n) not in by_key]
        if unknown:
            raise DataError(
                f"unknown finding(s) {unknown}{did_you_mean(unknown[0], table.label_names)}. "
                f"Available: {', '.join(table.label_names)}"
            )
        columns = [by_key[loose_key(n)] for n in names]
    positives = np.sum(table.targets[:, columns] == 1, axis=0)
    rare = [
        f"{table.label_names[c]} ({int(p)})"
        for c, p in zip(columns, positives, strict=True)
        if p < min_positives
    ]
    if rare:
        warnings.warn(
            f"dropped findings with fewer than {min_positives} positives: {', '.join(rare)}", stacklevel=2
        )
    columns = [c for c, p in zip(columns, positives, strict=True) if p >= min_positives]
    if not columns:
        raise DataError(f"no finding has at least {min_positives} positives")
    return replace(
        table, targets=table.targets[:, columns], label_names=[table.label_names[c] for c in columns]
    )
