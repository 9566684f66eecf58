"""The Gradio app's event handlers: plain functions over an `App` (the predictor and the examples), testable
without a server.

`demo/gradio_ui.py` lays the page out and binds each handler to its `App` (`bind`). The panel's switches and
menus reach the handlers as keyword arguments named after `SETTINGS_FIELDS`, which are also the parameter
names of the `/predict` and `/explain` API endpoints; `Settings.from_inputs` turns them into one value.
Per-session state (the models a visitor loaded, the model last selected) lives in `gr.State` values the
handlers take and return, never in the shared predictor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from demo import methods
from demo.catalog import ModelCatalog
from demo.encoding import DISPLAY_SUFFIX, as_uint8, display_bytes, png_bytes
from demo.gallery import GalleryItem
from demo.histograms import IntensityHistogram, histogram_plot
from demo.methods import SLOW_METHODS
from demo.startup import Startup
from demo.switches import Toggles, describe_pipeline
from trainer.errors import ChexlabError, internal_error
from trainer.model_source import quote

if TYPE_CHECKING:  # the models' side (torch): this module serves the page before it is imported (app.py)
    from demo.activations import ActivationGrid
    from demo.heatmap_checks import HeatmapCheck
    from demo.predictor import LoadedModel, Prediction, Predictor

log = logging.getLogger(__name__)

__all__ = [
    "PREDICT_OUTPUTS",
    "SETTINGS_FIELDS",
    "TOGGLE_FIELDS",
    "TOP_CLASS",
    "App",
    "Example",
    "Settings",
    "bind",
]

TOP_CLASS = "Top class"
DEFAULT_METHOD = "Grad-CAM"
DEFAULT_OPACITY = 0.4
DOWNLOAD_DIR = Path(tempfile.gettempdir()) / "chexlab-demo"
DOWNLOADS_KEPT = 64  # our own PNG/CSV downloads; Gradio copies what it serves into its cache (delete_cache)
SESSION_MODELS = 8  # models a session keeps in its menu besides the offered ones
NO_IMAGE = "Upload a radiograph or pick an example to see the model's decision."
TOGGLE_FIELDS = tuple(field.name for field in dataclasses.fields(Toggles))
SETTINGS_FIELDS = (
    "use_model_preprocessing",
    *TOGGLE_FIELDS,
    "cam_method",
    "target_class",
    "opacity",
    "baseline",
    "steps",
)
# What /predict returns, in order (the API's outputs; gradio_ui lays out one component for each).
PREDICT_OUTPUTS = (
    "probabilities",
    "decision",
    "warning",
    "overlay",
    "download",
    "map_note",
    "before_after",
    "histograms",
    "notes",
    "model_notes",
    "details",
    "result",
)
# The API's /predict: the answer, the map as shown and what the model saw. Not the page's lossless copy of
# the map (/explain gives it) nor the grey-level chart (its numbers are in `result`): each file in a
# response is one more download for the client (about 50 ms each through gradio_client).
API_OUTPUTS = tuple(name for name in PREDICT_OUTPUTS if name not in ("download", "histograms"))
EXPLAIN_OUTPUTS = ("overlay", "download", "map_note", "result")
DEFAULT_BASELINE = "black"
DEFAULT_STEPS = 0  # 0 = the method's own default step count (the slider's "default" end)


@dataclass(frozen=True)
class Example:
    """One example a visitor can click: the operator's file and what the page calls it (its label first)."""

    path: Path
    caption: str

    @classmethod
    def of(cls, item: GalleryItem | Example | str | os.PathLike[str]) -> Example:
        """From a gallery item (its caption names the label), an Example, or a file (named by its name)."""
        if isinstance(item, Example):
            return item
        if isinstance(item, GalleryItem):
            return cls(item.path, item.caption)
        return cls(Path(item), Path(item).name)


