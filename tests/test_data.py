"""Tests for trainer.data: file checks, the Dataset with its on-disk cache, and the DataLoaders."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import trainer.data as data
from tests.tiny_datasets import multiclass_csv, write_csv, write_png
from trainer.data import XRayDataset, check_files, make_loaders
from trainer.io import load_xray
from trainer.label_readers import read_csv_labels
from trainer.labels import MAX_LISTED_PROBLEMS, DataError, LabelTable
from trainer.preprocess import Pipeline, fit_to_input
from trainer.transforms import InputSpec, TrainAugment

SPEC = InputSpec(size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))

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
    assert "line 5: notes.png: not an image" in message  # the header check, without decoding
    assert "line 6: link.png: outside the data root" in message and "symlink" in message
    assert "line 7: ../outside_abs.png: outside the data root" in message
    assert "line 2" not in message
    with pytest.raises(DataError) as error:
        check_files(table, decode=True)
    assert "5 of 6 images" in str(error.value) and "line 5: notes.png: not an image" in str(error.value)


def test_check_files_truncates_long_reports(tmp_path: Path) -> None:
    rows = [[f"missing{i}.png", i, "a" if i % 2 else "b"] for i in range(60)]
    table = read_csv_labels(write_csv(tmp_path / "labels.csv", ["path", "patient_id", "label"], rows))
    with pytest.raises(DataError) as error:
        check_files(table)
    message = str(error.value)
    assert "60 of 60 images" in message and "... and 10 more" in message
    assert message.count("file not found") == MAX_LISTED_PROBLEMS


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
    monkeypatch.setattr(data, "load_xray", lambda source: calls.append(source) or real_load(source))
    cache = tmp_path / "cache"
    dataset = XRayDataset(table, SPEC, pipeline=Pipeline.parse("clahe"), cache_dir=cache)
    first = [dataset[i][0] for i in range(len(dataset))]
    assert len(calls) == len(table)
    assert [p.suffix for p in cache.rglob("*") if p.is_file()] == [".u16"] * len(table)  # no temporaries
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
    (cache_file,) = (tmp_path / "cache").rglob("*.u16")
    intact = cache_file.read_bytes()
    cache_file.write_bytes(b"truncated")
    assert torch.equal(dataset[0][0], expected)
    flipped = bytearray(intact)
    flipped[len(flipped) // 2] ^= 0xFF  # inside the pixels: only the checksum can tell
    cache_file.write_bytes(bytes(flipped))
    assert torch.equal(dataset[0][0], expected)
    assert cache_file.read_bytes() == intact  # recomputed and rewritten intact


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
    assert len(list((tmp_path / "cache").rglob("*.u16"))) == 8


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
