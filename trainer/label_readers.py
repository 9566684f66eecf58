"""Label tables from a folder per class or from a label CSV.

* :func:`read_folder_labels` - one sub-folder per class.
* :func:`read_csv_labels` - a CSV with a path column, an optional patient column and either one label column
  (multiclass, or binary with ``positive=``/``negative=``) or one 0/1 column per finding (multilabel; blank =
  unknown).

NIH ChestX-ray14's own files are read by :func:`trainer.nih.read_nih_labels`.

Paths. Every table has a data root. Relative paths in a CSV are resolved against the root, which defaults to
the CSV's folder; when a file is not found there but is found relative to the CSV's folder, that one is used
(so a CSV kept beside its images works with any root). Absolute paths are kept as written. A path that ends up
outside the root (``..``, an absolute path elsewhere, a symlink pointing out) is reported by
:func:`trainer.data.check_files`, which also reports missing and undecodable images - all of them in one
:class:`~trainer.labels.DataError`, before training starts.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trainer.labels import DataError, LabelTable, did_you_mean, loose_key, problem_report
from trainer.task import Task

__all__ = ["IMAGE_SUFFIXES", "read_csv_labels", "read_folder_labels"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"})
PATH_COLUMNS = ("path", "image_path", "image", "file", "filename", "image_index", "Image Index")
PATIENT_COLUMNS = ("patient_id", "patient", "Patient ID", "subject_id", "subject")
_LABEL_COLUMNS = ("label", "class", "target", "diagnosis")
_DEFAULT_PATIENT_COLUMN = "patient_id"


# ----------------------------------------------------------------------------------------------- CSV helpers


def read_csv_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and (line number, row) pairs; blank lines skipped; ragged rows reported together."""
    if not path.is_file():
        raise DataError(f"label file not found: {path}")
    rows: list[tuple[int, dict[str, str]]] = []
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
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                problems.append(f"line {reader.line_num}: {len(cells)} fields, the header has {len(header)}")
                continue
            rows.append((reader.line_num, {h: c.strip() for h, c in zip(header, cells, strict=True)}))
    if problems:
        raise DataError(problem_report(f"{path}: {len(problems)} malformed rows", problems))
    if not rows:
        raise DataError(f"{path} has a header but no rows")
    return header, rows


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
    header: Sequence[str], wanted: str, what: str, source: Path, advice: str = ""
) -> DataError:
    """The error for a column not in ``header``, with the closest names and all the available ones."""
    return DataError(
        f"{source}: no {what} column {wanted!r}{did_you_mean(wanted, header)}. "
        f"Available columns: {', '.join(header)}.{advice}"
    )


def absolute_path(path: str | os.PathLike) -> Path:
    """``path`` made absolute and normalised, symlinks not resolved (so check_files can see them)."""
    return Path(os.path.abspath(path))


def _resolve(value: str, root: Path, alternative: Path | None) -> Path:
    """Absolute path for a CSV path cell (see the module docstring for the rule)."""
    path = Path(value)
    if path.is_absolute():
        return Path(os.path.normpath(path))
    candidate = Path(os.path.normpath(root / path))
    if alternative is not None and not candidate.exists():
        other = Path(os.path.normpath(alternative / path))
        if other.exists():
            return other
    return candidate


def check_rows(paths: list[Path], patient_ids: list[str], lines: list[int] | None, source: str) -> None:
    """Blank patient ids and duplicated images are data errors, reported together."""

    def where(i: int) -> str:
        return f"line {lines[i]}" if lines is not None else str(paths[i])

    problems = []
    for i, pid in enumerate(patient_ids):
        if not pid:
            problems.append(f"{where(i)}: blank patient id")
    first_seen: dict[Path, int] = {}
    for i, path in enumerate(paths):
        if path in first_seen:
            problems.append(f"{where(i)}: {path} is listed again (first at {where(first_seen[path])})")
        else:
            first_seen[path] = i
    if problems:
        raise DataError(problem_report(f"{source}: {len(problems)} problems", problems))


def _warn_no_patients(source: str) -> None:
    warnings.warn(
        f"{source}: no patient ids; every image counts as its own patient, so follow-up images of one "
        "patient can land in different splits and inflate test metrics",
        stacklevel=3,
    )


