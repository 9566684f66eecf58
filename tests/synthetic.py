"""Synthetic but learnable chest radiographs for fast training tests.

Each image is a bright body ellipse with two dark lung fields; an "abnormal" image carries a bright opacity
inside one lung, at a random place and size. A tiny model separates the classes in seconds, so tests of the
whole trainer can assert real learning (AUC) instead of merely "it ran".
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

FINDINGS = ("Opacity", "Effusion")


def radiograph(
    rng: np.random.Generator, size: int = 64, opacity: bool = False, effusion: bool = False
) -> np.ndarray:
    """A uint8 (size, size) synthetic chest radiograph."""
    y, x = np.mgrid[0:size, 0:size] / size
    image = np.full((size, size), 0.08)
    image[((x - 0.5) / 0.42) ** 2 + ((y - 0.55) / 0.48) ** 2 < 1] = 0.75
    lungs = []
    for cx in (0.32, 0.68):
        lung = ((x - cx) / 0.13) ** 2 + ((y - 0.5) / 0.28) ** 2 < 1
        image[lung] = 0.25
        lungs.append(lung)
    if opacity:
        side = rng.integers(2)
        cx, cy = (0.32, 0.68)[side] + rng.uniform(-0.05, 0.05), rng.uniform(0.35, 0.62)
        r = rng.uniform(0.05, 0.09)
        blob = ((x - cx) ** 2 + (y - cy) ** 2 < r**2) & lungs[side]
        image[blob] = 0.7
    if effusion:
        image[(y > 0.66) & (lungs[0] | lungs[1])] = 0.65  # blunted costophrenic angles
    image += rng.normal(0, 0.03, image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def write_binary_dataset(
    root: Path, n_patients: int = 60, images_per_patient: int = 2, seed: int = 0
) -> Path:
    """labels.csv (path, patient_id, label in {normal, abnormal}) + images; returns the CSV path."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(n_patients):
        abnormal = p % 2 == 1
        for k in range(images_per_patient):
            name = f"images/p{p:03d}_{k}.png"
            Image.fromarray(radiograph(rng, opacity=abnormal)).save(root / name)
            rows.append((name, f"P{p:03d}", "abnormal" if abnormal else "normal"))
    return _write_csv(root / "labels.csv", ("path", "patient_id", "label"), rows)


def write_multiclass_dataset(root: Path, n_patients: int = 60, seed: int = 0) -> Path:
    """labels.csv with three classes: normal, opacity, effusion."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(n_patients):
        label = ("normal", "opacity", "effusion")[p % 3]
        name = f"images/p{p:03d}.png"
        Image.fromarray(radiograph(rng, opacity=label == "opacity", effusion=label == "effusion")).save(
            root / name
        )
        rows.append((name, f"P{p:03d}", label))
    return _write_csv(root / "labels.csv", ("path", "patient_id", "label"), rows)


def write_multilabel_dataset(root: Path, n_patients: int = 80, seed: int = 0) -> Path:
    """labels.csv with 0/1 columns per finding (some blank = unknown)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(n_patients):
        opacity, effusion = bool(p % 2), bool((p // 2) % 2)
        name = f"images/p{p:03d}.png"
        Image.fromarray(radiograph(rng, opacity=opacity, effusion=effusion)).save(root / name)
        cells = [str(int(opacity)), "" if p % 7 == 0 else str(int(effusion))]
        rows.append((name, f"P{p:03d}", *cells))
    return _write_csv(root / "labels.csv", ("path", "patient_id", *FINDINGS), rows)


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def assert_timm_keeps_the_whole_film(model: torch.nn.Module) -> None:
    """Plain timm's eval transform, from the model's own data config, keeps a portrait film whole.

    The film's top and bottom bands (white and black) are what a centre crop of the long side cuts off.
    """
    width, height, band = 120, 300, 15
    pixels = np.full((height, width), 110, np.uint8)
    pixels[:band], pixels[-band:] = 255, 0
    config = timm.data.resolve_data_config(model=model)
    tensor = timm.data.create_transform(**config)(Image.fromarray(pixels).convert("RGB"))
    mean, std = (torch.tensor(config[key]).view(3, 1, 1) for key in ("mean", "std"))
    centre = (tensor * std + mean)[0, :, tensor.shape[-1] // 2]  # the middle column, back in [0, 1]
    assert tensor.shape[-2:] == config["input_size"][1:]
    assert centre[0] > 0.9 and centre[-1] < 0.1, (
        f"timm's transform ({config['crop_mode']}, crop_pct {config['crop_pct']}) cut the film: its first "
        f"and last rows are {centre[0]:.2f} and {centre[-1]:.2f}, not white and black"
    )
