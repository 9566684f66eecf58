"""Labels, data checks, patient-wise splits and the training Dataset.

Label sources (each returns a :class:`LabelTable`):

* :func:`read_folder_labels` - one sub-folder per class.
* :func:`read_csv_labels` - a CSV with a path column, an optional patient column and either one label column
  (multiclass, or binary with ``positive=``/``negative=``) or one 0/1 column per finding (multilabel; blank =
  unknown).
* :func:`read_nih_labels` - NIH ChestX-ray14 ``Data_Entry_2017.csv`` plus the official split lists.

Paths. Every table has a data root. Relative paths in a CSV are resolved against the root, which defaults to
the CSV's folder; when a file is not found there but is found relative to the CSV's folder, that one is used
(so a CSV kept beside its images works with any root). Absolute paths are kept as written. A path that ends up
outside the root (``..``, an absolute path elsewhere, a symlink pointing out) is reported by
:func:`check_files`, which also reports missing and undecodable images - all of them in one
:class:`DataError`, before training starts.

Targets follow the task kinds used everywhere in chexlab: ``binary`` (N,) float32 in {0, 1};
``multiclass`` (N,) int64 class indices; ``multilabel`` (N, C) float32 0/1 with NaN = unknown.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import hashlib
import json
import logging
import os
import re
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainer.io import XRayReadError, load_xray
from trainer.preprocess import Pipeline
from trainer.transforms import InputSpec, fit_to_input, to_model_tensor

__all__ = [
    "NIH_FINDINGS",
    "SPLITS",
    "TASKS",
    "DataError",
    "LabelTable",
    "XRayDataset",
    "check_files",
    "derive_binary",
    "make_loaders",
    "patient_split",
    "read_csv_labels",
    "read_folder_labels",
    "read_nih_labels",
    "read_split",
    "select_findings",
    "write_split",
]

logger = logging.getLogger(__name__)

TASKS = ("binary", "multiclass", "multilabel")
SPLITS = ("train", "val", "test")
NIH_FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"})
MAX_LISTED_PROBLEMS = 50
# Bump whenever load_xray, the preprocessing ops or fit_to_input change their output (old cache files miss).
CACHE_VERSION = 1

_PATH_COLUMNS = ("path", "image_path", "image", "file", "filename", "image_index", "Image Index")
_PATIENT_COLUMNS = ("patient_id", "patient", "Patient ID", "subject_id", "subject")
_LABEL_COLUMNS = ("label", "class", "target", "diagnosis")
_FINDING_LABEL_COLUMNS = ("Finding Labels", "finding_labels", "findings", "labels")
_DEFAULT_PATIENT_COLUMN = "patient_id"


class DataError(ValueError):
    """Labels or image files that cannot be used; the message lists every problem found."""


def _report(header: str, problems: Sequence[str], advice: str = "") -> str:
    """``header:``, at most MAX_LISTED_PROBLEMS problem lines, a count of the rest, then ``advice``."""
    lines = [f"{header}:", *(f"  {p}" for p in problems[:MAX_LISTED_PROBLEMS])]
    if len(problems) > MAX_LISTED_PROBLEMS:
        lines.append(f"  ... and {len(problems) - MAX_LISTED_PROBLEMS} more")
    if advice:
        lines.append(advice)
    return "\n".join(lines)


def _key(name: str) -> str:
    """Column/label names compared loosely: 'No Finding' == 'No_Finding' == 'no-finding'."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


