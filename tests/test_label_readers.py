"""Tests for trainer.label_readers: labels from class folders and from label CSVs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.tiny_datasets import multiclass_csv, write_csv, write_png
from trainer.data import check_files
from trainer.label_readers import read_csv_labels, read_folder_labels
from trainer.labels import DataError

# ----------------------------------------------------------------------------------------------- folders


def test_read_folder_labels_multiclass(tmp_path: Path) -> None:
    write_png(tmp_path / "normal" / "IM-0001-0001.png")
    write_png(tmp_path / "normal" / "IM-0001-0002.png")
    write_png(tmp_path / "pneumonia" / "nested" / "person7_bacteria_1.png")
    write_png(tmp_path / "viral" / "person8_virus_3.png")
    (tmp_path / "normal" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    with pytest.warns(UserWarning) as caught:
        table = read_folder_labels(tmp_path, patient_pattern=r"^(IM-\d+|person\d+)")
    assert any("notes.txt" in str(w.message) for w in caught)
    assert table.task == "multiclass"
    assert table.label_names == ["normal", "pneumonia", "viral"]
    assert table.targets.tolist() == [0, 0, 1, 2]
    assert table.patient_ids == ["IM-0001", "IM-0001", "person7", "person8"]
    assert all(p.is_absolute() and p.exists() for p in table.paths)
    assert table.line_numbers is None and table.where(2) == "pneumonia/nested/person7_bacteria_1.png"


def test_read_folder_labels_binary_needs_two_classes_and_a_positive(tmp_path: Path) -> None:
    write_png(tmp_path / "normal" / "a.png")
    write_png(tmp_path / "pneumonia" / "b.png")
    with pytest.warns(UserWarning, match="own patient"):
        table = read_folder_labels(tmp_path, positive="pneumonia")
    assert table.task == "binary" and table.label_names == ["pneumonia"] and table.negative_name == "normal"
    assert table.targets.tolist() == [0.0, 1.0] and table.targets.dtype == np.float32
    assert table.patient_ids == ["a", "b"]
    with pytest.warns(UserWarning), pytest.raises(DataError, match="positive="):
        read_folder_labels(tmp_path, positive="covid")
    write_png(tmp_path / "covid" / "c.png")
    with pytest.warns(UserWarning), pytest.raises(DataError, match="exactly two class folders"):
        read_folder_labels(tmp_path, positive="pneumonia")


def test_read_folder_labels_errors(tmp_path: Path) -> None:
    write_png(tmp_path / "only" / "a.png")
    with pytest.raises(DataError, match="one sub-folder per class"):
        read_folder_labels(tmp_path)
    write_png(tmp_path / "other" / "zzz.png")
    with pytest.raises(DataError, match="zzz.png"):
        read_folder_labels(tmp_path, patient_pattern=r"^(a)")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="without images: empty"):
        read_folder_labels(tmp_path, patient_pattern=".")


# --------------------------------------------------------------------------------------------------- CSV


def test_read_csv_single_label_multiclass(tmp_path: Path) -> None:
    csv_path = multiclass_csv(tmp_path)
    table = read_csv_labels(csv_path)
    assert table.task == "multiclass" and table.label_names == ["bacterial", "normal", "viral"]
    assert table.targets.dtype == np.int64
    assert table.targets[:4].tolist() == [1, 1, 0, 0]
    assert table.line_numbers[:3] == [2, 3, 4]  # the header is line 1
    assert table.paths[0] == tmp_path / "images" / "img00.png"
    assert table.root == tmp_path and table.ref(0) == "images/img00.png"
    assert table.label_counts() == {"bacterial": 4, "normal": 4, "viral": 4}


def test_read_csv_binary_from_positive_or_negative_values(tmp_path: Path) -> None:
    csv_path = multiclass_csv(tmp_path)
    table = read_csv_labels(csv_path, positive="viral")
    assert (
        table.task == "binary"
        and table.label_names == ["viral"]
        and table.negative_name == "bacterial+normal"
    )
    assert int(table.targets.sum()) == 4
    abnormal = read_csv_labels(csv_path, negative="normal")
    assert abnormal.label_names == ["bacterial+viral"] and abnormal.negative_name == "normal"
    assert int(abnormal.targets.sum()) == 8
    with pytest.raises(DataError, match="did you mean 'viral'"):
        read_csv_labels(csv_path, positive="virall")


def test_read_csv_zero_one_column_is_binary_and_numbers_sort_numerically(tmp_path: Path) -> None:
    for i in range(4):
        write_png(tmp_path / f"{i}.png", seed=i)
    zero_one = write_csv(
        tmp_path / "a.csv", ["path", "patient_id", "pneumonia"], [[f"{i}.png", i, i % 2] for i in range(4)]
    )
    table = read_csv_labels(zero_one)
    assert (
        table.task == "binary"
        and table.label_names == ["pneumonia"]
        and table.negative_name == "not_pneumonia"
    )
    assert table.targets.tolist() == [0.0, 1.0, 0.0, 1.0]
    numbered = write_csv(
        tmp_path / "b.csv",
        ["path", "patient_id", "class"],
        [[f"{i}.png", i, [2, 10, 9, 2][i]] for i in range(4)],
    )
    table = read_csv_labels(numbered)
    assert table.task == "multiclass" and table.label_names == ["2", "9", "10"]
    assert table.targets.tolist() == [0, 2, 1, 0]


def test_read_csv_multilabel_blank_is_unknown(tmp_path: Path) -> None:
    rows = [
        ["a.png", "p1", 1, 0, ""],
        ["b.png", "p1", "0", "1.0", "1"],
        ["c.png", "p2", "", "", "0"],
    ]
    csv_path = write_csv(
        tmp_path / "labels.csv", ["path", "patient_id", "Effusion", "Mass", "No_Finding"], rows
    )
    table = read_csv_labels(csv_path)
    assert table.task == "multilabel" and table.label_names == ["Effusion", "Mass", "No_Finding"]
    assert table.targets.dtype == np.float32 and table.targets.shape == (3, 3)
    np.testing.assert_array_equal(table.targets, [[1, 0, np.nan], [0, 1, 1], [np.nan, np.nan, 0]])
    assert table.label_counts() == {"Effusion": 1, "Mass": 1, "No_Finding": 1}
    only = read_csv_labels(csv_path, label_columns=["mass"])  # names match loosely
    assert only.label_names == ["Mass"] and only.targets.shape == (3, 1)


def test_read_csv_bad_values_are_all_reported_with_line_numbers(tmp_path: Path) -> None:
    rows = [
        ["a.png", "p1", 1, 0],
        ["b.png", "p2", -1, 0],
        ["c.png", "p3", 0, 0],
        ["d.png", "p4", 0, "yes"],
        ["", "p5", 0, 0],
    ]
    csv_path = write_csv(tmp_path / "labels.csv", ["path", "patient_id", "Edema", "Mass"], rows)
    with pytest.raises(DataError) as error:
        read_csv_labels(csv_path)
    message = str(error.value)
    assert "3 problems" in message
    assert "line 3: column 'Edema': '-1'" in message
    assert "line 5: column 'Mass': 'yes'" in message
    assert "line 6: blank path" in message
    assert message.index("line 3") < message.index("line 5") < message.index("line 6")
    assert "uncertain" in message


def test_read_csv_blank_single_label_and_duplicates(tmp_path: Path) -> None:
    rows = [["a.png", "p1", "normal"], ["b.png", "p2", ""], ["a.png", "p1", "viral"], ["c.png", "", "viral"]]
    csv_path = write_csv(tmp_path / "labels.csv", ["path", "patient_id", "label"], rows)
    with pytest.raises(DataError, match="line 3: blank label"):
        read_csv_labels(csv_path)
    rows[1][2] = "normal"
    write_csv(csv_path, ["path", "patient_id", "label"], rows)
    with pytest.raises(DataError) as error:
        read_csv_labels(csv_path)
    assert "line 4:" in str(error.value) and "first at line 2" in str(error.value)
    assert "line 5: blank patient id" in str(error.value)


def test_read_csv_column_variants_and_missing_columns(tmp_path: Path) -> None:
    write_png(tmp_path / "x.png")
    variants = write_csv(
        tmp_path / "a.csv",
        ["Image Index", "Patient ID", "Label"],
        [["x.png", 7, "normal"], ["x2.png", 8, "sick"]],
    )
    table = read_csv_labels(variants)
    assert table.patient_ids == ["7", "8"] and table.label_names == ["normal", "sick"]
    wrong = write_csv(
        tmp_path / "b.csv", ["filepath", "patient_id", "label"], [["x.png", 1, "a"], ["y.png", 2, "b"]]
    )
    with pytest.raises(DataError) as error:
        read_csv_labels(wrong)
    assert "Available columns: filepath, patient_id, label" in str(error.value)
    with pytest.raises(DataError, match="did you mean 'filepath'"):
        read_csv_labels(wrong, path_column="filepth")
    assert read_csv_labels(wrong, path_column="File Path").ref(1) == "y.png"  # names match loosely
    with pytest.raises(DataError, match="patient_column=None"):
        read_csv_labels(variants, patient_column="subject")


def test_read_csv_without_patients_warns(tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "labels.csv", ["path", "label"], [["a.png", "x"], ["b.png", "y"]])
    with pytest.warns(UserWarning, match="own patient"):
        table = read_csv_labels(csv_path)
    assert len(set(table.patient_ids)) == 2


def test_csv_paths_relative_to_root_or_to_the_csv(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_png(root / "images" / "a.png")
    write_png(root / "meta" / "scans" / "b.png")
    csv_path = write_csv(
        root / "meta" / "labels.csv",
        ["path", "patient_id", "label"],
        [["images/a.png", 1, "x"], ["scans/b.png", 2, "y"], [str(root / "images" / "a.png"), 3, "x"]],
    )
    with pytest.raises(DataError, match="listed again"):  # the absolute path names the same file as line 2
        read_csv_labels(csv_path, root)
    write_csv(csv_path, ["path", "patient_id", "label"], [["images/a.png", 1, "x"], ["scans/b.png", 2, "y"]])
    table = read_csv_labels(csv_path, root)
    assert table.paths == [root / "images" / "a.png", root / "meta" / "scans" / "b.png"]
    assert table.ref(1) == "meta/scans/b.png"
    check_files(table)