@dataclass(frozen=True)
class App:
    """What every handler works with: the shared predictor (models, caches) and the operator's examples.

    The predictor may still be starting (app.py serves the page first and imports the models' side after);
    the catalog of offered models is known from the start.
    """

    startup: Startup
    gallery: tuple[Example, ...] = ()
    download_dir: Path = DOWNLOAD_DIR

    @classmethod
    def of(
        cls, predictor: Predictor, gallery: tuple[Example, ...] = (), download_dir: Path = DOWNLOAD_DIR
    ) -> App:
        """The app around a predictor that exists already."""
        return cls(Startup.of(predictor), gallery, download_dir)

    @property
    def catalog(self) -> ModelCatalog:
        return self.startup.catalog

    @property
    def predictor(self) -> Predictor:
        """The predictor; while it is starting, waits for it (and raises what stopped it from starting)."""
        return self.startup.predictor

    @property
    def examples(self) -> tuple[Path, ...]:
        """The example files, in gallery order."""
        return tuple(example.path for example in self.gallery)


@dataclass(frozen=True)
class Settings:
    """What the panel's switches and menus say for one request."""

    use_model_preprocessing: bool = True
    toggles: Toggles = Toggles()
    cam_method: str = DEFAULT_METHOD
    target_class: str = TOP_CLASS
    opacity: float = DEFAULT_OPACITY
    baseline: str = DEFAULT_BASELINE
    steps: int = DEFAULT_STEPS

    @classmethod
    def from_inputs(cls, values: Mapping[str, Any]) -> Settings:
        """From the handlers' keyword arguments (`SETTINGS_FIELDS`; missing ones keep their defaults)."""
        given = {name: values[name] for name in TOGGLE_FIELDS if values.get(name) is not None}
        if "clip_limit" in given:
            given["clip_limit"] = float(given["clip_limit"])
        default = cls()
        return cls(
            use_model_preprocessing=bool(values.get("use_model_preprocessing", True)),
            toggles=dataclasses.replace(Toggles(), **given),
            cam_method=values.get("cam_method") or default.cam_method,
            target_class=values.get("target_class") or default.target_class,
            opacity=float(values["opacity"]) if values.get("opacity") is not None else default.opacity,
            baseline=values.get("baseline") or default.baseline,
            steps=int(values["steps"]) if values.get("steps") is not None else default.steps,
        )

    @property
    def preprocessing(self) -> Toggles | None:
        """The switches to apply; None = the model's own preprocessing."""
        return None if self.use_model_preprocessing else self.toggles

    @property
    def target(self) -> str | None:
        return None if self.target_class in ("", TOP_CLASS) else self.target_class

    @property
    def attribution_steps(self) -> int | None:
        """The step count for Integrated Gradients / SmoothGrad; None = the method's default."""
        return self.steps if self.steps > 0 else None


def bind(handler: Callable[..., Any], app: App) -> Callable[..., Any]:
    """`handler` with `app` filled in, keeping its name and docstring (Gradio's API page shows them)."""
    bound = functools.partial(handler, app)
    bound.__name__ = handler.__name__  # type: ignore[attr-defined]
    bound.__doc__ = handler.__doc__
    return bound


def toggle_values(toggles: Toggles) -> list[Any]:
    """The switches' values in `TOGGLE_FIELDS` order (the order of their components)."""
    return [getattr(toggles, name) for name in TOGGLE_FIELDS]


# ----------------------------------------------------------------------------------------- analysis


def predict(app: App, file: str | None, model: str | None, **settings: Any) -> tuple[Any, ...]:
    """Classify one radiograph and explain the decision: the API's /predict, answered once, complete.

    Returns (`API_OUTPUTS`): the class probabilities, the decision in words, the out-of-distribution
    warning ("" when there is none), the heatmap overlay (JPEG), a note on the map with its checks, the
    (before, after) preprocessing images, notes on the image, notes on the model, the image details, and
    the result as data (decision, flag, reasons, OOD score, heatmap checks, grey levels).
    """
    result = analyse(app, file, model, Settings.from_inputs(settings))
    return _outputs(app, result, file, API_OUTPUTS)


