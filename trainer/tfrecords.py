"""TFRecord files of ``tf.train.Example`` records (``data.format: tfrecord``), read without TensorFlow.

A TFRecord file is a sequence of records, each framed as ``uint64 length``, ``uint32 masked CRC32C of the
length``, ``length`` bytes of data, ``uint32 masked CRC32C of the data`` (little-endian); the masked CRC is
``((crc >> 15) | (crc << 17)) + 0xa282ead8`` modulo 2**32. Both CRCs are verified whenever a record is read.
The data is a serialised ``tf.train.Example``: a map from feature names to a list of bytes, floats or 64-bit
integers. Images are a bytes feature holding an encoded PNG/JPEG/...; labels and ids are other features.

Example - the Kaggle "NIH Chest X-rays TFRecords" release (256 files ``data/NNN-438.tfrec`` of 437-438
records) holds, per image, ``image`` (a one-channel JPEG, 600x600), ``image_id`` (``00000001_000.png``, the
NIH file name, whose first part is the patient) and 15 int64 0/1 features named after the labels
(``No Finding``, ``Atelectasis``, ..., ``Pleural_Thickening``, ``Hernia``)::

    data: {format: tfrecord, root: /data/nih-tfrecords, labels: "data/*.tfrec", image_column: image,
           patient_column: image_id, patient_pattern: '^(\\d+)_', task: multilabel}

Random access: the first time a file is read, one pass over it records where each record starts and the
values of every feature but the image, verifying every CRC; that index is cached under
``<cache_dir>/tfrecord-index/`` keyed by the file's path, size and modification time. A reference is
``<file relative to root>#<record number>``; :class:`TFRecordImages` reads one record with ``os.pread``, so
DataLoader workers share nothing but the file descriptors.

Why an own reader: framing and the three Example list types are ~150 lines with no TensorFlow and no
generated protobuf code; the CRCs come from ``google-crc32c`` (C). The ``tfrecord`` package reads records as
a sequential stream sharded per worker (no random access by index), does not verify CRCs, and ships protobuf
code generated for an old protobuf release.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import pandas as pd

from trainer.checkpoint import atomic_write
from trainer.image_sources import Identity, ImageSource, split_ref
from trainer.label_readers import (
    DEFAULT_PATIENT_COLUMN,
    chosen_label_columns,
    pick_patient_column,
    table_from_frame,
)
from trainer.labels import DataError, LabelTable
from trainer.task import Task

__all__ = [
    "TFRecordError",
    "TFRecordImages",
    "masked_crc32c",
    "parse_example",
    "read_records",
    "read_tfrecord_labels",
]

logger = logging.getLogger(__name__)

INDEX_VERSION = 1
DEFAULT_PATTERN = "**/*.tfrec*"
_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")


class TFRecordError(DataError):
    """A TFRecord file or record that cannot be read: truncated, a CRC mismatch, not an Example."""


def masked_crc32c(data: bytes | memoryview) -> int:
    """TFRecord's masked CRC32C of ``data``."""
    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _record_at(read: Any, offset: int, where: str) -> tuple[bytes, int]:
    """(data, offset of the next record) of the record at ``offset``; ``read(n, offset)`` reads bytes."""
    header = read(12, offset)
    if len(header) < 12:
        raise TFRecordError(f"{where}: truncated record header at byte {offset}")
    length, length_crc = _HEADER.unpack(header)
    if masked_crc32c(header[:8]) != length_crc:
        raise TFRecordError(f"{where}: corrupt record length at byte {offset} (CRC mismatch)")
    body = read(length + 4, offset + 12)
    if len(body) < length + 4:
        raise TFRecordError(f"{where}: truncated record at byte {offset} ({len(body)} of {length + 4} bytes)")
    data = body[:length]
    if masked_crc32c(data) != int.from_bytes(body[length:], "little"):
        raise TFRecordError(f"{where}: corrupt record data at byte {offset} (CRC mismatch)")
    return data, offset + 16 + length


