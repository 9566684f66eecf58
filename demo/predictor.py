"""The demo's engine, shared by every UI: load chexlab models once, then predict and explain radiographs.

A `Predictor` holds the `ModelCatalog` (the models offered, and what a typed name means: see
`demo/catalog.py`), loads each model once (thread-safe, ready for CAM hooks) and turns an uploaded file into a
`Prediction`: class probabilities, the decision at the model's stored thresholds in plain words, a class
activation map from the same forward pass, the image before and after preprocessing (all from the model's
`InputTransform`), and every warning worth showing (from reading the file, from the preprocessing, and when
the preprocessing differs from the one the model was trained with). It keeps no per-user state: what one
user loads or selects never changes what another one sees.

Memory is bounded: images are read at most MAX_SIDE pixels on their longer side (in their stored bit depth),
and the caches of models, reads and results are small LRUs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from torch import nn

from demo.activations import (
    ActivationGrid,
    ActivationLayer,
    activation_grids,
    activation_layers,
    default_layers,
)
from demo.attributions import explain_attribution
from demo.cam import Explanation, explain, model_lock, prepare_for_cam
from demo.catalog import MODELS_DIR, ModelCatalog, ModelChoice
from demo.heatmap_checks import HeatmapCheck, check_heatmap
from demo.histograms import IntensityHistogram, compare_histograms
from demo.methods import ATTRIBUTION_METHODS, BASELINES, EXPLANATION_METHODS, MAX_STEPS, SLOW_METHODS
from demo.overlay import overlay
from demo.switches import Toggles, describe_pipeline
from trainer.errors import ChexlabError
from trainer.export import ModelInfo, load_model
from trainer.inference import DisplayedInput, InputTransform, judge
from trainer.io import MAX_PIXELS, XRay, load_xray
from trainer.model_source import ModelLoadError, ModelSource, SourceKind
from trainer.ood import Verdict, captured_features
from trainer.preprocess import LungSearch, Pipeline, find_lungs
from trainer.task import Task

log = logging.getLogger(__name__)

__all__ = [
    "DISPLAY_SIDE",
    "MAX_SIDE",
    "LoadedModel",
    "ModelLoadError",
    "Prediction",
    "Predictor",
    "RequestError",
]

DISPLAY_SIDE = 512  # before/after images and overlays are shown at least this large, whatever the model input
MAX_SIDE = 2048  # uploads are read at most this large (longer side): one request's memory stays bounded

Source = str | os.PathLike[str] | bytes | BinaryIO


class RequestError(ChexlabError, ValueError):
    """A prediction asked for with settings that do not exist (method, opacity, baseline, steps, layer)."""


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


@dataclass(eq=False)
class _Prepared:
    """One file's input for one model and pipeline, and what follows from that image alone, filled on first
    use: the same for every class and method explained on it (~45 ms of a class switch's ~200 ms)."""

    shown: DisplayedInput
    lungs: LungSearch | None = None  # find_lungs of the model input
    histograms: tuple[IntensityHistogram, IntensityHistogram] | None = None  # before / after preprocessing


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model ready to predict and explain, with what its config.json says about it."""

    name: str  # the name users know it by
    source: ModelSource
    model: nn.Module
    info: ModelInfo
    transform: InputTransform  # its own preprocessing, letterbox and normalisation

    @property
    def task(self) -> Task:
        return Task.parse(self.info.task)

    @property
    def outputs(self) -> list[str]:
        """The class names users see (binary: positive, negative)."""
        return self.task.output_names(self.info.label_names, self.info.negative_name)

    def target_index(self, target: str | None) -> int | None:
        """The `explain` target for a class name (None = the top class).

        Raises:
            TaskError: a name that is not one of `outputs`.
        """
        return None if target is None else self.task.class_index(self.outputs, target)

    def later_layers(self) -> list[ActivationLayer]:
        """The blocks after the first convolution whose activations can be shown (`demo.activations`)."""
        return activation_layers(self.model)[1:]

    def default_later_layer(self) -> ActivationLayer:
        """The later block shown by default (the middle one)."""
        return default_layers(self.model)[1]

    def describe(self) -> dict[str, str]:
        """A summary for the UI: architecture, task, input size, classes, thresholds, preprocessing."""
        info, size = self.info, self.transform.spec.size
        if self.task.exclusive:
            rule = "the most likely class"
        else:
            rule = ", ".join(
                f"{name} {t:.2f}" for name, t in zip(info.label_names, info.thresholds, strict=True)
            )
        return {
            "architecture": info.arch,
            "task": self.task.display_name,
            "input": f"{size}x{size}",
            "classes": ", ".join(self.outputs),
            "decision": rule,
            "preprocessing": describe_pipeline(info.pipeline),
        }


@dataclass(frozen=True, eq=False)
class Prediction:
    """Everything the demo shows for one image."""

    model: str
    probabilities: dict[str, float]  # class name -> probability (binary: positive and negative)
    decided: list[str]  # the classes asserted at the model's thresholds; empty when withheld (flagged)
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
    warnings: tuple[str, ...]  # about this image and its preprocessing
    verdict: Verdict  # the OOD gate's: a flagged image gets no decision
    # The extras, None in the first stage of `Predictor.predict_in_stages` (not computed yet):
    check: HeatmapCheck | None  # the heatmap's lung share and deletion drop (demo.heatmap_checks)
    histograms: tuple[IntensityHistogram, IntensityHistogram] | None  # grey levels before / after
    model_notes: tuple[str, ...]  # about the model itself: no calibration, no OOD statistics
    thresholds: dict[str, float]  # the decision threshold per class ({} when the decision is the top class)
    image_info: dict[str, str]  # format, size, bit depth, photometric, display window
    header: dict[str, str]  # the DICOM header summary ({} for other formats); never identifiers
    seconds: float  # server-side time for read + preprocess + forward + CAM (+ the extras, once computed)

    @property
    def withheld(self) -> bool:
        """Whether the decision is withheld: the image does not look like what the model was trained on."""
        return self.verdict.flagged

    @property
    def complete(self) -> bool:
        """Whether the extras (heatmap checks, histograms) are in."""
        return self.check is not None and self.histograms is not None

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


class Predictor:
    """Loads chexlab models once and predicts + explains radiographs with them; safe to share across threads.

    Args:
        models: the catalog, or the operator's models, name -> source (a `ModelSource`, a folder, or a
            string as `ModelCatalog.of` reads it).
        default: the name (or entry) selected at start; None = the first of `models`.
        public: public mode (see `demo/catalog.py`), for a mapping of models.
        device: where models run.
        max_pixels: the largest image (height x width) accepted, checked before decoding.
        max_side: images larger than this (longer side) are downscaled as they are read.
        max_models: loaded models kept in memory (least recently used ones beyond this are dropped; the
            default model is always kept).
        cache_size: recent predictions kept, so that changing only the opacity, or going back to a setting,
            needs no model run (0 disables it); the last two reads and prepared inputs are kept too, so that
            another class or CAM method runs neither the decoding nor the preprocessing again.
    """

    def __init__(
        self,
        models: ModelCatalog | Mapping[str, str | os.PathLike[str] | ModelSource],
        default: str | None = None,
        *,
        public: bool = False,
        device: str = "cpu",
        max_pixels: int = MAX_PIXELS,
        max_side: int | None = MAX_SIDE,
        max_models: int = 4,
        cache_size: int = 8,
    ) -> None:
        if isinstance(models, ModelCatalog):
            self.catalog = models
        else:
            self.catalog = ModelCatalog.of(models, default, public=public)
        self.device = device
        self.max_pixels = max_pixels
        self.max_side = max_side
        self._models = _LRU(max_models)
        self._results = _LRU(cache_size)
        self._reads = _LRU(min(cache_size, 2))
        # The prepared input (preprocessed, letterboxed, display views) per file, model and pipeline: another
        # class or CAM method runs the model again, never the preprocessing.
        self._prepared = _LRU(min(cache_size, 2))
        self._lock = threading.Lock()
        self._load_locks: dict[ModelSource, threading.Lock] = {}

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        models_dir: Path = MODELS_DIR,
        extra: tuple[str, ...] = (),
        public: bool | None = None,
        **kwargs: Any,
    ) -> Predictor:
        """The predictor the apps start with: `ModelCatalog.from_env` (same arguments); nothing loaded yet.

        A missing default model shows up as a clear `ModelLoadError` on first use.
        """
        catalog = ModelCatalog.from_env(environ, models_dir=models_dir, extra=extra, public=public)
        return cls(catalog, **kwargs)

    # ----------------------------------------------------------------------------------------- models

    @property
    def default(self) -> str | None:
        """The model selected at start (always kept loaded once it is)."""
        return self.catalog.default

    @property
    def public(self) -> bool:
        return self.catalog.public

    def choices(self) -> list[str]:
        """The model names offered, the default first (the same for every user)."""
        return self.catalog.names()

    def resolve(self, name: str) -> ModelChoice:
        """What a model name, Hub id or (local mode) folder means; see `ModelCatalog.resolve`."""
        return self.catalog.resolve(name)

    def load(self, name: str) -> LoadedModel:
        """The loaded model for a name, a Hub id or (local mode) a folder; loaded once, then cached.

        Raises:
            ModelLoadError: unknown or refused name, not found, offline without a cached copy, pickle-only
                weights, or not a chexlab model. Nothing changes then: models already loaded stay so.
        """
        choice = self.resolve(name)
        loaded = self._models.get(choice.source)
        if loaded is not None:
            return loaded
        with self._lock:
            lock = self._load_locks.setdefault(choice.source, threading.Lock())
        with lock:  # concurrent requests for the same model load it once
            loaded = self._models.get(choice.source)
            if loaded is None:
                started = time.perf_counter()
                model, info = self._load_model(choice)
                transform = InputTransform.for_model(info)
                loaded = LoadedModel(choice.name, choice.source, prepare_for_cam(model), info, transform)
                kept = self.catalog.offered.get(self.default or "")
                self._models.put(choice.source, loaded, keep=lambda source: source == kept)
                log.info("loaded model %s from %s in %.1f s", choice.name, choice.source,
                         time.perf_counter() - started)  # fmt: skip
        return loaded

    def _load_model(self, choice: ModelChoice) -> tuple[nn.Module, ModelInfo]:
        try:
            return load_model(choice.source, device=self.device)
        except ModelLoadError as err:
            if not (self.public and choice.source.kind is SourceKind.LOCAL):
                raise
            log.error("offered model %s: %s", choice.name, err)  # the reason names the server's files
            raise ModelLoadError(f"model {choice.name} could not be loaded (see the server's log)") from None

    def loaded(self, name: str | None) -> LoadedModel | None:
        """The model for a name if it is already loaded (never loads anything)."""
        if not name:
            return None
        try:
            return self._models.get(self.resolve(name).source)
        except ModelLoadError:
            return None

    # ----------------------------------------------------------------------------------------- images

    def read(self, source: Source) -> XRay:
        """Read a radiograph; cached briefly, so that new settings on the same file do not decode it again.

        Raises:
            XRayReadError: not a readable radiograph (empty, corrupt, too large, not an image).
        """
        return self._read(*_read_bytes(source), source)

    def _read(self, data: bytes | None, key: Hashable | None, source: Source) -> XRay:
        xray = self._reads.get(key) if key is not None else None
        if xray is None:
            xray = load_xray(
                data if data is not None else source, max_pixels=self.max_pixels, max_side=self.max_side
            )
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
        baseline: str = "black",
        steps: int | None = None,
    ) -> Prediction:
        """Predict and explain one radiograph, with the heatmap checks and histograms (`predict_in_stages`).

        Args:
            source: a file path, bytes or a binary file object (DICOM, PNG 8/16-bit, JPEG, TIFF, BMP).
            model: a model name from `choices()`, a Hub id or (local mode) a folder; None = the default.
            toggles: preprocessing switches; None = the model's own training preprocessing. Switches that
                amount to the model's pipeline run that pipeline exactly.
            method: a CAM method or a pixel attribution (`EXPLANATION_METHODS`).
            target: the class to explain (one of the model's class names); None = the top class.
            opacity: heatmap opacity in the overlay, 0-1.
            baseline: Integrated Gradients' reference image (`demo.methods.BASELINES`).
            steps: Integrated Gradients' path steps or SmoothGrad's noisy copies (1 to `MAX_STEPS`); None =
                the method's default. Ignored by the CAMs.

        Raises:
            XRayReadError: unreadable input. ModelLoadError: the model cannot be loaded.
            RequestError: an unknown method or baseline, an opacity outside [0, 1] or a step count out of
                range. TaskError: an unknown class.
        """
        *_, prediction = self.predict_in_stages(
            source, model=model, toggles=toggles, method=method, target=target, opacity=opacity,
            baseline=baseline, steps=steps,
        )  # fmt: skip
        return prediction

    def predict_in_stages(
        self,
        source: Source,
        *,
        model: str | None = None,
        toggles: Toggles | None = None,
        method: str = "Grad-CAM",
        target: str | None = None,
        opacity: float = 0.4,
        baseline: str = "black",
        steps: int | None = None,
    ) -> Iterator[Prediction]:
        """`predict` in two stages: the answer as soon as the model has given it, then the same prediction
        with its extras (the heatmap checks, two more model-sized steps, and the histograms of the full-size
        image), so that a page shows the probabilities, decision and map without waiting for them.

        Yields the first stage (`check` and `histograms` None), then the complete prediction; only the
        complete one when it was cached. Arguments and errors as `predict`; errors come from the first
        `next()`.
        """
        _check_request(method, opacity, baseline, steps)
        if method not in ATTRIBUTION_METHODS:
            baseline, steps = "black", None  # not used: one cache entry per CAM whatever they say
        name = model if model is not None else self.default
        if name is None:
            raise ModelLoadError("no model is offered: give one (a Hub id such as org/name, or a folder)")
        loaded = self.load(name)
        target_index = loaded.target_index(target)
        transform = loaded.transform.with_pipeline(_pipeline(loaded, toggles))
        data, file_key = _read_bytes(source)
        prepared_key = (file_key, loaded.source, transform.pipeline.to_json())  # source: also the input size
        key = (*prepared_key, method, target, baseline, steps)
        cached = self._results.get(key) if file_key is not None else None
        if cached is not None:
            yield cached.with_opacity(opacity)
            return
        started = time.perf_counter()
        xray = self._read(data, file_key, source)
        prepared = self._prepared.get(prepared_key) if file_key is not None else None
        if prepared is None:
            prepared = _Prepared(transform.display(xray.pixels, max(transform.spec.size, DISPLAY_SIDE)))
            if file_key is not None:
                self._prepared.put(prepared_key, prepared)
        shown = prepared.shown
        tensor = shown.seen.tensor.to(self.device)
        with captured_features(loaded.model) as features:  # the first forward pass is the plain one
            explanation = _explanation(loaded, tensor, target_index, method, baseline, steps)
        info, task = loaded.info, loaded.task
        judged = judge(info, explanation.probabilities, xray, features[0] if features else None)
        probs, decided = judged.probabilities, judged.decided
        explained = task.class_name(loaded.outputs, explanation.target_index)
        notes = [*xray.warnings, *shown.seen.warnings]
        if transform.pipeline != info.pipeline:
            notes.append(
                f"This model was trained with the preprocessing '{describe_pipeline(info.pipeline)}', but "
                f"this image went through '{describe_pipeline(transform.pipeline)}': its probabilities and "
                "thresholds were not validated for that, so read them with extra caution."
            )
        if method in SLOW_METHODS:
            notes.append(f"{method} {SLOW_METHODS[method]}.")
        if not explanation.heatmap.any():
            notes.append(
                f"{method} found no positive evidence for '{explained}' in this image: the map is empty."
            )
        prediction = Prediction(
            model=loaded.name,
            probabilities=task.class_probabilities(probs, info.label_names, info.negative_name),
            decided=decided,
            decision=_decision_text(loaded, probs, decided, judged.verdict),
            target=explained,
            method=method,
            heatmap=explanation.heatmap,
            model_input=shown.seen.image,
            before=shown.before,
            after=shown.after,
            overlay=overlay(shown.after, explanation.heatmap, opacity=opacity),
            opacity=opacity,
            pipeline=transform.pipeline,
            model_pipeline=info.pipeline,
            warnings=tuple(dict.fromkeys(notes)),
            verdict=judged.verdict,
            check=None,
            histograms=None,
            model_notes=tuple(dict.fromkeys([*info.notes, *filter(None, [judged.verdict.note])])),
            thresholds=_thresholds(loaded),
            image_info=_image_info(xray),
            header=dict(xray.header),
            seconds=time.perf_counter() - started,
        )
        yield prediction
        if prepared.lungs is None:  # concurrent requests may both compute it: the same value
            prepared.lungs = find_lungs(shown.seen.image)
        if prepared.histograms is None:
            prepared.histograms = compare_histograms(xray.pixels, shown.preprocessed)
        with model_lock(loaded.model):
            check = check_heatmap(
                loaded.model, shown.seen.image, tensor, explanation.heatmap, task=task,
                target_index=explanation.target_index, calibration=info.calibration,
                logits=explanation.logits, lungs=prepared.lungs,
            )  # fmt: skip
        prediction = dataclasses.replace(
            prediction, check=check, histograms=prepared.histograms, seconds=time.perf_counter() - started
        )
        if file_key is not None:
            self._results.put(key, prediction)
        yield prediction

    def activations(
        self,
        source: Source,
        *,
        model: str | None = None,
        toggles: Toggles | None = None,
        layer: str | None = None,
        top: int = 16,
    ) -> list[ActivationGrid]:
        """What the network sees: the most active channels of its first convolution and of a later block.

        Args:
            source, model, toggles: as for `predict`.
            layer: the later block, a module name from `activation_layers(model)` (e.g. "blocks.3"); None =
                the middle block.
            top: channels per grid.

        Raises:
            XRayReadError, ModelLoadError: as for `predict`. RequestError: a layer the model does not have.
        """
        name = model if model is not None else self.default
        if name is None:
            raise ModelLoadError("no model is offered: give one (a Hub id such as org/name, or a folder)")
        loaded = self.load(name)
        layers = activation_layers(loaded.model)
        first, middle = default_layers(loaded.model)
        chosen = middle if not layer else next((entry for entry in layers if entry.module == layer), None)
        if chosen is None:
            valid = ", ".join(entry.module for entry in layers[1:]) or first.module
            raise RequestError(f"this model has no layer {layer!r} to show; valid: {valid}")
        transform = loaded.transform.with_pipeline(_pipeline(loaded, toggles))
        seen = transform(self.read(source).pixels)
        shown = [first] if chosen == first else [first, chosen]
        return activation_grids(loaded.model, seen.tensor.to(self.device), shown, top=top)


def _check_request(method: str, opacity: float, baseline: str, steps: int | None) -> None:
    if method not in EXPLANATION_METHODS:
        raise RequestError(f"unknown explanation method {method!r}; valid: {', '.join(EXPLANATION_METHODS)}")
    if not 0.0 <= opacity <= 1.0:
        raise RequestError(f"opacity must be between 0 and 1, got {opacity}")
    if baseline not in BASELINES:
        raise RequestError(f"unknown baseline {baseline!r}; valid: {', '.join(BASELINES)}")
    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise RequestError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")


def _explanation(
    loaded: LoadedModel,
    tensor: Any,
    target_index: int | None,
    method: str,
    baseline: str,
    steps: int | None,
) -> Explanation:
    """A CAM (`demo.cam.explain`) or a pixel attribution (`demo.attributions.explain_attribution`)."""
    if method in ATTRIBUTION_METHODS:
        spec = loaded.transform.spec
        return explain_attribution(
            loaded.model, tensor, task=loaded.task, target_index=target_index, method=method, steps=steps,
            baseline=baseline, mean=spec.mean, std=spec.std,
        )  # fmt: skip
    return explain(loaded.model, tensor, task=loaded.task, target_index=target_index, method=method)


def _thresholds(loaded: LoadedModel) -> dict[str, float]:
    """The decision threshold per class name; {} for a multi-class model (its decision is the top class)."""
    if loaded.task.exclusive:
        return {}
    names = loaded.outputs[:1] if loaded.task.single_logit else loaded.info.label_names
    return {name: float(t) for name, t in zip(names, loaded.info.thresholds, strict=True)}


def _pipeline(loaded: LoadedModel, toggles: Toggles | None) -> Pipeline:
    """The pipeline to run: the model's own, unless the switches say something else."""
    own = loaded.info.pipeline
    if toggles is None or toggles == Toggles.from_pipeline(own):
        return own
    return toggles.to_pipeline(base=own)


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


def _decision_text(loaded: LoadedModel, probs: np.ndarray, decided: list[str], verdict: Verdict) -> str:
    """The decision in plain words, with the numbers and the thresholds behind it (or why it is withheld)."""
    if verdict.flagged:
        return (
            f"**No decision: {verdict.warning}.** The model can only judge images like the chest "
            "radiographs it was trained on; its probabilities for this image are not meaningful."
        )
    info, flat = loaded.info, np.asarray(probs, dtype=np.float64).reshape(-1)
    if loaded.task.single_logit:
        positive = loaded.outputs[0]
        p, cut = flat[0], info.thresholds[0]
        where = "at or above" if decided == [positive] else "below"
        return (
            f"**{_title(decided[0])}**: P({positive}) = {p:.2f}, {where} the model's threshold ({cut:.2f})."
        )
    if loaded.task.exclusive:
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
