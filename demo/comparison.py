"""Compare models, or preprocessing variants of one model, on the same radiographs (no UI code).

The logic behind the Streamlit page (`demo/compare.py`) and the Compare page of the Gradio app: run every
column (a model, or a preprocessing variant) on every image through the shared `Predictor`, then summarise
where the columns agree. A grid has one row per image and one column per model or variant; each cell holds
the prediction (probabilities, decision, CAM overlay) or the reason it failed, so that a bad image or a model
that cannot be loaded spoils only its own row or column. `to_csv` and `grid_png` export a comparison.

Comparing models with different classes (normal/abnormal, three pneumonia classes, five findings) needs one
common question: does the model call the image abnormal? A binary model answers with its positive class, a
multi-class model with any class but its normal one, a multi-label model with any finding at its threshold.
Labels (a class per image, findings joined by "|") come from class sub-folders or a labels.csv beside the
images and are matched to each model's classes by name.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from demo.encoding import as_uint8
from demo.gallery import gallery
from demo.overlay import overlay
from demo.switches import Toggles, describe_pipeline
from trainer.errors import ChexlabError, internal_error
from trainer.label_readers import IMAGE_SUFFIXES, pick_column, read_csv_labels, read_folder_labels
from trainer.labels import DataError, LabelTable, loose_key
from trainer.metrics import evaluate_predictions
from trainer.model_source import quote
from trainer.preprocess import fit_to_input
from trainer.task import Task

if TYPE_CHECKING:  # the models' side (torch): the comparison page is laid out before it is imported
    from demo.heatmap_checks import HeatmapCheck
    from demo.predictor import LoadedModel, Prediction, Predictor
    from trainer.export import ModelInfo
    from trainer.io import XRay

log = logging.getLogger(__name__)

__all__ = [
    "DISCLAIMER",
    "MAX_MODELS",
    "MIN_MODELS",
    "VARIANTS",
    "Cell",
    "Column",
    "ComparisonError",
    "ColumnSummary",
    "Comparison",
    "ImageItem",
    "Row",
    "class_options",
    "compare_models",
    "compare_preprocessing",
    "grid_png",
    "abnormal_score",
    "gallery_images",
    "has_abnormal_call",
    "images_from_folder",
    "images_from_paths",
    "sample_images",
    "label_abnormal",
    "label_target",
    "to_csv",
    "with_labels_file",
]

DISCLAIMER = (
    "**For research and teaching only — not a diagnostic device.** These models were trained on small public "
    "datasets; their outputs are not a diagnosis and must not guide the care of any patient."
)
MIN_MODELS, MAX_MODELS = 2, 4
MAX_IMAGES = 48  # a grid larger than this is slow on a CPU and unreadable on a screen
THUMBNAIL_SIDE = 256  # the radiograph as read, shown at the start of each row
LABELS_FILE = "labels.csv"
NORMAL_NAMES = frozenset({"normal", "nofinding", "nofindings", "negative"})  # loose keys
ABNORMAL_NAMES = frozenset({"abnormal", "finding", "anyfinding"})  # positives that stand for any finding
MODEL_OWN = "Model's own"
# Preprocessing variants users compare; None = the model's own pipeline (whatever it is).
VARIANTS: dict[str, Toggles | None] = {
    "Raw": Toggles(),
    "CLAHE": Toggles(clahe=True),
    "White balance": Toggles(white_balance=True),
    "Lung crop": Toggles(crop_lungs=True),
    MODEL_OWN: None,
}

Progress = Callable[[float, str], None]


class ComparisonError(ChexlabError, ValueError):
    """A comparison that cannot run as asked: too few or too many models, no images, unknown variants."""


# ------------------------------------------------------------------------------------------------ images


@dataclass(frozen=True)
class ImageItem:
    """One radiograph to compare on: a path or the bytes of an upload, and its label if known."""

    name: str
    source: str | Path | bytes = field(repr=False)
    label: str | None = None  # a class name, or findings joined by "|"; None = unknown
    patient_id: str | None = None  # images of one patient resample together; None = its own patient
    groups: tuple[tuple[str, str], ...] = ()  # subgroup column -> value, e.g. (("sex", "F"), ("age", "52"))


def images_from_folder(folder: str | Path, *, limit: int = MAX_IMAGES) -> list[ImageItem]:
    """The images of a folder, with labels when the folder has them.

    Images at the top level (labels from a labels.csv beside them, if any), else one sub-folder per class
    (the folder names are the labels), else images found further down (labels from the nearest labels.csv).
    With more than `limit` images, an even spread of `limit` is taken (sorted by name first).

    Raises:
        FileNotFoundError: not a folder. ComparisonError: no images in it.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}; give the path of a folder of radiographs")
    labels = _folder_labels(root)
    top = _images(root.iterdir())
    paths = top or _images(root.rglob("*"))
    if not paths:
        raise ComparisonError(
            f"no images in {root} or its sub-folders; accepted: {', '.join(sorted(IMAGE_SUFFIXES))}"
        )
    if len(paths) > limit:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]
    if not labels and not top:  # e.g. a folder of datasets: each image's nearest labels.csv
        return [
            dataclasses.replace(item, name=_display_name(path, root))
            for item, path in zip(images_from_paths(paths), paths, strict=True)
        ]
    return [ImageItem(_display_name(p, root), p, labels.get(p.resolve())) for p in paths]


