"""The images of a :class:`~trainer.labels.LabelTable`: checked before training, then loaded as model inputs.

:func:`check_files` (:mod:`trainer.file_check`) finds every unusable image up front; :class:`XRayDataset`
turns images into model inputs (with an optional on-disk cache of the deterministic preprocessing);
:func:`make_loaders` gives the DataLoaders of a split.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainer.checkpoint import atomic_write
from trainer.file_check import check_files
from trainer.inference import InputTransform
from trainer.io import XRayReadError, load_xray
from trainer.labels import DataError, LabelTable
from trainer.preprocess import Pipeline, PreprocessWarning
from trainer.splits import SPLITS
from trainer.transforms import InputSpec

__all__ = ["XRayDataset", "check_files", "make_loaders"]

logger = logging.getLogger(__name__)

# Bump whenever load_xray, the preprocessing ops or fit_to_input change their output (old cache files miss).
CACHE_VERSION = 3


def _encode(image: np.ndarray) -> bytes:
    """A cache file: the little-endian uint16 pixels, then their CRC-32 (a damaged file reads as a miss)."""
    pixels = image.astype("<u2", copy=False).tobytes()
    return pixels + zlib.crc32(pixels).to_bytes(4, "little")


def _read_cache(path: Path, size: int) -> np.ndarray | None:
    """The (size, size) uint16 image of a cache file; None when it is missing, unreadable or damaged."""
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("ignoring unreadable cache file %s (%s)", path, exc)
        return None
    pixels = memoryview(blob)[:-4]
    if len(blob) != 2 * size * size + 4 or zlib.crc32(pixels) != int.from_bytes(blob[-4:], "little"):
        logger.warning("ignoring damaged cache file %s (wrong length or CRC-32)", path)
        return None
    return np.frombuffer(pixels, dtype="<u2").reshape(size, size)


class XRayDataset(Dataset):
    """Images of a :class:`LabelTable` as model inputs.

    Per item: ``load_xray`` -> the model's :class:`~trainer.inference.InputTransform` (the preprocessing
    ``pipeline``, the letterbox to the model's size) -> [on-disk cache of that deterministic result] ->
    ``augment`` (training only) -> the transform's normalisation. Items are ``(image (3, S, S) float32,
    target, index)``; the target is a float32 scalar (binary), an int64 scalar (multiclass) or a float32 (C,)
    vector with NaN = unknown (multilabel).

    The cache stores the fitted image as raw uint16 pixels and their CRC-32 (checked on every read; a damaged
    file is recomputed) under ``cache_dir``, keyed by the image's identity in its source (a file's path,
    modification time and size), the pipeline JSON and the input size; with a cache the returned image is the
    16-bit-quantised one whether it was a hit or a miss, so cached and fresh items are identical. The dataset
    holds no open files and pickles, so DataLoader workers (fork or spawn) can use it.
    """

    def __init__(
        self,
        table: LabelTable,
        spec: InputSpec,
        *,
        pipeline: Pipeline | None = None,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self.table = table
        self.transform = InputTransform(pipeline or Pipeline(), spec)
        self.augment = augment
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._pipeline_json = self.transform.pipeline.to_json()

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image = torch.from_numpy(self.fitted(index)).unsqueeze(0)
        if self.augment is not None:
            image = self.augment(image)
        return (
            self.transform.normalise(image),
            torch.as_tensor(self.table.targets[index]),
            index,
        )

    def fitted(self, index: int) -> np.ndarray:
        """The deterministic float32 ``(S, S)`` image before augmentation (from the cache when present)."""
        if self.cache_dir is None:
            return self._compute(index)
        try:
            identity = self.table.images.identity(self.table.refs[index])
        except OSError as exc:
            raise DataError(
                f"{self.table.where(index)}: {exc.strerror or exc}; run check_files() before training"
            ) from exc
        key = hashlib.sha256(
            json.dumps([CACHE_VERSION, *identity, self._pipeline_json, self.transform.spec.size]).encode()
        ).hexdigest()
        cache_file = self.cache_dir / key[:2] / f"{key}.u16"
        stored = _read_cache(cache_file, self.transform.spec.size)
        if stored is None:
            stored = np.round(self._compute(index) * 65535.0).astype(np.uint16)
            try:
                atomic_write(cache_file, lambda tmp: tmp.write_bytes(_encode(stored)))
            except OSError as exc:
                warnings.warn(
                    f"cannot write the preprocessing cache in {self.cache_dir} ({exc.strerror}); "
                    "continuing without it",
                    stacklevel=2,
                )
        return stored.astype(np.float32) / np.float32(65535.0)

    def _compute(self, index: int) -> np.ndarray:
        ref = self.table.refs[index]
        try:
            source = io.BytesIO(self.table.images.read(ref))
            source.name = self.table.images.name(ref)
            pixels = load_xray(source).pixels
        except (XRayReadError, OSError) as exc:
            raise DataError(f"{self.table.where(index)}: {exc}; run check_files() before training") from exc
        image, notes = self.transform.fit(pixels)
        for note in notes:
            warnings.warn(note, PreprocessWarning, stacklevel=2)
        return image


def make_loaders(
    table: LabelTable,
    split: np.ndarray,
    spec: InputSpec,
    *,
    pipeline: Pipeline | None = None,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
) -> dict[str, DataLoader]:
    """DataLoaders for the non-empty splits; only "train" is shuffled (seeded) and augmented."""
    loaders = {}
    for name in SPLITS:
        indices = np.flatnonzero(split == name)
        if not indices.size:
            continue
        train = name == "train"
        dataset = XRayDataset(
            table.subset(indices),
            spec,
            pipeline=pipeline,
            augment=augment if train else None,
            cache_dir=cache_dir,
        )
        loaders[name] = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            # A final batch of one image breaks BatchNorm in training; evaluation must see every image.
            drop_last=train and len(dataset) > batch_size,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            generator=torch.Generator().manual_seed(seed) if train else None,
        )
    return loaders
