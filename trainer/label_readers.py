"""Label tables from a folder per class or from a label CSV, and labels from the columns of any table.

* :func:`read_folder_labels` - one sub-folder per class.
* :func:`read_csv_labels` - a CSV with a path column, an optional patient column and either one label column
  (multiclass, or binary with ``positive=``/``negative=``; with ``task="multilabel"`` a findings column
  joined by "|"), or one 0/1 column per finding (multilabel; blank = unknown).
* :func:`labels_from_columns` - the same label rules on a DataFrame, for the readers of other formats
  (:mod:`trainer.hf_datasets`, :mod:`trainer.tfrecords`).

NIH ChestX-ray14's own files are read by :func:`trainer.nih.read_nih_labels`.

Paths. Every table has a data root. Relative paths in a CSV are resolved against the root, which defaults to
the CSV's folder; when a file is not found there but is found relative to the CSV's folder, that one is used
(so a CSV kept beside its images works with any root). Absolute paths are kept as written. A path that ends up
outside the root (``..``, an absolute path elsewhere, a symlink pointing out) is reported by
:func:`trainer.file_check.check_files`, which also reports missing and unreadable images - all of them in one
:class:`~trainer.labels.DataError`, before training starts.

Everything here works on whole columns (pandas, numpy), so 100k-row label files read in about a second.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from trainer.image_sources import FileImages, ImageSource
from trainer.labels import DataError, LabelTable, did_you_mean, loose_key, problem_report
from trainer.task import Task

__all__ = [
    "IMAGE_SUFFIXES",
    "Labels",
    "labels_from_columns",
    "patients_from_pattern",
    "read_csv_labels",
    "read_folder_labels",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"})
PATH_COLUMNS = ("path", "image_path", "image", "file", "filename", "image_index", "Image Index")
PATIENT_COLUMNS = ("patient_id", "patient", "Patient ID", "subject_id", "subject")
_LABEL_COLUMNS = ("label", "class", "target", "diagnosis")
DEFAULT_PATIENT_COLUMN = "patient_id"
# 0/1 label cells as written in CSVs; blank = unknown.
_ZERO_ONE_CELLS = {"": np.nan, "0": 0.0, "0.0": 0.0, "1": 1.0, "1.0": 1.0}

Where = Callable[[int], str]
"""Row position -> where it is, for messages ("line 12", "train#5")."""


class RowProblems(DataError):
    """Problems of single rows, reported together in row order: (row position, message) pairs."""

    def __init__(self, source: str, problems: Sequence[tuple[int, str]], advice: str = "") -> None:
        self.source, self.problems, self.advice = source, sorted(problems), advice
        super().__init__(
            problem_report(f"{source}: {len(self.problems)} problems", [p for _, p in self.problems], advice)
        )

    def plus(self, more: Sequence[tuple[int, str]]) -> RowProblems:
        """These problems and ``more``, in one report."""
        return RowProblems(self.source, [*self.problems, *more], self.advice)


# ----------------------------------------------------------------------------------------------- CSV helpers


def read_csv_table(path: Path) -> tuple[list[str], pd.DataFrame, np.ndarray]:
    """Header, the rows as a DataFrame of stripped strings, and each row's line number (header = line 1).

    Blank lines are skipped; rows with another number of fields than the header are reported together.
    """
    if not path.is_file():
        raise DataError(f"label file not found: {path}")
    cells: list[list[str]] = []
    lines: list[int] = []
    problems: list[str] = []
    # utf-8-sig: spreadsheets often write a byte-order mark that would otherwise stick to the first column.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        if not header:
            raise DataError(f"{path} is empty; expected a header row")
        duplicates = sorted(h for h, c in Counter(header).items() if c > 1)
        if duplicates:
            raise DataError(f"{path}: duplicate column names {duplicates}")
        width = len(header)
        for row in reader:
            if len(row) == width:
                # Stripped here, not column by column in pandas, which costs a Python call per cell anyway.
                cells.append(list(map(str.strip, row)))
                lines.append(reader.line_num)
            elif any(c.strip() for c in row):
                problems.append(f"line {reader.line_num}: {len(row)} fields, the header has {width}")
    if problems:
        raise DataError(problem_report(f"{path}: {len(problems)} malformed rows", problems))
    frame = pd.DataFrame(cells, columns=header, dtype=object)
    filled = (frame != "").any(axis=1).to_numpy()
    if not filled.any():
        raise DataError(f"{path} has a header but no rows")
    return header, frame[filled].reset_index(drop=True), np.asarray(lines)[filled]


def read_csv_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and (line number, row) pairs, as :func:`read_csv_table` reads them."""
    header, frame, lines = read_csv_table(path)
    return header, list(zip(lines.tolist(), frame.to_dict("records"), strict=True))


