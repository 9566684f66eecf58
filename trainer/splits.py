"""Patient-wise, label-stratified train/val/test splits, and ``split.csv`` to save and re-apply them."""

from __future__ import annotations

import csv
import logging
import os
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from trainer.label_readers import read_csv_rows
from trainer.labels import DataError, LabelTable, problem_report

__all__ = ["SPLITS", "patient_split", "read_split", "write_split"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def _patient_groups(table: LabelTable) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for index, pid in enumerate(table.patient_ids):
        groups[pid].append(index)
    # Sorted ids make the split independent of row order.
    return {pid: groups[pid] for pid in sorted(groups)}


def _strata(table: LabelTable, groups: dict[str, list[int]]) -> dict[str, str]:
    """One stratum key per patient (see patient_split)."""
    if table.task.single_logit:
        return {pid: str(int(np.any(table.targets[rows] == 1))) for pid, rows in groups.items()}
    if table.task.exclusive:
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
    # Patients positive for each finding:
    finding_freq: np.ndarray = np.zeros(len(table.label_names), dtype=np.int64)
    for cols in positive.values():
        finding_freq[cols] += 1
    return {
        pid: table.label_names[min(cols, key=lambda c: (finding_freq[c], c))] if cols.size else "-"
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
        raise DataError(f"val and test must be fractions in [0, 1) with val + test < 1, got {val} and {test}")
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
    split: np.ndarray = np.empty(len(table), dtype="<U5")
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
    """One "label" column of class names for an exclusive task, else one 0/1 column per label name."""
    return ["label"] if table.task.exclusive else list(table.label_names)


def _label_cells(table: LabelTable, index: int) -> list[str]:
    target = table.targets[index]
    if table.task.exclusive:
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
                [table.ref(index), table.patient_ids[index], split[index], *_label_cells(table, index)]
            )


def read_split(path: str | os.PathLike, table: LabelTable) -> np.ndarray:
    """Re-apply a ``split.csv`` written by :func:`write_split` to ``table`` (same images, in any order).

    Raises:
        DataError: the file does not describe exactly this table - images added or removed, patient ids or
            labels changed, or an unknown split name - with every difference listed.
    """
    csv_file = Path(path)
    header, rows = read_csv_rows(csv_file)
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
    split: np.ndarray = np.empty(len(table), dtype="<U5")
    seen = set()
    for index in range(len(table)):
        rel = table.ref(index)
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
            problem_report(
                f"{csv_file} does not match the labels ({len(problems)} differences); the data changed since "
                "the split was written: restore it, or split again (and retrain)",
                problems,
            )
        )
    return split