def predict_in_stages(
    app: App, file: str | None, model: str | None, **settings: Any
) -> Iterator[tuple[Any, ...]]:
    """`predict` for the page (`PREDICT_OUTPUTS`), in two updates (`Predictor.predict_in_stages`):
    everything but the PNG download, the map's checks and the histograms as soon as the model has
    answered, then those. The API's /predict answers once, complete: a client would otherwise download the
    shown images twice.
    """
    for result in analyse_in_stages(app, file, model, Settings.from_inputs(settings)):
        yield _with_captions(_outputs(app, result, file, PREDICT_OUTPUTS))


def _with_captions(outputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """The page's outputs also set the probabilities' caption and whether the warning shows, in the same
    update as the answer: set by a later event, they would lag the numbers by the whole second stage."""
    named = dict(zip(PREDICT_OUTPUTS, outputs, strict=True))
    data = named["result"]
    named["probabilities"] = gr.update(value=named["probabilities"], label=probabilities_caption(data))
    named["warning"] = gr.update(value=named["warning"], visible=bool(data["flagged"]))
    return tuple(named.values())


def _outputs(app: App, result: Prediction, file: str | None, names: tuple[str, ...]) -> tuple[Any, ...]:
    """The outputs `names` of one prediction, each made only when asked for; what its first stage does not
    have yet is left as it is."""
    wanted = "download" in names and result.complete
    shown, download = save_overlay(app, result, file or "", download=wanted)
    make: dict[str, Callable[[], Any]] = {
        "probabilities": lambda: result.probabilities,
        "decision": lambda: result.decision,
        "warning": lambda: warning_markdown(result),
        "overlay": lambda: shown,
        "download": lambda: download if download is not None else gr.skip(),
        "map_note": lambda: cam_markdown(result),
        "before_after": lambda: save_before_after(app, result),
        "histograms": lambda: save_histograms(app, result) if result.complete else gr.skip(),
        "notes": lambda: notes_markdown(result),
        "model_notes": lambda: model_notes_markdown(result),
        "details": lambda: details_markdown(result),
        "result": lambda: result_data(result),
    }
    return tuple(make[name]() for name in names)


def explain(app: App, file: str | None, model: str | None, **settings: Any) -> tuple[Any, ...]:
    """The heatmap alone, for another class, method (CAM or pixel attribution) or opacity.

    Returns (`EXPLAIN_OUTPUTS`): the heatmap overlay, the overlay as a PNG file, a note on the map with its
    checks, and the result as data.
    """
    if not file:  # the explanation settings changed before any upload: nothing to explain yet
        return tuple(gr.skip() for _ in EXPLAIN_OUTPUTS)
    result = analyse(app, file, model, Settings.from_inputs(settings))
    shown, download = save_overlay(app, result, file)
    return shown, download, cam_markdown(result), result_data(result)


def rerun(app: App, file: str | None, model: str | None, **settings: Any) -> Iterator[tuple[Any, ...]]:
    """`predict` after a settings change: nothing to do before a file is there."""
    if not file:
        yield tuple(gr.skip() for _ in PREDICT_OUTPUTS)
        return
    yield from predict_in_stages(app, file, model, **settings)


def activations(
    app: App, file: str | None, model: str | None, layer: str | None, **settings: Any
) -> tuple[Any, ...]:
    """What the network sees: the most active channels of the first convolution and of a later block.

    Args:
        layer: the later block's module name (e.g. "blocks.3"); "" or None = the middle block.

    Returns the first convolution's grid, the later block's grid (PNG files) and a note on both.
    """
    if not file:
        raise gr.Error("Upload a radiograph first (or pick an example).", title="No image",
                       print_exception=False)  # fmt: skip
    chosen = Settings.from_inputs(settings)
    grids = _guarded(
        file,
        lambda: app.predictor.activations(
            file, model=model, toggles=chosen.preprocessing, layer=layer or None
        ),
    )
    first, later = grids[0], grids[-1]
    folder = save_files(app, {"first.png": png_bytes(first.image), "later.png": png_bytes(later.image)})
    return str(folder / "first.png"), str(folder / "later.png"), activations_markdown(grids)


def layer_menu(app: App, model: str | None, layer: str | None) -> dict[str, Any]:
    """The later-block menu for the model in use (models differ in their blocks), showing the block shown."""
    loaded = app.predictor.loaded(model)
    choices = layer_choices(loaded)
    valid = layer in {module for _, module in choices}
    return gr.update(choices=choices, value=layer if valid else default_layer(loaded))


def layer_choices(model: LoadedModel | None) -> list[tuple[str, str]]:
    """The later blocks a visitor can show (title, module name); the first convolution is always shown."""
    if model is None:
        return []
    return [(layer.title, layer.module) for layer in model.later_layers()]


def default_layer(model: LoadedModel | None) -> str | None:
    """The later block shown by default (the middle one)."""
    return None if model is None else model.default_later_layer().module


def activations_markdown(grids: Sequence[ActivationGrid]) -> str:
    lines = []
    for grid in grids:
        channels, height, width = grid.shape
        lines.append(
            f"- **{grid.layer.title}**: the {len(grid.channels)} most active of {channels} channels, each "
            f"{width}x{height} px at this layer"
        )
    return (
        "Each tile is one channel's feature map (bright = strong response), scaled to its own range, most "
        "active first. The first convolution responds to edges, gradients and textures; deeper blocks to "
        "larger patterns at a coarser grid.\n" + "\n".join(lines)
    )


def analyse(app: App, file: str | None, model: str | None, settings: Settings) -> Prediction:
    """`Predictor.predict` with every failure turned into a message for the user (never a stack trace).

    Raises:
        gr.Error: no file, no model, or the prediction failed (the message says why).
    """
    *_, complete = analyse_in_stages(app, file, model, settings)
    return complete


def analyse_in_stages(
    app: App, file: str | None, model: str | None, settings: Settings
) -> Iterator[Prediction]:
    """`Predictor.predict_in_stages`, failures turned into messages as in `analyse`."""
    if not file:
        raise gr.Error(
            "Upload a radiograph first (or pick an example).", title="No image", print_exception=False
        )
    if not model:
        raise gr.Error("No model is selected: load one in the Model panel.", title="No model",
                       print_exception=False)  # fmt: skip
    stages = _guarded(
        file,
        lambda: app.predictor.predict_in_stages(
            file,
            model=model,
            toggles=settings.preprocessing,
            method=settings.cam_method,
            target=settings.target,
            opacity=settings.opacity,
            baseline=settings.baseline,
            steps=settings.attribution_steps,
        ),
    )
    while (result := _guarded(file, lambda: next(stages, None))) is not None:
        yield result


def _guarded(file: str, run: Callable[[], Any]) -> Any:
    """`run()` with every failure turned into a `gr.Error` for the user (never a stack trace)."""
    try:
        return run()
    except ChexlabError as err:
        raise gr.Error(str(err), title="Cannot analyse this file", print_exception=False) from None
    except Exception as err:
        # The UI boundary: an unexpected failure must not show a stack trace or stop the server.
        log.exception("prediction failed for %s", file)
        raise gr.Error(
            f"Something went wrong while analysing this file: {internal_error(err)}. The demo is still "
            "running: try another file or model.",
            title="Unexpected error",
            print_exception=False,
        ) from None


def clear() -> tuple[Any, ...]:
    """Empty results while a new image is analysed, so that an error never sits beside old results."""
    analysing = gr.update(value="Analysing…", elem_classes=["chx-decision"])
    empty = {name: None for name in PREDICT_OUTPUTS}
    return tuple(
        {
            **empty,
            "probabilities": gr.update(value=None, label=PROBABILITIES),
            "decision": analysing,
            "warning": gr.update(value="", visible=False),
            "map_note": "",
            "notes": "",
            "model_notes": "",
            "details": "No image yet.",
        }.values()
    )


def cleared() -> str:
    return NO_IMAGE


def failed() -> dict[str, Any]:
    return gr.update(
        value="**No result**: the message in the corner says why. The demo is still running.",
        elem_classes=["chx-decision", "chx-failed"],
    )


def unmark() -> dict[str, Any]:
    """Drop the red mark a failure may have left on the decision."""
    return gr.update(elem_classes=["chx-decision"])


def slow_warning(method: str) -> None:
    if method in SLOW_METHODS:
        gr.Warning(f"{method} {SLOW_METHODS[method]}; expect a long wait.", title="Slow method")


def method_note(method: str, baseline: str, steps: float | None) -> tuple[dict[str, Any], ...]:
    """For a pixel attribution: what it shows, its baseline and step count, and its CPU time; then whether
    the baseline menu (Integrated Gradients only) and the step slider show."""
    if method not in methods.ATTRIBUTION_METHODS:
        return gr.update(value="", visible=False), gr.update(visible=False), gr.update(visible=False)
    count = int(steps or 0) or None
    return (
        gr.update(value=methods.describe(method, steps=count, baseline=baseline), visible=True),
        gr.update(visible=method == methods.INTEGRATED_GRADIENTS),
        gr.update(visible=True),
    )


# ------------------------------------------------------------------------------------- preprocessing


def use_own(app: App, model: str | None, use: bool, **toggles: Any) -> tuple[Any, ...]:
    """The checkbox sets the switches to the model's own pipeline (or leaves them as they are)."""
    loaded = app.predictor.loaded(model)
    current = Settings.from_inputs(toggles).toggles
    shown = Toggles.from_pipeline(loaded.info.pipeline) if (use and loaded) else current
    return (use, *toggle_values(shown), gr.update(**prep_status(loaded, use, shown)))


def switched(app: App, model: str | None, **toggles: Any) -> tuple[Any, ...]:
    """Touching a switch unticks "the model's own" unless the switches again amount to it."""
    loaded = app.predictor.loaded(model)
    current = Settings.from_inputs(toggles).toggles
    matches = loaded is not None and current == Toggles.from_pipeline(loaded.info.pipeline)
    return matches, gr.update(**prep_status(loaded, matches, current))


def prep_status(model: LoadedModel | None, use_model: bool, toggles: Toggles) -> dict[str, Any]:
    """The preprocessing status line: its text and its style (fine, or a warning)."""
    if model is None:
        return {"value": "", "elem_classes": ["chx-small"]}
    own = model.info.pipeline
    if use_model or toggles == Toggles.from_pipeline(own):
        return {
            "value": f"**The model's own preprocessing**: {describe_pipeline(own)}",
            "elem_classes": ["chx-ok"],
        }
    custom = toggles.to_pipeline(base=own)
    return {
        "value": f"**Custom preprocessing: {describe_pipeline(custom)}.** The model was trained with "
        f"{describe_pipeline(own)}; its outputs on images prepared differently were never validated.",
        "elem_classes": ["chx-warn"],
    }


# -------------------------------------------------------------------------------------------- models

STARTING = "Loading the default model…"


def start_page(app: App) -> tuple[Any, ...]:
    """The default model's side of a page built while the predictor was starting (`_Page.model_side`).

    Waits for the predictor. Returns updates for: the start-up error, the model menu, the previous model,
    the model summary, the class menu, each switch, the preprocessing status line and the block menu.
    """
    try:
        loaded, error = load_default(app)
    except Exception as err:  # the models' side did not start (logged by Startup): a bug, not the visitor's
        loaded, error = None, f"**The models could not be started**: {internal_error(err)}."
    own = Toggles.from_pipeline(loaded.info.pipeline) if loaded else Toggles()
    default = app.catalog.default if loaded else None
    return (
        gr.update(value=error or "", visible=error is not None),
        gr.update(value=default),
        default,
        model_markdown(loaded),
        gr.update(choices=target_choices(loaded), value=TOP_CLASS),
        *toggle_values(own),
        gr.update(**prep_status(loaded, True, own)),
        gr.update(choices=layer_choices(loaded), value=default_layer(loaded)),
    )


def load_default(app: App) -> tuple[LoadedModel | None, str | None]:
    """The default model (loaded once, `Startup.default_model`), or the message the page shows instead."""
    if app.catalog.default is None:
        return None, "**No model is configured.** Load a model from the Hub in the Model panel."
    try:
        return app.startup.default_model(), None
    except ChexlabError as err:
        if app.catalog.public:  # the reason may name the server's files
            return (
                None,
                "**The default model could not be loaded.** Load a model from the Hub in the Model panel.",
            )
        return None, (
            f"**The default model could not be loaded.** {err}  \nSet `CHEXLAB_DEFAULT_MODEL` to a model "
            "folder or a Hub id, or load a model from the Hub in the Model panel."
        )


def model_choices(app: App, session: Sequence[Sequence[str]]) -> list[tuple[str, str]]:
    """The model menu of one session: the offered models, then the ones this session loaded."""
    offered = [(name, name) for name in app.catalog.names()]
    return [*offered, *((name, key) for name, key in session)]


def choose_model(
    app: App,
    text: str | None,
    previous: str | None,
    session: list[list[str]],
    progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio recognises a tracker by its default)
) -> tuple[Any, ...]:
    """Load the model picked or typed (with progress) and reset the preprocessing to its own.

    A failure says why and puts the previous model back. A model that is not offered joins this session's
    menu only (`session`, a gr.State of [name, key] pairs), never another visitor's.

    Returns updates for: the menu, the previous model, the session's models, the model summary, the class
    menu, "use the model's own preprocessing", each switch, and the preprocessing status line.
    """
    skips = [gr.skip() for _ in range(6 + len(TOGGLE_FIELDS))]
    if not text or not text.strip():
        return gr.skip(), *skips
    progress(0.2, desc=f"Loading {quote(text.strip())}…")
    try:
        choice = app.predictor.resolve(text)
        loaded = app.predictor.load(choice.key)
    except ChexlabError as err:
        gr.Warning(str(err), title="Model not loaded", duration=None)
        return gr.update(value=previous), *skips
    except Exception as err:  # weights that break the model, or a bug: not the user's to fix
        log.exception("loading %s failed", text)
        gr.Warning(f"The model could not be loaded: {internal_error(err)}.", title="Model not loaded")
        return gr.update(value=previous), *skips
    if choice.key not in app.catalog.names():
        session = [entry for entry in session if entry[1] != choice.key][-(SESSION_MODELS - 1) :]
        session = [*session, [choice.name, choice.key]]
    toggles = Toggles.from_pipeline(loaded.info.pipeline)
    return (
        gr.update(choices=model_choices(app, session), value=choice.key),
        choice.key,
        session,
        model_markdown(loaded),
        gr.update(choices=target_choices(loaded), value=TOP_CLASS),
        True,
        *toggle_values(toggles),
        gr.update(**prep_status(loaded, True, toggles)),
    )