def pick_column(header: Sequence[str], requested: str | None, variants: Sequence[str] = ()) -> str | None:
    """The header column matching ``requested``, else one of ``variants``; exact names first, then loosely."""
    candidates = [requested, *variants] if requested is not None else list(variants)
    for candidate in candidates:
        if candidate in header:
            return candidate
    by_key = {loose_key(h): h for h in header}
    for candidate in candidates:
        if loose_key(candidate) in by_key:
            return by_key[loose_key(candidate)]
    return None


def missing_column(
    header: Sequence[str], wanted: str, what: str, source: Path | str, advice: str = ""
) -> DataError:
    """The error for a column not in ``header``, with the closest names and all the available ones."""
    return DataError(
        f"{source}: no {what} column {wanted!r}{did_you_mean(wanted, header)}. "
        f"Available columns: {', '.join(header)}.{advice}"
    )


def absolute_path(path: str | os.PathLike) -> Path:
    """``path`` made absolute and normalised, symlinks not resolved (so check_files can see them)."""
    return Path(os.path.abspath(path))


def line_where(lines: np.ndarray) -> Where:
    """Row position -> "line N", from the line numbers of the rows."""
    return lambda i: f"line {int(lines[i])}"


def check_rows(refs: Sequence[str], patient_ids: Sequence[str], where: Where, source: str) -> None:
    """Blank patient ids and images listed twice are data errors, reported together."""
    blank = np.flatnonzero(pd.Series(patient_ids) == "").tolist()
    problems = [(i, f"{where(i)}: blank patient id") for i in blank]
    repeated = np.flatnonzero(pd.Series(refs).duplicated().to_numpy()).tolist()
    if repeated:
        first = {ref: i for i, ref in reversed(list(enumerate(refs)))}
        problems += [
            (i, f"{where(i)}: {refs[i]} is listed again (first at {where(first[refs[i]])})") for i in repeated
        ]
    if problems:
        raise RowProblems(source, problems)


def warn_no_patients(source: str) -> None:
    """The warning for a table without patient ids."""
    warnings.warn(
        f"{source}: no patient ids; every image counts as its own patient, so follow-up images of one "
        "patient can land in different splits and inflate test metrics",
        stacklevel=3,
    )


def patients_from_pattern(values: Sequence[str], pattern: str, where: Where, source: str) -> list[str]:
    """The patient id in each of ``values`` (file stems, image ids): the regular expression's group
    ``patient``, else its first group, else the whole match.

    Raises:
        DataError: the pattern matches nothing in some values (each listed).
    """
    regex = re.compile(pattern)
    group = "patient" if "patient" in regex.groupindex else 1 if regex.groups else 0
    matches = [regex.search(v) for v in values]
    unmatched = [f"{where(i)}: {values[i]}" for i, m in enumerate(matches) if m is None]
    if unmatched:
        raise DataError(
            problem_report(
                f"{source}: patient_pattern {pattern!r} matches no id in {len(unmatched)} rows", unmatched
            )
        )
    return [m.group(group) for m in matches if m is not None]


def chosen_label_columns(
    header: Sequence[str],
    label_column: str | None,
    label_columns: Sequence[str] | None,
    source: Path | str,
    default: Callable[[], list[str]],
) -> list[str]:
    """The label columns asked for (each must exist, matched loosely), else ``default()``.

    Raises:
        DataError: both kinds given, or a column that is not there.
    """
    if label_column is not None and label_columns is not None:
        raise DataError(
            "name label_column (one label per image) or label_columns (one 0/1 column per finding), not both"
        )
    if label_columns is not None:
        return [require_column(header, c, "label", source) for c in label_columns]
    if label_column is not None:
        return [require_column(header, label_column, "label", source)]
    return default()


