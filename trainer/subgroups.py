"""Metrics per subgroup (sex, age band, view, ...): does the model work as well for everyone?

`subgroup_metrics` splits the images by the values of each metadata column and scores every group with
`trainer.metrics.evaluate_predictions` (AUC, sensitivity and specificity at the model's thresholds, with
patient-level bootstrap CIs). Ages are cut into bands (`AGE_BANDS`); other columns are taken as categories.
Groups smaller than `MIN_GROUP_IMAGES` are listed with their counts only: on a dozen images an AUC says
little and its interval says so at length. `read_subgroup_columns` reads the columns for a label table's
images from a metadata CSV (NIH's metadata.csv or Data_Entry_2017.csv, or the labels file itself).

Schema (JSON-serialisable)::

    {"min_images": int, "age_bands": [18, 40, 60],   # `evaluate_subgroups` adds "metadata": the CSV read
     "columns": {column: [{"group": str, "n_images": int, "n_patients": int,
                           "label_counts": {class: int},     # positives per class (binary: per side)
                           "auc": {"value", "ci"} | None, "sensitivity": ..., "specificity": ...,
                           "note": str | None}, ...]}}
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainer.label_readers import absolute_path, pick_column, read_csv_rows
from trainer.labels import DataError, LabelTable, did_you_mean, loose_key
from trainer.metrics import evaluate_predictions
from trainer.task import Task

if TYPE_CHECKING:
    from trainer.config import DataConfig

log = logging.getLogger(__name__)

AGE_BANDS = (18, 40, 60)  # band edges in years: <18, 18-39, 40-59, 60+
MIN_GROUP_IMAGES = 20
SUBGROUP_METRICS = ("auc", "sensitivity", "specificity")
UNKNOWN = "unknown"


AGE_COLUMNS = frozenset({"age", "patientage", "ageyears", "ageinyears", "anchorage"})  # loose keys


def is_age_column(name: str) -> bool:
    """Whether a column holds ages, cut into bands: "age", "Patient Age" (NIH), "PatientAge" (DICOM), ..."""
    return loose_key(name) in AGE_COLUMNS


def age_band(value: Any, edges: Sequence[float] = AGE_BANDS) -> str:
    """The band of one age ("40-59"), or "unknown" for a blank or non-numeric value.

    NIH writes some ages with a unit ("055Y" in DICOM style); the number is read from the digits.
    """
    text = str(value).strip().upper().removesuffix("Y")
    try:
        age = float(text)
    except ValueError:
        return UNKNOWN
    if not np.isfinite(age):
        return UNKNOWN
    if age < edges[0]:
        return f"<{edges[0]:g}"
    for low, high in zip(edges, edges[1:], strict=False):
        if low <= age < high:
            return f"{low:g}-{high - 1:g}"
    return f"{edges[-1]:g}+"


def group_values(column: str, values: Sequence[Any], edges: Sequence[float] = AGE_BANDS) -> list[str]:
    """Each image's group in a column: an age band for age columns, else the value ("unknown" if blank)."""
    if is_age_column(column):
        return [age_band(v, edges) for v in values]
    return [
        str(v).strip() if v is not None and str(v).strip() not in ("", "nan") else UNKNOWN for v in values
    ]


def _order(groups: set[str], column: str, edges: Sequence[float]) -> list[str]:
    if is_age_column(column):
        bands = [age_band(edges[0] - 1, edges)] + [age_band(e, edges) for e in edges]
        return [b for b in bands if b in groups] + ([UNKNOWN] if UNKNOWN in groups else [])
    return sorted(groups - {UNKNOWN}) + ([UNKNOWN] if UNKNOWN in groups else [])


def subgroup_metrics(
    task: Task | str,
    label_names: Sequence[str],
    targets: Any,
    probs: Any,
    patient_ids: Sequence[Any] | None,
    thresholds: Sequence[float] | None,
    columns: Mapping[str, Sequence[Any]],
    *,
    negative_name: str = "normal",
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    min_images: int = MIN_GROUP_IMAGES,
    age_bands: Sequence[float] = AGE_BANDS,
) -> dict[str, Any]:
    """AUC, sensitivity and specificity with CIs for every group of every column.

    Args:
        task, label_names, targets, probs, patient_ids, thresholds, negative_name, n_bootstrap, seed,
            confidence: as for `evaluate_predictions` (the model's own thresholds: never tuned per group).
        columns: column name -> one value per image (e.g. {"sex": [...], "age": [...], "view": [...]}).
        min_images: groups with fewer images get counts and a note, no metrics.
        age_bands: the band edges for age columns, increasing.

    Returns:
        The dict of the module docstring.

    Raises:
        ValueError: a column without one value per image, or bad band edges.
    """
    task = Task.parse(task)
    y = np.asarray(targets)
    p = np.asarray(probs, dtype=float)
    n = len(y)
    if list(age_bands) != sorted(set(age_bands)) or not age_bands:
        raise ValueError(f"age_bands must be increasing; got {list(age_bands)}")
    ids = None if patient_ids is None else [str(pid) for pid in patient_ids]
    out: dict[str, Any] = {"min_images": min_images, "age_bands": list(age_bands), "columns": {}}
    for column, values in columns.items():
        if len(values) != n:
            raise ValueError(f"subgroup column {column!r} has {len(values)} values for {n} images")
        groups = np.asarray(group_values(column, values, age_bands))
        rows = []
        for group in _order(set(groups.tolist()), column, age_bands):
            mask = groups == group
            part_ids = None if ids is None else [pid for pid, m in zip(ids, mask, strict=True) if m]
            entry: dict[str, Any] = {
                "group": group,
                "n_images": int(mask.sum()),
                "n_patients": len(set(part_ids)) if part_ids is not None else int(mask.sum()),
                "label_counts": _label_counts(task, label_names, y[mask], negative_name),
            }
            if mask.sum() < min_images:
                entry.update(dict.fromkeys(SUBGROUP_METRICS))
                entry["note"] = f"only {int(mask.sum())} images (fewer than {min_images}): not evaluated"
            else:
                metrics = evaluate_predictions(
                    task,
                    label_names,
                    y[mask],
                    p[mask],
                    part_ids,
                    thresholds,
                    negative_name=negative_name,
                    n_bootstrap=n_bootstrap,
                    seed=seed,
                    confidence=confidence,
                )
                entry.update({name: metrics["headline"][name] for name in SUBGROUP_METRICS})
                notes = [f"{k}: {c['note']}" for k, c in metrics["per_class"].items() if c["note"]]
                entry["note"] = "; ".join(notes) or None
            rows.append(entry)
        out["columns"][column] = rows
    return out


