"""Tests for trainer.hf_datasets: labels and images from `datasets` folders, parquet files and the Hub."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

from tests.container_datasets import FINDINGS, hf_dataset, synthetic_rows
from tests.hub_cache import fill_hub_cache
from trainer.data import XRayDataset
from trainer.file_check import check_files
from trainer.hf_datasets import read_hf_labels
from trainer.labels import DataError
from trainer.transforms import InputSpec

SPEC = InputSpec(size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return synthetic_rows(n_patients=6, images_per_patient=2)


@pytest.fixture
def saved(tmp_path: Path, rows: list[dict]) -> Path:
    """A DatasetDict (train: 8 rows, test: 4 rows) written by save_to_disk."""
    import datasets

    dataset = hf_dataset(rows)
    folder = tmp_path / "saved"
    datasets.DatasetDict(train=dataset.select(range(8)), test=dataset.select(range(8, 12))).save_to_disk(
        str(folder)
    )
    return folder


def test_save_to_disk_folder_every_label_layout(saved: Path, rows: list[dict]) -> None:
    binary = read_hf_labels(str(saved), label_column="label", task="binary", positive="abnormal")
    assert binary.refs[:2] == ["train#0", "train#1"] and binary.refs[8] == "test#0"
    assert binary.label_names == ["abnormal"] and binary.negative_name == "normal"
    assert binary.targets.tolist() == [float(r["label"] == "abnormal") for r in rows]
    assert binary.patient_ids == [r["patient_id"] for r in rows]
    assert binary.official_split == ["trainval"] * 8 + ["test"] * 4  # the dataset's own test split
    assert binary.images.read("test#1") == rows[9]["png"]

    multiclass = read_hf_labels(str(saved), label_column="label", task="multiclass")
    assert multiclass.label_names == ["normal", "abnormal"]  # the ClassLabel's order
    assert multiclass.targets.tolist() == [int(r["label"] == "abnormal") for r in rows]

    columns = read_hf_labels(str(saved), label_columns=list(FINDINGS), task="multilabel")
    expected = np.array([[r[f] for f in FINDINGS] for r in rows], dtype=np.float32)
    np.testing.assert_array_equal(columns.targets, expected)

    listed = read_hf_labels(str(saved), label_column="findings", task="multilabel")
    assert listed.label_names == list(FINDINGS)
    np.testing.assert_array_equal(listed.targets, expected)

    joined = read_hf_labels(str(saved), label_column="finding_text", task="multilabel", splits=["train"])
    assert joined.label_names == sorted(FINDINGS) and len(joined) == 8 and joined.official_split is None
    order = [FINDINGS.index(name) for name in joined.label_names]
    np.testing.assert_array_equal(joined.targets, expected[:8, order])


def test_images_are_read_lazily_in_worker_processes(saved: Path, rows: list[dict], tmp_path: Path) -> None:
    table = read_hf_labels(str(saved), label_column="label", task="multiclass")
    check_files(table, cache_dir=tmp_path / "cache")
    check_files(table, decode=True, cache_dir=tmp_path / "cache")
    assert len(pickle.dumps(table.images)) < 10_000  # the Arrow files are referenced, not copied
    dataset = XRayDataset(table, SPEC, cache_dir=tmp_path / "cache")
    indices = [int(i) for batch in DataLoader(dataset, batch_size=5, num_workers=2) for i in batch[2]]
    assert indices == list(range(len(rows)))
    assert len(list((tmp_path / "cache").rglob("*.u16"))) == len(rows)  # one preprocessed image per row
    assert len(list((tmp_path / "cache" / "file-checks").rglob("*.npy"))) == 2  # the two file-check results


def test_parquet_folder_and_unknown_values(tmp_path: Path, rows: list[dict]) -> None:
    dataset = hf_dataset(rows)
    folder = tmp_path / "parquet" / "data"
    folder.mkdir(parents=True)
    dataset.select(range(10)).to_parquet(str(folder / "train-00000-of-00001.parquet"))
    dataset.select(range(10, 12)).to_parquet(str(folder / "test-00000-of-00001.parquet"))
    table = read_hf_labels(
        str(tmp_path / "parquet"), label_column="findings", task="multilabel", cache_dir=tmp_path / "arrow"
    )
    assert table.refs[10:] == ["test#0", "test#1"] and table.images.read("train#3") == rows[3]["png"]

    # 0/1 columns may hold None (unknown); anything else is an error with the row it is in.
    values = [r["Effusion"] for r in rows]
    values[2], values[5] = None, 7
    odd = dataset.remove_columns("Effusion").add_column("Effusion", values)
    odd.to_parquet(str(tmp_path / "odd.parquet"))
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd.parquet").rename(tmp_path / "odd" / "part-0.parquet")
    with pytest.raises(DataError, match=r"train#5: column 'Effusion': 7 is not 0, 1 or blank"):
        read_hf_labels(
            str(tmp_path / "odd"), label_columns=["Effusion"], task="multilabel", cache_dir=tmp_path / "arrow"
        )


def test_hub_dataset_offline_from_the_cache(tmp_path: Path, rows: list[dict]) -> None:
    with pytest.raises(DataError, match="not in the local Hugging Face cache"):
        read_hf_labels("hf-hub:chexlab-test/cxr", label_column="label", cache_dir=tmp_path / "arrow")
    parquet = tmp_path / "train.parquet"
    hf_dataset(rows).to_parquet(str(parquet))
    fill_hub_cache(
        "chexlab-test/cxr", {"data/train-00000-of-00001.parquet": parquet.read_bytes()}, repo_type="dataset"
    )
    table = read_hf_labels(
        "hf-hub:chexlab-test/cxr", label_column="label", task="multiclass", cache_dir=tmp_path / "arrow"
    )
    assert len(table) == len(rows) and table.images.read("train#4") == rows[4]["png"]
    assert table.targets.tolist() == [int(r["label"] == "abnormal") for r in rows]


def test_missing_columns_and_splits(saved: Path) -> None:
    with pytest.raises(DataError, match="did you mean 'image'"):
        read_hf_labels(str(saved), image_column="imag", label_column="label")
    with pytest.raises(DataError, match="no split"):
        read_hf_labels(str(saved), label_column="label", splits=["validation"])
    with pytest.raises(DataError, match="Available columns"):
        read_hf_labels(str(saved), label_column="diagnosis")
    with pytest.raises(DataError, match="not a dataset"):
        read_hf_labels(str(saved.parent), label_column="label")
    with pytest.raises(DataError, match="no patient column 'subject'"):
        read_hf_labels(str(saved), label_column="label", patient_column="subject")
    with pytest.warns(UserWarning, match="own patient"):
        table = read_hf_labels(str(saved), label_column="label", patient_column=None)
    assert table.patient_ids == table.refs