def read_records(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """(offset, data) of every record of a file, in order, with both CRCs verified.

    Raises:
        TFRecordError: a truncated or corrupt record.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as handle:

        def read(n: int, offset: int) -> bytes:
            handle.seek(offset)
            return handle.read(n)

        offset = 0
        while offset < size:
            data, following = _record_at(read, offset, str(path))
            yield offset, data
            offset = following


# ------------------------------------------------------------------------------------ tf.train.Example


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise TFRecordError("not a tf.train.Example: a truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message: an int, or bytes for length-delimited and
    fixed-size fields."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
            if len(value) != length:
                raise TFRecordError("not a tf.train.Example: a truncated field")
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, pos = buf[pos : pos + width], pos + width
        else:
            raise TFRecordError(f"not a tf.train.Example: wire type {wire}")
        yield number, wire, value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _feature_values(feature: bytes) -> list[Any]:
    """The values of a Feature: bytes (BytesList), floats (FloatList) or ints (Int64List)."""
    values: list[Any] = []
    for kind, _, payload in _fields(feature):
        for number, wire, value in _fields(payload):
            if number != 1:
                continue
            if kind == 1:
                values.append(value)
            elif kind == 2:  # packed (wire 2) or one float per field (wire 5)
                values.extend(np.frombuffer(value, "<f4").tolist())
            elif kind == 3 and wire == 2:  # packed varints
                pos = 0
                while pos < len(value):
                    item, pos = _varint(value, pos)
                    values.append(_signed(item))
            elif kind == 3:
                values.append(_signed(value))
    return values


def parse_example(data: bytes, only: str | None = None) -> dict[str, list[Any]]:
    """The features of a serialised ``tf.train.Example``: name -> list of bytes, floats or ints.

    Args:
        data: the record.
        only: parse just this feature (the others are skipped undecoded).

    Raises:
        TFRecordError: the data is not an Example.
    """
    features: dict[str, list[Any]] = {}
    for number, wire, payload in _fields(data):
        if number != 1 or wire != 2:
            continue
        for entry_number, _, entry in _fields(payload):
            if entry_number != 1:
                continue
            name, value = "", b""
            for field, _, item in _fields(entry):
                if field == 1:
                    name = item.decode("utf-8", "replace")
                elif field == 2:
                    value = item
            if only is None or name == only:
                features[name] = _feature_values(value)
    return features


# ------------------------------------------------------------------------------------------------ index


def _index(path: Path, image_feature: str, cache_dir: str | os.PathLike | None) -> pd.DataFrame:
    """Offsets and the non-image features of every record of one file, from the cache when unchanged."""
    stat = path.stat()
    cache_file = None
    if cache_dir is not None:
        key = f"{INDEX_VERSION}|{path}|{stat.st_size}|{stat.st_mtime_ns}|{image_feature}"
        cache_file = (
            Path(cache_dir) / "tfrecord-index" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.pq"
        )
        if cache_file.is_file():
            try:
                return pd.read_parquet(cache_file)
            except (OSError, ValueError) as exc:
                logger.warning("ignoring the unreadable TFRecord index %s (%s)", cache_file, exc)
    rows: list[dict[str, Any]] = []
    for offset, data in read_records(path):
        try:
            features = parse_example(data)
        except TFRecordError as exc:
            raise TFRecordError(f"{path}: record at byte {offset}: {exc}") from None
        if image_feature not in features:
            raise TFRecordError(
                f"{path}: record at byte {offset} has no feature {image_feature!r}; its features: "
                f"{', '.join(features)}. Set data.image_column"
            )
        row: dict[str, Any] = {"_offset": offset}
        for name, values in features.items():
            if name != image_feature:
                row[name] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values]
        rows.append(row)
    frame = pd.DataFrame(rows, columns=None if rows else ["_offset"])
    for column in frame.columns.drop("_offset"):
        # One value per record (the usual case) becomes a plain column; missing features stay None.
        if frame[column].map(lambda v: not isinstance(v, list) or len(v) <= 1).all():
            frame[column] = frame[column].map(lambda v: v[0] if isinstance(v, list) and v else None)
            frame[column] = frame[column].infer_objects()
    if cache_file is not None:
        try:
            atomic_write(cache_file, frame.to_parquet)
        except (OSError, ValueError) as exc:
            logger.warning("cannot cache the TFRecord index in %s (%s)", cache_file, exc)
    return frame


class TFRecordImages(ImageSource):
    """The image feature of indexed TFRecord files; a reference is ``<file>#<record number>``."""

    def __init__(self, root: Path, offsets: dict[str, np.ndarray], image_feature: str) -> None:
        self.root = root
        self.image_feature = image_feature
        self._offsets = offsets
        self._counts = {name: len(positions) for name, positions in offsets.items()}
        self._stats = {}
        for name in offsets:
            stat = (root / name).stat()
            self._stats[name] = (stat.st_size, stat.st_mtime_ns)
        self._fds: dict[str, int] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Descriptors belong to a process (forked workers inherit them; pread shares no file position).
        return {**self.__dict__, "_fds": {}}

    def _record(self, ref: str) -> tuple[str, int]:
        return split_ref(ref, self._counts, f"the TFRecord files under {self.root}")

    def read(self, ref: str) -> bytes:
        name, number = self._record(ref)
        fd = self._fds.get(name)
        if fd is None:
            fd = self._fds[name] = os.open(self.root / name, os.O_RDONLY)
        try:
            data, _ = _record_at(
                lambda n, offset: os.pread(fd, n, offset), int(self._offsets[name][number]), name
            )
            values = parse_example(data, only=self.image_feature).get(self.image_feature)
        except TFRecordError as exc:
            raise OSError(str(exc)) from exc
        if not values or not isinstance(values[0], bytes):
            raise OSError(f"record {ref} has no bytes in feature {self.image_feature!r}")
        return values[0]

    def identity(self, ref: str) -> Identity:
        name, number = self._record(ref)
        size, mtime = self._stats[name]
        return [str(self.root / name), size, mtime, number]

    def describe(self) -> str:
        return f"feature {self.image_feature!r} of the TFRecord files under {self.root}"


def read_tfrecord_labels(
    root: str | os.PathLike,
    pattern: str | None = None,
    *,
    image_feature: str = "image",
    label_column: str | None = None,
    label_columns: Sequence[str] | None = None,
    patient_column: str | None = DEFAULT_PATIENT_COLUMN,
    patient_pattern: str | None = None,
    task: Task | str = Task.MULTILABEL,
    positive: str | Sequence[str] | None = None,
    negative: str | Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> LabelTable:
    """Read the labels of TFRecord files (and where each record's image is) as a label table.

    Args:
        root: the folder of the record files.
        pattern: a glob of record files relative to ``root`` (default ``**/*.tfrec*``).
        image_feature: the bytes feature holding the encoded image.
        label_column: a feature holding one class (binary, multiclass) or, multilabel, the findings (a list
            or a string joined by "|").
        label_columns: 0/1 features, one per finding (multilabel; a missing feature = unknown). Default
            without ``label_column``: every numeric feature but the patient feature.
        patient_column: the feature holding the patient id (or an image id containing it); when the default
            name is absent, every image is its own patient (with a warning).
        patient_pattern: a regular expression finding the patient id in that feature (group ``patient``, else
            the first group), e.g. ``^(\\d+)_`` for NIH image names.
        task: the task the labels hold (a Task or its name).
        positive: binary: the value(s) of ``label_column`` that mean positive.
        negative: binary: the value(s) that mean negative.
        cache_dir: where the record indexes are cached (None: index every run).

    Raises:
        DataError: no files, a corrupt record, a missing feature, bad labels.
    """
    root_path = Path(os.path.abspath(root))
    if not root_path.is_dir():
        raise DataError(f"TFRecord folder not found: {root_path}")
    pattern = pattern or DEFAULT_PATTERN
    files = sorted(
        Path(p).relative_to(root_path).as_posix()
        for p in glob.glob(str(root_path / pattern), recursive=True)
        if os.path.isfile(p)
    )
    if not files:
        raise DataError(
            f"no TFRecord files match {pattern!r} under {root_path}; set data.labels to their glob"
        )
    frames, offsets, refs = [], {}, []
    for name in files:
        frame = _index(root_path / name, image_feature, cache_dir)
        offsets[name] = frame["_offset"].to_numpy(dtype=np.int64)
        refs += [f"{name}#{k}" for k in range(len(frame))]
        frames.append(frame.drop(columns="_offset"))
    frame = pd.concat(frames, ignore_index=True)
    header = list(frame.columns)
    source = f"TFRecord files {pattern} under {root_path}"
    patient_col = pick_patient_column(header, patient_column, source)

    def default_columns() -> list[str]:
        # Sorted: a serialised Example's feature map has no fixed order.
        numeric = sorted(c for c in header if c != patient_col and pd.api.types.is_numeric_dtype(frame[c]))
        if not numeric:
            raise DataError(f"{source}: no numeric label features; features: {', '.join(header)}")
        return numeric

    return table_from_frame(
        frame,
        refs,
        TFRecordImages(root_path, offsets, image_feature),
        chosen_label_columns(header, label_column, label_columns, source, default_columns),
        task,
        findings=Task.parse(task).multi_label and label_column is not None,
        positive=positive,
        negative=negative,
        patient_column=patient_col,
        patient_pattern=patient_pattern,
        source=source,
    )