@dataclass
class LabelTable:
    """Images with their patient ids and targets, ready to split and load.

    Attributes:
        paths: absolute image paths (normalised, symlinks not resolved).
        patient_ids: one per image; images of one patient always share a split.
        targets: per task, see the module docstring.
        label_names: binary: ``[positive class]``; multiclass: class names (index = target);
            multilabel: finding names (column = target column).
        task: "binary", "multiclass" or "multilabel".
        root: the data root; paths are written relative to it in split.csv.
        line_numbers: source line of each row (CSV line, header = line 1), None for folder tables.
        official_split: "trainval"/"test" per row from official lists (NIH), else None.
        negative_name: binary only: the name of target 0 (e.g. "normal").
        source: where the labels came from (CSV path or folder), for messages.
    """

    paths: list[Path]
    patient_ids: list[str]
    targets: np.ndarray
    label_names: list[str]
    task: str
    root: Path
    line_numbers: list[int] | None = None
    official_split: list[str] | None = None
    negative_name: str | None = None
    source: str = field(default="")

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; valid: {', '.join(TASKS)}")
        self.paths = [Path(p) for p in self.paths]
        self.patient_ids = [str(p) for p in self.patient_ids]
        self.label_names = list(self.label_names)
        self.root = Path(self.root)
        n = len(self.paths)
        dtype = np.int64 if self.task == "multiclass" else np.float32
        self.targets = np.asarray(self.targets, dtype=dtype)
        expected_shape = (n, len(self.label_names)) if self.task == "multilabel" else (n,)
        if self.targets.shape != expected_shape:
            raise ValueError(
                f"{self.task} targets must have shape {expected_shape}, got {self.targets.shape}"
            )
        if self.task == "binary" and len(self.label_names) != 1:
            raise ValueError(
                f"a binary table has one label name (the positive class), got {self.label_names}"
            )
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
        return len(self.paths)

    @property
    def num_outputs(self) -> int:
        """Number of model outputs (logits) this task needs."""
        return 1 if self.task == "binary" else len(self.label_names)

    def relpath(self, index: int) -> str:
        """The image path relative to the root, with forward slashes (may start with '..')."""
        return Path(os.path.relpath(self.paths[index], self.root)).as_posix()

    def where(self, index: int) -> str:
        """'line 12: images/a.png' (or just the path for folder tables), for messages."""
        prefix = f"line {self.line_numbers[index]}: " if self.line_numbers is not None else ""
        return prefix + self.relpath(index)

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabelTable:
        """The rows at ``indices`` (integer positions or a boolean mask), in that order."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64)

        def pick(values: list | None) -> list | None:
            return None if values is None else [values[i] for i in idx]

        return replace(
            self,
            paths=pick(self.paths),
            patient_ids=pick(self.patient_ids),
            targets=self.targets[idx],
            line_numbers=pick(self.line_numbers),
            official_split=pick(self.official_split),
        )

    def label_counts(self) -> dict[str, int]:
        """Images per class (binary, multiclass) or known positives per finding (multilabel)."""
        if self.task == "binary":
            positives = int(np.sum(self.targets == 1))
            return {self.negative_name or "negative": len(self) - positives, self.label_names[0]: positives}
        if self.task == "multiclass":
            counts = np.bincount(self.targets, minlength=len(self.label_names))
            return {name: int(c) for name, c in zip(self.label_names, counts, strict=True)}
        return {
            name: int(c) for name, c in zip(self.label_names, np.sum(self.targets == 1, axis=0), strict=True)
        }


# ----------------------------------------------------------------------------------------------- CSV helpers


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
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
        raise DataError(_report(f"{path}: {len(problems)} malformed rows", problems))
    if not rows:
        raise DataError(f"{path} has a header but no rows")
    return header, rows


def _pick_column(header: Sequence[str], requested: str | None, variants: Sequence[str] = ()) -> str | None:
    """The header column matching ``requested``, else one of ``variants``; exact names first, then loosely."""
    candidates = [requested, *variants] if requested is not None else list(variants)
    for candidate in candidates:
        if candidate in header:
            return candidate
    by_key = {_key(h): h for h in header}
    for candidate in candidates:
        if _key(candidate) in by_key:
            return by_key[_key(candidate)]
    return None


def _missing_column(
    header: Sequence[str], wanted: str, what: str, source: Path, advice: str = ""
) -> DataError:
    return DataError(
        f"{source}: no {what} column {wanted!r}{_did_you_mean(wanted, header)}. "
        f"Available columns: {', '.join(header)}.{advice}"
    )


def _norm_root(root: str | os.PathLike) -> Path:
    return Path(os.path.abspath(root))


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


def _check_rows(paths: list[Path], patient_ids: list[str], lines: list[int] | None, source: str) -> None:
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
        raise DataError(_report(f"{source}: {len(problems)} problems", problems))


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
                f"{_did_you_mean(absent[0], present)}. Values present: {', '.join(present)}"
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
    task: str | None = None,
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
    root_path = _norm_root(root)
    if not root_path.is_dir():
        raise DataError(f"data folder not found: {root_path}")
    task = task or ("binary" if positive is not None else "multiclass")
    if task not in ("binary", "multiclass"):
        raise DataError(
            f"folder labels give binary or multiclass tasks, not {task!r}; use a CSV for multilabel"
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
    if task == "binary":
        if len(classes) != 2 or positive not in classes:
            raise DataError(
                f"{root_path}: a binary task needs exactly two class folders and positive= naming one of "
                f"them; folders: {', '.join(classes)}; positive={positive!r}"
            )
        negative_name = next(c for c in classes if c != positive)
        targets = (targets == classes.index(positive)).astype(np.float32)
        label_names = [positive]
    _check_rows(paths, patient_ids, None, str(root_path))
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
            _report(f"{root}: patient_pattern {pattern!r} matches no id in {len(unmatched)} files", unmatched)
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
    task: str | None = None,
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
        task: "binary", "multiclass" or "multilabel"; inferred when None.
        positive: binary: the value(s) of ``label_column`` that mean positive (the rest are negative).
        negative: binary: the value(s) that mean negative (the rest are positive), e.g. "normal".

    Raises:
        DataError: missing columns (with the available ones), bad label values, blank or duplicate rows -
            every problem with its line number.
    """
    csv_file = Path(os.path.abspath(csv_path))
    root_path = _norm_root(root) if root is not None else csv_file.parent
    header, rows = _read_csv(csv_file)
    if task is not None and task not in TASKS:
        raise DataError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    if label_column is not None and label_columns is not None:
        raise DataError(
            "pass label_column (one label per image) or label_columns (one 0/1 column per finding)"
        )

    path_col = _pick_column(header, path_column, _PATH_COLUMNS if path_column == "path" else ())
    if path_col is None:
        raise _missing_column(header, path_column, "path", csv_file, " Pass path_column= to name it.")
    patient_col = None
    if patient_column is not None:
        variants = _PATIENT_COLUMNS if patient_column == _DEFAULT_PATIENT_COLUMN else ()
        patient_col = _pick_column(header, patient_column, variants)
        if patient_col is None and patient_column != _DEFAULT_PATIENT_COLUMN:
            raise _missing_column(
                header, patient_column, "patient", csv_file, " Pass patient_column=None if there is none."
            )

    if label_columns is not None:
        value_cols = [_require_column(header, c, "label", csv_file) for c in label_columns]
    elif label_column is not None:
        value_cols = [_require_column(header, label_column, "label", csv_file)]
    else:
        single = _pick_column(header, None, _LABEL_COLUMNS)
        value_cols = [single] if single else [h for h in header if h not in (path_col, patient_col)]
        if not value_cols:
            raise DataError(f"{csv_file}: no label columns besides {path_col!r} and {patient_col!r}")
    single_label = label_columns is None and len(value_cols) == 1 and task != "multilabel"
    if task is None:
        zero_one = {row[value_cols[0]] for _, row in rows} - {""} <= {"0", "1"}
        binary = positive is not None or negative is not None or zero_one
        task = "multilabel" if not single_label else "binary" if binary else "multiclass"
    if task == "binary" and not single_label:
        raise DataError(
            f"{csv_file}: a binary task takes one label column, got {value_cols}; for normal/abnormal from "
            "findings read them as multilabel and call derive_binary()"
        )
    if task != "binary" and (positive is not None or negative is not None):
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
    if task == "multilabel":
        targets = np.empty((len(rows), len(value_cols)), dtype=np.float32)
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
        if task == "multiclass":
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
            _report(f"{csv_file}: {len(problems)} problems", problems, advice if label_problems else "")
        )
    _check_rows(paths, patient_ids, lines, str(csv_file))
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
    column = _pick_column(header, name)
    if column is None:
        raise _missing_column(header, name, what, source)
    return column