def target_choices(model: LoadedModel | None) -> list[str]:
    return [TOP_CLASS, *(model.outputs if model else [])]


def model_markdown(model: LoadedModel | None) -> str:
    if model is None:
        return "No model loaded."
    about = model.describe()
    return (
        f"**{model.name}**: `{about['architecture']}`, {about['task']}, {about['input']} input  \n"
        f"Classes: {about['classes']} · decision: {about['decision']}  \n"
        f"Trained with preprocessing: {about['preprocessing']}"
    )


# ------------------------------------------------------------------------------------------- results


PROBABILITIES = "Class probabilities"
HISTOGRAMS_TITLE = "Grey levels before / after preprocessing"


def probabilities_caption(data: Mapping[str, Any]) -> str:
    """The probabilities' caption, from a prediction's `result_data`: the thresholds the decision uses, or
    that the probabilities mean nothing for a flagged image, so that the panel never gives a second answer
    beside the decision."""
    if not data["probabilities_meaningful"]:
        return f"{PROBABILITIES}: not meaningful for this image (see the warning)"
    thresholds = data["thresholds"]
    if not thresholds:
        return f"{PROBABILITIES} (the decision is the most likely class)"
    cuts = ", ".join(f"{name} ≥ {cut:.2f}" for name, cut in thresholds.items())
    return f"{PROBABILITIES} (decision threshold: {cuts})"


