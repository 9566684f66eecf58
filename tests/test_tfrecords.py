"""Tests for trainer.tfrecords, on records written by an independent writer (tensorboard + protobuf)."""

from __future__ import annotations

import pickle
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference_crc
from torch.utils.data import DataLoader

import trainer.tfrecords as tfrecords
from tests.conftest import REPO_ROOT
from tests.container_datasets import (
    FINDINGS,
    encode_example,
    example_class,
    synthetic_rows,
    write_nih_style_tfrecords,
    write_tfrecords,
)
from trainer.config import load_config
from trainer.data import XRayDataset
from trainer.file_check import check_files
from trainer.labels import DataError
from trainer.nih import NIH_FINDINGS
from trainer.run_data import load_table
from trainer.tfrecords import TFRecordError, masked_crc32c, parse_example, read_records, read_tfrecord_labels
from trainer.transforms import InputSpec

NIH_LAYOUT = {"patient_column": "image_id", "patient_pattern": r"^(\d+)_", "task": "multilabel"}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return synthetic_rows(n_patients=6, images_per_patient=2)


def test_masked_crc32c() -> None:
    assert google_crc32c.value(b"123456789") == 0xE3069283  # the CRC-32C check value
    rng = np.random.default_rng(0)
    for size in (0, 1, 7, 1000):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert masked_crc32c(data) == reference_crc(data)


def test_records_and_examples_round_trip(tmp_path: Path) -> None:
    example_type = example_class()
    features = [
        {"image": [b"\x89PNG..."], "id": [b"a"], "label": [3], "scores": [0.5, -1.25], "big": [-(2**40), 7]},
        {"image": [b""], "empty": [], "names": [b"Mass", b"Nodule"]},
    ]
    path = write_tfrecords(tmp_path / "x.tfrecord", [encode_example(example_type, f) for f in features])
    parsed = [parse_example(data) for _, data in read_records(path)]
    assert parsed[0] == {"image": [b"\x89PNG..."], "id": [b"a"], "label": [3], "scores": [0.5, -1.25],
                         "big": [-(2**40), 7]}  # fmt: skip
    assert parsed[1]["names"] == [b"Mass", b"Nodule"] and parsed[1]["empty"] == []
    assert parse_example(next(read_records(path))[1], only="label") == {"label": [3]}


def test_nih_layout_labels_and_images(tmp_path: Path, rows: list[dict]) -> None:
    write_nih_style_tfrecords(tmp_path / "records", rows, per_file=5)
    table = read_tfrecord_labels(
        tmp_path / "records", "data/*.tfrec", cache_dir=tmp_path / "cache", **NIH_LAYOUT
    )
    assert (
        table.refs[:2] == ["data/000-5.tfrec#0", "data/000-5.tfrec#1"]
        and table.refs[5] == "data/001-5.tfrec#0"
    )
    assert table.label_names == sorted(FINDINGS)  # every numeric feature, by name
    expected = [[r[name] for name in sorted(FINDINGS)] for r in rows]
    np.testing.assert_array_equal(table.targets, expected)
    assert table.patient_ids == [r["image_id"].split("_")[0] for r in rows]
    assert [table.images.read(ref) for ref in table.refs] == [r["png"] for r in rows]
    check_files(table, decode=True, cache_dir=tmp_path / "cache")

    # Several worker processes read records at random through their own descriptors.
    dataset = XRayDataset(table, InputSpec(32, (0.5,) * 3, (0.25,) * 3))
    restored = pickle.loads(pickle.dumps(dataset))
    assert restored[3][0].shape == (3, 32, 32)
    loader = DataLoader(dataset, batch_size=4, shuffle=True, num_workers=2)
    assert sorted(int(i) for batch in loader for i in batch[2]) == list(range(len(rows)))


