"""The demo's engine, shared by every UI: load chexlab models once, then predict and explain radiographs.

A `Predictor` knows the models a user may pick (the folders under `demo/models/`, Hub ids listed in
`CHEXLAB_MODELS`, and any Hub id or folder typed later), loads each one once (thread-safe, ready for CAM
hooks), and turns an uploaded file into a `Prediction`: class probabilities, the decision at the model's
stored thresholds in plain words, a class activation map from the same forward pass, the image before and
after preprocessing, and every warning worth showing (from reading the file, from the preprocessing, and
when the preprocessing differs from the one the model was trained with).

Environment variables read by `Predictor.from_env` and `example_files`:
    CHEXLAB_DEFAULT_MODEL   the model selected at start: a name under demo/models, a folder, or a Hub id
                            (default: nih-binary)
    CHEXLAB_MODELS          more Hub ids to offer, comma-separated ("org/a,org/b")
    CHEXLAB_EXAMPLES        folders (or files) of example images, separated by os.pathsep
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from torch import nn

from demo.cam import CAM_METHODS, SLOW_METHODS, explain, overlay, prepare_for_cam
from trainer.export import ModelInfo, ModelLoadError, load_model
from trainer.inference import class_probabilities, decide, output_names, prepare_input
from trainer.io import MAX_PIXELS, XRay, load_xray
from trainer.preprocess import Pipeline
from trainer.transforms import InputSpec, fit_to_input

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MODEL_ENV",
    "EXAMPLES_ENV",
    "MODELS_DIR",
    "MODELS_ENV",
    "LoadedModel",
    "ModelLoadError",
    "Prediction",
    "Predictor",
    "Toggles",
    "builtin_example",
    "example_files",
]

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL_NAME = "nih-binary"
DEFAULT_MODEL_ENV = "CHEXLAB_DEFAULT_MODEL"
MODELS_ENV = "CHEXLAB_MODELS"
EXAMPLES_ENV = "CHEXLAB_EXAMPLES"
DISPLAY_SIDE = 512  # before/after images and overlays are shown at least this large, whatever the model input
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(@[\w./-]+)?$")

Source = str | os.PathLike | bytes | IO[bytes]


class _LRU:
    """A small thread-safe least-recently-used mapping (size 0 disables it)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Hashable, value: Any, keep: Callable[[Hashable], bool] = lambda key: False) -> None:
        with self._lock:
            if self.size <= 0:
                return
            self._items[key] = value
            self._items.move_to_end(key)
            for old in [k for k in self._items if not keep(k)][: max(0, len(self._items) - self.size)]:
                del self._items[old]


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to predict and explain, with what its config.json says about it."""

    name: str  # the name users pick it by
    source: str  # hf-hub:... or local-dir:...
    model: nn.Module
    info: ModelInfo
    spec: InputSpec
    outputs: list[str]  # class names users see (binary: positive, negative)

    def target_index(self, target: str | None) -> int | None:
        """The `explain` target for a class name (None = the top class).

        Raises:
            ValueError: a name that is not one of `outputs`.
        """
        if target is None:
            return None
        if target not in self.outputs:
            raise ValueError(
                f"unknown class {target!r} for model {self.name}; valid: {', '.join(self.outputs)}"
            )
        if self.info.task == "binary":  # explain's convention: 1 = the positive logit, 0 = its negation
            return 1 if target == self.outputs[0] else 0
        return self.outputs.index(target)

    def describe(self) -> dict[str, str]:
        """A summary for the UI: architecture, task, input size, classes, thresholds, preprocessing."""
        info = self.info
        if info.task == "multiclass":
            rule = "the most likely class"
        else:
            rule = ", ".join(
                f"{name} {t:.2f}" for name, t in zip(info.label_names, info.thresholds, strict=True)
            )
        return {
            "architecture": info.arch,
            "task": {"binary": "binary", "multiclass": "multi-class", "multilabel": "multi-label"}[info.task],
            "input": f"{self.spec.size}x{self.spec.size}",
            "classes": ", ".join(self.outputs),
            "decision": rule,
            "preprocessing": describe_pipeline(info.pipeline),
        }


@dataclass(frozen=True)
class Toggles:
    """The preprocessing switches a user can flip; `to_pipeline` orders them the way chexlab trains.

    Order: invert (so that bright = dense before any search), crops (so that intensity statistics come from
    the body, not the collimator margins), white balance, CLAHE.
    """

    clahe: bool = False
    clip_limit: float = 2.0
    white_balance: bool = False
    crop_body: bool = False
    crop_lungs: bool = False
    invert: bool = False

    ORDER = ("invert", "crop_body", "crop_lungs", "white_balance", "clahe")

    @classmethod
    def from_pipeline(cls, pipeline: Pipeline) -> Toggles:
        """The switches that reproduce `pipeline` as closely as switches can (other ops have no switch)."""
        ops = {step.op: dict(step.params) for step in pipeline}
        clip = ops.get("clahe", {}).get("clip_limit", cls.clip_limit)
        return cls(clip_limit=float(clip), **{name: name in ops for name in cls.ORDER})

    def to_pipeline(self, base: Pipeline | None = None) -> Pipeline:
        """The pipeline these switches stand for; parameters other than the clip limit come from `base`."""
        params = {step.op: dict(step.params) for step in (base or Pipeline())}
        steps = []
        for name in self.ORDER:
            if getattr(self, name):
                step = {"op": name, **params.get(name, {})}
                if name == "clahe":
                    step["clip_limit"] = self.clip_limit
                steps.append(step)
        return Pipeline.from_list(steps)


@dataclass(frozen=True, eq=False)
class Prediction:
    """Everything the demo shows for one image."""

    model: str
    probabilities: dict[str, float]  # class name -> probability (binary: positive and negative)
    decided: list[str]  # the classes asserted at the model's thresholds
    decision: str  # the decision in plain words (Markdown)
    target: str  # the class the heatmap explains
    method: str  # the CAM method
    heatmap: np.ndarray  # float32 (S, S) in [0, 1], aligned with model_input
    model_input: np.ndarray  # float32 (S, S): what the model saw (after preprocessing and letterbox)
    before: np.ndarray  # float32 (D, D): the radiograph as read, letterboxed like the model input
    after: np.ndarray  # float32 (D, D): the preprocessed radiograph at display size (same geometry)
    overlay: np.ndarray  # uint8 RGB (D, D, 3): the heatmap over `after`
    opacity: float
    pipeline: Pipeline  # the preprocessing that ran
    model_pipeline: Pipeline  # the preprocessing the model was trained with
    warnings: tuple[str, ...]
    image_info: dict[str, str]  # format, size, bit depth, photometric, display window
    header: dict[str, str]  # the DICOM header summary ({} for other formats); never identifiers
    seconds: float  # server-side time for read + preprocess + forward + CAM

    @property
    def custom_preprocessing(self) -> bool:
        return self.pipeline != self.model_pipeline

    def with_opacity(self, opacity: float) -> Prediction:
        """The same prediction with the overlay re-blended (no model run)."""
        if opacity == self.opacity:
            return self
        return dataclasses.replace(
            self, overlay=overlay(self.after, self.heatmap, opacity=opacity), opacity=opacity
        )


def describe_pipeline(pipeline: Pipeline) -> str:
    """A pipeline in words for people, e.g. "crop_body → clahe (clip 2.0)"; "none" when empty."""
    parts = []
    for step in pipeline:
        params = dict(step.params)
        parts.append(f"{step.op} (clip {params['clip_limit']:g})" if step.op == "clahe" else step.op)
    return " → ".join(parts) or "none"


class Predictor:
    """Loads chexlab models once and predicts + explains radiographs with them; safe to share across threads.

    Args:
        models: the choices offered, name -> source ("local-dir:PATH", "hf-hub:org/name", or a folder).
        default: the name (or source) selected at start; None = the first of `models`.
        device: where models run.
        max_pixels: the largest image (height x width) accepted, checked before decoding.
        max_models: loaded models kept in memory (least recently used ones beyond this are dropped; the
            default model is always kept).
        cache_size: recent predictions kept, so that changing only the opacity, or going back to a setting,
            needs no model run (0 disables it).
    """

    def __init__(
        self,
        models: Mapping[str, str | os.PathLike],
        default: str | None = None,
        *,
        device: str = "cpu",
        max_pixels: int = MAX_PIXELS,
        max_models: int = 4,
        cache_size: int = 8,
    ) -> None:
        self._sources = {name: str(source) for name, source in models.items()}
        if default is not None and default not in self._sources:
            name = self.name_for(default)
            self._sources = {name: str(default), **self._sources}
            default = name
        self.default = default if default is not None else next(iter(self._sources), None)
        self.current = self.default  # the last model selected successfully
        self.device = device
        self.max_pixels = max_pixels
        self._models = _LRU(max_models)
        self._results = _LRU(cache_size)
        self._reads = _LRU(min(cache_size, 2))
        self._lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}
        self._default_source: str | None = None  # known once the default model has loaded; never evicted

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, models_dir: Path = MODELS_DIR, **kwargs: Any
    ) -> Predictor:
        """The predictor the app starts with: embedded models, CHEXLAB_MODELS and CHEXLAB_DEFAULT_MODEL.

        Nothing is loaded yet; a missing default model shows up as a clear `ModelLoadError` on first use.
        """
        env = os.environ if environ is None else environ
        models: dict[str, str] = {}
        if models_dir.is_dir():
            for folder in sorted(models_dir.iterdir()):
                if (folder / "config.json").is_file():
                    models[folder.name] = f"local-dir:{folder}"
        default = env.get(DEFAULT_MODEL_ENV, "").strip() or DEFAULT_MODEL_NAME
        if default == DEFAULT_MODEL_NAME and default not in models:
            # Still offered, so that using it says which folder is missing instead of "unknown model".
            models = {default: f"local-dir:{models_dir / default}", **models}
        elif default in models:  # the default comes first in the list
            models = {default: models[default], **models}
        for hub_id in (part.strip() for part in env.get(MODELS_ENV, "").split(",")):
            if hub_id:
                models.setdefault(cls.name_for(hub_id), hub_id)
        return cls(models, default, **kwargs)

    # ----------------------------------------------------------------------------------------- models

    @staticmethod
    def name_for(source: str | os.PathLike) -> str:
        """The name a source is listed under: its Hub id, or its folder name."""
        text = str(source)
        for prefix in ("hf-hub:", "local-dir:"):
            if text.startswith(prefix):
                text = text[len(prefix) :]
                return text if prefix == "hf-hub:" else Path(text).name
        return text if _HUB_ID.match(text) and not Path(text).exists() else Path(text).name

    def choices(self) -> list[str]:
        """The model names offered, the default first."""
        with self._lock:
            return list(self._sources)

    def source_of(self, name: str) -> str:
        """The model source for a name, a Hub id (org/name) or a folder.

        Raises:
            ModelLoadError: none of those.
        """
        with self._lock:
            if name in self._sources:
                return _as_source(self._sources[name])
        text = name.strip()
        if text.startswith(("hf-hub:", "local-dir:")):
            return text
        if Path(text).is_dir():
            return f"local-dir:{text}"
        if _HUB_ID.match(text):
            return f"hf-hub:{text}"
        offered = ", ".join(self.choices()) or "none"
        raise ModelLoadError(
            f"unknown model '{name}': pick one of the offered models ({offered}), type a Hugging Face Hub id "
            "such as org/name, or give a model folder"
        )

    def load(self, name: str) -> LoadedModel:
        """The loaded model for a name, a Hub id or a folder; loads it the first time (then it is cached).

        A newly loaded Hub id or folder is added to `choices()`.

        Raises:
            ModelLoadError: unknown name, not found, offline without a cached copy, pickle-only weights, or
                not a chexlab model. Nothing changes then: earlier models stay loaded and selected.
        """
        name = name.strip()
        source = self.source_of(name)
        key = self.name_for(name) if name not in self._sources else name
        loaded = self._models.get(source)
        if loaded is not None:
            return loaded
        with self._lock:
            lock = self._load_locks.setdefault(source, threading.Lock())
        with lock:  # concurrent requests for the same model load it once
            loaded = self._models.get(source)
            if loaded is None:
                started = time.perf_counter()
                model, info = load_model(source, device=self.device)
                spec = InputSpec.from_data_config(info.data_config)
                outputs = output_names(info.task, info.label_names, info.negative_name)
                loaded = LoadedModel(key, source, prepare_for_cam(model), info, spec, outputs)
                if key == self.default:
                    self._default_source = source
                self._models.put(source, loaded, keep=lambda s: s == self._default_source)
                log.info("loaded model %s from %s in %.1f s", key, source, time.perf_counter() - started)
        with self._lock:
            self._sources.setdefault(key, source)
        return loaded

    def loaded(self, name: str | None) -> LoadedModel | None:
        """The model for a name if it is already loaded (never loads anything)."""
        if not name:
            return None
        try:
            return self._models.get(self.source_of(name))
        except ModelLoadError:
            return None

    def select(self, name: str) -> LoadedModel:
        """Load a model and make it the current one; on failure the current model stays (see `load`)."""
        loaded = self.load(name)
        self.current = loaded.name
        return loaded

    # ----------------------------------------------------------------------------------------- images

    def read(self, source: Source) -> XRay:
        """Read a radiograph; cached briefly, so that new settings on the same file do not decode it again.

        Raises:
            XRayReadError: not a readable radiograph (empty, corrupt, too large, not an image).
        """
        data, key = _read_bytes(source)
        xray = self._reads.get(key) if key is not None else None
        if xray is None:
            xray = load_xray(data if data is not None else source, max_pixels=self.max_pixels)
            if key is not None:
                self._reads.put(key, xray)
        return xray

    def predict(
        self,
        source: Source,
        *,
        model: str | None = None,
        toggles: Toggles | None = None,
        method: str = "Grad-CAM",
        target: str | None = None,
        opacity: float = 0.4,
    ) -> Prediction:
        """Predict and explain one radiograph.

        Args:
            source: a file path, bytes or a binary file object (DICOM, PNG 8/16-bit, JPEG, TIFF, BMP).
            model: a model name from `choices()`, a Hub id or a folder; None = the current model.
            toggles: preprocessing switches; None = the model's own training preprocessing. Switches that
                amount to the model's pipeline run that pipeline exactly.
            method: a CAM method (`CAM_METHODS`).
            target: the class to explain (one of the model's class names); None = the top class.
            opacity: heatmap opacity in the overlay, 0-1.

        Raises:
            XRayReadError: unreadable input. ModelLoadError: the model cannot be loaded.
            ValueError: an unknown method or class, or an opacity outside [0, 1].
        """
        if method not in CAM_METHODS:
            raise ValueError(f"unknown CAM method {method!r}; valid: {', '.join(CAM_METHODS)}")
        if not 0.0 <= opacity <= 1.0:
            raise ValueError(f"opacity must be between 0 and 1, got {opacity}")
        name = model if model is not None else self.current
        if name is None:
            raise ModelLoadError(
                "no model is selected: load one first (a Hub id such as org/name, or a folder)"
            )
        loaded = self.load(name)
        target_index = loaded.target_index(target)
        pipeline = self._pipeline(loaded, toggles)
        data, file_key = _read_bytes(source)
        key = (file_key, loaded.source, pipeline.to_json(), method, target)
        cached = self._results.get(key) if file_key is not None else None
        if cached is not None:
            return cached.with_opacity(opacity)
        started = time.perf_counter()
        xray = self.read(data if data is not None else source)
        result = pipeline.apply(xray.pixels)
        # The pipeline already ran: an empty one letterboxes and normalises exactly as prepare_input would.
        model_input = prepare_input(result.image, Pipeline(), loaded.spec)
        explanation = explain(
            loaded.model, model_input.tensor.to(self.device), task=loaded.info.task,
            target_index=target_index, method=method,
        )  # fmt: skip
        display = max(loaded.spec.size, DISPLAY_SIDE)
        after = model_input.image if display == loaded.spec.size else fit_to_input(result.image, display)
        info = loaded.info
        probs = class_probabilities(
            explanation.probabilities, info.task, info.label_names, info.negative_name
        )
        decided = decide(
            explanation.probabilities, info.task, info.label_names, info.thresholds, info.negative_name
        )
        if info.task == "binary":
            explained = loaded.outputs[0] if explanation.target_index == 1 else loaded.outputs[1]
        else:
            explained = loaded.outputs[explanation.target_index]
        notes = list(xray.warnings) + list(result.warnings)
        if pipeline != info.pipeline:
            notes.append(
                f"This model was trained with the preprocessing '{describe_pipeline(info.pipeline)}', but "
                f"this image went through '{describe_pipeline(pipeline)}': its probabilities and thresholds "
                "were not validated for that, so read them with extra caution."
            )
        if method in SLOW_METHODS:
            notes.append(f"{method} {SLOW_METHODS[method]}.")
        if not explanation.heatmap.any():
            notes.append(
                f"{method} found no positive evidence for '{explained}' in this image: the map is empty."
            )
        prediction = Prediction(
            model=loaded.name,
            probabilities=probs,
            decided=decided,
            decision=_decision_text(loaded, explanation.probabilities, decided),
            target=explained,
            method=method,
            heatmap=explanation.heatmap,
            model_input=model_input.image,
            before=fit_to_input(xray.pixels, display),
            after=after,
            overlay=overlay(after, explanation.heatmap, opacity=opacity),
            opacity=opacity,
            pipeline=pipeline,
            model_pipeline=info.pipeline,
            warnings=tuple(dict.fromkeys(notes)),
            image_info=_image_info(xray),
            header=dict(xray.header),
            seconds=time.perf_counter() - started,
        )
        if file_key is not None:
            self._results.put(key, prediction)
        return prediction

    @staticmethod
    def _pipeline(loaded: LoadedModel, toggles: Toggles | None) -> Pipeline:
        own = loaded.info.pipeline
        if toggles is None or toggles == Toggles.from_pipeline(own):
            return own
        return toggles.to_pipeline(base=own)


def _as_source(text: str) -> str:
    if text.startswith(("hf-hub:", "local-dir:")):
        return text
    if _HUB_ID.match(text) and not Path(text).exists():
        return f"hf-hub:{text}"
    return f"local-dir:{text}"


def _read_bytes(source: Source) -> tuple[bytes | None, Hashable | None]:
    """The source's bytes (when it is not a path) and a key identifying its content, for the caches."""
    if isinstance(source, str | os.PathLike):
        try:
            stat = Path(source).stat()
        except OSError:
            return None, None  # load_xray reports the missing file
        return None, (str(Path(source).resolve()), stat.st_size, stat.st_mtime_ns)
    if hasattr(source, "read"):
        source = source.read()
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        return data, hashlib.sha256(data).hexdigest()
    return None, None


def _image_info(xray: XRay) -> dict[str, str]:
    height, width = xray.original_size
    info = {
        "format": xray.source_format.upper(),
        "size": f"{width} x {height} px",
        "bit depth": f"{xray.bit_depth} bits",
        "photometric": xray.photometric,
    }
    if xray.window:
        info["display"] = xray.window  # e.g. "window center 15000, width 30000" or "VOI LUT ..."
    return info


def _decision_text(loaded: LoadedModel, probs: np.ndarray, decided: list[str]) -> str:
    """The decision in plain words, with the numbers and the thresholds behind it."""
    info, flat = loaded.info, np.asarray(probs, dtype=np.float64).reshape(-1)
    if info.task == "binary":
        positive = loaded.outputs[0]
        p, cut = flat[0], info.thresholds[0]
        where = "at or above" if decided == [positive] else "below"
        return (
            f"**{_title(decided[0])}**: P({positive}) = {p:.2f}, {where} the model's threshold ({cut:.2f})."
        )
    if info.task == "multiclass":
        top = int(flat.argmax())
        name = _title(info.label_names[top])
        return f"**{name}**: the most likely of {len(flat)} classes (P = {flat[top]:.2f})."
    above = {
        name: (p, t)
        for name, p, t in zip(info.label_names, flat, info.thresholds, strict=True)
        if name in decided
    }
    if above:
        items = ", ".join(f"{name} ({p:.2f} ≥ {t:.2f})" for name, (p, t) in above.items())
        return f"**{len(above)} finding{'s' if len(above) > 1 else ''} at or above threshold**: {items}."
    gaps = flat - np.asarray(info.thresholds)
    near = int(gaps.argmax())
    return (
        f"**No finding at or above its threshold.** Closest: {info.label_names[near]} "
        f"({flat[near]:.2f} vs a threshold of {info.thresholds[near]:.2f})."
    )


def _title(name: str) -> str:
    """A class name starting a sentence ("normal" -> "Normal"; "COVID-19" and "No_Finding" unchanged)."""
    return name[:1].upper() + name[1:]


# --------------------------------------------------------------------------------------------- examples


def builtin_example() -> Path | None:
    """The real chest radiograph shipped by the MIT-licensed `pydicom-data` package (a MONOCHROME1 CR).

    None when the package is not installed (nothing is downloaded).
    """
    try:
        from pydicom.data import get_testdata_file

        found = get_testdata_file("RG1_UNCR.dcm", download=False)
    except (ImportError, OSError, ValueError):
        return None
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def example_files(
    environ: Mapping[str, str] | None = None, *, per_folder: int = 4, limit: int = 9
) -> list[Path]:
    """Example radiographs: the built-in DICOM, then images from the CHEXLAB_EXAMPLES folders or files.

    Args:
        environ: where to read CHEXLAB_EXAMPLES (default: os.environ); entries are separated by os.pathsep.
        per_folder: images taken from each folder (sorted by name; a folder without images at its top level
            is searched one level down, one image per subfolder first).
        limit: examples in all.
    """
    env = os.environ if environ is None else environ
    found = [path for path in [builtin_example()] if path is not None]
    for entry in (part.strip() for part in env.get(EXAMPLES_ENV, "").split(os.pathsep)):
        if entry:
            found.extend(_images_in(Path(entry).expanduser(), per_folder))
    return list(dict.fromkeys(found))[:limit]


def _images_in(path: Path, count: int) -> Iterable[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        log.warning("%s=%s: no such file or folder", EXAMPLES_ENV, path)
        return []
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if images:
        return images[:count]
    # A folder of datasets (dataset/images/*.png): spread the picks across datasets.
    nested = [
        sorted(p for p in sub.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        for sub in sorted(path.iterdir())
    ]
    picks = [
        image for rank in range(count) for images in nested if rank < len(images) for image in [images[rank]]
    ]
    return picks[:count]