def patient_ids_of(
    frame: pd.DataFrame,
    column: str | None,
    pattern: str | None,
    fallback: list[str],
    where: Where,
    source: str,
) -> list[str]:
    """Each row's patient: the column's value (cut by ``pattern``), else ``fallback`` with a warning."""
    if column is None:
        warn_no_patients(source)
        return list(fallback)
    patient_ids = frame[column].fillna("").astype(str).tolist()
    return patients_from_pattern(patient_ids, pattern, where, source) if pattern is not None else patient_ids


def table_from_frame(
    frame: pd.DataFrame,
    refs: list[str],
    images: ImageSource,
    columns: list[str],
    task: Task | str,
    *,
    findings: bool,
    positive: str | Sequence[str] | None,
    negative: str | Sequence[str] | None,
    patient_column: str | None,
    patient_pattern: str | None,
    source: str,
    class_names: Mapping[str, Sequence[str]] | None = None,
    official_split: list[str] | None = None,
    line_numbers: list[int] | None = None,
    fallback_patients: list[str] | None = None,
    problems: Sequence[tuple[int, str]] = (),
) -> LabelTable:
    """A label table from the label and patient columns of a frame whose rows are the images ``refs``.

    Args:
        frame: one row per image.
        refs: the images' references, in the frame's order.
        images: the source that reads them.
        columns: the label columns; ``task``, ``findings``, ``positive``, ``negative`` and
            ``class_names`` as for :func:`labels_from_columns`.
        patient_column: the patient column (None: each image is its own patient, with a warning), cut by
            ``patient_pattern`` (see :func:`patients_from_pattern`).
        source: the file or dataset, for messages.
        official_split: "trainval"/"test" per row, if the source has an official test set.
        line_numbers: each row's line in a label file (messages then say "line N").
        fallback_patients: the patient ids without a patient column (default: the references).
        problems: row problems the caller found, reported together with the label problems.

    Raises:
        DataError: every problem with the labels, patients and rows, in one report.
    """
    where = line_where(np.asarray(line_numbers)) if line_numbers is not None else refs.__getitem__
    try:
        labels = labels_from_columns(
            frame,
            columns,
            Task.parse(task),
            findings=findings,
            positive=positive,
            negative=negative,
            class_names=class_names,
            where=where,
            source=source,
        )
    except RowProblems as exc:
        raise exc.plus(problems) from None
    if problems:
        raise RowProblems(source, problems)
    fallback = refs if fallback_patients is None else fallback_patients
    patient_ids = patient_ids_of(frame, patient_column, patient_pattern, fallback, where, source)
    check_rows(refs, patient_ids, where, source)
    table = LabelTable(
        refs=refs,
        patient_ids=patient_ids,
        targets=labels.targets,
        label_names=labels.label_names,
        task=labels.task,
        images=images,
        line_numbers=line_numbers,
        official_split=official_split,
        negative_name=labels.negative_name,
        source=source,
    )
    logger.info("read %d images of %d patients from %s", len(table), len(set(patient_ids)), source)
    return table


# ---------------------------------------------------------------------------------------- label columns


@dataclass(frozen=True)
class Labels:
    """Targets and their names, as a LabelTable holds them (see trainer.labels)."""

    task: Task
    targets: np.ndarray
    label_names: list[str]
    negative_name: str | None = None


