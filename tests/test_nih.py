"""Tests for trainer.nih: NIH ChestX-ray14 Data_Entry labels and the official split lists."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import shared_path
from tests.tiny_datasets import nih_tree, write_csv, write_png
from trainer.data import check_files
from trainer.label_readers import read_csv_labels
from trainer.labels import DataError, select_findings
from trainer.nih import NIH_FINDINGS, read_nih_labels


def test_read_nih_labels(tmp_path: Path) -> None:
    data_entry, train_val, test = nih_tree(tmp_path)
    table = read_nih_labels(data_entry, tmp_path / "images", train_val_list=train_val, test_list=test)
    assert table.task == "multilabel" and table.label_names == list(NIH_FINDINGS) and len(table) == 6
    column = {name: i for i, name in enumerate(NIH_FINDINGS)}
    assert table.targets[0, column["Cardiomegaly"]] == 1 and table.targets[0, column["Emphysema"]] == 1
    assert table.targets[0].sum() == 2
    assert table.targets[1].sum() == 0 and table.targets[2].sum() == 0  # No Finding
    assert table.targets[3, column["Pleural_Thickening"]] == 1
    assert table.patient_ids == ["1", "1", "2", "3", "4", "5"]
    assert table.official_split == ["trainval", "trainval", "trainval", "test", "trainval", "test"]
    assert table.paths[5].parent.parent.name == "images_003" and table.line_numbers[0] == 2
    check_files(table)

    subset = read_nih_labels(data_entry, tmp_path, findings=["pneumonia", "Mass"], test_list=test)
    assert subset.label_names == ["Pneumonia", "Mass"]
    assert subset.targets.tolist() == [[0, 0], [0, 0], [0, 0], [0, 0], [1, 0], [0, 1]]
    assert subset.official_split[3] == "test" and subset.official_split[0] == "trainval"


def test_read_nih_labels_problems(tmp_path: Path) -> None:
    data_entry, _, _ = nih_tree(tmp_path)
    (tmp_path / "images" / "images_001" / "images" / "00000001_000.png").unlink()
    with pytest.warns(UserWarning, match="1 of 6 images"):
        table = read_nih_labels(data_entry, tmp_path)
    assert len(table) == 5
    with pytest.raises(DataError, match="line 2: 00000001_000.png"):
        read_nih_labels(data_entry, tmp_path, missing="error")
    with pytest.raises(DataError, match="did you mean 'Pneumonia'"):
        read_nih_labels(data_entry, tmp_path, findings=["Pneumonai"])
    rows = list(csv.reader(data_entry.open()))
    rows[3][1] = "Covid|Edema"
    write_csv(data_entry, rows[0], rows[1:])
    with pytest.raises(DataError, match="line 4: unknown finding 'Covid'"):
        read_nih_labels(data_entry, tmp_path)
    write_png(tmp_path / "copy" / "00000002_000.png")
    rows[3][1] = "Edema"
    write_csv(data_entry, rows[0], rows[1:])
    with pytest.raises(DataError, match="more than once"):
        read_nih_labels(data_entry, tmp_path)


# ------------------------------------------------------------------------------------------------ real data


@pytest.mark.shared
def test_real_nih_metadata_through_the_data_entry_reader(tmp_path: Path) -> None:
    """The subset's raw NIH 'Finding Labels' give the same targets as its labels.csv."""
    folder = shared_path("data", "nih_cxr14_subset")
    labels = read_csv_labels(folder / "labels.csv")
    patient = dict(zip((labels.ref(i) for i in range(len(labels))), labels.patient_ids, strict=True))
    with (folder / "metadata.csv").open() as handle:
        meta = list(csv.DictReader(handle))
    data_entry = write_csv(
        tmp_path / "Data_Entry_2017.csv",
        ["Image Index", "Finding Labels", "Patient ID"],
        [[Path(m["path"]).name, m["finding_labels"], patient[m["path"]]] for m in meta],
    )
    nih = read_nih_labels(data_entry, folder)
    assert len(nih) == len(labels)
    order = {p: i for i, p in enumerate(labels.paths)}
    rows = [order[p] for p in nih.paths]
    findings = select_findings(labels.subset(rows), list(NIH_FINDINGS))
    np.testing.assert_array_equal(nih.targets, findings.targets)
    assert nih.patient_ids == [labels.patient_ids[r] for r in rows]
