"""Tiny label files, image folders and label tables for the tests of the data modules."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.labels import LabelTable
from trainer.task import Task


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


def synthetic_table(task: Task | str, n_patients: int, seed: int, classes: int = 3) -> LabelTable:
    """A random table (no files needed) with 1-4 images per patient, shuffled rows."""
    task = Task.parse(task)
    rng = np.random.default_rng(seed)
    patients, targets = [], []
    for p in range(n_patients):
        images = int(rng.integers(1, 5))
        if task.exclusive:
            label = int(rng.choice(classes, p=np.linspace(3, 1, classes) / np.linspace(3, 1, classes).sum()))
            rows = [label] * images
        elif task.single_logit:
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
    return LabelTable.from_paths(
        [Path(f"/data/img{i}.png") for i in range(len(patients))],
        Path("/data"),
        patient_ids=[patients[i] for i in order],
        targets=targets_array,
        label_names=names[:1] if task.single_logit else names,
        task=task,
    )


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
