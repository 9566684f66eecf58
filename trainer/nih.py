"""NIH ChestX-ray14 labels: ``Data_Entry_2017.csv`` plus the official train/val and test lists."""

from __future__ import annotations

import logging
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trainer.image_sources import FileImages
from trainer.label_readers import (
    PATH_COLUMNS,
    PATIENT_COLUMNS,
    RowProblems,
    absolute_path,
    check_rows,
    explode_findings,
    line_where,
    missing_column,
    pick_column,
    read_csv_table,
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


def _index_images(images: FileImages, names: set[str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The reference of each wanted file name under the root (one walk), and the paths of names found twice.

    References are made per folder, not per file: ``images.ref`` of 100k paths takes seconds.
    """
    found: dict[str, str] = {}
    duplicates: dict[str, list[str]] = defaultdict(list)
    for directory, dirnames, filenames in os.walk(images.root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        folder = images.ref(directory)
        prefix = "" if folder == "." else folder + "/"
        for name in names.intersection(filenames):
            if name in found:
                duplicates[name].append(os.path.join(directory, name))
            else:
                found[name] = prefix + name
    return found, {name: [str(images.path(found[name])), *more] for name, more in duplicates.items()}


def _column(header: list[str], variants: Sequence[str], what: str, source: Path) -> str:
    """The first of ``variants`` in the header (the first variant is the official name)."""
    column = pick_column(header, None, variants)
    if column is None:
        raise missing_column(header, variants[0], what, source)
    return column


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

    header, frame, lines = read_csv_table(csv_file)
    image_col = _column(header, ("Image Index", *PATH_COLUMNS), "image", csv_file)
    label_col = _column(header, _FINDING_LABEL_COLUMNS, "finding", csv_file)
    patient_col = _column(header, PATIENT_COLUMNS, "patient", csv_file)

    where = line_where(lines)
    rows, found_names = explode_findings(frame[label_col])
    # A few distinct names, each written 100k times: key each once.
    keys = found_names.map({name: loose_key(name) for name in found_names.unique()})
    finding = keys != "nofinding"
    unknown = finding & ~keys.isin(by_key.keys())
    problems = [
        (int(r), f"{where(r)}: unknown finding {name!r}{did_you_mean(name, NIH_FINDINGS)}")
        for r, name in zip(rows[unknown.to_numpy()].tolist(), found_names[unknown], strict=True)
    ]
    blank = np.flatnonzero(frame[image_col] == "").tolist()
    problems += [(i, f"{where(i)}: blank image name") for i in blank]
    if problems:
        raise RowProblems(str(csv_file), problems)
    targets: np.ndarray = np.zeros((len(frame), len(chosen)), dtype=np.float32)
    columns = keys.map(column_of)
    wanted_finding = columns.notna().to_numpy()
    targets[rows[wanted_finding], columns[wanted_finding].to_numpy(dtype=np.int64)] = 1.0

    names = frame[image_col].map(lambda v: v.rsplit("/", 1)[-1]).tolist()
    images = FileImages(root_path)
    found, duplicates = _index_images(images, set(names))
    if duplicates:
        listed = [f"{n}: {', '.join(str(p) for p in ps)}" for n, ps in sorted(duplicates.items())]
        raise DataError(
            problem_report(f"{root_path}: {len(duplicates)} image names occur more than once", listed)
        )
    present = np.fromiter((n in found for n in names), dtype=bool, count=len(names))
    if not present.any():
        raise DataError(f"none of the {len(names)} images listed in {csv_file} is under {root_path}")
    if not present.all():
        absent = [f"{where(i)}: {names[i]}" for i in np.flatnonzero(~present).tolist()]
        if missing == "error":
            raise DataError(
                problem_report(f"{len(absent)} images of {csv_file} are not under {root_path}", absent)
            )
        warnings.warn(
            f"{len(absent)} of {len(names)} images listed in {csv_file} are not under {root_path}; "
            "their rows were dropped",
            stacklevel=2,
        )
    keep = np.flatnonzero(present)
    sides = _official_split([names[i] for i in keep], train_val_list, test_list)
    official = None
    if sides is not None:
        listed_rows = np.array([side is not None for side in sides], dtype=bool)
        if not listed_rows.all():
            warnings.warn(
                f"{int((~listed_rows).sum())} images are in neither official list; their rows were dropped",
                stacklevel=2,
            )
            keep = keep[listed_rows]
        official = [side for side in sides if side is not None]
    refs = [found[names[i]] for i in keep]
    patient_ids = frame[patient_col].to_numpy()[keep].tolist()
    kept_lines = lines[keep]
    check_rows(refs, patient_ids, line_where(kept_lines), str(csv_file))
    table = LabelTable(
        refs=refs,
        patient_ids=patient_ids,
        targets=targets[keep],
        label_names=chosen,
        task=Task.MULTILABEL,
        images=images,
        line_numbers=kept_lines.tolist(),
        official_split=official,
        source=str(csv_file),
    )
    logger.info("read %d NIH images of %d patients from %s", len(table), len(set(patient_ids)), csv_file)
    return table


def _official_split(
    names: list[str], train_val_list: str | os.PathLike | None, test_list: str | os.PathLike | None
) -> list[str | None] | None:
    """'trainval'/'test' per image name from the official lists (None: in neither), or None without lists."""
    if test_list is None:
        if train_val_list is None:
            return None
        trainval = _read_name_list(train_val_list)
        return ["trainval" if name in trainval else "test" for name in names]
    test = _read_name_list(test_list)
    if train_val_list is None:
        return ["test" if name in test else "trainval" for name in names]
    trainval = _read_name_list(train_val_list)
    both = sorted(trainval & test)
    if both:
        raise DataError(problem_report(f"{len(both)} images are in both official lists", both))
    return ["test" if name in test else "trainval" if name in trainval else None for name in names]