def labels_from_columns(
    frame: pd.DataFrame,
    columns: Sequence[str],
    task: Task,
    *,
    findings: bool = False,
    positive: str | Sequence[str] | None = None,
    negative: str | Sequence[str] | None = None,
    class_names: Mapping[str, Sequence[str]] | None = None,
    where: Where,
    source: str,
) -> Labels:
    """Targets from label columns; every problem is raised together, with where it is.

    Args:
        frame: the rows; label cells may be strings (CSV), numbers, booleans or lists (datasets, records).
        columns: multilabel: one 0/1 column per finding (blank/NaN = unknown), or with ``findings`` a single
            column holding each image's findings (a list, or a string joined by "|"; "" = none). Binary and
            multiclass: one column holding each image's class.
        task: the task the columns hold.
        findings: read the one multilabel column as lists of findings.
        positive: binary: the value(s) that mean positive (the rest are negative).
        negative: binary: the value(s) that mean negative (the rest are positive).
        class_names: per column, the names of integer class codes (a ``datasets.ClassLabel``'s names).
        where: row position -> where it is, for messages.
        source: the file or dataset, for messages.

    Raises:
        DataError: values that are not 0/1/blank, blank classes, a single class, unknown positive values.
    """
    names = {c: list(n) for c, n in (class_names or {}).items()}
    if task.multi_label and findings:
        (column,) = columns
        return _findings_column(frame[column], names.get(column))
    if task.multi_label:
        return _zero_one_columns(frame, columns, where, source)
    (column,) = columns
    values = _as_class_strings(frame[column], names.get(column))
    blank = np.flatnonzero(values.to_numpy() == "").tolist()
    if blank:
        raise RowProblems(
            source,
            [(i, f"{where(i)}: blank label in column {column!r}") for i in blank],
            "Every image needs a label here; for unknowns use one 0/1 column per finding (multilabel).",
        )
    present = sorted(values.unique())
    if task.exclusive:
        if positive is not None or negative is not None:
            raise DataError("positive=/negative= only apply to a binary task")
        # Numeric class labels sort as numbers, so "10" comes after "9"; class codes keep their names' order.
        if column in names:
            label_names = [n for n in names[column] if n in set(present)]
        elif all(v.isdigit() for v in present):
            label_names = sorted(present, key=int)
        else:
            label_names = present
        if len(label_names) < 2:
            raise DataError(
                f"{source}: column {column!r} has a single class {label_names}; need at least two"
            )
        codes = pd.Categorical(values, categories=label_names).codes
        return Labels(task, codes.astype(np.int64), label_names)
    try:
        pos, pos_name, negative_name = _binary_sides(present, positive, negative, column)
    except DataError as exc:
        raise DataError(f"{source}: {exc}") from None
    return Labels(task, values.isin(pos).to_numpy(np.float32), [pos_name], negative_name)


def _as_class_strings(values: pd.Series, names: list[str] | None) -> pd.Series:
    """A class column as strings: class codes through their names, whole numbers without a '.0'."""
    if names is not None and pd.api.types.is_integer_dtype(values):
        return pd.Series(np.asarray(names, dtype=object)[values.to_numpy()], index=values.index)
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return values.map(lambda v: "" if pd.isna(v) else str(int(v)) if float(v).is_integer() else str(v))
    return values.fillna("").astype(str).str.strip()


def _zero_one_columns(frame: pd.DataFrame, columns: Sequence[str], where: Where, source: str) -> Labels:
    targets: np.ndarray = np.empty((len(frame), len(columns)), dtype=np.float32)
    problems: list[tuple[int, str]] = []
    for c, column in enumerate(columns):
        cells = frame[column]
        if pd.api.types.is_numeric_dtype(cells) or pd.api.types.is_bool_dtype(cells):
            numbers = cells.to_numpy(dtype=np.float64, na_value=np.nan)
            bad = ~(np.isnan(numbers) | (numbers == 0) | (numbers == 1))
            shown = [f"{numbers[r]:g}" for r in np.flatnonzero(bad)]
        else:
            text = cells.fillna("").astype(str).str.strip()
            numbers = text.map(_ZERO_ONE_CELLS).to_numpy(dtype=np.float64)
            bad = ~text.isin(_ZERO_ONE_CELLS.keys()).to_numpy()
            shown = [repr(text.iloc[r]) for r in np.flatnonzero(bad)]
        problems += [
            (r, f"{where(r)}: column {column!r}: {value} is not 0, 1 or blank (unknown)")
            for r, value in zip(np.flatnonzero(bad).tolist(), shown, strict=True)
        ]
        targets[:, c] = np.where(bad, np.nan, numbers)
    if problems:
        raise RowProblems(
            source,
            problems,
            "Map uncertain labels (e.g. -1) to 0, 1 or blank first, or choose the finding columns with "
            "label_columns=.",
        )
    return Labels(Task.MULTILABEL, targets, list(columns))


