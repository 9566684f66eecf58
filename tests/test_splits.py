"""Tests for trainer.splits: patient-wise stratified splits and split.csv."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import shared_path
from tests.tiny_datasets import multiclass_csv, nih_tree, synthetic_table, write_csv
from trainer.data import check_files
from trainer.label_readers import read_csv_labels
from trainer.labels import DataError, LabelTable, derive_binary
from trainer.nih import read_nih_labels
from trainer.splits import _patient_groups, _strata, patient_split, read_split, write_split

# --------------------------------------------------------------------------------------------------- splits


def assert_patient_wise(table: LabelTable, split: np.ndarray) -> None:
    assert split.shape == (len(table),)
    assert set(split) <= {"train", "val", "test"}
    by_patient: dict[str, set[str]] = {}
    for pid, name in zip(table.patient_ids, split, strict=True):
        by_patient.setdefault(pid, set()).add(str(name))
    assert all(len(names) == 1 for names in by_patient.values())


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_patient_split_never_shares_a_patient(task: str, seed: int) -> None:
    table = synthetic_table(task, n_patients=80 + 17 * seed, seed=seed)
    split = patient_split(table, val=0.2, test=0.1, seed=seed)
    assert_patient_wise(table, split)
    fractions = Counter(split.tolist())
    assert abs(fractions["val"] / len(table) - 0.2) < 0.05
    assert abs(fractions["test"] / len(table) - 0.1) < 0.05


def test_patient_split_is_deterministic_per_seed() -> None:
    table = synthetic_table("multiclass", 60, seed=3)
    first = patient_split(table, seed=7)
    np.testing.assert_array_equal(first, patient_split(table, seed=7))
    assert not np.array_equal(first, patient_split(table, seed=8))
    # Row order does not matter: the same patients land in the same splits.
    order = np.random.default_rng(0).permutation(len(table))
    shuffled = patient_split(table.subset(order), seed=7)
    np.testing.assert_array_equal(shuffled, first[order])


def test_patient_split_keeps_class_proportions() -> None:
    table = synthetic_table("multiclass", 400, seed=4)
    split = patient_split(table, val=0.15, test=0.15, seed=0)
    overall = np.bincount(table.targets, minlength=3) / len(table)
    for name in ("train", "val", "test"):
        share = np.bincount(table.targets[split == name], minlength=3) / np.sum(split == name)
        np.testing.assert_allclose(share, overall, atol=0.03)


def test_patient_split_spreads_rare_findings() -> None:
    table = synthetic_table("multilabel", 300, seed=5, classes=5)
    rare = int(np.argmin(np.sum(table.targets == 1, axis=0)))
    positive_patients = {table.patient_ids[i] for i in np.flatnonzero(table.targets[:, rare] == 1)}
    assert 8 <= len(positive_patients) <= 40
    for seed in range(3):
        split = patient_split(table, seed=seed)
        for name in ("train", "val", "test"):
            assert np.any(table.targets[split == name, rare] == 1), (seed, name)


def _strata_patient_by_patient(table: LabelTable) -> dict[str, str]:
    """patient_split's strata as its docstring states them, one patient at a time."""
    rows_of: dict[str, list[int]] = {}
    for i, pid in enumerate(table.patient_ids):
        rows_of.setdefault(pid, []).append(i)
    targets = table.targets.reshape(len(table), -1)
    positive = {
        pid: set(np.flatnonzero(np.any(targets[rows] == 1, axis=0)).tolist()) for pid, rows in rows_of.items()
    }
    if table.task.single_logit:
        return {pid: "1" if cols else "0" for pid, cols in positive.items()}
    freq = Counter(c for cols in positive.values() for c in cols)
    return {
        pid: table.label_names[min(cols, key=lambda c: (freq[c], c))] if cols else "-"
        for pid, cols in positive.items()
    }


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_strata_follow_the_rule_per_patient(task: str) -> None:
    table = synthetic_table(task, 200, seed=6, classes=6)
    if task == "multilabel":  # unknowns, and two findings equally rare (ties go to the first column)
        table.targets[::7, 2] = np.nan
        table.targets[:, 5] = table.targets[:, 4]
    strata = _strata(table, _patient_groups(table))
    assert strata == _strata_patient_by_patient(table)
    assert list(strata) == sorted(set(table.patient_ids))
    if task == "binary":
        assert set(strata.values()) == {"0", "1"}
    else:
        assert {"c4", "-"} <= set(strata.values()) and "c5" not in strata.values()


