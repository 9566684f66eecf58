"""`python -m trainer predict MODEL INPUTS... --out preds.csv`: batched inference on files, folders, CSVs."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from trainer.batch_inference import BatchSummary, write_predictions
from trainer.export import load_model
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


def predict_to_csv(
    model_source: str,
    inputs: list[str | Path],
    out: str | Path,
    *,
    batch_size: int = 16,
    revision: str | None = None,
    workers: int | None = None,
) -> BatchSummary:
    """Predict every input and write one CSV row per image (`trainer.batch_inference`): calibrated
    probabilities, the decision (withheld when the OOD gate flags the image), ood_score, ood, warnings, or
    the error that made the image unreadable, which does not stop the batch.

    Args:
        model_source: a model folder, RUN_DIR, local-dir:PATH or hf-hub:org/name.
        inputs: image files, folders (searched recursively) or CSVs with a `path` column.
        out: the CSV to write.
        batch_size: images per forward pass.
        revision: a Hub revision.
        workers: decoding processes (default one per core; 0 = in this process).

    Returns:
        The counts (predicted, unreadable, flagged), the backend, the time taken, the model's notes.
    """
    source = Path(model_source)
    if (source / "config.yaml").is_file() and (source / "model").is_dir():  # a run folder: its model
        model_source = str(source / "model")
    model, info = load_model(model_source, revision=revision)
    paths = collect_inputs(inputs)
    return write_predictions(model, info, paths, out, batch_size=batch_size, workers=workers)