def gallery_images() -> list[ImageItem]:
    """The sample gallery (`demo.gallery`): labelled radiographs with patient ids, sex, age and view.

    The operator's files, picked by the page, never by a path a visitor names.
    """
    return [
        ImageItem(
            item.path.name,
            item.path,
            item.labels,
            item.patient_id or None,
            tuple((k, v) for k, v in (("sex", item.sex), ("age", item.age), ("view", item.view)) if v),
        )
        for item in gallery()
    ]


def sample_images(extra: Iterable[str | Path] = ()) -> list[ImageItem]:
    """What both comparison pages offer as examples: the labelled gallery, then the operator's other example
    files (`extra`, e.g. CHEXLAB_EXAMPLES) not already in it; at most `MAX_IMAGES`."""
    items = gallery_images()
    known = {Path(str(item.source)).resolve() for item in items}
    others = [path for path in extra if Path(path).resolve() not in known]
    return (items + images_from_paths(others))[:MAX_IMAGES]


def with_labels_file(items: Sequence[ImageItem], text: str) -> list[ImageItem]:
    """Uploaded images with the labels, patient ids and subgroups of an uploaded CSV, matched by file name.

    The CSV (the visitor's own, read from memory: nothing on the server is looked up) has a file column
    (file, path, image, filename or NIH's "Image Index"; only the name counts), a label column (labels or
    label: a class, findings joined by "|", or normal) and optionally patient_id, sex, age and view.

    Raises:
        ComparisonError: no file or label column.
    """
    reader = csv.DictReader(io.StringIO(text))
    header = list(reader.fieldnames or [])
    file_col = pick_column(header, "file", ("path", "image", "filename", "Image Index"))
    label_col = pick_column(header, "labels", ("label", "Finding Labels"))
    if file_col is None or label_col is None:
        raise ComparisonError(
            f"the labels file needs a file and a label column; it has: {', '.join(header) or 'no header'}"
        )
    extra = {name: pick_column(header, name, variants) for name, variants in _LABEL_FILE_COLUMNS.items()}
    by_name = {PurePath(row.get(file_col) or "").name: row for row in reader}
    labelled = []
    for item in items:
        row = by_name.get(PurePath(item.name).name)
        if row is None:
            labelled.append(item)
            continue
        label = (row.get(label_col) or "").strip() or None  # "No Finding" reads as normal
        patient = extra["patient_id"]
        groups = tuple(
            (name, value)
            for name in ("sex", "age", "view")
            if (column := extra[name]) and (value := (row.get(column) or "").strip())
        )
        pid = (row.get(patient) or "").strip() if patient else ""
        labelled.append(dataclasses.replace(item, label=label, patient_id=pid or None, groups=groups))
    return labelled


_LABEL_FILE_COLUMNS = {
    "patient_id": ("patient", "Patient ID"),
    "sex": ("Patient Gender", "gender"),
    "age": ("Patient Age",),
    "view": ("View Position", "viewposition"),
}


def images_from_paths(paths: Iterable[str | Path]) -> list[ImageItem]:
    """Images from file paths; labels come from a labels.csv in the file's folder or the one above it."""
    items = []
    tables: dict[Path, dict[Path, str | None]] = {}
    for entry in paths:
        path = Path(entry)
        label = None
        for folder in (path.parent, path.parent.parent):
            if (folder / LABELS_FILE).is_file():
                if folder not in tables:
                    tables[folder] = _folder_labels(folder)
                label = tables[folder].get(path.resolve())
                break
        items.append(ImageItem(path.name, path, label))
    return items


def _images(entries: Iterable[Path]) -> list[Path]:
    return sorted(
        p
        for p in entries
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )


def _display_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def _folder_labels(root: Path) -> dict[Path, str | None]:
    """Resolved path -> label, from root/labels.csv or from class sub-folders; {} when there are none."""
    # The readers warn (through `warnings`) about missing patient ids and ignored files: harmless here, and
    # silencing them would swap process-wide state under other requests' threads.
    try:
        if (root / LABELS_FILE).is_file():
            table = read_csv_labels(root / LABELS_FILE)
        elif _class_folders(root):
            table = read_folder_labels(root)
        else:
            return {}
    except DataError as err:
        log.warning("labels in %s not used: %s", root, str(err).splitlines()[0])
        return {}
    return {path.resolve(): label for path, label in zip(table.paths, _label_strings(table), strict=True)}


def _class_folders(root: Path) -> bool:
    """One sub-folder of images per class (not, say, a folder of datasets with images/ and labels.csv)."""
    folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return (
        len(folders) >= 2
        and not _images(root.iterdir())
        and all(_images(f.iterdir()) and not (f / LABELS_FILE).exists() for f in folders)
    )


def _label_strings(table: LabelTable) -> list[str | None]:
    task = Task.parse(table.task)
    if task.exclusive:
        return [table.label_names[int(t)] for t in table.targets]
    if task.single_logit:
        negative = table.negative_name or f"not {table.label_names[0]}"
        return [table.label_names[0] if t == 1 else negative for t in table.targets]
    labels: list[str | None] = []
    for row in table.targets:
        positives = [name for name, value in zip(table.label_names, row, strict=True) if value == 1]
        # All findings known and none present: a normal image; otherwise unknown.
        labels.append("|".join(positives) if positives else None if np.isnan(row).any() else "normal")
    return labels


