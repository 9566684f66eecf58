"""A run's data, from its `data:` config: the label table, the checked files, the saved patient-wise split.

`fit` and `evaluate` both go through `load_table` and `prepare`, so a run is always scored on the very split
it was trained with (RUN_DIR/split.csv).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from torch.utils.data import DataLoader

from trainer.config import ConfigError, DataConfig, RunConfig
from trainer.data import make_loaders
from trainer.file_check import check_files, default_cache_dir
from trainer.hf_datasets import read_hf_labels
from trainer.label_readers import read_csv_labels, read_folder_labels
from trainer.labels import DataError, LabelTable, derive_binary, select_findings
from trainer.modeling import model_data_config
from trainer.nih import read_nih_labels
from trainer.splits import patient_split, read_split, write_split
from trainer.task import Task
from trainer.tfrecords import read_tfrecord_labels
from trainer.transforms import InputSpec, TrainAugment

log = logging.getLogger(__name__)

SPLIT_FILE = "split.csv"


def _under_root(root: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else root / path


def cache_folder(cfg: DataConfig) -> Path:
    """Where the file-check results, TFRecord indexes and converted datasets are kept between runs."""
    return Path(cfg.cache_dir) if cfg.cache_dir is not None else default_cache_dir()


def load_table(cfg: DataConfig) -> LabelTable:
    """Read the labels that `cfg` describes and shape them into its task."""
    root = Path(cfg.root)
    task = Task.parse(cfg.task)
    # A binary task derived from a normal column reads the findings first.
    read_as = Task.MULTILABEL if cfg.normal_label is not None else task
    columns: dict[str, Any] = {
        "label_column": cfg.label_column,
        "label_columns": cfg.label_columns,
        "patient_column": cfg.patient_column,
        "patient_pattern": cfg.patient_pattern,
        "task": read_as,
        "positive": cfg.positive,
    }
    if cfg.format == "folder":
        table = read_folder_labels(
            root, task=task, positive=cfg.positive, patient_pattern=cfg.patient_pattern
        )
    elif cfg.format == "hf":
        table = read_hf_labels(
            cfg.root,
            image_column=cfg.image_column,
            splits=cfg.dataset_splits,
            cache_dir=cache_folder(cfg) / "hf-datasets",
            **columns,
        )
    elif cfg.format == "tfrecord":
        table = read_tfrecord_labels(
            root, cfg.labels, image_feature=cfg.image_column, cache_dir=cache_folder(cfg), **columns
        )
    elif cfg.format == "nih":
        table = read_nih_labels(
            _under_root(root, cfg.labels or "Data_Entry_2017.csv"),
            root,
            train_val_list=None if cfg.train_val_list is None else _under_root(root, cfg.train_val_list),
            test_list=None if cfg.test_list is None else _under_root(root, cfg.test_list),
        )
    else:
        if cfg.labels is None:
            raise ConfigError(
                "data.labels must name the label CSV (relative to data.root) for data.format: csv"
            )
        table = read_csv_labels(_under_root(root, cfg.labels), root, path_column=cfg.path_column, **columns)
    if cfg.normal_label is not None:
        if task is not Task.BINARY:
            raise ConfigError("data.normal_label derives a binary task: set data.task: binary")
        return derive_binary(table, cfg.normal_label, cfg.positive_name, cfg.negative_name)
    if table.task.multi_label and (cfg.findings or cfg.min_positives):
        table = select_findings(table, cfg.findings, min_positives=cfg.min_positives)
    if table.task is not task:
        raise ConfigError(f"the labels describe a {table.task} task but data.task is {cfg.task}")
    return table


def load_split(cfg: DataConfig, table: LabelTable, run_dir: Path, *, write: bool) -> np.ndarray:
    """The run's saved split if it has one, else `data.split_file`, else a new patient-wise split (saved)."""
    saved = run_dir / SPLIT_FILE
    if saved.is_file():
        return read_split(saved, table)
    if cfg.split_file:
        split = read_split(cfg.split_file, table)
    else:
        split = patient_split(table, val=cfg.val_fraction, test=cfg.test_fraction, seed=cfg.split_seed)
    if write:
        write_split(table, split, saved)
    return split


@dataclass
class RunData:
    """The labels of a run and its split; positions are rows of `table`."""

    table: LabelTable
    split: np.ndarray
    name: str

    @property
    def task(self) -> Task:
        return self.table.task

    @property
    def label_names(self) -> list[str]:
        return self.table.label_names

    @property
    def negative_name(self) -> str | None:
        return self.table.negative_name

    @property
    def num_outputs(self) -> int:
        return self.table.num_outputs

    def rows(self, split: str) -> np.ndarray:
        """Table rows of one split, in loader order."""
        return np.flatnonzero(self.split == split)

    def targets(self, split: str) -> np.ndarray:
        return self.table.targets[self.rows(split)]

    def patient_ids(self, rows: np.ndarray) -> list[str]:
        return [self.table.patient_ids[i] for i in rows]

    def relative_paths(self, rows: np.ndarray) -> list[str]:
        return [self.table.ref(int(i)) for i in rows]

    def describe_rows(self, rows: Any) -> str:
        """A short list of images for messages (e.g. the batch where the loss became NaN)."""
        return ", ".join(self.table.where(int(i)) for i in list(rows)[:8])

    def summary(self) -> dict[str, Any]:
        """Sizes and label counts per split, for run.json and the model card."""
        out: dict[str, Any] = {
            "name": self.name,
            "root": str(self.table.root),
            "n_images": {},
            "n_patients": {},
            "label_counts": {},
        }
        for split in ("train", "val", "test"):
            part = self.table.subset(self.rows(split))
            out["n_images"][split] = len(part)
            out["n_patients"][split] = len(set(part.patient_ids))
            out["label_counts"][split] = part.label_counts()
        return out


def prepare(cfg: RunConfig, run_dir: Path, *, write_split: bool) -> RunData:
    """Read and check the labels and every image, and fix the split, before any training starts."""
    table = load_table(cfg.data)
    check_files(table, decode=cfg.data.check_decode, cache_dir=cache_folder(cfg.data))
    split = load_split(cfg.data, table, run_dir, write=write_split)
    for name in ("train", "val", "test"):
        if not (split == name).any():
            raise DataError(
                f"the {name} split is empty: {len(table)} images are too few for these split fractions"
            )
    log.info(
        "data: %d images, split %s",
        len(table),
        {n: int((split == n).sum()) for n in ("train", "val", "test")},
    )
    return RunData(table, split, cfg.data.name or Path(cfg.data.root).name)


def input_spec(model: nn.Module, input_size: int | None) -> InputSpec:
    """The model's input from its pretrained config, with an optional size override."""
    spec = InputSpec.from_data_config(model_data_config(model))
    return spec if input_size is None else InputSpec(input_size, spec.mean, spec.std)


def loaders(cfg: RunConfig, data: RunData, spec: InputSpec) -> dict[str, DataLoader]:
    """Train (shuffled, augmented), val and test loaders for `spec`; items carry split-local positions."""
    return make_loaders(
        data.table,
        data.split,
        spec,
        pipeline=cfg.preprocess,
        augment=TrainAugment(cfg.augment),
        batch_size=cfg.train.batch_size,
        num_workers=cfg.data.num_workers,
        cache_dir=cfg.data.cache_dir,
        seed=cfg.train.seed,
    )