def test_the_index_is_cached_until_the_file_changes(
    tmp_path: Path, rows: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    (first, *_) = write_nih_style_tfrecords(tmp_path / "r", rows, per_file=12)
    read_tfrecord_labels(tmp_path / "r", cache_dir=tmp_path / "cache", **NIH_LAYOUT)
    assert len(list((tmp_path / "cache" / "tfrecord-index").iterdir())) == 1

    def no_reading(path: Path):
        raise AssertionError("the file was read again")

    monkeypatch.setattr(tfrecords, "read_records", no_reading)
    again = read_tfrecord_labels(tmp_path / "r", cache_dir=tmp_path / "cache", **NIH_LAYOUT)
    assert len(again) == len(rows) and again.images.read(again.refs[3]) == rows[3]["png"]
    write_nih_style_tfrecords(tmp_path / "r", rows[:4], per_file=12)  # 000-4.tfrec beside 000-12.tfrec
    with pytest.raises(AssertionError, match="read again"):
        read_tfrecord_labels(tmp_path / "r", cache_dir=tmp_path / "cache", **NIH_LAYOUT)
    assert first.is_file()


def test_corrupt_and_truncated_records(tmp_path: Path, rows: list[dict]) -> None:
    (path,) = write_nih_style_tfrecords(tmp_path / "r", rows, per_file=12)
    table = read_tfrecord_labels(tmp_path / "r", **NIH_LAYOUT)
    data = bytearray(path.read_bytes())
    offset = int(table.images._offsets["data/000-12.tfrec"][4])
    data[offset + 40] ^= 0xFF  # inside record 4's data: its CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as error:
        check_files(table)
    assert "1 of 12 images" in str(error.value)
    assert "data/000-12.tfrec#4: unreadable: data/000-12.tfrec: corrupt record data" in str(error.value)
    with pytest.raises(TFRecordError, match="CRC mismatch"):
        read_tfrecord_labels(tmp_path / "r", **NIH_LAYOUT)
    path.write_bytes(bytes(data[: offset + 30]))
    with pytest.raises(TFRecordError, match="truncated record"):
        read_tfrecord_labels(tmp_path / "r", **NIH_LAYOUT)


def test_feature_layouts_and_errors(tmp_path: Path, rows: list[dict]) -> None:
    example_type = example_class()
    records = [
        encode_example(
            example_type,
            {
                "jpeg": [r["png"]],
                "patient": [r["patient_id"].encode()],
                "label": [int(r["label"] == "abnormal")],
                "findings": [f.encode() for f in r["findings"]],
            },
        )  # fmt: skip
        for r in rows
    ]
    write_tfrecords(tmp_path / "r" / "part.tfrecords", records)
    common = {"image_feature": "jpeg", "patient_column": "patient"}
    binary = read_tfrecord_labels(tmp_path / "r", label_column="label", task="binary", **common)
    assert binary.targets.tolist() == [float(r["label"] == "abnormal") for r in rows]
    assert binary.patient_ids == [r["patient_id"] for r in rows]
    listed = read_tfrecord_labels(tmp_path / "r", label_column="findings", task="multilabel", **common)
    assert listed.label_names == sorted(FINDINGS)
    assert [sorted(np.array(listed.label_names)[t == 1]) for t in listed.targets] == [
        sorted(r["findings"]) for r in rows
    ]
    with pytest.raises(DataError, match="no feature 'image'"):
        read_tfrecord_labels(tmp_path / "r", patient_column="patient")
    with pytest.raises(DataError, match="no TFRecord files match"):
        read_tfrecord_labels(tmp_path / "r", "*.tfrec", **common)
    with pytest.raises(DataError, match="did you mean 'label'"):
        read_tfrecord_labels(tmp_path / "r", label_column="labl", task="binary", **common)


def test_the_inceptionv3_recipe_reads_the_kaggle_nih_records(tmp_path: Path, rows: list[dict]) -> None:
    labels = ["No Finding", *NIH_FINDINGS]
    example_type = example_class()
    records = [
        encode_example(
            example_type,
            {
                "image": [r["png"]],
                "image_id": [r["image_id"].encode()],
                **{n: [int(i % 15 == j)] for j, n in enumerate(labels)},
            },
        )  # fmt: skip
        for i, r in enumerate(rows)
    ]
    write_tfrecords(tmp_path / "data" / f"000-{len(rows)}.tfrec", records)
    cfg = load_config(REPO_ROOT / "configs" / "inceptionv3-nih15.yaml", [f"data.root={tmp_path}"])
    table = load_table(cfg.data)
    assert table.label_names == sorted(labels) and table.task == "multilabel"
    assert table.patient_ids == [r["image_id"].split("_")[0] for r in rows]
    assert table.targets[1, table.label_names.index("Atelectasis")] == 1