# ------------------------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Column:
    """A grid column: a model with its own preprocessing, or one preprocessing variant of a model."""

    name: str  # the header users see
    model: str  # the model name or source the predictor loads
    toggles: Toggles | None = None  # None = the model's own preprocessing
    preprocessing: str = ""  # the pipeline in words, once the model is loaded
    rule: str = ""  # how the model decides, e.g. "threshold: abnormal 0.83", once loaded
    error: str | None = None  # why the model could not be loaded
    info: ModelInfo | None = field(default=None, repr=False)  # the loaded model's classes and thresholds


@dataclass(frozen=True, eq=False)
class Cell:
    """One image under one column: a prediction, or the reason there is none."""

    prediction: Prediction | None = None
    error: str | None = None
    abnormal: bool | None = None  # the model's call; None = no answer (or withheld), or no normal class
    correct: bool | None = None  # against the image's label; None = unlabelled, not comparable or withheld
    note: str | None = None  # e.g. the chosen class is not one of this model's
    check: HeatmapCheck | None = None  # the heatmap's lung share and deletion drop

    @property
    def withheld(self) -> bool:
        """The OOD gate flagged the image: no decision, and no part in decision-based statistics."""
        return self.prediction is not None and self.prediction.withheld

    @property
    def decision(self) -> str:
        if self.prediction is None:
            return ""
        if self.withheld:
            return "withheld (flagged)"
        return ", ".join(self.prediction.decided) or "no finding"

    def answer(self, by_decision: bool) -> object:
        """What agreement compares: the decided classes (same classes) or the abnormal call."""
        if self.prediction is None or self.withheld:
            return None
        return tuple(self.prediction.decided) if by_decision else self.abnormal

    def check_lines(self) -> list[str]:
        """The heatmap checks in short lines: ["lungs 71 % of map (box 48 %)", "drop +0.12 w/o top 20 %"]."""
        if self.check is None:
            return []
        lungs, deletion = self.check.lungs, self.check.deletion
        if lungs.share is not None and lungs.area is not None:
            lines = [f"lungs {100 * lungs.share:.0f} % of map (box {100 * lungs.area:.0f} %)"]
        else:
            lines = [lungs.note or "no lung share"]
        if deletion.drop is not None:
            lines.append(f"drop {deletion.drop:+.2f} w/o top {100 * deletion.removed:.0f} %")
        return lines

    def check_text(self) -> str:
        """The heatmap checks in one line."""
        return ", ".join(self.check_lines())


@dataclass(frozen=True, eq=False)
class Row:
    """One image across all columns."""

    image: ImageItem
    thumbnail: np.ndarray | None  # float32 (S, S): the radiograph as read, letterboxed; None if unreadable
    cells: tuple[Cell, ...]
    disagree: bool
    error: str | None = None  # the image could not be read (every cell says so too)


@dataclass(frozen=True)
class ColumnSummary:
    """How one column did over all images."""

    column: str
    analysed: int
    failed: int
    withheld: int  # analysed images the OOD gate flagged: no decision, left out of accuracy and AUC
    abnormal_rate: float | None  # share of decided images called abnormal
    labelled: int  # analysed images whose label this model's classes can be compared with
    accuracy: float | None
    auc: float | None

    def as_row(self) -> dict[str, object]:
        return {
            "column": self.column,
            "analysed": self.analysed,
            "failed": self.failed,
            "flagged": self.withheld,
            "called abnormal": _percent(self.abnormal_rate),
            "labelled": self.labelled,
            "accuracy": _percent(self.accuracy),
            "AUC": "" if self.auc is None else f"{self.auc:.2f}",
        }


