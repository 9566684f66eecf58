"""One synthetic radiograph dataset written three ways: PNGs + labels.csv, a `datasets` dataset, TFRecords.

The TFRecords are written with an independent implementation of the format - tensorboard's RecordWriter for
the framing and a `tf.train.Example` message class built with the protobuf library from the Example schema -
so that chexlab's reader is tested against code it shares nothing with.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.synthetic import radiograph

FINDINGS = ("No Finding", "Opacity", "Effusion")


def synthetic_rows(n_patients: int = 30, images_per_patient: int = 2, seed: int = 0) -> list[dict[str, Any]]:
    """Rows with PNG bytes, an NIH-style image id, the patient, 0/1 findings and a single class."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        opacity, effusion = p % 2 == 1, p % 3 == 0
        for k in range(images_per_patient):
            buffer = io.BytesIO()
            Image.fromarray(radiograph(rng, opacity=opacity, effusion=effusion)).save(buffer, format="PNG")
            findings = [name for name, on in zip(FINDINGS[1:], (opacity, effusion), strict=True) if on]
            rows.append(
                {
                    "png": buffer.getvalue(),
                    "image_id": f"{p + 1:08d}_{k:03d}.png",
                    "patient_id": f"P{p:03d}",
                    "No Finding": int(not findings),
                    "Opacity": int(opacity),
                    "Effusion": int(effusion),
                    "findings": findings or ["No Finding"],
                    "label": "abnormal" if opacity else "normal",
                }
            )
    return rows


def write_csv_dataset(root: Path, rows: list[dict[str, Any]]) -> Path:
    """root/images/<image_id> and root/labels.csv (path, patient_id, label, the 0/1 findings)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "patient_id", "label", *FINDINGS])
        for row in rows:
            (root / "images" / row["image_id"]).write_bytes(row["png"])
            writer.writerow(
                [f"images/{row['image_id']}", row["patient_id"], row["label"], *(row[f] for f in FINDINGS)]
            )
    return root / "labels.csv"


def hf_dataset(rows: list[dict[str, Any]]) -> Any:
    """A `datasets.Dataset`: Image, patient, a ClassLabel class, 0/1 columns, a ClassLabel findings list."""
    import datasets

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "patient_id": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["normal", "abnormal"]),
            **{name: datasets.Value("int64") for name in FINDINGS},
            "findings": datasets.Sequence(datasets.ClassLabel(names=list(FINDINGS))),
            "finding_text": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "image": [{"bytes": r["png"], "path": r["image_id"]} for r in rows],
            "patient_id": [r["patient_id"] for r in rows],
            "label": [r["label"] for r in rows],
            **{name: [r[name] for r in rows] for name in FINDINGS},
            "findings": [r["findings"] for r in rows],
            "finding_text": ["|".join(r["findings"]) for r in rows],
        },
        features=features,
    )


def example_class() -> type:
    """A `tf.train.Example` message class, built from the Example schema with the protobuf library."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FileDescriptorProto(name="chexlab_test_example.proto", package="chexlab_test")
    proto.syntax = "proto3"

    def message(name: str, fields: list[tuple[str, int, int, int, str]]) -> None:
        msg = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            field = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name

    field = descriptor_pb2.FieldDescriptorProto
    repeated, optional = field.LABEL_REPEATED, field.LABEL_OPTIONAL
    message("BytesList", [("value", 1, field.TYPE_BYTES, repeated, "")])
    message("FloatList", [("value", 1, field.TYPE_FLOAT, repeated, "")])
    message("Int64List", [("value", 1, field.TYPE_INT64, repeated, "")])
    message(
        "Feature",
        [
            ("bytes_list", 1, field.TYPE_MESSAGE, optional, ".chexlab_test.BytesList"),
            ("float_list", 2, field.TYPE_MESSAGE, optional, ".chexlab_test.FloatList"),
            ("int64_list", 3, field.TYPE_MESSAGE, optional, ".chexlab_test.Int64List"),
        ],
    )
    features = proto.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=field.TYPE_STRING, label=optional)
    entry.field.add(
        name="value", number=2, type=field.TYPE_MESSAGE, label=optional, type_name=".chexlab_test.Feature"
    )
    features.field.add(
        name="feature",
        number=1,
        type=field.TYPE_MESSAGE,
        label=repeated,
        type_name=".chexlab_test.Features.FeatureEntry",
    )
    message("Example", [("features", 1, field.TYPE_MESSAGE, optional, ".chexlab_test.Features")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("chexlab_test.Example"))


def encode_example(example_type: type, features: dict[str, list[Any]]) -> bytes:
    """A serialised Example: bytes values -> bytes_list, floats -> float_list, ints -> int64_list."""
    example = example_type()
    for name, values in features.items():
        feature = example.features.feature[name]
        if all(isinstance(v, bytes) for v in values):
            feature.bytes_list.value.extend(values)
        elif all(isinstance(v, int) for v in values):
            feature.int64_list.value.extend(values)
        else:
            feature.float_list.value.extend(float(v) for v in values)
    return example.SerializeToString()


def write_tfrecords(path: Path, records: list[bytes]) -> Path:
    """A TFRecord file framed by tensorboard's RecordWriter (length, masked CRC32C, data, masked CRC32C)."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        writer = RecordWriter(handle)
        for record in records:
            writer.write(record)
        writer.flush()
    return path


def write_nih_style_tfrecords(root: Path, rows: list[dict[str, Any]], per_file: int = 25) -> list[Path]:
    """The Kaggle NIH TFRecords layout: data/NNN-COUNT.tfrec with image, image_id and one int64 per label."""
    example_type = example_class()
    files = []
    for start in range(0, len(rows), per_file):
        part = rows[start : start + per_file]
        records = [
            encode_example(
                example_type,
                {
                    "image": [r["png"]],
                    "image_id": [r["image_id"].encode()],
                    **{name: [r[name]] for name in FINDINGS},
                },
            )
            for r in part
        ]
        files.append(write_tfrecords(root / "data" / f"{start // per_file:03d}-{len(part)}.tfrec", records))
    return files