def warning_markdown(result: Prediction) -> str:
    """The out-of-distribution warning with every reason; "" when the image is not flagged."""
    if not result.withheld:
        return ""
    reasons = "\n".join(f"- {reason[:1].upper()}{reason[1:]}." for reason in result.verdict.reasons)
    return (
        f"### ⚠ This image is not one the model can judge\n{reasons}\n\nThe decision is withheld; the "
        "probabilities below are shown for teaching only and are not meaningful for this image."
    )


def notes_markdown(result: Prediction) -> str:
    lines = [f"- {note}" for note in result.warnings]
    return ("**Notes**\n" + "\n".join(lines)) if lines else ""


def model_notes_markdown(result: Prediction) -> str:
    """The model's own limits (no calibration, no OOD statistics): quiet, beside the model's answer."""
    return f"About this model: {'; '.join(result.model_notes)}." if result.model_notes else ""


def cam_markdown(result: Prediction) -> str:
    """The map in words: method, class, the image it explains, its two checks, and the time taken.

    A flagged image gets no checks: on what is not a chest radiograph "the lung fields" mean nothing.
    """
    if result.withheld:
        checks = "Checks of the map: not shown, this image is not one the model can judge."
    elif result.check is None:
        checks = "Checking the map…"
    else:
        checks = check_markdown(result.check, result.target)
    return (
        f"{result.method} for **{result.target}** on the image the model saw "
        f"({result.model_input.shape[1]}x{result.model_input.shape[0]} px, preprocessing: "
        f"{describe_pipeline(result.pipeline)}). Red = strongest evidence. "
        f"Analysed in {result.seconds:.2f} s.\n\n{checks}"
    )