@dataclass(frozen=True, eq=False)
class Comparison:
    """A finished comparison: columns, rows (disagreements first) and a summary per column."""

    mode: Literal["models", "preprocessing"]
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    summaries: tuple[ColumnSummary, ...]
    target: str | None  # the class the maps explain; None = each model's top class
    method: str
    agreement_by: Literal["decision", "abnormal"]  # what disagreement compares

    @property
    def disagreements(self) -> int:
        return sum(row.disagree for row in self.rows)

    @property
    def labelled(self) -> bool:
        return any(row.image.label for row in self.rows)

    def with_opacity(self, opacity: float) -> Comparison:
        """The same comparison with every overlay re-blended at `opacity` (no model run)."""

        def reblend(cell: Cell) -> Cell:
            if cell.prediction is None:
                return cell
            return dataclasses.replace(cell, prediction=cell.prediction.with_opacity(opacity))

        rows = tuple(dataclasses.replace(row, cells=tuple(map(reblend, row.cells))) for row in self.rows)
        return dataclasses.replace(self, rows=rows)

    def summary_rows(self) -> list[dict[str, object]]:
        """The per-column summary as table rows (without label columns when no image has a label)."""
        rows = [s.as_row() for s in self.summaries]
        if not self.labelled:
            rows = [{k: v for k, v in r.items() if k not in ("labelled", "accuracy", "AUC")} for r in rows]
        return rows

    def failed_columns(self) -> dict[str, str]:
        """Columns without a single result, and why: not loaded, or failed on every image."""
        failed = {}
        for c, column in enumerate(self.columns):
            cells = [row.cells[c] for row in self.rows]
            if column.error:
                failed[column.name] = f"not loaded ({column.error})"
            elif cells and all(cell.prediction is None for cell in cells):
                readable = [cell for row, cell in zip(self.rows, cells, strict=True) if row.error is None]
                if readable:  # unreadable images fail every column alike: that is the image's fault
                    failed[column.name] = f"failed on every image ({readable[0].error or 'no result'})"
        return failed

    @property
    def withheld(self) -> int:
        """Image x column cells the OOD gate flagged (their decisions are withheld)."""
        return sum(cell.withheld for row in self.rows for cell in row.cells)

    def headline(self) -> str:
        """One sentence on the agreement, for the top of the results; it never hides what was not compared.

        Only columns that produced results are compared; a failed column is named with its reason, and
        images where fewer than two columns gave a decision are counted as not compared.
        """
        what = "models" if self.mode == "models" else "preprocessing variants"
        basis = "decision" if self.agreement_by == "decision" else "normal/abnormal call"
        failed = self.failed_columns()
        ran = len(self.columns) - len(failed)
        judged = [row for row in self.rows if sum(cell.answer(True) is not None for cell in row.cells) >= 2]
        partial = sum(
            any(cell.prediction is None for column, cell in zip(self.columns, row.cells, strict=True)
                if column.name not in failed)
            for row in judged
        )  # fmt: skip
        missing = len(self.rows) - len(judged)
        unloaded = [column.name for column in self.columns if column.error]
        notes = [f"not loaded: {', '.join(unloaded)}"] if unloaded else []
        if len(failed) > len(unloaded):
            notes.append(f"failed on every image: {', '.join(n for n in failed if n not in unloaded)}")
        if missing:
            notes.append(f"{missing} of {len(self.rows)} images could not be compared")
        if partial:
            notes.append(f"on {partial} images a column gave no result")
        if self.withheld:
            notes.append(f"{self.withheld} decisions withheld for flagged images, not compared")
        if ran < 2:
            gave = f"only {ran} of {len(self.columns)} {what} gave results"
            return f"Nothing to compare: {gave} ({'; '.join(notes)})."
        if not judged:
            return f"Nothing to compare: {'; '.join(notes) or 'no results'}."
        who = f"only {ran} of the {len(self.columns)} {what} ran, and they" if failed else f"the {what}"
        if self.disagreements:
            count = f"{self.disagreements} of {len(judged)}"
            text = f"{who} disagree on the {basis} for {count} images (shown first)"
        else:
            text = f"{who} agree on the {basis} for all {len(judged)} images compared"
        text = text[0].upper() + text[1:]
        return text + (f" ({'; '.join(notes)})." if notes else ".")


def class_options(models: Iterable[LoadedModel]) -> list[str]:
    """Every class name of the given models, in order, for the "explain this class" choice."""
    return list(dict.fromkeys(name for model in models for name in model.outputs))


def compare_models(
    predictor: Predictor,
    models: Sequence[str],
    images: Sequence[ImageItem],
    *,
    target: str | None = None,
    method: str = "Grad-CAM",
    opacity: float = 0.4,
    progress: Progress | None = None,
) -> Comparison:
    """Run 2-4 models, each with its own preprocessing, on the same images.

    Args:
        predictor: loads the models (once) and runs them.
        models: model names, folders or Hub ids (duplicates are dropped).
        images: the radiographs; a bad one fails its own row only.
        target: the class the maps explain where a model has it; None = each model's top class.
        method: a CAM method (`demo.cam.CAM_METHODS`).
        opacity: heatmap opacity in the overlays.
        progress: called with (fraction done, message) after every cell.

    Raises:
        ComparisonError: fewer than 2 or more than 4 models, or no images. A model that cannot be loaded
            is not an error: its column says why.
    """
    names = list(dict.fromkeys(m.strip() for m in models if m and m.strip()))
    if not MIN_MODELS <= len(names) <= MAX_MODELS:
        raise ComparisonError(
            f"pick {MIN_MODELS} to {MAX_MODELS} different models to compare; got {len(names)}"
        )
    columns = [Column(name=_column_name(predictor, name), model=name) for name in names]
    return _compare(predictor, "models", columns, images, target, method, opacity, progress)