def explode_findings(values: pd.Series, names: list[str] | None = None) -> tuple[np.ndarray, pd.Series]:
    """Each image's findings, one per entry: (row positions, finding names), blanks dropped.

    ``values`` holds lists (of names, or of class codes with ``names``) or strings joined by "|".
    """
    lists = values.reset_index(drop=True)
    if pd.api.types.is_string_dtype(lists) or lists.map(lambda v: isinstance(v, str)).all():
        lists = lists.fillna("").astype(str).str.split("|")
    exploded = lists.explode()
    exploded = exploded[exploded.notna()]
    if names is not None and pd.api.types.is_integer_dtype(exploded.infer_objects()):
        codes = exploded.to_numpy(dtype=np.int64)
        exploded = pd.Series(np.asarray(names, dtype=object)[codes], index=exploded.index)
    exploded = exploded.astype(str).str.strip()
    exploded = exploded[exploded != ""]
    return exploded.index.to_numpy(dtype=np.int64), exploded.reset_index(drop=True)


def _findings_column(values: pd.Series, names: list[str] | None) -> Labels:
    rows, found = explode_findings(values, names)
    present = set(found.unique())
    label_names = [n for n in names if n in present] if names is not None else sorted(present)
    targets: np.ndarray = np.zeros((len(values), len(label_names)), dtype=np.float32)
    targets[rows, pd.Categorical(found, categories=label_names).codes] = 1.0
    return Labels(Task.MULTILABEL, targets, label_names)


def _binary_sides(
    present: list[str],
    positive: str | Sequence[str] | None,
    negative: str | Sequence[str] | None,
    column: str,
) -> tuple[set[str], str, str]:
    """The positive values of a single-column binary task, and the names of the positive and negative side."""

    def as_set(side: str | Sequence[str] | None, what: str) -> set[str]:
        chosen = {side} if isinstance(side, str) else set(side or ())
        absent = sorted(chosen - set(present))
        if absent:
            raise DataError(
                f"{what} label {absent[0]!r} does not occur in column {column!r}"
                f"{did_you_mean(absent[0], present)}. Values present: {', '.join(present)}"
            )
        return chosen

    pos, neg = as_set(positive, "positive"), as_set(negative, "negative")
    if pos & neg:
        raise DataError(f"{sorted(pos & neg)} named both positive and negative")
    if not pos and not neg:
        if set(present) <= {"0", "1"}:
            return {"1"}, column, f"not_{column}"
        raise DataError(
            f"a binary task needs positive= (the value(s) meaning positive) or negative=; column {column!r} "
            f"has {', '.join(present)}"
        )
    pos = pos or set(present) - neg
    neg = neg or set(present) - pos
    if not pos or not neg:
        raise DataError(
            f"every image would be {'positive' if pos else 'negative'}; column {column!r} has {present}"
        )
    return pos, "+".join(sorted(pos)), "+".join(sorted(neg))


# --------------------------------------------------------------------------------------------------- readers