def _label_counts(
    task: Task, label_names: Sequence[str], y: np.ndarray, negative_name: str
) -> dict[str, int]:
    if task.exclusive:
        return {name: int((y == i).sum()) for i, name in enumerate(label_names)}
    if task.single_logit:
        flat = y.reshape(-1)
        return {label_names[0]: int((flat == 1).sum()), negative_name: int((flat == 0).sum())}
    return {name: int((y[:, i] == 1).sum()) for i, name in enumerate(label_names)}


def read_subgroup_columns(
    table: LabelTable, csv_path: str | os.PathLike, columns: Sequence[str], *, path_column: str = "path"
) -> dict[str, list[str | None]]:
    """The values of `columns` for every image of `table`, from a metadata CSV keyed by image path.

    A path cell is matched like a label CSV's (relative to the table's root, else to the CSV's folder); a
    bare file name (NIH's "Image Index") is matched by file name. Images the CSV does not list get None.

    Raises:
        DataError: the CSV or a column is missing (with the columns it has).
    """
    csv_file = absolute_path(csv_path)
    header, rows = read_csv_rows(csv_file)
    path_col = pick_column(header, path_column, ("image_path", "image", "file", "filename", "Image Index"))
    if path_col is None:
        raise DataError(f"{csv_file}: no path column {path_column!r}; columns: {', '.join(header)}")
    picked = {}
    for name in columns:
        found = pick_column(header, name)
        if found is None:
            raise DataError(
                f"{csv_file}: no subgroup column {name!r}{did_you_mean(name, header)}; "
                f"columns: {', '.join(header)}"
            )
        picked[name] = found
    by_path: dict[str, dict[str, str]] = {}
    by_name: dict[str, dict[str, str]] = {}
    for _, row in rows:
        cell = row[path_col]
        if "/" not in cell and "\\" not in cell:
            by_name.setdefault(cell, row)
        for base in (table.root, csv_file.parent):
            by_path.setdefault(os.path.normpath(Path(base) / cell), row)
    values: dict[str, list[str | None]] = {name: [] for name in columns}
    missing = 0
    for path in table.paths:
        listed = by_path.get(os.path.normpath(path)) or by_name.get(Path(path).name)
        missing += listed is None
        for name, column in picked.items():
            values[name].append(None if listed is None else listed[column])
    if missing:
        log.warning(
            "%s lists no metadata for %d of %d images: their groups are 'unknown'",
            csv_file,
            missing,
            len(table),
        )
    return values


def evaluate_subgroups(
    cfg: DataConfig,
    table: LabelTable,
    probs: np.ndarray,
    thresholds: Sequence[float] | None,
    *,
    negative_name: str | None = None,
    n_bootstrap: int = 1000,
) -> dict[str, Any]:
    """`evaluate`'s and `fit`'s subgroup section: `subgroup_metrics` over `cfg.subgroup_columns`, read from
    `cfg.metadata` (relative to `cfg.root`; default the labels CSV), for the scored images of `table` (its
    labels in the model's output order) at the model's `thresholds`.

    Raises:
        DataError: no CSV to read the columns from, or a column it lacks.
    """
    name = cfg.metadata or cfg.labels
    if name is None:
        raise DataError("data.subgroup_columns needs data.metadata: a CSV with those columns, keyed by path")
    csv_path = Path(name) if Path(name).is_absolute() else Path(cfg.root) / name
    columns = read_subgroup_columns(table, csv_path, cfg.subgroup_columns or [], path_column=cfg.path_column)
    result = subgroup_metrics(
        table.task,
        table.label_names,
        table.targets,
        probs,
        table.patient_ids,
        thresholds,
        columns,
        negative_name=negative_name or "normal",
        n_bootstrap=n_bootstrap,
    )
    return {"metadata": str(csv_path), **result}
