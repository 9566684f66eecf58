"""`python -m trainer predict MODEL INPUTS... --out preds.csv`: batched inference on files, folders, CSVs."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.export import load_model
from trainer.inference import InputTransform, predict_tensors
from trainer.io import XRayReadError, load_xray
from trainer.labels import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"}


def collect_inputs(inputs: list[str | Path]) -> list[Path]:
    """Expand files, folders (recursively, image and DICOM files) and CSVs (a `path` column) into image paths.

    CSV paths are relative to the CSV's folder unless absolute.

    Raises:
        FileNotFoundError: an input does not exist.
        DataError: a CSV without a `path` column.
    """
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths.extend(
                sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            )
        elif item.suffix.lower() == ".csv":
            with item.open(newline="") as f:
                reader = csv.DictReader(f)
                if "path" not in (reader.fieldnames or []):
                    raise DataError(
                        f"{item} has no 'path' column (columns: {', '.join(reader.fieldnames or [])})"
                    )
                paths.extend(
                    p if p.is_absolute() else item.parent / p for p in (Path(row["path"]) for row in reader)
                )
        elif item.exists():
            paths.append(item)
        else:
            raise FileNotFoundError(f"input not found: {item}")
    return paths


@dataclass(frozen=True)
class PredictionSummary:
    """What `predict_to_csv` did: the CSV written, and how many images it predicted and could not read."""

    out: Path
    predicted: int
    unreadable: int

    def __str__(self) -> str:
        text = f"predicted {self.predicted} of {self.predicted + self.unreadable} images"
        return text + (f"; {self.unreadable} unreadable (see the error column)" if self.unreadable else "")


def _batches(paths: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(paths), size):
        yield paths[start : start + size]


def predict_to_csv(
    model_source: str,
    inputs: list[str | Path],
    out: str | Path,
    *,
    batch_size: int = 16,
    revision: str | None = None,
) -> PredictionSummary:
    """Predict every input and write one CSV row per image: probabilities, decision, warnings or the error.

    An unreadable image gets a row with its error message instead of stopping the whole batch; the summary
    counts both kinds.
    """
    model, info = load_model(model_source, revision=revision)
    transform = InputTransform.for_model(info)
    paths = collect_inputs(inputs)
    names = info.task.output_names(info.label_names, info.negative_name)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    unreadable = 0
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *(f"prob_{n}" for n in names), "decision", "warnings", "error"])
        for batch in _batches(paths, batch_size):
            ready, tensors = [], []
            for path in batch:
                try:
                    xray = load_xray(path)
                except XRayReadError as err:
                    writer.writerow([str(path), *([""] * len(names)), "", "", str(err)])
                    unreadable += 1
                    continue
                prepared = transform(xray.pixels)
                ready.append((path, [*xray.warnings, *prepared.warnings]))
                tensors.append(prepared.tensor)
            if not tensors:
                continue
            probs = predict_tensors(model, torch.stack(tensors), info.task)
            for (path, warnings), p in zip(ready, probs, strict=True):
                by_name = info.task.class_probabilities(p, info.label_names, info.negative_name)
                decision = info.task.decide(p, info.label_names, info.thresholds, info.negative_name)
                writer.writerow(
                    [
                        str(path),
                        *(f"{by_name[n]:.6f}" for n in names),
                        "|".join(decision),
                        " / ".join(warnings),
                        "",
                    ]
                )
    summary = PredictionSummary(out, len(paths) - unreadable, unreadable)
    log.info("%s with %s into %s", summary, model_source, out)
    return summary
