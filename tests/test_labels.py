"""Tests for trainer.labels: labels derived from a table (normal versus abnormal, chosen findings)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.tiny_datasets import multiclass_csv, synthetic_table
from trainer.label_readers import read_csv_labels
from trainer.labels import DataError, LabelTable, derive_binary, select_findings


def test_derive_binary_rule(tmp_path: Path) -> None:
    nan = np.nan
    table = LabelTable.from_paths(
        [tmp_path / f"{i}.png" for i in range(7)],
        tmp_path,
        patient_ids=[str(i) for i in range(7)],
        targets=[
            [0, 0, 1],  # normal column says normal
            [1, 0, 0],  # a finding: abnormal
            [0, 1, 1],  # contradiction: the finding wins
            [0, 0, 0],  # normal column 0, no listed finding: abnormal (something not listed)
            [0, 0, nan],  # normal unknown, findings all 0: normal
            [nan, 0, nan],  # cannot decide: dropped
            [nan, 1, nan],  # a positive decides despite unknowns
        ],
        label_names=["Effusion", "Mass", "No_Finding"],
        task="multilabel",
        line_numbers=list(range(2, 9)),
    )
    with pytest.warns(UserWarning) as caught:
        binary = derive_binary(table)
    messages = " ".join(str(w.message) for w in caught)
    assert "line 4" in messages and "line 7" in messages
    assert binary.task == "binary" and binary.label_names == ["abnormal"] and binary.negative_name == "normal"
    assert binary.targets.tolist() == [0, 1, 1, 1, 0, 1]
    assert binary.line_numbers == [2, 3, 4, 5, 6, 8]

    no_normal_column = select_findings(table.subset([0, 1, 4]), ["Effusion", "Mass"])
    assert derive_binary(no_normal_column).targets.tolist() == [0, 1, 0]


def test_derive_binary_needs_multilabel(tmp_path: Path) -> None:
    table = read_csv_labels(multiclass_csv(tmp_path))
    with pytest.raises(DataError, match="negative="):
        derive_binary(table)


def test_select_findings(tmp_path: Path) -> None:
    table = synthetic_table("multilabel", 40, seed=1, classes=4)
    counts = table.label_counts()
    kept = select_findings(table, ["C3", "c0"])
    assert kept.label_names == ["c3", "c0"]
    np.testing.assert_array_equal(kept.targets, table.targets[:, [3, 0]])
    threshold = sorted(counts.values())[1]
    with pytest.warns(UserWarning, match="fewer than"):
        frequent = select_findings(table, min_positives=threshold)
    assert set(frequent.label_names) == {n for n, c in counts.items() if c >= threshold}
    with pytest.raises(DataError, match="did you mean 'c1'"):
        select_findings(table, ["c11"])