DROP_THRESHOLD = 0.05  # a probability change smaller than this counts as "hardly changes"


def check_markdown(check: HeatmapCheck, target: str) -> str:
    """The heatmap's two checks in sentences a teacher can point at."""
    lungs, deletion = check.lungs, check.deletion
    if lungs.share is None:
        on_lungs = f"Lung share: not measured, {lungs.note}."
    else:
        area = lungs.area or 0.0  # set whenever the share is
        verdict = "more than" if lungs.share > area else "no more than"
        on_lungs = (
            f"**{100 * lungs.share:.0f} %** of the map lies on the lung fields, whose box covers "
            f"{100 * area:.0f} % of the image (what an evenly spread map would get): "
            f"{verdict} chance."
        )
    removed = f"{100 * deletion.removed:.0f} %"
    if deletion.drop is None or deletion.after is None:
        deleted = f"Deletion check: not run (the map marks nothing, so there is no most salient {removed})."
    else:
        if deletion.drop >= DROP_THRESHOLD:
            meaning = "the map points at what the score rests on"
        elif deletion.drop <= -DROP_THRESHOLD:
            meaning = "the score rises, so the map does not mark evidence for this class"
        else:
            meaning = "the score hardly depends on what the map marks"
        deleted = (
            f"Removing the most salient {removed} of the image moves P({target}) from "
            f"{deletion.before:.2f} to **{deletion.after:.2f}**: {meaning}."
        )
    return f"**Check of this map.** {on_lungs} {deleted}"


