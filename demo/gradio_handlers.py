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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from demo.cam import SLOW_METHODS
from demo.encoding import DISPLAY_SUFFIX, display_bytes, png_bytes
from demo.predictor import (
    USER_ERRORS,
    LoadedModel,
    Prediction,
    Predictor,
    Toggles,
    as_uint8,
    describe_pipeline,
    internal_error,
)
from trainer.model_source import quote

log = logging.getLogger(__name__)

__all__ = ["SETTINGS_FIELDS", "TOGGLE_FIELDS", "TOP_CLASS", "App", "Settings", "bind"]

TOP_CLASS = "Top class"
DEFAULT_METHOD = "Grad-CAM"
DEFAULT_OPACITY = 0.4
DOWNLOAD_DIR = Path(tempfile.gettempdir()) / "chexlab-demo"
DOWNLOADS_KEPT = 64  # our own PNG/CSV downloads; Gradio copies what it serves into its cache (delete_cache)
SESSION_MODELS = 8  # models a session keeps in its menu besides the offered ones
NO_IMAGE = "Upload a radiograph or pick an example to see the model's decision."
TOGGLE_FIELDS = tuple(field.name for field in dataclasses.fields(Toggles))
SETTINGS_FIELDS = ("use_model_preprocessing", *TOGGLE_FIELDS, "cam_method", "target_class", "opacity")
PREDICT_OUTPUTS = 8  # probabilities, decision, overlay, download, before/after, notes, details, map note


@dataclass(frozen=True)
class App:
    """What every handler works with: the shared predictor (models, caches) and the operator's examples."""

    predictor: Predictor
    examples: tuple[Path, ...] = ()
    download_dir: Path = DOWNLOAD_DIR


@dataclass(frozen=True)
class Settings:
    """What the panel's switches and menus say for one request."""

    use_model_preprocessing: bool = True
    toggles: Toggles = Toggles()
    cam_method: str = DEFAULT_METHOD
    target_class: str = TOP_CLASS
    opacity: float = DEFAULT_OPACITY

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
        )

    @property
    def preprocessing(self) -> Toggles | None:
        """The switches to apply; None = the model's own preprocessing."""
        return None if self.use_model_preprocessing else self.toggles

    @property
    def target(self) -> str | None:
        return None if self.target_class in ("", TOP_CLASS) else self.target_class


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
    """Classify one radiograph and explain the decision.

    Returns the class probabilities, the decision in words, the heatmap overlay, the overlay as a PNG file,
    the (before, after) preprocessing images, warnings, the image details and a note on the map.
    """
    result = analyse(app, file, model, Settings.from_inputs(settings))
    shown, download = save_overlay(app, result, file or "")
    return (
        result.probabilities,
        result.decision,
        shown,
        download,
        save_before_after(app, result),
        notes_markdown(result),
        details_markdown(result),
        cam_markdown(result),
    )


def explain(app: App, file: str | None, model: str | None, **settings: Any) -> tuple[Any, ...]:
    """The class activation map alone, for another class, method or opacity.

    Returns the heatmap overlay, the overlay as a PNG file and a note on the map.
    """
    if not file:  # the explanation settings changed before any upload: nothing to explain yet
        return gr.skip(), gr.skip(), gr.skip()
    result = analyse(app, file, model, Settings.from_inputs(settings))
    shown, download = save_overlay(app, result, file)
    return shown, download, cam_markdown(result)


def rerun(app: App, file: str | None, model: str | None, **settings: Any) -> tuple[Any, ...]:
    """`predict` after a settings change: nothing to do before a file is there."""
    if not file:
        return tuple(gr.skip() for _ in range(PREDICT_OUTPUTS))
    return predict(app, file, model, **settings)


def analyse(app: App, file: str | None, model: str | None, settings: Settings) -> Prediction:
    """`Predictor.predict` with every failure turned into a message for the user (never a stack trace).

    Raises:
        gr.Error: no file, no model, or the prediction failed (the message says why).
    """
    if not file:
        raise gr.Error(
            "Upload a radiograph first (or pick an example).", title="No image", print_exception=False
        )
    if not model:
        raise gr.Error("No model is selected: load one in the Model panel.", title="No model",
                       print_exception=False)  # fmt: skip
    try:
        return app.predictor.predict(
            file,
            model=model,
            toggles=settings.preprocessing,
            method=settings.cam_method,
            target=settings.target,
            opacity=settings.opacity,
        )
    except USER_ERRORS as err:
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
    return None, analysing, None, None, None, "", "No image yet.", ""


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


def load_default(app: App) -> tuple[LoadedModel | None, str | None]:
    """The default model, loaded at start, or the message the page shows instead."""
    predictor = app.predictor
    if predictor.default is None:
        return None, "**No model is configured.** Load a model from the Hub in the Model panel."
    try:
        return predictor.load(predictor.default), None
    except USER_ERRORS as err:
        log.error("default model %s: %s", predictor.default, err)
        if predictor.public:  # the reason may name the server's files
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
    offered = [(name, name) for name in app.predictor.choices()]
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
    except USER_ERRORS as err:
        gr.Warning(str(err), title="Model not loaded", duration=None)
        return gr.update(value=previous), *skips
    except Exception as err:  # weights that break the model, or a bug: not the user's to fix
        log.exception("loading %s failed", text)
        gr.Warning(f"The model could not be loaded: {internal_error(err)}.", title="Model not loaded")
        return gr.update(value=previous), *skips
    if choice.key not in app.predictor.choices():
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


def notes_markdown(result: Prediction) -> str:
    lines = [f"- {note}" for note in result.warnings]
    return ("**Notes**\n" + "\n".join(lines)) if lines else ""


def cam_markdown(result: Prediction) -> str:
    return (
        f"{result.method} for **{result.target}** on the image the model saw "
        f"({result.model_input.shape[1]}x{result.model_input.shape[0]} px, preprocessing: "
        f"{describe_pipeline(result.pipeline)}). Red = strongest evidence. "
        f"Analysed in {result.seconds:.2f} s."
    )


def details_markdown(result: Prediction) -> str:
    def fields(items: dict[str, str]) -> str:
        return " · ".join(f"{key.replace('_', ' ').capitalize()} **{value}**" for key, value in items.items())

    text = f"**File**: {fields(result.image_info)}"
    # Size, photometric interpretation and bits are on the File line already.
    header = {k: v for k, v in result.header.items() if k not in ("size", "photometric", "bits_stored")}
    if header:
        text += f"\n\n**DICOM header** (acquisition fields only, no patient data): {fields(header)}"
    return text


def save_overlay(app: App, result: Prediction, file: str) -> tuple[str, str]:
    """The overlay as two files: one to show (compact: `demo/encoding.py`), one to download (PNG).

    Both are named after the upload, the method and the class; returns (shown, download) paths.
    """
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(file).stem)[:60] or "radiograph"
    method = result.method.replace("+", "plus").replace(" ", "")
    target = "".join(c if c.isalnum() else "_" for c in result.target)
    name = f"{stem}_{method}_{target}"
    shown, download = f"{name}{DISPLAY_SUFFIX}", f"{name}.png"
    folder = save_files(app, {shown: display_bytes(result.overlay), download: png_bytes(result.overlay)})
    return str(folder / shown), str(folder / download)


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