def _binary_sides(
    values: list[str], positive: str | Sequence[str] | None, negative: str | Sequence[str] | None, column: str
) -> tuple[set[str], str, str]:
    """The positive values of a single-column binary task, and the names of the positive and negative side."""
    present = sorted(set(values))

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


def _parse_binary_cell(cell: str) -> float | None:
    """0/1 as float, blank as NaN, None for anything else."""
    if cell == "":
        return float("nan")
    if cell in ("0", "0.0"):
        return 0.0
    if cell in ("1", "1.0"):
        return 1.0
    return None


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
        task: "multiclass" (default) or "binary" (exactly two class folders; name the positive one).
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
    paths: list[Path] = []
    labels: list[int] = []
    ignored: list[str] = []
    empty: list[str] = []
    for index, name in enumerate(classes):
        found = 0
        for path in sorted((root_path / name).rglob("*")):
            relative = path.relative_to(root_path)
            if any(part.startswith(".") for part in relative.parts) or not path.is_file():
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                ignored.append(relative.as_posix())
                continue
            paths.append(Path(os.path.normpath(path)))
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
    if patient_pattern is None:
        _warn_no_patients(str(root_path))
    patient_ids = _patients_from_names(paths, patient_pattern, root_path)
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
    check_rows(paths, patient_ids, None, str(root_path))
    table = LabelTable(
        paths=paths,
        patient_ids=patient_ids,
        targets=targets,
        label_names=label_names,
        task=task,
        root=root_path,
        negative_name=negative_name,
        source=str(root_path),
    )
    logger.info("read %d images of %d patients from %s", len(table), len(set(patient_ids)), root_path)
    return table


def _patients_from_names(paths: list[Path], pattern: str | None, root: Path) -> list[str]:
    if pattern is None:
        return [p.stem for p in paths]
    regex = re.compile(pattern)
    ids, unmatched = [], []
    for path in paths:
        match = regex.search(path.stem)
        if match is None:
            unmatched.append(path.relative_to(root).as_posix())
            continue
        if "patient" in regex.groupindex:
            ids.append(match.group("patient"))
        else:
            ids.append(match.group(1) if regex.groups else match.group(0))
    if unmatched:
        raise DataError(
            problem_report(
                f"{root}: patient_pattern {pattern!r} matches no id in {len(unmatched)} files", unmatched
            )
        )
    return ids


