"""Labels and images from datasets made with Hugging Face ``datasets`` (``data.format: hf``).

A dataset is one of:

* a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``;
* a folder of parquet files (split names from the file names, as the Hub lays them out:
  ``data/train-00000-of-00004.parquet``; files without a split name are one "train" split), converted once
  by ``datasets`` into memory-mapped Arrow files under the cache folder;
* ``hf-hub:org/name[@revision]``: the parquet files of a Hub dataset repository, through the local Hugging
  Face cache; with ``HF_HUB_OFFLINE=1`` only the cache is used.

Images stay in the dataset's memory-mapped Arrow files and are read one row at a time
(:class:`HFImages`), so a 100k-image dataset never sits in memory. The image column may be an ``Image``
feature (encoded bytes, or a path to a file) or raw bytes. Labels come from one class column (a
``ClassLabel`` or strings), several 0/1 columns, or a findings column holding a list (a list of
``ClassLabel``) or a string joined by "|", as :func:`trainer.label_readers.labels_from_columns` reads them.
Rows of a split named "test" are the dataset's official test split (``LabelTable.official_split``), so
``patient_split`` keeps them as the test set. Each row's reference is ``<split>#<row>``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from trainer.image_sources import Identity, ImageSource, split_ref
from trainer.label_readers import (
    DEFAULT_PATIENT_COLUMN,
    chosen_label_columns,
    missing_column,
    pick_column,
    pick_patient_column,
    table_from_frame,
)
from trainer.labels import DataError, LabelTable
from trainer.task import Task

__all__ = ["HUB_PREFIX", "HFImages", "open_dataset", "read_hf_labels"]

logger = logging.getLogger(__name__)

HUB_PREFIX = "hf-hub:"
_LABEL_COLUMNS = ("label", "labels", "class", "target", "diagnosis", "finding_labels", "Finding Labels")


def open_dataset(location: str, *, cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The splits of a dataset (see the module docstring), by name, as memory-mapped ``datasets.Dataset``s.

    Args:
        location: a ``save_to_disk`` folder, a folder of parquet files, or ``hf-hub:org/name[@revision]``.
        cache_dir: where ``datasets`` keeps the Arrow files it converts parquet files into (default: its own
            cache).

    Raises:
        DataError: not found, not cached while offline, or not a dataset.
    """
    import datasets

    folder = _hub_snapshot(location) if location.startswith(HUB_PREFIX) else Path(location)
    if not folder.is_dir():
        raise DataError(f"dataset folder not found: {folder}")
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        loaded = datasets.load_from_disk(str(folder))
    elif next(folder.rglob("*.parquet"), None) is not None:
        loaded = datasets.load_dataset(
            "parquet", data_dir=str(folder), cache_dir=None if cache_dir is None else str(cache_dir)
        )
    else:
        raise DataError(
            f"{folder} is not a dataset: it has neither the dataset_dict.json/state.json that save_to_disk "
            "writes nor parquet files"
        )
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return dict(loaded)


def _hub_snapshot(location: str) -> Path:
    """The local folder of a Hub dataset's parquet files (downloaded, or from the cache when offline)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo_id, _, revision = location.removeprefix(HUB_PREFIX).partition("@")
    try:
        return Path(
            snapshot_download(
                repo_id,
                repo_type="dataset",
                revision=revision or None,
                allow_patterns=["*.parquet", "**/*.parquet", "*.json"],
            )
        )
    except LocalEntryNotFoundError as exc:
        raise DataError(
            f"dataset {repo_id} is not in the local Hugging Face cache and the Hub cannot be reached "
            f"(offline, or HF_HUB_OFFLINE=1): download it once while online "
            f"(`hf download {repo_id} --repo-type dataset`), or save it to a folder and point data.root there"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise DataError(
            f"no Hub dataset {repo_id} (or it is private or gated: log in with `hf auth login`)"
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise DataError(f"cannot fetch dataset {repo_id}: {exc}") from exc


class HFImages(ImageSource):
    """The image column of a dataset's splits; a reference is ``<split>#<row>``."""

    def __init__(self, location: str, splits: dict[str, Any], image_column: str) -> None:
        self.location = location
        self.root = Path(location) if not location.startswith(HUB_PREFIX) else Path(location.split(":", 1)[1])
        self.image_column = image_column
        # Arrow format: rows come back as undecoded tables (the encoded bytes), whatever the feature type.
        self._splits = {
            name: ds.select_columns([image_column]).with_format("arrow") for name, ds in splits.items()
        }
        self._signatures = {name: _files_signature(ds) for name, ds in splits.items()}
        self._rows = {name: len(ds) for name, ds in splits.items()}

    def _row(self, ref: str) -> tuple[str, int]:
        return split_ref(ref, self._rows, f"dataset {self.location}")

    def read(self, ref: str) -> bytes:
        split, row = self._row(ref)
        value = self._splits[split][row].column(self.image_column)[0].as_py()
        if isinstance(value, dict):  # an Image feature: encoded bytes, or a path to the file
            if value.get("bytes"):
                return value["bytes"]
            if value.get("path") and os.path.isfile(value["path"]):
                return Path(value["path"]).read_bytes()
            raise OSError(f"column {self.image_column!r} holds neither image bytes nor a readable file")
        if isinstance(value, bytes):
            return value
        raise OSError(
            f"column {self.image_column!r} holds {type(value).__name__}, not images (an Image feature or "
            "bytes)"
        )

    def identity(self, ref: str) -> Identity:
        split, _ = self._row(ref)
        return [self._signatures[split], ref]

    def describe(self) -> str:
        return f"column {self.image_column!r} of dataset {self.location}"