def _read_name_list(path: str | os.PathLike) -> set[str]:
    file = Path(path)
    if not file.is_file():
        raise DataError(f"split list not found: {file}")
    return {Path(line.strip()).name for line in file.read_text().splitlines() if line.strip()}


def _index_images(root: Path, names: set[str]) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Where each wanted file name lies under ``root`` (one walk), and names found more than once."""
    found: dict[str, Path] = {}
    duplicates: dict[str, list[Path]] = defaultdict(list)
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name not in names:
                continue
            path = Path(directory, name)
            if name in found:
                duplicates[name].append(path)
            else:
                found[name] = path
    return found, {name: [found[name], *more] for name, more in duplicates.items()}


def read_nih_labels(
    data_entry_csv: str | os.PathLike,
    root: str | os.PathLike,
    *,
    train_val_list: str | os.PathLike | None = None,
    test_list: str | os.PathLike | None = None,
    findings: Sequence[str] | None = None,
    missing: str = "drop",
) -> LabelTable:
    """Read NIH ChestX-ray14 labels (``Data_Entry_2017.csv`` or its v2020 revision) as a multilabel table.

    Images are found by file name anywhere under ``root`` (the official archives unpack to
    ``images_001/images/...``). "No Finding" rows get all zeros.

    Args:
        data_entry_csv: the Data_Entry CSV ("Image Index", "Finding Labels" joined by "|", "Patient ID").
        root: the folder holding the images, at any depth.
        train_val_list: official ``train_val_list.txt``; with ``test_list`` it sets ``official_split``.
        test_list: official ``test_list.txt``. With only one list given, the other side is its complement.
        findings: which of the 14 findings to keep (default: all, in NIH order).
        missing: rows whose image is not under ``root``: "drop" (with a warning; the archives are often
            downloaded in part) or "error".

    Raises:
        DataError: missing columns, unknown finding names (with line numbers), images found twice, no image
            found at all, an image in both official lists.
    """
    csv_file = Path(os.path.abspath(data_entry_csv))
    root_path = _norm_root(root)
    if missing not in ("drop", "error"):
        raise DataError(f"missing must be 'drop' or 'error', got {missing!r}")
    if not root_path.is_dir():
        raise DataError(f"image folder not found: {root_path}")
    by_key = {_key(f): f for f in NIH_FINDINGS}
    chosen = list(NIH_FINDINGS)
    if findings is not None:
        unknown = [f for f in findings if _key(f) not in by_key]
        if unknown:
            raise DataError(
                f"unknown NIH finding(s) {unknown}{_did_you_mean(unknown[0], NIH_FINDINGS)}. "
                f"Valid: {', '.join(NIH_FINDINGS)}"
            )
        chosen = [by_key[_key(f)] for f in findings]
    column_of = {_key(f): i for i, f in enumerate(chosen)}

    header, rows = _read_csv(csv_file)
    image_col = _pick_column(header, None, ("Image Index", *_PATH_COLUMNS))
    label_col = _pick_column(header, None, _FINDING_LABEL_COLUMNS)
    patient_col = _pick_column(header, None, _PATIENT_COLUMNS)
    for column, wanted, what in (
        (image_col, "Image Index", "image"),
        (label_col, "Finding Labels", "finding"),
        (patient_col, "Patient ID", "patient"),
    ):
        if column is None:
            raise _missing_column(header, wanted, what, csv_file)

    problems: list[str] = []
    targets = np.zeros((len(rows), len(chosen)), dtype=np.float32)
    for r, (line, row) in enumerate(rows):
        for name in filter(None, (n.strip() for n in row[label_col].split("|"))):
            key = _key(name)
            if key == "nofinding":
                continue
            if key not in by_key:
                problems.append(f"line {line}: unknown finding {name!r}{_did_you_mean(name, NIH_FINDINGS)}")
            elif key in column_of:
                targets[r, column_of[key]] = 1.0
        if not row[image_col]:
            problems.append(f"line {line}: blank image name")
    if problems:
        raise DataError(_report(f"{csv_file}: {len(problems)} problems", problems))

    names = [Path(row[image_col]).name for _, row in rows]
    found, duplicates = _index_images(root_path, set(names))
    if duplicates:
        listed = [f"{n}: {', '.join(str(p) for p in ps)}" for n, ps in sorted(duplicates.items())]
        raise DataError(_report(f"{root_path}: {len(duplicates)} image names occur more than once", listed))
    keep = [i for i, name in enumerate(names) if name in found]
    if not keep:
        raise DataError(f"none of the {len(names)} images listed in {csv_file} is under {root_path}")
    if len(keep) < len(names):
        absent = [f"line {rows[i][0]}: {names[i]}" for i in range(len(names)) if names[i] not in found]
        if missing == "error":
            raise DataError(_report(f"{len(absent)} images of {csv_file} are not under {root_path}", absent))
        warnings.warn(
            f"{len(absent)} of {len(names)} images listed in {csv_file} are not under {root_path}; "
            "their rows were dropped",
            stacklevel=2,
        )

    official = _official_split([names[i] for i in keep], train_val_list, test_list)
    if official is not None:
        unlisted = [i for i, side in zip(keep, official, strict=True) if side is None]
        if unlisted:
            warnings.warn(
                f"{len(unlisted)} images are in neither official list; their rows were dropped", stacklevel=2
            )
            official = [side for side in official if side is not None]
            dropped = set(unlisted)
            keep = [i for i in keep if i not in dropped]
    paths = [Path(os.path.normpath(found[names[i]])) for i in keep]
    patient_ids = [rows[i][1][patient_col] for i in keep]
    lines = [rows[i][0] for i in keep]
    _check_rows(paths, patient_ids, lines, str(csv_file))
    table = LabelTable(
        paths=paths,
        patient_ids=patient_ids,
        targets=targets[keep],
        label_names=chosen,
        task="multilabel",
        root=root_path,
        line_numbers=lines,
        official_split=official,
        source=str(csv_file),
    )
    logger.info("read %d NIH images of %d patients from %s", len(table), len(set(patient_ids)), csv_file)
    return table


def _official_split(
    names: list[str], train_val_list: str | os.PathLike | None, test_list: str | os.PathLike | None
) -> list[str | None] | None:
    """'trainval'/'test' per image name from the official lists (None: in neither), or None without lists."""
    if train_val_list is None and test_list is None:
        return None
    trainval = _read_name_list(train_val_list) if train_val_list is not None else None
    test = _read_name_list(test_list) if test_list is not None else None
    both = sorted(trainval & test) if trainval is not None and test is not None else []
    if both:
        raise DataError(_report(f"{len(both)} images are in both official lists", both))
    sides: list[str | None] = []
    for name in names:
        if test is not None:
            side = "test" if name in test else "trainval" if trainval is None or name in trainval else None
        else:
            side = "trainval" if name in trainval else "test"
        sides.append(side)
    return sides


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
    if table.task != "multilabel":
        raise DataError(
            f"derive_binary needs a multilabel table, got {table.task}; for a single label column use "
            "read_csv_labels(..., positive=...) or negative=..."
        )
    keys = [_key(n) for n in table.label_names]
    normal_col = keys.index(_key(normal_label)) if _key(normal_label) in keys else None
    finding_cols = [i for i in range(len(keys)) if i != normal_col]
    findings = table.targets[:, finding_cols]
    n = len(table)
    normal = table.targets[:, normal_col] if normal_col is not None else np.full(n, np.nan, dtype=np.float32)
    positive = np.any(findings == 1, axis=1)
    all_zero = np.all(findings == 0, axis=1)

    result = np.full(n, np.nan, dtype=np.float32)
    result[positive] = 1.0
    undecided = ~positive
    result[undecided & (normal == 1)] = 0.0
    result[undecided & (normal == 0)] = 1.0
    result[undecided & np.isnan(normal) & all_zero] = 0.0

    conflicts = np.flatnonzero(positive & (normal == 1))
    if conflicts.size:
        warnings.warn(
            _report(
                f"{conflicts.size} images have {table.label_names[normal_col]} = 1 and a positive finding; "
                "labelled abnormal",
                [table.where(i) for i in conflicts],
            ),
            stacklevel=2,
        )
    unknown = np.flatnonzero(np.isnan(result))
    if unknown.size:
        warnings.warn(
            _report(
                f"{unknown.size} images have no positive finding but unknown ones; dropped as neither normal "
                "nor abnormal",
                [table.where(i) for i in unknown],
            ),
            stacklevel=2,
        )
    keep = np.flatnonzero(~np.isnan(result))
    if not keep.size:
        raise DataError(f"{table.source}: no image could be labelled normal or abnormal")
    kept = table.subset(keep)
    return replace(
        kept, targets=result[keep], label_names=[positive_name], task="binary", negative_name=negative_name
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
    if table.task != "multilabel":
        raise DataError(f"select_findings needs a multilabel table, got {table.task}")
    by_key = {_key(n): i for i, n in enumerate(table.label_names)}
    if names is None:
        columns = list(range(len(table.label_names)))
    else:
        unknown = [n for n in names if _key(n) not in by_key]
        if unknown:
            raise DataError(
                f"unknown finding(s) {unknown}{_did_you_mean(unknown[0], table.label_names)}. "
                f"Available: {', '.join(table.label_names)}"
            )
        columns = [by_key[_key(n)] for n in names]
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


# -------------------------------------------------------------------------------------------------- checking


def check_files(table: LabelTable, *, decode: bool = True, workers: int | None = None) -> None:
    """Check every image before training: inside the data root, present, and (with ``decode``) readable.

    All problems are collected and raised together, each with its CSV line number, so a broken dataset fails
    in seconds rather than mid-training.

    Args:
        table: the labels to check.
        decode: also decode each image with ``load_xray`` (slower, catches truncated or mislabelled files).
        workers: threads to use (decoders release the GIL); default ``min(16, 2 * cpu_count)``.

    Raises:
        DataError: listing each unusable image.
    """
    root_real = os.path.realpath(table.root)

    def problem(index: int) -> str | None:
        path = table.paths[index]
        real = os.path.realpath(path)
        if os.path.commonpath([root_real, real]) != root_real:
            lexically_inside = os.path.commonpath([table.root, path]) == str(table.root)
            via = f" (through a symlink to {real})" if lexically_inside else ""
            return f"outside the data root {table.root}{via}"
        if not os.path.exists(real):
            return "file not found"
        if not os.path.isfile(real):
            return "not a file"
        if decode:
            try:
                load_xray(real)
            except (XRayReadError, OSError) as exc:
                return f"unreadable: {exc}"
        return None

    started = time.perf_counter()
    workers = workers or min(16, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(problem, range(len(table))))
    problems = [f"{table.where(i)}: {msg}" for i, msg in enumerate(results) if msg is not None]
    if problems:
        raise DataError(
            _report(f"{len(problems)} of {len(table)} images in {table.source} cannot be used", problems)
        )
    logger.info("checked %d images in %.1f s", len(table), time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------------- splits


def _patient_groups(table: LabelTable) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for index, pid in enumerate(table.patient_ids):
        groups[pid].append(index)
    # Sorted ids make the split independent of row order.
    return {pid: groups[pid] for pid in sorted(groups)}


def _strata(table: LabelTable, groups: dict[str, list[int]]) -> dict[str, str]:
    """One stratum key per patient (see patient_split)."""
    if table.task == "binary":
        return {pid: str(int(np.any(table.targets[rows] == 1))) for pid, rows in groups.items()}
    if table.task == "multiclass":
        patient_freq = Counter(c for rows in groups.values() for c in set(table.targets[rows].tolist()))
        keys = {}
        for pid, rows in groups.items():
            counts = Counter(table.targets[rows].tolist())
            top = max(counts.values())
            # Ties go to the rarer class, so that rare classes are spread over the splits.
            keys[pid] = str(
                min((c for c, k in counts.items() if k == top), key=lambda c: (patient_freq[c], c))
            )
        return keys
    positive = {pid: np.flatnonzero(np.any(table.targets[rows] == 1, axis=0)) for pid, rows in groups.items()}
    patient_freq = np.zeros(len(table.label_names), dtype=np.int64)
    for cols in positive.values():
        patient_freq[cols] += 1
    return {
        pid: table.label_names[min(cols, key=lambda c: (patient_freq[c], c))] if cols.size else "-"
        for pid, cols in positive.items()
    }


def _assign(
    patients: list[str],
    groups: dict[str, list[int]],
    strata: dict[str, str],
    fractions: dict[str, float],
    rng: np.random.Generator,
) -> dict[str, str]:
    """Patients to splits, image-weighted, stratum by stratum, each to the split furthest below its share."""
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for pid in patients:
        by_stratum[strata[pid]].append(pid)
    assigned: dict[str, str] = {}
    filled = dict.fromkeys(fractions, 0.0)
    total = 0
    # Rarest strata first: the running quotas carry over between strata, so the last, largest strata even out
    # the overall fractions while every stratum is itself split close to the fractions.
    for key in sorted(by_stratum, key=lambda k: (len(by_stratum[k]), k)):
        members = by_stratum[key]
        for position in rng.permutation(len(members)):
            pid = members[position]
            total += len(groups[pid])
            split = max(fractions, key=lambda s: fractions[s] * total - filled[s])
            filled[split] += len(groups[pid])
            assigned[pid] = split
    return assigned


def patient_split(table: LabelTable, *, val: float = 0.15, test: float = 0.15, seed: int = 0) -> np.ndarray:
    """Split images into train/val/test by patient, stratified by label, deterministically for ``seed``.

    No patient has images in two splits. Each patient gets one stratum: multiclass - the patient's majority
    class; binary - whether any image is positive; multilabel - the patient's rarest positive finding (rarest
    over patients), or "none". Within each stratum patients are shuffled (seeded) and each goes to the split
    whose image count is furthest below its target share. Stratifying by the rarest positive spreads the
    rare findings first; common findings, present in many strata, then follow the fractions closely.

    When the table has an ``official_split`` (NIH lists), the official test images make up the test split
    (a patient with any official test image goes to test whole), ``test`` is ignored, and ``val`` is the
    fraction of the official trainval images carved out, by patient, for validation.

    Args:
        table: the labels.
        val: fraction of images for validation.
        test: fraction of images for testing.
        seed: the shuffle seed.

    Returns:
        array of "train" / "val" / "test", one per row of ``table``.
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(
            f"val and test must be fractions in [0, 1) with val + test < 1, got {val} and {test}"
        )
    groups = _patient_groups(table)
    strata = _strata(table, groups)
    rng = np.random.default_rng(seed)
    if table.official_split is not None:
        test_patients = [
            pid for pid, rows in groups.items() if any(table.official_split[i] == "test" for i in rows)
        ]
        moved = sum(table.official_split[i] != "test" for pid in test_patients for i in groups[pid])
        if moved:
            warnings.warn(
                f"{moved} official trainval images belong to patients with official test images; "
                "moved to test",
                stacklevel=2,
            )
        assigned = dict.fromkeys(test_patients, "test")
        rest = [pid for pid in groups if pid not in assigned]
        assigned |= _assign(rest, groups, strata, {"val": val, "train": 1 - val}, rng)
        wanted = {"train": 1 - val, "val": val, "test": 1.0}
    else:
        fractions = {"test": test, "val": val, "train": 1 - val - test}
        assigned = _assign(list(groups), groups, strata, {s: f for s, f in fractions.items() if f > 0}, rng)
        wanted = fractions
    split = np.empty(len(table), dtype="<U5")
    for pid, rows in groups.items():
        split[rows] = assigned[pid]
    counts = {s: int(np.sum(split == s)) for s in SPLITS}
    empty = [s for s in SPLITS if wanted[s] > 0 and counts[s] == 0]
    if empty:
        warnings.warn(
            f"split(s) {', '.join(empty)} got no images: {len(groups)} patients are too few for these "
            "fractions",
            stacklevel=2,
        )
    logger.info("patient split (seed %d): %s", seed, ", ".join(f"{s} {c}" for s, c in counts.items()))
    return split