def read_csv_labels(
    csv_path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    *,
    path_column: str = "path",
    patient_column: str | None = _DEFAULT_PATIENT_COLUMN,
    label_column: str | None = None,
    label_columns: Sequence[str] | None = None,
    task: Task | str | None = None,
    positive: str | Sequence[str] | None = None,
    negative: str | Sequence[str] | None = None,
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
        label_column: one label per image (multiclass, or binary with positive/negative).
        label_columns: one 0/1 column per finding (multilabel); blank cells mean unknown (NaN).
        task: a Task or its name; inferred when None.
        positive: binary: the value(s) of ``label_column`` that mean positive (the rest are negative).
        negative: binary: the value(s) that mean negative (the rest are positive), e.g. "normal".

    Raises:
        DataError: missing columns (with the available ones), bad label values, blank or duplicate rows -
            every problem with its line number.
    """
    csv_file = absolute_path(csv_path)
    root_path = absolute_path(root) if root is not None else csv_file.parent
    header, rows = read_csv_rows(csv_file)
    task = Task.parse(task) if task is not None else None
    if label_column is not None and label_columns is not None:
        raise DataError(
            "pass label_column (one label per image) or label_columns (one 0/1 column per finding)"
        )

    path_col = pick_column(header, path_column, PATH_COLUMNS if path_column == "path" else ())
    if path_col is None:
        raise missing_column(header, path_column, "path", csv_file, " Pass path_column= to name it.")
    patient_col = None
    if patient_column is not None:
        variants = PATIENT_COLUMNS if patient_column == _DEFAULT_PATIENT_COLUMN else ()
        patient_col = pick_column(header, patient_column, variants)
        if patient_col is None and patient_column != _DEFAULT_PATIENT_COLUMN:
            raise missing_column(
                header, patient_column, "patient", csv_file, " Pass patient_column=None if there is none."
            )

    if label_columns is not None:
        value_cols = [_require_column(header, c, "label", csv_file) for c in label_columns]
    elif label_column is not None:
        value_cols = [_require_column(header, label_column, "label", csv_file)]
    else:
        single = pick_column(header, None, _LABEL_COLUMNS)
        value_cols = [single] if single else [h for h in header if h not in (path_col, patient_col)]
        if not value_cols:
            raise DataError(f"{csv_file}: no label columns besides {path_col!r} and {patient_col!r}")
    single_label = label_columns is None and len(value_cols) == 1 and task is not Task.MULTILABEL
    if task is None:
        zero_one = {row[value_cols[0]] for _, row in rows} - {""} <= {"0", "1"}
        binary = positive is not None or negative is not None or zero_one
        task = Task.MULTILABEL if not single_label else Task.BINARY if binary else Task.MULTICLASS
    if task.single_logit and not single_label:
        raise DataError(
            f"{csv_file}: a binary task takes one label column, got {value_cols}; for normal/abnormal from "
            "findings read them as multilabel and call derive_binary()"
        )
    if not task.single_logit and (positive is not None or negative is not None):
        raise DataError("positive=/negative= only apply to a binary task")

    alternative = csv_file.parent if csv_file.parent != root_path else None
    lines = [line for line, _ in rows]
    path_problems = [f"line {line}: blank path" for line, row in rows if not row[path_col]]
    label_problems: list[str] = []
    paths = []
    for _, row in rows:
        paths.append(_resolve(row[path_col], root_path, alternative))
    if patient_col is None:
        _warn_no_patients(str(csv_file))
        patient_ids = [row[path_col] for _, row in rows]
    else:
        patient_ids = [row[patient_col] for _, row in rows]

    negative_name = None
    if task.multi_label:
        targets: np.ndarray = np.empty((len(rows), len(value_cols)), dtype=np.float32)
        for r, (line, row) in enumerate(rows):
            for c, col in enumerate(value_cols):
                value = _parse_binary_cell(row[col])
                if value is None:
                    label_problems.append(
                        f"line {line}: column {col!r}: {row[col]!r} is not 0, 1 or blank (unknown)"
                    )
                    value = float("nan")
                targets[r, c] = value
        label_names = list(value_cols)
        advice = (
            "Map uncertain labels (e.g. -1) to 0, 1 or blank first, or choose the finding columns with "
            "label_columns=."
        )
    else:
        col = value_cols[0]
        values = [row[col] for _, row in rows]
        label_problems += [
            f"line {line}: blank label in column {col!r}"
            for (line, _), v in zip(rows, values, strict=True)
            if not v
        ]
        advice = "Every image needs a label here; for unknowns use one 0/1 column per finding (multilabel)."
        if task.exclusive:
            present = {v for v in values if v}
            # Numeric class labels sort as numbers, so "10" comes after "9".
            label_names = sorted(present, key=int) if all(v.isdigit() for v in present) else sorted(present)
            if len(label_names) < 2 and not label_problems:
                raise DataError(
                    f"{csv_file}: column {col!r} has a single class {label_names}; need at least two"
                )
            index = {name: i for i, name in enumerate(label_names)}
            targets = np.asarray([index.get(v, 0) for v in values])
        else:
            try:
                pos, pos_name, negative_name = _binary_sides(
                    [v for v in values if v], positive, negative, col
                )
            except DataError as exc:
                raise DataError(f"{csv_file}: {exc}") from None
            label_names = [pos_name]
            targets = np.asarray([v in pos for v in values], dtype=np.float32)
    problems = path_problems + label_problems
    if problems:
        # Sorted by line number ("line 12: ..."), so the list reads like the file.
        problems.sort(key=lambda p: int(p.split(":")[0].removeprefix("line ")))
        raise DataError(
            problem_report(
                f"{csv_file}: {len(problems)} problems", problems, advice if label_problems else ""
            )
        )
    check_rows(paths, patient_ids, lines, str(csv_file))
    table = LabelTable(
        paths=paths,
        patient_ids=patient_ids,
        targets=targets,
        label_names=label_names,
        task=task,
        root=root_path,
        line_numbers=lines,
        negative_name=negative_name,
        source=str(csv_file),
    )
    logger.info("read %d images of %d patients from %s", len(table), len(set(patient_ids)), csv_file)
    return table


def _require_column(header: Sequence[str], name: str, what: str, source: Path) -> str:
    column = pick_column(header, name)
    if column is None:
        raise missing_column(header, name, what, source)
    return column
