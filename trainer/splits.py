"""Patient-wise, label-stratified train/val/test splits, and ``split.csv`` to save and re-apply them."""

from __future__ import annotations

import csv
import logging
import os
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from trainer.label_readers import read_csv_table
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


def _patient_numbers(groups: dict[str, list[int]]) -> np.ndarray:
    """The position in ``groups`` of each row's patient."""
    numbers: np.ndarray = np.empty(sum(len(rows) for rows in groups.values()), dtype=np.int64)
    if numbers.size:
        sizes = [len(rows) for rows in groups.values()]
        numbers[np.concatenate(list(groups.values()))] = np.repeat(np.arange(len(groups)), sizes)
    return numbers


def _target_columns(table: LabelTable) -> np.ndarray:
    """The targets of a binary or multilabel table as (N, C): a binary table's one column is (N, 1)."""
    return table.targets[:, None] if table.targets.ndim == 1 else table.targets


def _strata(table: LabelTable, groups: dict[str, list[int]]) -> dict[str, str]:
    """One stratum key per patient (see patient_split)."""
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
    # Whole arrays, not a loop over patients: NIH has 30k of them.
    positive_rows, columns = np.nonzero(_target_columns(table) == 1)
    positive: np.ndarray = np.zeros((len(groups), len(table.label_names)), dtype=bool)
    positive[_patient_numbers(groups)[positive_rows], columns] = True
    if table.task.single_logit:
        return dict(zip(groups, np.where(positive[:, 0], "1", "0").tolist(), strict=True))
    # Patients positive for each finding; each patient's rarest (ties: the first column), or "-".
    finding_freq = positive.sum(axis=0)
    rarest_first = np.lexsort((np.arange(len(finding_freq)), finding_freq))
    by_rarity = positive[:, rarest_first]
    names = np.asarray(table.label_names, dtype=object)[rarest_first[by_rarity.argmax(axis=1)]]
    return dict(zip(groups, np.where(by_rarity.any(axis=1), names, "-").tolist(), strict=True))


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


def _label_cells(table: LabelTable) -> list[list[str]]:
    """The label cells of every row as ``split.csv`` writes them (class name; 0/1, blank = unknown)."""
    if table.task.exclusive:
        return [[name] for name in np.asarray(table.label_names, dtype=object)[table.targets].tolist()]
    values = _target_columns(table)
    # Each distinct value (0, 1, NaN) is worded once; the cells share its string.
    distinct, inverse = np.unique(values, return_inverse=True)
    words = np.array(["" if np.isnan(v) else str(int(v)) for v in distinct.tolist()], dtype=object)
    cells: list[list[str]] = words[inverse.reshape(values.shape)].tolist()
    return cells


def write_split(table: LabelTable, split: np.ndarray, path: str | os.PathLike) -> None:
    """Write ``split.csv``: path (relative to the data root), patient_id, split, then the label column(s)."""
    if len(split) != len(table):
        raise ValueError(f"split has {len(split)} entries for {len(table)} images")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "patient_id", "split", *_label_header(table)])
        writer.writerows(
            [ref, pid, name, *cells]
            for ref, pid, name, cells in zip(
                table.refs, table.patient_ids, split.tolist(), _label_cells(table), strict=True
            )
        )


def read_split(path: str | os.PathLike, table: LabelTable) -> np.ndarray:
    """Re-apply a ``split.csv`` written by :func:`write_split` to ``table`` (same images, in any order).

    Raises:
        DataError: the file does not describe exactly this table - images added or removed, patient ids or
            labels changed, or an unknown split name - with every difference listed.
    """
    csv_file = Path(path)
    header, frame, line_numbers = read_csv_table(csv_file)
    expected = ["path", "patient_id", "split", *_label_header(table)]
    if header != expected:
        raise DataError(
            f"{csv_file} has columns {header} but this table needs {expected}: it was written for other "
            "labels"
        )
    lines: list[int] = line_numbers.tolist()
    paths, patients, names = (frame[column].tolist() for column in expected[:3])
    recorded_labels: list[list[str]] = frame[expected[3:]].to_numpy().tolist()
    problems: list[str] = []
    recorded: dict[str, int] = {}  # path -> its (last) row in the file
    for row, (line, rel, name) in enumerate(zip(lines, paths, names, strict=True)):
        if name not in SPLITS:
            problems.append(f"{csv_file.name} line {line}: split {name!r} is not one of {', '.join(SPLITS)}")
        if rel in recorded:
            problems.append(f"{csv_file.name} line {line}: {rel} is listed twice")
        recorded[rel] = row
    split: np.ndarray = np.empty(len(table), dtype="<U5")
    seen = set()
    for index, (rel, patient, cells) in enumerate(
        zip(table.refs, table.patient_ids, _label_cells(table), strict=True)
    ):
        if rel not in recorded:
            problems.append(f"{table.where(index)}: not in {csv_file.name}")
            continue
        seen.add(rel)
        row = recorded[rel]
        if patients[row] != patient:
            problems.append(
                f"{table.where(index)}: patient {patient!r}, but {patients[row]!r} in "
                f"{csv_file.name} line {lines[row]}"
            )
        if recorded_labels[row] != cells:
            problems.append(
                f"{table.where(index)}: labels {cells} differ from {csv_file.name} line {lines[row]}"
            )
        split[index] = names[row]
    problems += [
        f"{csv_file.name} line {lines[recorded[rel]]}: {rel} is not in the table"
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