def result_data(result: Prediction) -> dict[str, Any]:
    """The result as data (the JSON panel and the API): decision, flag, reasons, OOD score, map checks."""
    check = result.check
    lungs = check.lungs if check is not None else None
    deletion = check.deletion if check is not None else None
    return {
        "model": result.model,
        "decided": list(result.decided),
        "withheld": result.withheld,
        "flagged": result.verdict.flagged,
        "reasons": list(result.verdict.reasons),
        "ood_score": result.verdict.score,
        "probabilities": result.probabilities,
        "probabilities_meaningful": not result.withheld,
        "thresholds": result.thresholds,
        "model_notes": list(result.model_notes),
        "explanation": {
            "method": result.method,
            "target": result.target,
            # None while the checks run (the first of predict's two updates)
            "lung_share": lungs and lungs.share,
            "lung_box_share": lungs and lungs.area,
            "lung_note": lungs and lungs.note,
            "removed_fraction": deletion and deletion.removed,
            "score_before_removal": deletion and deletion.before,
            "score_after_removal": deletion and deletion.after,
            "score_drop": deletion and deletion.drop,
        },
        # the grey levels before and after preprocessing (None in predict's first update)
        "grey_levels": _grey_levels(result.histograms),
    }


def _grey_levels(histograms: tuple[IntensityHistogram, IntensityHistogram] | None) -> dict[str, Any] | None:
    """The grey levels before and after preprocessing as numbers; None until predict's second update."""
    if histograms is None:
        return None
    fields = ("mean", "std", "p1", "p50", "p99", "black", "white")
    return {
        name: {field: round(getattr(histogram, field), 4) for field in fields}
        for name, histogram in zip(("before", "after"), histograms, strict=True)
    }