def read_folder_labels(
    root: str | os.PathLike,
    *,
    task: Task | str | None = None,
    positive: str | None = None,
    patient_pattern: str | None = None,
) -> LabelTable:
    """Read ``root/<class>/**/<image>``: one sub-folder per class.

    Args:
        root: the data root; each non-hidden sub-folder is a class, images may sit in nested folders.
        task: multiclass (default) or binary (exactly two class folders; name the positive one).
        positive: the positive class folder for a binary task (implies ``task="binary"``).
        patient_pattern: regular expression searched in each file stem; its group ``patient`` (or its first
            group, or the whole match) is the patient id. Without it, every image is its own patient.

    Raises:
        DataError: no class folders, an empty class, a file name the pattern does not match, a bad task.
    """
    root_path = absolute_path(root)
    if not root_path.is_dir():
        raise DataError(f"data folder not found: {root_path}")
    task = Task.parse(task) if task else Task.BINARY if positive is not None else Task.MULTICLASS
    if task.multi_label:
        raise DataError(
            f"folder labels give binary or multiclass tasks, not {task.value}; use a CSV for multilabel"
        )
    classes = sorted(p.name for p in root_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(
            f"{root_path}: found {len(classes)} class folder(s) {classes}; expected one sub-folder per class"
        )
    refs: list[str] = []
    labels: list[int] = []
    ignored: list[str] = []
    empty: list[str] = []
    for index, name in enumerate(classes):
        found = 0
        for directory, dirnames, filenames in os.walk(root_path / name):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            folder = Path(directory).relative_to(root_path).as_posix()
            for file in sorted(f for f in filenames if not f.startswith(".")):
                ref = f"{folder}/{file}"
                if os.path.splitext(file)[1].lower() not in IMAGE_SUFFIXES:
                    ignored.append(ref)
                    continue
                refs.append(ref)
                labels.append(index)
                found += 1
        if not found:
            empty.append(name)
    if empty:
        raise DataError(f"{root_path}: class folder(s) without images: {', '.join(empty)}")
    if ignored:
        warnings.warn(
            f"{root_path}: ignored {len(ignored)} files that are not images ({', '.join(ignored[:5])}"
            f"{', ...' if len(ignored) > 5 else ''}); image suffixes: {', '.join(sorted(IMAGE_SUFFIXES))}",
            stacklevel=2,
        )
    stems = [os.path.splitext(os.path.basename(r))[0] for r in refs]
    if patient_pattern is None:
        warn_no_patients(str(root_path))
        patient_ids = stems
    else:
        patient_ids = patients_from_pattern(stems, patient_pattern, refs.__getitem__, str(root_path))
    negative_name = None
    targets = np.asarray(labels)
    label_names = classes
    if task.single_logit:
        if len(classes) != 2 or positive not in classes:
            raise DataError(
                f"{root_path}: a binary task needs exactly two class folders and positive= naming one of "
                f"them; folders: {', '.join(classes)}; positive={positive!r}"
            )
        negative_name = next(c for c in classes if c != positive)
        targets = (targets == classes.index(positive)).astype(np.float32)
        label_names = [positive]
    check_rows(refs, patient_ids, refs.__getitem__, str(root_path))
    table = LabelTable(
        refs=refs,
        patient_ids=patient_ids,
        targets=targets,
        label_names=label_names,
        task=task,
        images=FileImages(root_path),
        negative_name=negative_name,
        source=str(root_path),
    )
    logger.info("read %d images of %d patients from %s", len(table), len(set(patient_ids)), root_path)
    return table


def read_csv_labels(
    csv_path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    *,
    path_column: str = "path",
    patient_column: str | None = DEFAULT_PATIENT_COLUMN,
    label_column: str | None = None,
    label_columns: Sequence[str] | None = None,
    task: Task | str | None = None,
    positive: str | Sequence[str] | None = None,
    negative: str | Sequence[str] | None = None,
    patient_pattern: str | None = None,
) -> LabelTable:
    """Read a label CSV: a path column, a patient column and the label column(s).

    Without ``label_column``/``label_columns``, a column named label/class/target/diagnosis is the single
    label; otherwise every column other than path and patient is a 0/1 finding. A single label column holding
    only 0/1 is a binary task.

    Args:
        csv_path: the CSV file.
        root: the data root; defaults to the CSV's folder (see the module docstring for path resolution).
        path_column: image path column (variants such as "image", "Image Index" are recognised).
        patient_column: patient id column; None (or the default name absent from the file) makes every
            image its own patient, with a warning because follow-ups may then leak across splits.
        label_column: one label per image (multiclass, or binary with positive/negative); with
            ``task="multilabel"``, each image's findings joined by "|" (NIH's "Finding Labels").
        label_columns: one 0/1 column per finding (multilabel); blank cells mean unknown (NaN).
        task: a Task or its name; inferred when None.
        positive: binary: the value(s) of ``label_column`` that mean positive (the rest are negative).
        negative: binary: the value(s) that mean negative (the rest are positive), e.g. "normal".
        patient_pattern: a regular expression finding the patient id inside the patient column's values
            (group ``patient``, else the first group).

    Raises:
        DataError: missing columns (with the available ones), bad label values, blank or duplicate rows -
            every problem with its line number.
    """
    csv_file = absolute_path(csv_path)
    root_path = absolute_path(root) if root is not None else csv_file.parent
    header, frame, lines = read_csv_table(csv_file)
    task = Task.parse(task) if task is not None else None
    path_col = pick_column(header, path_column, PATH_COLUMNS if path_column == "path" else ())
    if path_col is None:
        raise missing_column(header, path_column, "path", csv_file, " Pass path_column= to name it.")
    patient_col = pick_patient_column(header, patient_column, csv_file)

    def default_columns() -> list[str]:
        single = pick_column(header, None, _LABEL_COLUMNS)
        columns = [single] if single else [h for h in header if h not in (path_col, patient_col)]
        if not columns:
            raise DataError(f"{csv_file}: no label columns besides {path_col!r} and {patient_col!r}")
        return columns

    value_cols = chosen_label_columns(header, label_column, label_columns, csv_file, default_columns)
    single_label = label_columns is None and len(value_cols) == 1
    if task is None:
        zero_one = set(frame[value_cols[0]].unique()) - {""} <= {"0", "1"}
        binary = positive is not None or negative is not None or zero_one
        task = Task.MULTILABEL if not single_label else Task.BINARY if binary else Task.MULTICLASS
    if task.single_logit and not single_label:
        raise DataError(
            f"{csv_file}: a binary task takes one label column, got {value_cols}; for normal/abnormal from "
            "findings read them as multilabel and call derive_binary()"
        )
    if not task.single_logit and (positive is not None or negative is not None):
        raise DataError("positive=/negative= only apply to a binary task")

    blank_rows = np.flatnonzero(frame[path_col].to_numpy() == "").tolist()
    images = FileImages(root_path)
    return table_from_frame(
        frame,
        _refs(frame[path_col], images, csv_file.parent if csv_file.parent != root_path else None),
        images,
        value_cols,
        task,
        findings=task.multi_label and label_column is not None,
        positive=positive,
        negative=negative,
        patient_column=patient_col,
        patient_pattern=patient_pattern,
        source=str(csv_file),
        line_numbers=lines.tolist(),
        fallback_patients=frame[path_col].tolist(),
        problems=[(i, f"line {lines[i]}: blank path") for i in blank_rows],
    )


def _refs(values: pd.Series, images: FileImages, alternative: Path | None) -> list[str]:
    """References of CSV path cells (see the module docstring for the rule)."""
    refs = [images.ref(v) for v in values]
    if alternative is None:
        return refs
    for i, (value, ref) in enumerate(zip(values, refs, strict=True)):
        if not os.path.isabs(value) and not images.path(ref).exists():
            other = alternative / value
            if other.exists():
                refs[i] = images.ref(other)
    return refs


def pick_patient_column(header: Sequence[str], requested: str | None, source: Path | str) -> str | None:
    """The patient column: ``requested`` (loosely), None for None; when ``requested`` is the default name,
    one of its variants ("Patient ID", "subject_id", ...), or None when there is none.

    Raises:
        DataError: a column named explicitly is not in the header.
    """
    if requested is None:
        return None
    if requested == DEFAULT_PATIENT_COLUMN:
        return pick_column(header, requested, PATIENT_COLUMNS)
    column = pick_column(header, requested)
    if column is None:
        raise missing_column(
            header,
            requested,
            "patient",
            source,
            " Pass patient_column=None (data.patient_column: null) if none.",
        )
    return column


def require_column(header: Sequence[str], name: str, what: str, source: Path | str) -> str:
    """The header column matching ``name`` (loosely), else the missing-column error."""
    column = pick_column(header, name)
    if column is None:
        raise missing_column(header, name, what, source)
    return column
