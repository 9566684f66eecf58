"""Tests for trainer.data: label readers, file checks, patient-wise splits, split.csv and the Dataset."""

from __future__ import annotations

import csv
import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import trainer.data as data
from tests.conftest import shared_path
from trainer.data import (
    NIH_FINDINGS,
    DataError,
    LabelTable,
    XRayDataset,
    check_files,
    derive_binary,
    make_loaders,
    patient_split,
    read_csv_labels,
    read_folder_labels,
    read_nih_labels,
    read_split,
    select_findings,
    write_split,
)
from trainer.io import load_xray
from trainer.preprocess import Pipeline
from trainer.transforms import InputSpec, TrainAugment, fit_to_input

SPEC = InputSpec(size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def write_png(path: Path, seed: int = 0, size: tuple[int, int] = (40, 32)) -> Path:
    """A small 8-bit grayscale PNG with a gradient and noise (width, height = size)."""
    rng = np.random.default_rng(seed)
    width, height = size
    gradient = np.linspace(30, 220, width)[None, :].repeat(height, axis=0)
    pixels = np.clip(gradient + rng.normal(0, 10, (height, width)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="L").save(path)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def multiclass_csv(root: Path, n: int = 12) -> Path:
    """root/labels.csv with n images of n // 2 patients over three classes, images in root/images."""
    classes = ["normal", "bacterial", "viral"]
    rows = []
    for i in range(n):
        write_png(root / "images" / f"img{i:02d}.png", seed=i)
        rows.append([f"images/img{i:02d}.png", f"p{i // 2}", classes[(i // 2) % 3]])
    return write_csv(root / "labels.csv", ["path", "patient_id", "label"], rows)


def synthetic_table(task: str, n_patients: int, seed: int, classes: int = 3) -> LabelTable:
    """A random table (no files needed) with 1-4 images per patient, shuffled rows."""
    rng = np.random.default_rng(seed)
    patients, targets = [], []
    for p in range(n_patients):
        images = int(rng.integers(1, 5))
        if task == "multiclass":
            label = int(rng.choice(classes, p=np.linspace(3, 1, classes) / np.linspace(3, 1, classes).sum()))
            rows = [label] * images
        elif task == "binary":
            rows = [float(rng.random() < 0.3)] * images
        else:
            rows = [
                np.where(rng.random(classes) < np.linspace(0.4, 0.05, classes), 1.0, 0.0)
                for _ in range(images)
            ]
        patients += [f"patient{p}"] * images
        targets += rows
    order = rng.permutation(len(patients))
    targets_array = np.asarray(targets)[order]
    names = [f"c{i}" for i in range(classes)]
    return LabelTable(
        paths=[Path(f"/data/img{i}.png") for i in range(len(patients))],
        patient_ids=[patients[i] for i in order],
        targets=targets_array,
        label_names=names[:1] if task == "binary" else names,
        task=task,
        root=Path("/data"),
    )


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
    assert table.root == tmp_path and table.relpath(0) == "images/img00.png"
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
    assert read_csv_labels(wrong, path_column="File Path").relpath(1) == "y.png"  # names match loosely
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
    assert table.relpath(1) == "meta/scans/b.png"
    check_files(table)


# --------------------------------------------------------------------------------------------------- NIH


def nih_tree(root: Path) -> tuple[Path, Path, Path]:
    """A miniature ChestX-ray14 download: Data_Entry CSV, nested image folders, official lists."""
    entries = [
        ("00000001_000.png", "Cardiomegaly|Emphysema", 1),
        ("00000001_001.png", "No Finding", 1),
        ("00000002_000.png", "No Finding", 2),
        ("00000003_000.png", "Effusion|Pleural_Thickening", 3),
        ("00000004_000.png", "Pneumonia", 4),
        ("00000005_000.png", "Hernia|Mass|Nodule", 5),
    ]
    for i, (name, _, _) in enumerate(entries):
        write_png(root / "images" / f"images_00{i % 3 + 1}" / "images" / name, seed=i)
    header = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender"]
    data_entry = write_csv(
        root / "Data_Entry_2017.csv", header, [[n, f, 0, p, 50, "M"] for n, f, p in entries]
    )
    test_names = ["00000003_000.png", "00000005_000.png"]
    (root / "test_list.txt").write_text("\n".join(test_names) + "\n")
    (root / "train_val_list.txt").write_text(
        "\n".join(e[0] for e in entries if e[0] not in test_names) + "\n"
    )
    return data_entry, root / "train_val_list.txt", root / "test_list.txt"


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


# ------------------------------------------------------------------------------------------ derived labels


def test_derive_binary_rule(tmp_path: Path) -> None:
    nan = np.nan
    table = LabelTable(
        paths=[tmp_path / f"{i}.png" for i in range(7)],
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
        root=tmp_path,
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


# ------------------------------------------------------------------------------------------ check_files


def test_check_files_reports_every_problem_at_once(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_png(root / "good.png")
    write_png(tmp_path / "outside.png", seed=1)
    write_png(tmp_path / "outside_abs.png", seed=2)
    (root / "notes.png").write_text("this is text, not a PNG")
    os.symlink(tmp_path / "outside.png", root / "link.png")
    rows = [
        ["good.png", 1, "a"],
        ["../outside.png", 2, "b"],
        ["missing.png", 3, "a"],
        ["notes.png", 4, "b"],
        ["link.png", 5, "a"],
        [str(tmp_path / "outside_abs.png"), 6, "b"],
    ]
    table = read_csv_labels(write_csv(root / "labels.csv", ["path", "patient_id", "label"], rows))
    with pytest.raises(DataError) as error:
        check_files(table, workers=2)
    message = str(error.value)
    assert "5 of 6 images" in message
    assert "line 3: ../outside.png: outside the data root" in message
    assert "line 4: missing.png: file not found" in message
    assert "line 5: notes.png: unreadable" in message
    assert "line 6: link.png: outside the data root" in message and "symlink" in message
    assert "line 7: ../outside_abs.png: outside the data root" in message
    assert "line 2" not in message
    with pytest.raises(DataError) as error:
        check_files(table, decode=False)
    assert "4 of 6 images" in str(error.value) and "notes.png" not in str(error.value)


def test_check_files_truncates_long_reports(tmp_path: Path) -> None:
    rows = [[f"missing{i}.png", i, "a" if i % 2 else "b"] for i in range(60)]
    table = read_csv_labels(write_csv(tmp_path / "labels.csv", ["path", "patient_id", "label"], rows))
    with pytest.raises(DataError) as error:
        check_files(table)
    message = str(error.value)
    assert "60 of 60 images" in message and "... and 10 more" in message
    assert message.count("file not found") == data.MAX_LISTED_PROBLEMS


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


# --------------------------------------------------------------------------------------------------- Dataset


def image_table(root: Path, task: str = "multiclass", n: int = 6) -> LabelTable:
    csv_path = multiclass_csv(root, n)
    if task == "binary":
        return read_csv_labels(csv_path, negative="normal")
    if task == "multiclass":
        return read_csv_labels(csv_path)
    rows = [[f"images/img{i:02d}.png", f"p{i // 2}", i % 2, "" if i == 1 else 0] for i in range(n)]
    return read_csv_labels(write_csv(root / "multi.csv", ["path", "patient_id", "Edema", "Mass"], rows))


@pytest.mark.parametrize(
    ("task", "target_dtype", "target_shape"),
    [("binary", torch.float32, ()), ("multiclass", torch.int64, ()), ("multilabel", torch.float32, (2,))],
)
def test_dataset_items(tmp_path: Path, task: str, target_dtype: torch.dtype, target_shape: tuple) -> None:
    table = image_table(tmp_path, task)
    dataset = XRayDataset(table, SPEC)
    image, target, index = dataset[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert target.dtype == target_dtype and tuple(target.shape) == target_shape
    assert index == 3
    expected = fit_to_input(load_xray(table.paths[3]).pixels, 32)
    for channel in range(3):
        np.testing.assert_allclose((image[channel] * 0.25 + 0.5).numpy(), expected, atol=1e-6)
    if task == "multilabel":
        assert torch.isnan(dataset[1][1][1])


def test_dataset_applies_the_pipeline(tmp_path: Path) -> None:
    table = image_table(tmp_path)
    plain = XRayDataset(table, SPEC)[0][0]
    inverted = XRayDataset(table, SPEC, pipeline=Pipeline.parse("invert"))[0][0]
    # 40x32 letterboxed to 32x26 with 3 black rows above and below: compare the image area only.
    torch.testing.assert_close(inverted[:, 4:-4] * 0.25 + 0.5, 1 - (plain[:, 4:-4] * 0.25 + 0.5))


def test_dataset_cache_is_used_and_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = image_table(tmp_path / "data")
    calls = []
    real_load = data.load_xray
    monkeypatch.setattr(data, "load_xray", lambda path: calls.append(path) or real_load(path))
    cache = tmp_path / "cache"
    dataset = XRayDataset(table, SPEC, pipeline=Pipeline.parse("clahe"), cache_dir=cache)
    first = [dataset[i][0] for i in range(len(dataset))]
    assert len(calls) == len(table)
    assert len(list(cache.rglob("*.npy"))) == len(table) and not list(cache.rglob(".tmp-*"))
    second = [dataset[i][0] for i in range(len(dataset))]
    assert len(calls) == len(table)  # every item came from the cache
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    uncached = XRayDataset(table, SPEC, pipeline=Pipeline.parse("clahe"))[0][0]
    torch.testing.assert_close(uncached, first[0], atol=1e-4, rtol=0)  # 16-bit quantisation only

    # A changed file, pipeline or input size misses the cache.
    calls.clear()
    write_png(table.paths[0], seed=99)
    os.utime(table.paths[0], ns=(1, 1))
    changed = dataset[0][0]
    assert len(calls) == 1 and not torch.equal(changed, first[0])
    XRayDataset(table, SPEC, pipeline=Pipeline.parse("invert"), cache_dir=cache)[1]
    smaller = InputSpec(24, SPEC.mean, SPEC.std)
    XRayDataset(table, smaller, pipeline=Pipeline.parse("clahe"), cache_dir=cache)[1]
    assert len(calls) == 3


def test_dataset_recovers_from_a_corrupt_cache_file(tmp_path: Path) -> None:
    table = image_table(tmp_path / "data")
    dataset = XRayDataset(table, SPEC, cache_dir=tmp_path / "cache")
    expected = dataset[0][0]
    (cache_file,) = (tmp_path / "cache").rglob("*.npy")
    cache_file.write_bytes(b"truncated")
    assert torch.equal(dataset[0][0], expected)


def test_augmentation_only_when_given(tmp_path: Path) -> None:
    table = image_table(tmp_path)
    plain = XRayDataset(table, SPEC)
    assert torch.equal(plain[2][0], plain[2][0])
    augmented = XRayDataset(table, SPEC, augment=TrainAugment())
    torch.manual_seed(0)
    a, b = augmented[2][0], augmented[2][0]
    assert not torch.equal(a, b) and not torch.equal(a, plain[2][0])
    assert a.shape == (3, 32, 32)


def test_dataset_reports_unreadable_images(tmp_path: Path) -> None:
    table = image_table(tmp_path)
    table.paths[1].write_text("not an image")
    with pytest.raises(DataError, match="line 3: images/img01.png"):
        XRayDataset(table, SPEC)[1]


def test_dataloader_with_worker_processes(tmp_path: Path) -> None:
    table = image_table(tmp_path, "multilabel", n=8)
    dataset = XRayDataset(table, SPEC, augment=TrainAugment(), cache_dir=tmp_path / "cache")
    restored = pickle.loads(pickle.dumps(dataset))
    assert len(restored) == 8 and restored[0][0].shape == (3, 32, 32)
    loader = DataLoader(dataset, batch_size=4, num_workers=2)
    batches = list(loader)
    assert len(batches) == 2
    images, targets, indices = batches[0]
    assert images.shape == (4, 3, 32, 32) and targets.shape == (4, 2)
    assert sorted(torch.cat([b[2] for b in batches]).tolist()) == list(range(8))
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 8


def test_make_loaders(tmp_path: Path) -> None:
    table = image_table(tmp_path, n=12)
    split = np.array(["train"] * 9 + ["test"] * 3)
    loaders = make_loaders(table, split, SPEC, augment=TrainAugment(), batch_size=4)
    assert set(loaders) == {"train", "test"}
    assert len(loaders["train"].dataset) == 9 and loaders["train"].dataset.augment is not None
    assert loaders["test"].dataset.augment is None
    assert len(list(loaders["train"])) == 2  # 9 images, batches of 4, the ragged last one dropped
    assert sum(len(b[2]) for b in loaders["test"]) == 3
    first = [b[2].tolist() for b in make_loaders(table, split, SPEC, batch_size=4, seed=1)["train"]]
    again = [b[2].tolist() for b in make_loaders(table, split, SPEC, batch_size=4, seed=1)["train"]]
    assert first == again


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


@pytest.mark.shared
def test_real_nih_metadata_through_the_data_entry_reader(tmp_path: Path) -> None:
    """The subset's raw NIH 'Finding Labels' give the same targets as its labels.csv."""
    folder = shared_path("data", "nih_cxr14_subset")
    labels = read_csv_labels(folder / "labels.csv")
    patient = dict(zip((labels.relpath(i) for i in range(len(labels))), labels.patient_ids, strict=True))
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