def details_markdown(result: Prediction) -> str:
    def fields(items: dict[str, str]) -> str:
        return " · ".join(f"{key.replace('_', ' ').capitalize()} **{value}**" for key, value in items.items())

    text = f"**File**: {fields(result.image_info)}"
    # Size, photometric interpretation and bits are on the File line already.
    header = {k: v for k, v in result.header.items() if k not in ("size", "photometric", "bits_stored")}
    if header:
        text += f"\n\n**DICOM header** (acquisition fields only, no patient data): {fields(header)}"
    return text


def save_overlay(app: App, result: Prediction, file: str, *, download: bool = True) -> tuple[str, str | None]:
    """The overlay as two files: one to show (compact: `demo/encoding.py`), one to download (lossless PNG).

    Both are named after the upload, the method and the class; returns (shown, download) paths, download
    None when not asked for (its PNG encoding costs more than the rest of the response).
    """
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(file).stem)[:60] or "radiograph"
    method = result.method.replace("+", "plus").replace(" ", "")
    target = "".join(c if c.isalnum() else "_" for c in result.target)
    name = f"{stem}_{method}_{target}"
    # Separate folders: the shown file keeps its path when the download joins it (the page's second update),
    # so the browser does not fetch the same picture again.
    shown = save_files(app, {f"{name}{DISPLAY_SUFFIX}": display_bytes(result.overlay)})
    lossless = save_files(app, {f"{name}.png": png_bytes(result.overlay)}) if download else None
    return str(shown / f"{name}{DISPLAY_SUFFIX}"), str(lossless / f"{name}.png") if lossless else None


def save_histograms(app: App, result: Prediction) -> str:
    """The intensity histograms before and after preprocessing as one PNG chart (beside the slider)."""
    if result.histograms is None:
        raise ValueError("a prediction's histograms come with its second stage (Prediction.complete)")
    before, after = result.histograms
    labels = ("before", f"after {describe_pipeline(result.pipeline)}")
    chart = histogram_plot(before, after, labels=labels, title=HISTOGRAMS_TITLE)
    folder = save_files(app, {"histograms.png": png_bytes(chart)})
    return str(folder / "histograms.png")


def save_before_after(app: App, result: Prediction) -> tuple[str, str]:
    """The radiograph before and after preprocessing as files to show (for the before/after slider)."""
    before, after = f"before{DISPLAY_SUFFIX}", f"after{DISPLAY_SUFFIX}"
    folder = save_files(
        app, {before: display_bytes(as_uint8(result.before)), after: display_bytes(as_uint8(result.after))}
    )
    return str(folder / before), str(folder / after)


def save_files(app: App, files: Mapping[str, bytes]) -> Path:
    """Write files into a folder named by their content, each atomically; returns the folder.

    Results are served as files rather than arrays: Gradio rewrites an array's PNG in place in its cache,
    so two requests with the same result could serve each other a half-written file; a file it copies by
    renaming. Only the newest DOWNLOADS_KEPT folders are kept (Gradio serves its own copies).
    """
    folder = app.download_dir / hashlib.sha256(b"".join(files.values())).hexdigest()[:20]
    folder.mkdir(parents=True, exist_ok=True)
    for name, payload in files.items():
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{name}.", delete=False) as handle:
            handle.write(payload)
        os.replace(handle.name, folder / name)
    _prune(app.download_dir, DOWNLOADS_KEPT)
    return folder


def _prune(root: Path, keep: int) -> None:
    folders = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for folder in folders[keep:]:
        with contextlib.suppress(OSError):  # another request may be pruning or filling the same folder
            for item in folder.iterdir():
                item.unlink(missing_ok=True)
            folder.rmdir()
