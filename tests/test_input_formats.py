"""One dataset as PNGs + CSV, as a `datasets` folder and as TFRecords: `fit` gives the same run from each."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.container_datasets import hf_dataset, synthetic_rows, write_csv_dataset, write_nih_style_tfrecords
from trainer import engine
from trainer.config import load_config

TINY = [
    "model.arch=chexlab_simple_cnn",
    "model.input_size=64",
    "data.num_workers=0",
    "eval.n_bootstrap=50",
    "train.phases=[{epochs: 1, lr: 3.0e-3}]",
    "train.batch_size=16",
    "data.task=multilabel",
    "data.label_columns=[Opacity, Effusion]",
]


def _fit(tmp_path: Path, name: str, data: list[str]) -> Path:
    cache = f"data.cache_dir={tmp_path / 'cache' / name}"
    cfg = load_config(None, [f"output_dir={tmp_path / 'runs'}", f"name={name}", *TINY, cache, *data])
    return engine.fit(cfg, progress=False)


def test_csv_hf_and_tfrecord_inputs_give_the_same_run(tmp_path: Path) -> None:
    rows = synthetic_rows(n_patients=20, images_per_patient=2)
    write_csv_dataset(tmp_path / "csv", rows)
    hf_dataset(rows).save_to_disk(str(tmp_path / "hf"))
    write_nih_style_tfrecords(tmp_path / "tf", rows, per_file=16)
    runs = {
        "csv": _fit(tmp_path, "csv", [f"data.root={tmp_path / 'csv'}", "data.labels=labels.csv"]),
        "hf": _fit(tmp_path, "hf", [f"data.root={tmp_path / 'hf'}", "data.format=hf"]),
        "tfrecord": _fit(
            tmp_path,
            "tfrecord",
            [
                f"data.root={tmp_path / 'tf'}",
                "data.format=tfrecord",
                "data.labels=data/*.tfrec",
                "data.patient_column=image_id",
                "data.patient_pattern='^(\\d+)_'",
            ],
        ),
    }
    splits = {name: pd.read_csv(run / "split.csv") for name, run in runs.items()}
    assert splits["hf"]["path"].tolist()[:2] == ["train#0", "train#1"]
    assert splits["tfrecord"]["path"].tolist()[16] == "data/001-16.tfrec#0"
    for name in ("hf", "tfrecord"):
        # Same images, labels and patients in the same order: the same split, training and predictions.
        assert splits[name]["split"].tolist() == splits["csv"]["split"].tolist()
        for part in ("val", "test"):
            ours = pd.read_csv(runs[name] / f"predictions_{part}.csv").drop(columns=["path", "patient_id"])
            reference = pd.read_csv(runs["csv"] / f"predictions_{part}.csv").drop(
                columns=["path", "patient_id"]
            )
            pd.testing.assert_frame_equal(ours, reference)
        metrics = json.loads((runs[name] / "metrics.json").read_text())["test"]["headline"]
        assert metrics == json.loads((runs["csv"] / "metrics.json").read_text())["test"]["headline"]
        # The preprocessing cache was filled from the container's images, one file per image seen.
        cached = len(list((tmp_path / "cache" / name).glob("??/*.u16")))
        assert cached == len(list((tmp_path / "cache" / "csv").glob("??/*.u16"))) > len(rows) / 2


@pytest.mark.parametrize("fmt", ["hf", "tfrecord"])
def test_a_new_split_file_names_rows_by_reference(tmp_path: Path, fmt: str) -> None:
    rows = synthetic_rows(n_patients=8, images_per_patient=1)
    if fmt == "hf":
        hf_dataset(rows).save_to_disk(str(tmp_path / "data"))
        data = [f"data.root={tmp_path / 'data'}", "data.format=hf"]
    else:
        write_nih_style_tfrecords(tmp_path / "data", rows, per_file=4)
        data = [f"data.root={tmp_path / 'data'}", "data.format=tfrecord", "data.patient_column=image_id"]
    from trainer.run_data import load_split, load_table

    cfg = load_config(None, [*TINY, *data])
    table = load_table(cfg.data)
    split = load_split(cfg.data, table, tmp_path / "run", write=True)
    again = load_split(cfg.data, load_table(cfg.data), tmp_path / "run", write=False)  # read back, checked
    assert again.tolist() == split.tolist()
    assert pd.read_csv(tmp_path / "run" / "split.csv")["path"].tolist() == table.refs