def _label_header(table: LabelTable) -> list[str]:
    if table.task == "multilabel":
        return list(table.label_names)
    return [table.label_names[0]] if table.task == "binary" else ["label"]


def _label_cells(table: LabelTable, index: int) -> list[str]:
    target = table.targets[index]
    if table.task == "multiclass":
        return [table.label_names[int(target)]]
    values = np.atleast_1d(target)
    return ["" if np.isnan(v) else str(int(v)) for v in values]


def write_split(table: LabelTable, split: np.ndarray, path: str | os.PathLike) -> None:
    """Write ``split.csv``: path (relative to the data root), patient_id, split, then the label column(s)."""
    if len(split) != len(table):
        raise ValueError(f"split has {len(split)} entries for {len(table)} images")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "patient_id", "split", *_label_header(table)])
        for index in range(len(table)):
            writer.writerow(
                [table.relpath(index), table.patient_ids[index], split[index], *_label_cells(table, index)]
            )


def read_split(path: str | os.PathLike, table: LabelTable) -> np.ndarray:
    """Re-apply a ``split.csv`` written by :func:`write_split` to ``table`` (same images, in any order).

    Raises:
        DataError: the file does not describe exactly this table - images added or removed, patient ids or
            labels changed, or an unknown split name - with every difference listed.
    """
    csv_file = Path(path)
    header, rows = _read_csv(csv_file)
    expected = ["path", "patient_id", "split", *_label_header(table)]
    if header != expected:
        raise DataError(
            f"{csv_file} has columns {header} but this table needs {expected}: it was written for other "
            "labels"
        )
    problems: list[str] = []
    recorded: dict[str, tuple[int, dict[str, str]]] = {}
    for line, row in rows:
        if row["split"] not in SPLITS:
            problems.append(
                f"{csv_file.name} line {line}: split {row['split']!r} is not one of {', '.join(SPLITS)}"
            )
        if row["path"] in recorded:
            problems.append(f"{csv_file.name} line {line}: {row['path']} is listed twice")
        recorded[row["path"]] = (line, row)
    split = np.empty(len(table), dtype="<U5")
    seen = set()
    for index in range(len(table)):
        rel = table.relpath(index)
        if rel not in recorded:
            problems.append(f"{table.where(index)}: not in {csv_file.name}")
            continue
        seen.add(rel)
        line, row = recorded[rel]
        if row["patient_id"] != table.patient_ids[index]:
            problems.append(
                f"{table.where(index)}: patient {table.patient_ids[index]!r}, but {row['patient_id']!r} in "
                f"{csv_file.name} line {line}"
            )
        cells = _label_cells(table, index)
        if [row[h] for h in expected[3:]] != cells:
            problems.append(f"{table.where(index)}: labels {cells} differ from {csv_file.name} line {line}")
        split[index] = row["split"]
    problems += [
        f"{csv_file.name} line {recorded[rel][0]}: {rel} is not in the table"
        for rel in recorded
        if rel not in seen
    ]
    if problems:
        raise DataError(
            _report(
                f"{csv_file} does not match the labels ({len(problems)} differences); the data changed since "
                "the split was written: restore it, or split again (and retrain)",
                problems,
            )
        )
    return split


