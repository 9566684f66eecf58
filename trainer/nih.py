"""NIH ChestX-ray14 labels: ``Data_Entry_2017.csv`` plus the official train/val and test lists."""

from __future__ import annotations

import logging
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trainer.label_readers import (
    PATH_COLUMNS,
    PATIENT_COLUMNS,
    absolute_path,
    check_rows,
    missing_column,
    pick_column,
    read_csv_rows,
)
from trainer.labels import DataError, LabelTable, did_you_mean, loose_key, problem_report
from trainer.task import Task

__all__ = ["NIH_FINDINGS", "read_nih_labels"]

logger = logging.getLogger(__name__)

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
_FINDING_LABEL_COLUMNS = ("Finding Labels", "finding_labels", "findings", "labels")


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
    csv_file = absolute_path(data_entry_csv)
    root_path = absolute_path(root)
    if missing not in ("drop", "error"):
        raise DataError(f"missing must be 'drop' or 'error', got {missing!r}")
    if not root_path.is_dir():
        raise DataError(f"image folder not found: {root_path}")
    by_key = {loose_key(f): f for f in NIH_FINDINGS}
    chosen = list(NIH_FINDINGS)
    if findings is not None:
        unknown = [f for f in findings if loose_key(f) not in by_key]
        if unknown:
            raise DataError(
                f"unknown NIH finding(s) {unknown}{did_you_mean(unknown[0], NIH_FINDINGS)}. "
                f"Valid: {', '.join(NIH_FINDINGS)}"
            )
        chosen = [by_key[loose_key(f)] for f in findings]
    column_of = {loose_key(f): i for i, f in enumerate(chosen)}

    header, rows = read_csv_rows(csv_file)
    image_col = pick_column(header, None, ("Image Index", *PATH_COLUMNS))
    label_col = pick_column(header, None, _FINDING_LABEL_COLUMNS)
    patient_col = pick_column(header, None, PATIENT_COLUMNS)
    for column, wanted, what in (
        (image_col, "Image Index", "image"),
        (label_col, "Finding Labels", "finding"),
        (patient_col, "Patient ID", "patient"),
    ):
        if column is None:
            raise missing_column(header, wanted, what, csv_file)
    assert image_col is not None and label_col is not None and patient_col is not None  # checked just above

    problems: list[str] = []
    targets: np.ndarray = np.zeros((len(rows), len(chosen)), dtype=np.float32)
    for r, (line, row) in enumerate(rows):
        for name in filter(None, (n.strip() for n in row[label_col].split("|"))):
            key = loose_key(name)
            if key == "nofinding":
                continue
            if key not in by_key:
                problems.append(f"line {line}: unknown finding {name!r}{did_you_mean(name, NIH_FINDINGS)}")
            elif key in column_of:
                targets[r, column_of[key]] = 1.0
        if not row[image_col]:
            problems.append(f"line {line}: blank image name")
    if problems:
        raise DataError(problem_report(f"{csv_file}: {len(problems)} problems", problems))

    names = [Path(row[image_col]).name for _, row in rows]
    found, duplicates = _index_images(root_path, set(names))
    if duplicates:
        listed = [f"{n}: {', '.join(str(p) for p in ps)}" for n, ps in sorted(duplicates.items())]
        raise DataError(
            problem_report(f"{root_path}: {len(duplicates)} image names occur more than once", listed)
        )
    keep = [i for i, name in enumerate(names) if name in found]
    if not keep:
        raise DataError(f"none of the {len(names)} images listed in {csv_file} is under {root_path}")
    if len(keep) < len(names):
        absent = [f"line {rows[i][0]}: {names[i]}" for i in range(len(names)) if names[i] not in found]
        if missing == "error":
            raise DataError(
                problem_report(f"{len(absent)} images of {csv_file} are not under {root_path}", absent)
            )
        warnings.warn(
            f"{len(absent)} of {len(names)} images listed in {csv_file} are not under {root_path}; "
            "their rows were dropped",
            stacklevel=2,
        )

    sides = _official_split([names[i] for i in keep], train_val_list, test_list)
    official: list[str] | None = None
    if sides is not None:
        unlisted = [i for i, side in zip(keep, sides, strict=True) if side is None]
        if unlisted:
            warnings.warn(
                f"{len(unlisted)} images are in neither official list; their rows were dropped", stacklevel=2
            )
            dropped = set(unlisted)
            keep = [i for i in keep if i not in dropped]
        official = [side for side in sides if side is not None]
    paths = [Path(os.path.normpath(found[names[i]])) for i in keep]
    patient_ids = [rows[i][1][patient_col] for i in keep]
    lines = [rows[i][0] for i in keep]
    check_rows(paths, patient_ids, lines, str(csv_file))
    table = LabelTable(
        paths=paths,
        patient_ids=patient_ids,
        targets=targets[keep],
        label_names=chosen,
        task=Task.MULTILABEL,
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
        raise DataError(problem_report(f"{len(both)} images are in both official lists", both))
    sides: list[str | None] = []
    for name in names:
        if test is not None:
            side = "test" if name in test else "trainval" if trainval is None or name in trainval else None
        else:
            side = "trainval" if trainval is not None and name in trainval else "test"
        sides.append(side)
    return sides