def compare_preprocessing(
    predictor: Predictor,
    model: str,
    images: Sequence[ImageItem],
    *,
    variants: Sequence[str] = tuple(VARIANTS),
    target: str | None = None,
    method: str = "Grad-CAM",
    opacity: float = 0.4,
    progress: Progress | None = None,
) -> Comparison:
    """Run one model on the same images under several preprocessing variants (`VARIANTS`).

    Raises:
        ComparisonError: an unknown variant, or no images. A model that cannot be loaded fails every
            column.
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ComparisonError(f"unknown preprocessing variants {unknown}; valid: {', '.join(VARIANTS)}")
    columns = [Column(name=variant, model=model, toggles=VARIANTS[variant]) for variant in variants]
    return _compare(predictor, "preprocessing", columns, images, target, method, opacity, progress)


def _compare(
    predictor: Predictor,
    mode: Literal["models", "preprocessing"],
    columns: list[Column],
    images: Sequence[ImageItem],
    target: str | None,
    method: str,
    opacity: float,
    progress: Progress | None,
) -> Comparison:
    if not images:
        raise ComparisonError("no images to compare on: pick a folder, upload files or use the examples")
    report = progress or (lambda fraction, message: None)
    total = len(columns) * len(images) + len(images)
    done = 0
    reads: list[tuple[np.ndarray | None, str | None]] = []
    for item in images:  # once per image, so that a bad file is one error per row
        reads.append(_read(predictor, item))
        done += 1
        report(done / total, f"Reading {item.name}")

    loaded: list[LoadedModel | None] = []
    grid: list[list[Cell]] = []
    for index, column in enumerate(columns):
        model, error = _load(predictor, column.model)
        loaded.append(model)
        if model is None:
            columns[index] = Column(column.name, column.model, column.toggles, error=error)
            cells = [Cell(error=f"Model not loaded: {error}") for _ in images]
            done += len(images)
            report(done / total, f"{column.name}: not loaded")
        else:
            cells = []
            for item, (_, read_error) in zip(images, reads, strict=True):
                if read_error is not None:
                    cells.append(Cell(error=read_error))
                else:
                    cells.append(_cell(predictor, model, column, item, target, method, opacity))
                done += 1
                report(done / total, f"{column.name} on {item.name}")
            ran = next((cell.prediction.pipeline for cell in cells if cell.prediction is not None), None)
            columns[index] = dataclasses.replace(
                column,
                preprocessing=describe_pipeline(ran) if ran is not None else "",
                rule=_rule(model) if ran is not None else "",
                info=model.info,
            )
        grid.append(cells)

    outputs = {tuple(m.outputs) for m in loaded if m is not None}
    by_decision = len(outputs) == 1
    rows = []
    for i, item in enumerate(images):
        row_cells = tuple(grid[c][i] for c in range(len(columns)))
        answers = {cell.answer(by_decision) for cell in row_cells} - {None}
        thumbnail, read_error = reads[i]
        rows.append(Row(item, thumbnail, row_cells, disagree=len(answers) > 1, error=read_error))
    order = sorted(range(len(rows)), key=lambda i: not rows[i].disagree)  # stable: input order otherwise
    summaries = tuple(
        _summary(column, model, [row.cells[c] for row in rows], [row.image for row in rows])
        for c, (column, model) in enumerate(zip(columns, loaded, strict=True))
    )
    return Comparison(
        mode=mode,
        columns=tuple(columns),
        rows=tuple(rows[i] for i in order),
        summaries=summaries,
        target=target,
        method=method,
        agreement_by="decision" if by_decision else "abnormal",
    )


def _read(predictor: Predictor, item: ImageItem) -> tuple[np.ndarray | None, str | None]:
    try:
        xray: XRay = predictor.read(item.source)
    except ChexlabError as err:  # XRayReadError: empty, corrupt, too large, not an image
        return None, str(err)
    except Exception as err:  # a UI boundary: one bad file must not stop the comparison
        log.exception("reading %s failed", item.name)
        return (
            None,
            f"Cannot read {item.name}: an internal error ({type(err).__name__}), logged on the server",
        )
    return fit_to_input(xray.pixels, THUMBNAIL_SIDE), None


def _load(predictor: Predictor, name: str) -> tuple[LoadedModel | None, str | None]:
    try:
        return predictor.load(name), None
    except ChexlabError as err:  # ModelLoadError: unknown, missing, offline, pickle-only, not chexlab
        return None, str(err)
    except Exception as err:  # a bug, or weights that break the model: not the user's to fix
        log.exception("loading model %s failed", name)
        return None, internal_error(err)


def _column_name(predictor: Predictor, name: str) -> str:
    """A column's header: the model's name, or what was typed when it names no model."""
    try:
        return predictor.resolve(name).name
    except ChexlabError:
        return quote(name.strip())


def _cell(
    predictor: Predictor,
    model: LoadedModel,
    column: Column,
    item: ImageItem,
    target: str | None,
    method: str,
    opacity: float,
) -> Cell:
    own_target = target if target in model.outputs else None
    note = None
    if target is not None and own_target is None:
        note = f"{model.name} has no class '{target}': the map explains its top class"
    try:
        prediction = predictor.predict(
            item.source, model=column.model, toggles=column.toggles, method=method, target=own_target,
            opacity=opacity,
        )  # fmt: skip
    except ChexlabError as err:
        return Cell(error=str(err))
    except Exception as err:
        log.exception("%s on %s failed", column.name, item.name)
        return Cell(error=internal_error(err))
    check = prediction.check
    if prediction.withheld:  # the gate flagged the image: no decision to call right or wrong
        return Cell(_shrunk(prediction), note=note, check=check)
    truth = label_target(model.info, item.label)
    correct = None if truth is None else frozenset(prediction.decided) == _truth_set(model.info, truth)
    abnormal = _abnormal(model.info, prediction.decided)
    return Cell(_shrunk(prediction), abnormal=abnormal, correct=correct, note=note, check=check)


def _shrunk(prediction: Prediction, side: int = THUMBNAIL_SIDE) -> Prediction:
    """The prediction with its display images at `side` pixels: a grid holds up to 48 x 4 of them."""

    def small(image: np.ndarray) -> np.ndarray:
        return cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)

    after = small(prediction.after)
    return dataclasses.replace(
        prediction,
        before=small(prediction.before),
        after=after,
        overlay=overlay(after, prediction.heatmap, opacity=prediction.opacity),
    )


def _rule(model: LoadedModel) -> str:
    rule = model.describe()["decision"]
    if model.task.exclusive:
        return f"decides: {rule}"
    return f"threshold{'s' if len(model.info.thresholds) > 1 else ''}: {rule}"


def _is_normal(name: str) -> bool:
    return loose_key(name) in NORMAL_NAMES


def _outputs(info: ModelInfo) -> list[str]:
    return Task.parse(info.task).output_names(info.label_names, info.negative_name)


def _abnormal(info: ModelInfo, decided: Sequence[str]) -> bool | None:
    """Whether a decision calls the image abnormal (None: a multi-class model without a normal class)."""
    task, outputs = Task.parse(info.task), _outputs(info)
    if task.single_logit:
        positive = outputs[0]
        return decided[0] == positive if not _is_normal(positive) else decided[0] != positive
    if not has_abnormal_call(info):
        return None
    return any(not _is_normal(name) for name in decided)


def has_abnormal_call(info: ModelInfo) -> bool:
    """Whether the model tells normal from abnormal (not so: a multi-class model without a normal class)."""
    return not Task.parse(info.task).exclusive or any(_is_normal(name) for name in _outputs(info))


def abnormal_score(info: ModelInfo, probabilities: Mapping[str, float]) -> float | None:
    """A score for "abnormal" comparable across models, with the model's own call at exactly 0.5.

    Each probability is stretched piecewise-linearly so that its threshold lands on 0.5 (a monotone map:
    AUCs are unchanged); binary: the positive class's; multi-label: the highest over the findings, so the
    score reaches 0.5 when any finding reaches its threshold; multi-class: the best abnormal class against
    the normal one, m / (m + P(normal)), above 0.5 when an abnormal class wins. None: a multi-class model
    without a normal class, which has no abnormal call.
    """
    task, outputs = Task.parse(info.task), _outputs(info)
    if task.single_logit:
        positive = outputs[0]
        score = _stretched(probabilities[positive], info.thresholds[0])
        return 1.0 - score if _is_normal(positive) else score
    if task.exclusive:
        normal = next((name for name in outputs if _is_normal(name)), None)
        if normal is None:
            return None
        best = max(p for name, p in probabilities.items() if name != normal)
        total = best + probabilities[normal]
        return 0.5 if total <= 0 else best / total
    findings = [
        _stretched(probabilities[name], cut)
        for name, cut in zip(info.label_names, info.thresholds, strict=True)
        if not _is_normal(name)
    ]
    return max(findings, default=0.0)


def _stretched(p: float, threshold: float) -> float:
    """p mapped monotonically onto [0, 1] with `threshold` at 0.5."""
    if p < threshold:
        return 0.5 * p / threshold
    return 0.5 + (0.5 * (p - threshold) / (1.0 - threshold) if threshold < 1.0 else 0.0)


def label_abnormal(label: str | None) -> float | None:
    """A label as "abnormal?" (1.0 / 0.0): normal names are 0, any other label is 1; None = unlabelled."""
    names = {loose_key(part) for part in (label or "").split("|") if part.strip()}
    if not names:
        return None
    return 0.0 if all(name in NORMAL_NAMES for name in names) else 1.0


def label_target(info: ModelInfo, label: str | None) -> float | int | np.ndarray | None:
    """An image label as this model's target (the metrics' shapes), or None when the label does not map.

    Binary: 1/0 by the positive or negative name, a normal label is 0, and any other label is 1 when the
    positive class stands for any finding. Multi-class: the index of the class named. Multi-label: 0/1 per
    finding when the label names at least one of them (the rest then count as absent), zeros when normal.
    """
    if not label:
        return None
    names = {loose_key(part) for part in label.split("|") if part.strip()}
    normal = bool(names) and all(name in NORMAL_NAMES for name in names)
    task = Task.parse(info.task)
    keys = [loose_key(name) for name in info.label_names]
    if task.single_logit:
        negative = loose_key(_outputs(info)[1])
        if keys[0] in names:
            return 1.0
        if negative in names or (normal and negative in NORMAL_NAMES):
            return 0.0
        return 1.0 if keys[0] in ABNORMAL_NAMES and not normal else None
    if task.exclusive:
        for index, key in enumerate(keys):
            if key in names or (normal and key in NORMAL_NAMES):
                return index
        return None
    if normal:
        return np.zeros(len(keys), dtype=np.float32)
    hits = np.asarray([key in names for key in keys], dtype=np.float32)
    return hits if hits.any() else None


def _truth_set(info: ModelInfo, truth: float | int | np.ndarray) -> frozenset[str]:
    """The classes a correct decision names, for a target from `label_target`."""
    task = Task.parse(info.task)
    if task.single_logit:
        outputs = _outputs(info)
        return frozenset({outputs[0] if truth == 1 else outputs[1]})
    if task.exclusive:
        return frozenset({info.label_names[int(truth)]})
    hits = np.asarray(truth).reshape(-1)
    return frozenset(name for name, hit in zip(info.label_names, hits, strict=True) if hit == 1)


def _summary(
    column: Column, model: LoadedModel | None, cells: list[Cell], images: list[ImageItem]
) -> ColumnSummary:
    done = [(cell, image) for cell, image in zip(cells, images, strict=True) if cell.prediction is not None]
    withheld = sum(cell.withheld for cell, _ in done)
    calls = [cell.abnormal for cell, _ in done if cell.abnormal is not None]
    labelled = [(cell, image) for cell, image in done if cell.correct is not None]
    accuracy = float(np.mean([cell.correct for cell, _ in labelled])) if labelled else None
    scored = [(cell.prediction, image) for cell, image in labelled if cell.prediction is not None]
    return ColumnSummary(
        column=column.name,
        analysed=len(done),
        failed=len(cells) - len(done),
        withheld=withheld,
        abnormal_rate=float(np.mean(calls)) if calls else None,
        labelled=len(labelled),
        accuracy=accuracy,
        auc=_auc(model, scored) if model is not None and scored else None,
    )


def _auc(model: LoadedModel, labelled: list[tuple[Prediction, ImageItem]]) -> float | None:
    """The model's AUC on the labelled images (macro / mean over findings); None where undefined."""
    info = model.info
    targets = [label_target(info, image.label) for _, image in labelled]
    probs = [[pred.probabilities[name] for name in info.label_names] for pred, _ in labelled]
    try:
        metrics = evaluate_predictions(
            info.task,
            info.label_names,
            np.asarray(targets),
            np.asarray(probs, dtype=np.float64),
            None,
            None if model.task.exclusive else info.thresholds,
            negative_name=info.negative_name or "normal",
            n_bootstrap=0,
        )
    except ValueError as err:  # e.g. a single image: nothing to rank
        log.info("no AUC for %s: %s", model.name, err)
        return None
    return metrics["headline"]["auc"]["value"]


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.0f}%"