# --------------------------------------------------------------------------------------------------- Dataset


def _atomic_save(path: Path, array: np.ndarray) -> None:
    """Write to a temporary file, then rename: concurrent readers see no file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            np.save(handle, array)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


class XRayDataset(Dataset):
    """Images of a :class:`LabelTable` as model inputs.

    Per item: ``load_xray`` -> the model's preprocessing ``pipeline`` -> ``fit_to_input`` (letterbox to the
    model's size) -> [on-disk cache of that deterministic result] -> ``augment`` (training only) ->
    ``to_model_tensor``. Items are ``(image (3, S, S) float32, target, index)``; the target is a float32
    scalar (binary), an int64 scalar (multiclass) or a float32 (C,) vector with NaN = unknown (multilabel).

    The cache stores the fitted image as uint16 ``.npy`` under ``cache_dir``, keyed by the file's path,
    modification time and size, the pipeline JSON and the input size; with a cache the returned image is the
    16-bit-quantised one whether it was a hit or a miss, so cached and fresh items are identical. The dataset
    holds no open files and pickles, so DataLoader workers (fork or spawn) can use it.
    """

    def __init__(
        self,
        table: LabelTable,
        spec: InputSpec,
        *,
        pipeline: Pipeline | None = None,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self.table = table
        self.spec = spec
        self.pipeline = pipeline
        self.augment = augment
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._pipeline_json = pipeline.to_json() if pipeline is not None else "[]"

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image = torch.from_numpy(self.fitted(index)).unsqueeze(0)
        if self.augment is not None:
            image = self.augment(image)
        return (
            to_model_tensor(image, self.spec.mean, self.spec.std),
            torch.as_tensor(self.table.targets[index]),
            index,
        )

    def fitted(self, index: int) -> np.ndarray:
        """The deterministic float32 ``(S, S)`` image before augmentation (from the cache when present)."""
        if self.cache_dir is None:
            return self._compute(index)
        path = self.table.paths[index]
        try:
            stat = path.stat()
        except OSError as exc:
            raise DataError(
                f"{self.table.where(index)}: {exc.strerror}; run check_files() before training"
            ) from exc
        key = hashlib.sha256(
            json.dumps(
                [
                    CACHE_VERSION,
                    str(path),
                    stat.st_mtime_ns,
                    stat.st_size,
                    self._pipeline_json,
                    self.spec.size,
                ]
            ).encode()
        ).hexdigest()
        cache_file = self.cache_dir / key[:2] / f"{key}.npy"
        try:
            stored = np.load(cache_file, allow_pickle=False)
        except FileNotFoundError:
            stored = None
        except (ValueError, OSError, EOFError) as exc:
            logger.warning("ignoring unreadable cache file %s (%s)", cache_file, exc)
            stored = None
        size = self.spec.size
        if stored is None or stored.shape != (size, size) or stored.dtype != np.uint16:
            stored = np.round(self._compute(index) * 65535.0).astype(np.uint16)
            try:
                _atomic_save(cache_file, stored)
            except OSError as exc:
                warnings.warn(
                    f"cannot write the preprocessing cache in {self.cache_dir} ({exc.strerror}); "
                    "continuing without it",
                    stacklevel=2,
                )
        return stored.astype(np.float32) / np.float32(65535.0)

    def _compute(self, index: int) -> np.ndarray:
        try:
            pixels = load_xray(self.table.paths[index]).pixels
        except XRayReadError as exc:
            raise DataError(f"{self.table.where(index)}: {exc}; run check_files() before training") from exc
        image = self.pipeline(pixels) if self.pipeline is not None else pixels
        return fit_to_input(image, self.spec.size)


def make_loaders(
    table: LabelTable,
    split: np.ndarray,
    spec: InputSpec,
    *,
    pipeline: Pipeline | None = None,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
) -> dict[str, DataLoader]:
    """DataLoaders for the non-empty splits; only "train" is shuffled (seeded) and augmented."""
    loaders = {}
    for name in SPLITS:
        indices = np.flatnonzero(split == name)
        if not indices.size:
            continue
        train = name == "train"
        dataset = XRayDataset(
            table.subset(indices),
            spec,
            pipeline=pipeline,
            augment=augment if train else None,
            cache_dir=cache_dir,
        )
        loaders[name] = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            # A final batch of one image breaks BatchNorm in training; evaluation must see every image.
            drop_last=train and len(dataset) > batch_size,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            generator=torch.Generator().manual_seed(seed) if train else None,
        )
    return loaders