def test_patient_split_rejects_bad_fractions_and_warns_when_too_small() -> None:
    table = synthetic_table("binary", 40, seed=0)
    with pytest.raises(ValueError, match="val \\+ test < 1"):
        patient_split(table, val=0.5, test=0.5)
    tiny = table.subset([i for i, p in enumerate(table.patient_ids) if p in {"patient0", "patient1"}])
    with pytest.warns(UserWarning, match="got no images"):
        patient_split(tiny)


def test_patient_split_honours_the_official_test_list(tmp_path: Path) -> None:
    data_entry, train_val, test = nih_tree(tmp_path)
    table = read_nih_labels(data_entry, tmp_path, train_val_list=train_val, test_list=test)
    for seed in range(3):
        split = patient_split(table, val=0.3, test=0.0, seed=seed)
        assert_patient_wise(table, split)
        official_test = np.array(table.official_split) == "test"
        assert np.all(split[official_test] == "test") and not np.any(split[~official_test] == "test")
        assert np.any(split == "val") and np.any(split == "train")
    # A patient with images on both official sides goes to test whole.
    mixed = table.subset(range(len(table)))
    mixed.official_split[1] = "test"
    with pytest.warns(UserWarning, match="moved to test"):
        split = patient_split(mixed, val=0.3)
    assert split[0] == split[1] == "test"


# --------------------------------------------------------------------------------------------- split.csv


def test_split_csv_round_trip_and_mismatch(tmp_path: Path) -> None:
    table = read_csv_labels(multiclass_csv(tmp_path / "data"))
    split = patient_split(table, seed=0)
    out = tmp_path / "run" / "split.csv"
    write_split(table, split, out)
    rows = list(csv.DictReader(out.open()))
    assert rows[0] == {"path": "images/img00.png", "patient_id": "p0", "split": split[0], "label": "normal"}
    np.testing.assert_array_equal(read_split(out, table), split)
    order = np.arange(len(table))[::-1]
    np.testing.assert_array_equal(read_split(out, table.subset(order)), split[order])

    with pytest.raises(DataError, match="img00.png is not in the table"):
        read_split(out, table.subset(range(1, len(table))))
    changed = table.subset(range(len(table)))
    changed.targets[3] = 2
    with pytest.raises(DataError, match=r"line 5: images/img03.png: labels \['viral'\] differ"):
        read_split(out, changed)
    with pytest.raises(DataError, match="written for other labels"):
        read_split(out, read_csv_labels(tmp_path / "data" / "labels.csv", negative="normal"))


def test_split_csv_multilabel_keeps_unknowns(tmp_path: Path) -> None:
    rows = [[f"{i}.png", f"p{i}", i % 2, "" if i == 2 else 1] for i in range(6)]
    table = read_csv_labels(write_csv(tmp_path / "labels.csv", ["path", "patient_id", "Mass", "Edema"], rows))
    split = patient_split(table, seed=0)
    write_split(table, split, tmp_path / "split.csv")
    written = list(csv.DictReader((tmp_path / "split.csv").open()))
    assert written[2]["Edema"] == "" and written[1]["Mass"] == "1"
    np.testing.assert_array_equal(read_split(tmp_path / "split.csv", table), split)


# ------------------------------------------------------------------------------------------------ real data


@pytest.mark.shared
@pytest.mark.parametrize("dataset", ["kermany_pediatric_pneumonia", "nih_cxr14_subset"])
def test_real_labels_check_and_split(dataset: str) -> None:
    labels = shared_path("data", dataset, "labels.csv")
    table = read_csv_labels(labels)
    assert len(table) > 500
    assert table.task == ("multiclass" if dataset.startswith("kermany") else "multilabel")
    check_files(table)
    split = patient_split(table, seed=0)
    assert_patient_wise(table, split)
    for name in ("train", "val", "test"):
        assert 0.1 < np.mean(split == name) < 0.8
    if table.task == "multilabel":
        binary = derive_binary(table)
        assert binary.label_counts()["normal"] == table.label_counts()["No_Finding"]