# ---------------------------------------------------------------------------------------------- exports


def to_csv(comparison: Comparison) -> str:
    """The comparison as CSV text: one line per image and column, a probability column per class."""
    classes = list(
        dict.fromkeys(
            name
            for row in comparison.rows
            for cell in row.cells
            if cell.prediction is not None
            for name in cell.prediction.probabilities
        )
    )
    header = [
        "image", "label", "column", "model", "preprocessing", "status", "decision", "abnormal", "correct",
        "disagree", "explained_class", "method", *(f"p_{name}" for name in classes), "notes",
    ]  # fmt: skip
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in comparison.rows:
        for column, cell in zip(comparison.columns, row.cells, strict=True):
            pred = cell.prediction
            probs = pred.probabilities if pred is not None else {}
            if pred is None:
                notes = [cell.error or "no result"]
            else:
                notes = [*([cell.note] if cell.note else []), *pred.warnings]
            writer.writerow([
                row.image.name,
                row.image.label or "",
                column.name,
                column.model,
                column.preprocessing,
                "ok" if pred is not None else "error",
                cell.decision,
                _yes_no(cell.abnormal),
                _yes_no(cell.correct),
                _yes_no(row.disagree),
                pred.target if pred is not None else "",
                comparison.method,
                *(f"{probs[name]:.4f}" if name in probs else "" for name in classes),
                " | ".join(notes),
            ])  # fmt: skip
    return buffer.getvalue()