def _files_signature(dataset: Any) -> str:
    """A digest of a dataset's Arrow files (path, size, modification time): changes when the data does."""
    parts = []
    for entry in dataset.cache_files:
        stat = os.stat(entry["filename"])
        parts.append([entry["filename"], stat.st_size, stat.st_mtime_ns])
    if not parts:  # an in-memory dataset: its fingerprint is all there is
        parts.append([dataset._fingerprint])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _class_names(feature: Any) -> list[str] | None:
    """The class names of a ClassLabel feature, or of a list of ClassLabels; None for anything else."""
    import datasets

    inner = getattr(feature, "feature", None)
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    if isinstance(inner, datasets.ClassLabel):
        return list(inner.names)
    return None


def read_hf_labels(
    location: str,
    *,
    image_column: str = "image",
    label_column: str | None = None,
    label_columns: Sequence[str] | None = None,
    patient_column: str | None = DEFAULT_PATIENT_COLUMN,
    patient_pattern: str | None = None,
    task: Task | str = Task.MULTICLASS,
    positive: str | Sequence[str] | None = None,
    negative: str | Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> LabelTable:
    """Read a dataset's labels (and where its images are) as a label table.

    Args:
        location: a ``save_to_disk`` folder, a folder of parquet files, or ``hf-hub:org/name[@revision]``.
        image_column: the column holding the images.
        label_column: one class per row (binary, multiclass), or with ``task="multilabel"`` a findings
            column (a list, or a string joined by "|"). Default: a column named label/labels/class/...
        label_columns: one 0/1 column per finding (multilabel; None/NaN = unknown).
        patient_column: the patient id column; when the default name (or a variant) is absent, every image
            is its own patient (with a warning).
        patient_pattern: a regular expression finding the patient id inside the patient column's values
            (group ``patient``, else the first group), e.g. ``^(\\d+)_`` for NIH image names.
        task: the task the labels hold (a Task or its name).
        positive: binary: the value(s) of ``label_column`` that mean positive.
        negative: binary: the value(s) that mean negative.
        splits: the splits to read (default: all); rows of "test" are the official test split.
        cache_dir: where parquet files are converted to Arrow files (see :func:`open_dataset`).

    Raises:
        DataError: the dataset cannot be opened, a column is missing (with the available ones), bad labels.
    """
    available = open_dataset(location, cache_dir=cache_dir)
    names = list(splits) if splits is not None else list(available)
    absent = [n for n in names if n not in available]
    if absent:
        raise DataError(f"{location} has no split(s) {absent}; its splits: {', '.join(available)}")
    chosen = {n: available[n] for n in names}
    first = chosen[names[0]]
    header = list(first.column_names)
    source = f"dataset {location}"
    image_col = pick_column(header, image_column)
    if image_col is None:
        raise missing_column(header, image_column, "image", source, " Set data.image_column.")

    def default_columns() -> list[str]:
        single = pick_column(header, None, _LABEL_COLUMNS)
        if single is None:
            raise DataError(
                f"{source}: name the label column(s) with data.label_column or data.label_columns; "
                f"columns: {', '.join(header)}"
            )
        return [single]

    value_cols = chosen_label_columns(header, label_column, label_columns, source, default_columns)
    patient_col = pick_patient_column(header, patient_column, source)
    columns = [c for c in dict.fromkeys([*value_cols, *([patient_col] if patient_col else [])])]
    frames, refs, official = [], [], []
    for name, dataset in chosen.items():
        if list(dataset.column_names) != header:
            raise DataError(f"{source}: split {name!r} has other columns than split {names[0]!r}")
        frames.append(dataset.select_columns(columns).to_pandas())
        refs += [f"{name}#{row}" for row in range(len(dataset))]
        official += ["test" if name == "test" else "trainval"] * len(dataset)
    return table_from_frame(
        pd.concat(frames, ignore_index=True),
        refs,
        HFImages(location, chosen, image_col),
        value_cols,
        task,
        findings=Task.parse(task).multi_label and label_columns is None,
        positive=positive,
        negative=negative,
        patient_column=patient_col,
        patient_pattern=patient_pattern,
        source=f"{source} (splits {', '.join(names)})",
        class_names={c: n for c in value_cols if (n := _class_names(first.features[c])) is not None},
        official_split=official if "test" in chosen else None,
    )