def _yes_no(value: bool | None) -> str:
    return "" if value is None else "yes" if value else "no"


# The PNG grid: a header row of column names, then per image its thumbnail and one cell per column.
_WHITE, _INK, _MUTED, _RED, _GREEN, _AMBER = "#ffffff", "#1f2933", "#616e7c", "#c62828", "#2e7d32", "#fff4d6"


def grid_png(comparison: Comparison, *, side: int = 192) -> bytes:
    """The comparison as one PNG: a row per image, a column per model or variant, errors in place.

    Model cells show the CAM overlay; preprocessing cells show the image the variant produces beside it.
    """
    font = ImageFont.load_default(size=max(10, side // 14))
    bold = ImageFont.load_default(size=max(11, side // 12))
    line = int(font.size * 1.35)
    pair = comparison.mode == "preprocessing"
    cell_w = side * (2 if pair else 1) + 12
    first_w = side + 12
    text_lines = 6
    header_h = 3 * line + 12
    row_h = side + text_lines * line + 16
    footer_h = 2 * line + 12
    width = first_w + cell_w * len(comparison.columns)
    height = header_h + row_h * len(comparison.rows) + footer_h
    canvas = Image.new("RGB", (width, height), _WHITE)
    draw = ImageDraw.Draw(canvas)

    draw.text((6, 6), "image", font=bold, fill=_INK)
    for c, column in enumerate(comparison.columns):
        x = first_w + c * cell_w + 6
        draw.text((x, 6), _fit(column.name, cell_w, bold), font=bold, fill=_INK)
        if column.error:
            _wrapped(draw, (x, 6 + line + 2), f"not loaded: {column.error}", cell_w - 12, font, _RED, 2)
        else:
            draw.text((x, 6 + line + 2), _fit(f"prep: {column.preprocessing}", cell_w, font), font=font,
                      fill=_MUTED)  # fmt: skip
            draw.text((x, 6 + 2 * line + 2), _fit(column.rule, cell_w, font), font=font, fill=_MUTED)
    draw.line([(0, header_h - 2), (width, header_h - 2)], fill=_MUTED, width=1)

    for r, row in enumerate(comparison.rows):
        y = header_h + r * row_h
        if row.disagree:
            draw.rectangle([(0, y), (width, y + row_h - 1)], fill=_AMBER)
        if row.thumbnail is not None:
            canvas.paste(_gray(row.thumbnail, side), (6, y + 6))
        else:
            draw.rectangle([(6, y + 6), (6 + side, y + 6 + side)], fill="#fdecea", outline=_RED)
            draw.text((12, y + 12), "unreadable", font=font, fill=_RED)
        ty = y + side + 10
        draw.text((6, ty), _fit(row.image.name, first_w, font), font=font, fill=_INK)
        if row.image.label:
            draw.text((6, ty + line), _fit(f"label: {row.image.label}", first_w, font), font=font, fill=_INK)
        if row.disagree:
            draw.text((6, ty + 2 * line), "disagreement", font=bold, fill=_RED)
        for c, cell in enumerate(row.cells):
            x = first_w + c * cell_w + 6
            _draw_cell(canvas, draw, cell, (x, y + 6), side, pair, font, bold, line)
        draw.line([(0, y + row_h - 1), (width, y + row_h - 1)], fill="#d9dee3", width=1)

    fy = height - footer_h + 6
    target = comparison.target or "each model's top class"
    about = f"{comparison.method} for {target}. Shaded rows: the columns disagree."
    draw.text((6, fy), about, font=font, fill=_MUTED)
    disclaimer = DISCLAIMER.replace("**", "").replace("—", "-")  # the default font has no em dash
    draw.text((6, fy + line), _fit(disclaimer, width, font), font=font, fill=_RED)
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()


def _draw_cell(
    canvas: Image.Image,
    draw: ImageDraw.ImageDraw,
    cell: Cell,
    corner: tuple[int, int],
    side: int,
    pair: bool,
    font: ImageFont.FreeTypeFont,
    bold: ImageFont.FreeTypeFont,
    line: int,
) -> None:
    x, y = corner
    width = side * (2 if pair else 1)
    pred = cell.prediction
    if pred is None:
        draw.rectangle([(x, y), (x + width, y + side)], fill="#fdecea", outline=_RED)
        _wrapped(draw, (x + 6, y + 6), cell.error or "no result", width - 12, font, _RED, side // line - 1)
        return
    if pair:
        canvas.paste(_gray(pred.after, side), (x, y))
    heat = Image.fromarray(pred.overlay).resize((side, side), Image.Resampling.BILINEAR)
    canvas.paste(heat, (x + (side if pair else 0), y))
    ty = y + side + 4
    # The default font has no check marks: say it in words.
    verdict, colour = {True: (" (right)", _GREEN), False: (" (wrong)", _RED), None: ("", _INK)}[cell.correct]
    if cell.withheld:
        colour = _RED
    draw.text((x, ty), _fit(cell.decision + verdict, width, bold), font=bold, fill=colour)
    top = sorted(pred.probabilities.items(), key=lambda item: -item[1])[:2]
    for k, (name, p) in enumerate(top):
        draw.text((x, ty + (k + 1) * line), _fit(f"{name}: {p:.2f}", width, font), font=font, fill=_INK)
    for k, text in enumerate(cell.check_lines()):
        draw.text((x, ty + (3 + k) * line), _fit(text, width, font), font=font, fill=_MUTED)
    note = pred.verdict.warning if cell.withheld else cell.note
    if note:
        draw.text(
            (x, ty + 5 * line), _fit(note, width, font), font=font, fill=_RED if cell.withheld else _MUTED
        )


def _gray(image: np.ndarray, side: int) -> Image.Image:
    return Image.fromarray(as_uint8(image)).convert("RGB").resize((side, side), Image.Resampling.BILINEAR)


def _fit(text: str, width: int, font: ImageFont.FreeTypeFont) -> str:
    """`text` cut (with an ellipsis) to fit `width` pixels."""
    if font.getlength(text) <= width - 8:
        return text
    while text and font.getlength(text + "…") > width - 8:
        text = text[:-1]
    return text + "…"


def _wrapped(
    draw: ImageDraw.ImageDraw,
    corner: tuple[int, int],
    text: str,
    width: int,
    font: ImageFont.FreeTypeFont,
    fill: str,
    max_lines: int,
) -> None:
    chars = max(8, int(width / max(1.0, font.getlength("abcdefghij") / 10)))
    lines = textwrap.wrap(text, chars)[: max(1, max_lines)]
    for k, part in enumerate(lines):
        draw.text((corner[0], corner[1] + k * int(font.size * 1.35)), part, font=font, fill=fill)
