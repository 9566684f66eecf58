"""The Gradio demo: upload a chest radiograph; see the model's probabilities, decision and where it looked.

`build_demo(predictor)` builds the app and has no side effects at import; `app.py` wires the default predictor
into it and launches it with `launch_options()` (Gradio 6 takes theme and CSS at launch). The same events
serve the browser and the API: `/predict` (everything for one image) and `/explain` (only the class
activation map, for another class, method or opacity), both usable from `gradio_client`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from demo.cam import CAM_METHODS, SLOW_METHODS
from demo.comparison import DISCLAIMER as COMPARE_DISCLAIMER
from demo.comparison import (
    MAX_MODELS,
    MIN_MODELS,
    VARIANTS,
    class_options,
    compare_models,
    compare_preprocessing,
    grid_png,
    images_from_paths,
    to_csv,
)
from demo.predictor import (
    LoadedModel,
    ModelLoadError,
    Prediction,
    Predictor,
    Toggles,
    builtin_example,
    describe_pipeline,
    example_files,
)

log = logging.getLogger(__name__)

__all__ = ["TOP_CLASS", "build_demo", "launch_options"]

TOP_CLASS = "Top class"
DEFAULT_METHOD = "Grad-CAM"
DEFAULT_OPACITY = 0.4
# Every event that runs a model shares one concurrency group, so that at most CONCURRENCY run at once (the
# default Space has 2 vCPUs); more requests wait in the queue, up to QUEUE_SIZE.
MODEL_RUNS = "model"
CONCURRENCY = 2
QUEUE_SIZE = 32
MAX_FILE_SIZE = "100mb"  # an uncompressed 16-bit CR is 10-30 MB; load_xray also caps the pixel count
DOWNLOAD_DIR = Path(tempfile.gettempdir()) / "chexlab-demo"
DOWNLOADS_KEPT = 64

DISCLAIMER = (
    "**Research and teaching demo — not a medical device.** The output is not a diagnosis and must not "
    "guide the care of any patient."
)
INTRO = (
    "Upload a chest radiograph (DICOM, PNG 8/16-bit, JPEG, TIFF or BMP) or pick an example. The model gives "
    "class probabilities and a decision at its validated threshold, and a class activation map shows which "
    "regions drove the score. Toggle the preprocessing to see what it does to the image the model sees."
)
API_NOTE = (
    "Everything here is also an API: `/predict` and `/explain`, usable from `gradio_client` (see "
    '"Use via API" at the bottom of the page).'
)
CSS = """
.chx-header h1 { font-size: 1.9rem; margin: 0 0 .2rem 0; }
.chx-header p { margin: 0; color: var(--body-text-color-subdued); max-width: 60rem; }
.block.chx-disclaimer { border: 1px solid #f0b429 !important; background: #fff8e1; color: #5c4400;
  border-radius: 8px; padding: .55rem .9rem !important; }
.chx-disclaimer p { margin: 0; }
.dark .block.chx-disclaimer { background: #3d3000; color: #ffe08a; border-color: #8a6d00 !important; }
.block.chx-decision { border: 1px solid var(--border-color-primary) !important; border-left: 6px solid
  var(--color-accent) !important; background: var(--block-background-fill); border-radius: 8px;
  padding: .8rem 1rem !important; font-size: 1.15rem; }
.chx-decision p { margin: 0; }
.block.chx-decision.chx-failed { border-left-color: #e5484d !important; }
.chx-notes { font-size: .92rem; }
.chx-notes ul { margin: .2rem 0 0 0; }
.block.chx-error { border: 1px solid #e5484d !important; background: #fff0f0; color: #7a1116;
  border-radius: 8px; padding: .6rem .9rem !important; }
.dark .block.chx-error { background: #3b0d0f; color: #ffb3b5; }
.block.chx-ok, .block.chx-warn { border-radius: 6px; padding: .4rem .7rem !important; font-size: .9rem; }
.block.chx-ok { background: #ecfdf3; color: #05603a; }
.block.chx-warn { background: #fff8e1; color: #5c4400; border: 1px solid #f0b429 !important; }
.dark .block.chx-ok { background: #053321; color: #a6f4c5; }
.dark .block.chx-warn { background: #3d3000; color: #ffe08a; }
.chx-small { font-size: .88rem; color: var(--body-text-color-subdued); }
.chx-switches label { white-space: nowrap; }
.chx-footer { font-size: .85rem; color: var(--body-text-color-subdued); text-align: center; }
"""


def launch_options() -> dict[str, Any]:
    """Keyword arguments for `demo.launch()`: theme, CSS and the upload size limit."""
    theme = gr.themes.Soft(primary_hue="blue", secondary_hue="sky", neutral_hue="slate")
    return {"theme": theme, "css": CSS, "max_file_size": MAX_FILE_SIZE}


def build_demo(predictor: Predictor, *, examples: Sequence[str | Path] | None = None) -> gr.Blocks:
    """The Gradio app around `predictor`.

    Args:
        predictor: loads the models and runs them; its default model is loaded here (a failure is shown in
            the app, which still starts so that another model can be loaded).
        examples: example files; None = `example_files()` (the built-in DICOM plus CHEXLAB_EXAMPLES).

    Returns:
        The Blocks app, queued for a small CPU machine (two requests at a time).
    """
    startup_error = None
    loaded: LoadedModel | None = None
    if predictor.default is not None:
        try:
            loaded = predictor.select(predictor.default)
        except ModelLoadError as err:
            startup_error = (
                f"**The default model could not be loaded.** {err}  \nSet `CHEXLAB_DEFAULT_MODEL` to a model "
                "folder or a Hub id, or load a model from the Hub in the Model panel."
            )
            log.error("default model %s: %s", predictor.default, err)
    own = Toggles.from_pipeline(loaded.info.pipeline) if loaded else Toggles()
    example_paths = [Path(p) for p in (example_files() if examples is None else examples)]

    with gr.Blocks(title="chexlab · chest X-ray demo", delete_cache=(3600, 3600)) as demo:
        model_state = gr.State(loaded.name if loaded else None)
        gr.Markdown(f"# chexlab — chest X-ray classifier\n{INTRO}", elem_classes="chx-header")
        gr.Markdown(DISCLAIMER, elem_classes="chx-disclaimer", elem_id="disclaimer")
        gr.Markdown(startup_error or "", visible=startup_error is not None, elem_classes="chx-error")

        with gr.Row(equal_height=False):
            # ---------------------------------------------------------------- inputs
            with gr.Column(scale=5, min_width=340):
                with gr.Tabs():
                    with gr.Tab("Upload a file"):
                        file = gr.File(
                            label="Radiograph: DICOM, PNG (8/16-bit), JPEG, TIFF or BMP",
                            type="filepath",
                            height=150,
                            elem_id="upload",
                        )
                    with gr.Tab("Paste an image"):
                        pasted = gr.Image(
                            label="Pasted image",
                            sources=["clipboard", "upload"],
                            type="filepath",
                            image_mode=None,
                            height=220,
                            elem_id="paste",
                        )
                        gr.Markdown(
                            "Copy an image, then press the clipboard button. Pasted images are 8-bit: upload "
                            "DICOM and 16-bit files in the other tab to keep their full range.",
                            elem_classes="chx-small",
                        )
                analyse = gr.Button("Analyse", variant="primary", elem_id="analyse")
                examples_block = gr.Column()

                with gr.Accordion("Model", open=True):
                    model_dd = gr.Dropdown(
                        predictor.choices(),
                        value=loaded.name if loaded else None,
                        label="Model",
                        allow_custom_value=True,
                        elem_id="model",
                    )
                    model_info = gr.Markdown(_model_markdown(loaded), elem_classes="chx-small")
                    hub_id = gr.Textbox(
                        label="Another model from the Hugging Face Hub",
                        placeholder="org/name of a chexlab model, then Enter",
                        submit_btn="Load",
                    )

                with gr.Accordion("Preprocessing", open=True):
                    use_model = gr.Checkbox(True, label="Use the model's own preprocessing (as trained)")
                    with gr.Row(elem_classes="chx-switches"):
                        crop_body = gr.Checkbox(own.crop_body, label="Body crop", min_width=110)
                        crop_lungs = gr.Checkbox(own.crop_lungs, label="Lung crop", min_width=110)
                        invert = gr.Checkbox(own.invert, label="Invert", min_width=110)
                    with gr.Row(elem_classes="chx-switches"):
                        white_balance = gr.Checkbox(own.white_balance, label="White balance", min_width=110)
                        clahe = gr.Checkbox(own.clahe, label="CLAHE", min_width=110)
                        gr.HTML(min_width=110)  # an empty cell keeps the grid of the row above
                    clip_limit = gr.Slider(
                        0.5, 10.0, value=own.clip_limit, step=0.5, label="CLAHE clip limit",
                        info="Higher = stronger local contrast (only with CLAHE on)",
                    )  # fmt: skip
                    prep_note = gr.Markdown(**_prep_status(loaded, True, own))

                gr.Markdown(API_NOTE, elem_classes="chx-small")

            # ---------------------------------------------------------------- results
            with gr.Column(scale=7, min_width=420):
                decision = gr.Markdown(
                    "Upload a radiograph or pick an example to see the model's decision.",
                    label="Decision",
                    elem_classes="chx-decision",
                    elem_id="decision",
                )
                with gr.Row(equal_height=False):
                    with gr.Column(scale=5, min_width=260):
                        heatmap = gr.Image(
                            label="Heatmap: where the model looked",
                            format="png",
                            type="numpy",
                            interactive=False,
                            buttons=["fullscreen"],
                            height=380,
                            elem_id="heatmap",
                        )
                        cam_note = gr.Markdown(label="Map note", elem_classes="chx-small", elem_id="cam-note")
                    with gr.Column(scale=4, min_width=220):
                        # No heading: the top class can differ from the decision at the model's threshold.
                        label = gr.Label(
                            label="Class probabilities",
                            num_top_classes=6,
                            show_heading=False,
                            elem_id="probabilities",
                        )
                        method = gr.Dropdown(
                            [
                                (f"{name} (slow)" if name in SLOW_METHODS else name, name)
                                for name in CAM_METHODS
                            ],
                            value=DEFAULT_METHOD,
                            label="Explanation method",
                        )
                        target = gr.Dropdown(
                            _target_choices(loaded),
                            value=TOP_CLASS,
                            label="Explain the class",
                            allow_custom_value=True,  # API calls may name another model's classes
                        )
                        opacity = gr.Slider(
                            0.0, 1.0, value=DEFAULT_OPACITY, step=0.05, label="Heatmap opacity"
                        )
                        download = gr.DownloadButton("Download overlay (PNG)", size="md", elem_id="download")
                notes = gr.Markdown(label="Notes", elem_classes="chx-notes", elem_id="notes")
                before_after = gr.ImageSlider(
                    label="Before / after preprocessing",
                    format="png",
                    type="numpy",
                    interactive=False,
                    max_height=520,
                    elem_id="before-after",
                )
                with gr.Accordion("Image details (DICOM header summary, no identifiers)", open=True):
                    details = gr.Markdown("No image yet.", label="Image details", elem_id="details")
        gr.Markdown(
            "chexlab is open-source research software. " + DISCLAIMER.replace("**", ""),
            elem_classes="chx-footer",
        )

        settings = [use_model, clahe, clip_limit, white_balance, crop_body, crop_lungs, invert]
        predict_inputs = [file, model_dd, *settings, method, target, opacity]
        predict_outputs = [label, decision, heatmap, download, before_after, notes, details, cam_note]
        explain_outputs = [heatmap, download, cam_note]

        def predict(
            file: str | None,
            model: str | None,
            use_model_preprocessing: bool,
            clahe: bool,
            clip_limit: float,
            white_balance: bool,
            crop_body: bool,
            crop_lungs: bool,
            invert: bool,
            cam_method: str = DEFAULT_METHOD,
            target_class: str = TOP_CLASS,
            opacity: float = DEFAULT_OPACITY,
        ) -> tuple:
            """Classify one radiograph and explain the decision.

            Returns the class probabilities, the decision in words, the heatmap overlay, the overlay as a PNG
            file, the (before, after) preprocessing images, warnings, the image details and a note on the map.
            """
            toggles = Toggles(clahe, clip_limit, white_balance, crop_body, crop_lungs, invert)
            result = _run(
                predictor, file, model, use_model_preprocessing, toggles, cam_method, target_class, opacity
            )
            return (
                result.probabilities,
                result.decision,
                result.overlay,
                _download(result, file),
                (_uint8(result.before), _uint8(result.after)),
                _notes_markdown(result),
                _details_markdown(result),
                _cam_markdown(result),
            )

        def explain_only(
            file: str | None,
            model: str | None,
            use_model_preprocessing: bool,
            clahe: bool,
            clip_limit: float,
            white_balance: bool,
            crop_body: bool,
            crop_lungs: bool,
            invert: bool,
            cam_method: str = DEFAULT_METHOD,
            target_class: str = TOP_CLASS,
            opacity: float = DEFAULT_OPACITY,
        ) -> tuple:
            """The class activation map alone, for another class, method or opacity.

            Returns the heatmap overlay, the overlay as a PNG file and a note on the map.
            """
            if not file:  # the explanation settings changed before any upload: nothing to explain yet
                return gr.skip(), gr.skip(), gr.skip()
            toggles = Toggles(clahe, clip_limit, white_balance, crop_body, crop_lungs, invert)
            result = _run(
                predictor, file, model, use_model_preprocessing, toggles, cam_method, target_class, opacity
            )
            return result.overlay, _download(result, file), _cam_markdown(result)

        def clear() -> tuple:
            analysing = gr.update(value="Analysing…", elem_classes=["chx-decision"])
            return None, analysing, None, None, None, "", "No image yet.", ""

        def failed() -> dict:
            return gr.update(
                value="**No result**: the message in the corner says why. The demo is still running.",
                elem_classes=["chx-decision", "chx-failed"],
            )

        def predict_if_file(file: str | None, *args: Any) -> tuple:
            """`predict` after a settings change: nothing to do before a file is there."""
            return predict(file, *args) if file else tuple(gr.skip() for _ in predict_outputs)

        # Uploading (or pasting) runs everything; the old results are cleared first, so that an error never
        # sits next to the previous image's results.
        run_event = gr.on(
            [file.upload, analyse.click],
            clear,
            outputs=predict_outputs,
            queue=False,
            api_visibility="private",
        ).then(predict, predict_inputs, predict_outputs, api_name="predict", concurrency_id=MODEL_RUNS)
        run_event.failure(failed, outputs=decision, queue=False, api_visibility="private")
        pasted.upload(lambda path: path, pasted, file, queue=False, api_visibility="private").then(
            clear, outputs=predict_outputs, queue=False, api_visibility="private"
        ).then(
            predict, predict_inputs, predict_outputs, concurrency_id=MODEL_RUNS, api_visibility="private"
        ).failure(failed, outputs=decision, queue=False, api_visibility="private")
        file.clear(clear, outputs=predict_outputs, queue=False, api_visibility="private").then(
            lambda: "Upload a radiograph or pick an example to see the model's decision.",
            outputs=decision,
            queue=False,
            api_visibility="private",
        )
        # A cached example sets the results without `clear`: drop the red mark a failure may have left.
        file.change(
            lambda: gr.update(elem_classes=["chx-decision"]),
            outputs=decision,
            queue=False,
            api_visibility="private",
        )

        gr.on(
            [method.input, target.input, opacity.release],
            explain_only,
            predict_inputs,
            explain_outputs,
            api_name="explain",
            trigger_mode="always_last",
            concurrency_id=MODEL_RUNS,
        )
        method.input(_slow_warning, method, queue=False, api_visibility="private")

        # Preprocessing: the checkbox sets the switches to the model's pipeline; touching a switch unticks it
        # (unless the switches again amount to the model's pipeline).
        def use_own(name: str | None, use: bool, *current: Any) -> tuple:
            model = predictor.loaded(name)
            toggles = Toggles.from_pipeline(model.info.pipeline) if (use and model) else _toggles(*current)
            return (use, *_toggle_values(toggles), gr.update(**_prep_status(model, use, toggles)))

        def switched(name: str | None, *current: Any) -> tuple:
            model = predictor.loaded(name)
            toggles = _toggles(*current)
            matches = model is not None and toggles == Toggles.from_pipeline(model.info.pipeline)
            return matches, gr.update(**_prep_status(model, matches, toggles))

        switches = [clahe, clip_limit, white_balance, crop_body, crop_lungs, invert]
        rerun = dict(
            fn=predict_if_file,
            inputs=predict_inputs,
            outputs=predict_outputs,
            concurrency_id=MODEL_RUNS,
            api_visibility="private",
        )
        use_model.input(
            use_own,
            [model_dd, use_model, *switches],
            [use_model, *switches, prep_note],
            api_visibility="private",
        ).then(**rerun, trigger_mode="always_last")
        gr.on(
            [
                clahe.input,
                white_balance.input,
                crop_body.input,
                crop_lungs.input,
                invert.input,
                clip_limit.release,
            ],
            switched,
            [model_dd, *switches],
            [use_model, prep_note],
            api_visibility="private",
        ).then(**rerun, trigger_mode="always_last")

        # Models: choosing one loads it (with progress) and resets the preprocessing to its own; a failure
        # says why and puts the previous model back.
        # Gradio recognises a progress tracker by its default value.
        def choose_model(
            name: str | None,
            previous: str | None,
            progress: gr.Progress = gr.Progress(),  # noqa: B008
        ) -> tuple:
            if not name:
                return tuple(gr.skip() for _ in model_outputs)
            progress(0.2, desc=f"Loading {name}…")
            try:
                model = predictor.load(name)
            except ModelLoadError as err:
                gr.Warning(str(err), title="Model not loaded", duration=None)
                return gr.update(value=previous), *(gr.skip() for _ in model_outputs[1:])
            toggles = Toggles.from_pipeline(model.info.pipeline)
            return (
                gr.update(choices=predictor.choices(), value=model.name),
                model.name,
                _model_markdown(model),
                gr.update(choices=_target_choices(model), value=TOP_CLASS),
                True,
                *_toggle_values(toggles),
                gr.update(**_prep_status(model, True, toggles)),
            )

        model_outputs = [model_dd, model_state, model_info, target, use_model, *switches, prep_note]
        loading = dict(
            fn=choose_model, outputs=model_outputs, concurrency_id="load", show_progress_on=model_info
        )
        model_dd.input(inputs=[model_dd, model_state], **loading, api_visibility="private").then(**rerun)
        hub_id.submit(inputs=[hub_id, model_state], **loading, api_visibility="private").then(**rerun)

        # Examples set the dropdown without a user's input: keep the model summary and classes in step.
        def show_model(name: str | None) -> tuple:
            model = predictor.loaded(name)
            return _model_markdown(model), gr.update(choices=_target_choices(model))

        model_dd.change(show_model, model_dd, [model_info, target], queue=False, api_visibility="private")

        if example_paths:
            with examples_block:
                defaults = [DEFAULT_METHOD, TOP_CLASS, DEFAULT_OPACITY]
                gr.Examples(
                    [[str(p), model_dd.value, True, *_toggle_values(own), *defaults] for p in example_paths],
                    inputs=predict_inputs,
                    outputs=predict_outputs,
                    fn=predict,
                    cache_examples=loaded is not None,
                    cache_mode="lazy",
                    run_on_click=True,
                    example_labels=[_example_label(p) for p in example_paths],
                    label="Examples (click one)",
                    examples_per_page=9,
                )
    with demo.route("Compare", "/compare"):
        _comparison_tab(predictor, example_paths)
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    return demo


# --------------------------------------------------------------------------------------------- helpers


def _run(
    predictor: Predictor,
    file: str | None,
    model: str | None,
    use_model_preprocessing: bool,
    toggles: Toggles,
    method: str,
    target: str | None,
    opacity: float,
) -> Prediction:
    """predictor.predict with every failure turned into a message for the user (never a stack trace)."""
    if not file:
        raise gr.Error(
            "Upload a radiograph first (or pick an example).", title="No image", print_exception=False
        )
    if not model:
        raise gr.Error(
            "No model is loaded: load one in the Model panel.", title="No model", print_exception=False
        )
    try:
        return predictor.predict(
            file,
            model=model,
            toggles=None if use_model_preprocessing else toggles,
            method=method,
            target=None if target in (None, "", TOP_CLASS) else target,
            opacity=float(opacity),
        )
    except (
        ValueError
    ) as err:  # XRayReadError, PreprocessError, ModelLoadError and bad settings are ValueErrors
        raise gr.Error(str(err), title="Cannot analyse this file", print_exception=False) from None
    except Exception as err:
        # The UI boundary: an unexpected failure must not show a stack trace or stop the server.
        log.exception("prediction failed for %s", file)
        raise gr.Error(
            f"Something went wrong while analysing this file ({type(err).__name__}). The demo is still "
            "running: try another file or model.",
            title="Unexpected error",
            print_exception=False,
        ) from None


def _slow_warning(method: str) -> None:
    if method in SLOW_METHODS:
        gr.Warning(f"{method} {SLOW_METHODS[method]}; expect a long wait.", title="Slow method")


def _toggles(
    clahe: bool, clip_limit: float, white_balance: bool, crop_body: bool, crop_lungs: bool, invert: bool
) -> Toggles:
    return Toggles(clahe, float(clip_limit), white_balance, crop_body, crop_lungs, invert)


def _toggle_values(toggles: Toggles) -> list[Any]:
    """In the order of the UI's switches: CLAHE, clip limit, white balance, body crop, lung crop, invert."""
    return [
        toggles.clahe,
        toggles.clip_limit,
        toggles.white_balance,
        toggles.crop_body,
        toggles.crop_lungs,
        toggles.invert,
    ]


def _target_choices(model: LoadedModel | None) -> list[str]:
    return [TOP_CLASS, *(model.outputs if model else [])]


def _model_markdown(model: LoadedModel | None) -> str:
    if model is None:
        return "No model loaded."
    about = model.describe()
    return (
        f"**{model.name}**: `{about['architecture']}`, {about['task']}, {about['input']} input  \n"
        f"Classes: {about['classes']} · decision: {about['decision']}  \n"
        f"Trained with preprocessing: {about['preprocessing']}"
    )


def _prep_status(model: LoadedModel | None, use_model: bool, toggles: Toggles) -> dict[str, Any]:
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


def _notes_markdown(result: Prediction) -> str:
    lines = [f"- {note}" for note in result.warnings]
    return ("**Notes**\n" + "\n".join(lines)) if lines else ""


def _cam_markdown(result: Prediction) -> str:
    return (
        f"{result.method} for **{result.target}** on the image the model saw "
        f"({result.model_input.shape[1]}x{result.model_input.shape[0]} px, preprocessing: "
        f"{describe_pipeline(result.pipeline)}). Red = strongest evidence. "
        f"Analysed in {result.seconds:.2f} s."
    )


def _details_markdown(result: Prediction) -> str:
    def fields(items: dict[str, str]) -> str:
        return " · ".join(f"{key.replace('_', ' ').capitalize()} **{value}**" for key, value in items.items())

    text = f"**File**: {fields(result.image_info)}"
    # Size, photometric interpretation and bits are on the File line already.
    header = {k: v for k, v in result.header.items() if k not in ("size", "photometric", "bits_stored")}
    if header:
        text += f"\n\n**DICOM header** (acquisition fields only, no patient data): {fields(header)}"
    return text


def _uint8(image: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _download(result: Prediction, file: str) -> str:
    """The overlay as a PNG file, named after the upload, the method and the class."""
    data = io.BytesIO()
    Image.fromarray(result.overlay).save(data, format="PNG")
    payload = data.getvalue()
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(file).stem)[:60] or "radiograph"
    method = result.method.replace("+", "plus").replace(" ", "")
    target = "".join(c if c.isalnum() else "_" for c in result.target)
    folder = DOWNLOAD_DIR / hashlib.sha256(payload).hexdigest()[:20]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}_{method}_{target}.png"
    path.write_bytes(payload)
    _prune(DOWNLOAD_DIR, DOWNLOADS_KEPT)
    return str(path)


def _prune(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` download folders (Gradio copies what it serves into its own cache)."""
    folders = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for folder in folders[keep:]:
        for item in folder.iterdir():
            item.unlink(missing_ok=True)
        folder.rmdir()


def _example_label(path: Path) -> str:
    if path == builtin_example():
        return "Built-in: CR chest PA, DICOM (pydicom-data)"
    parent = path.parent.parent.name if path.parent.name == "images" else path.parent.name
    return f"{parent}: {path.name}" if parent else path.name


# ---------------------------------------------------------------------------------------- the Compare page

COMPARE_MODES = {"Models side by side": "models", "Preprocessing variants of one model": "preprocessing"}
COMPARE_INTRO = (
    "The same radiographs through 2-4 models, or through one model with different preprocessing: each "
    "model's decision, probabilities and class activation map side by side, the images where they disagree "
    "first. The same comparison as the Streamlit page (`streamlit run demo/compare.py`)."
)


def _comparison_tab(predictor: Predictor, examples: Sequence[Path]) -> None:
    """The Compare page: the Streamlit comparison (demo/comparison.py) for Spaces, which run only Gradio."""
    choices = predictor.choices()
    fast_methods = [name for name in CAM_METHODS if name not in SLOW_METHODS]
    gr.Markdown(f"# Compare models and preprocessing\n{COMPARE_INTRO}", elem_classes="chx-header")
    gr.Markdown(COMPARE_DISCLAIMER, elem_classes="chx-disclaimer", elem_id="compare-disclaimer")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=300):
            mode = gr.Radio(list(COMPARE_MODES), value=next(iter(COMPARE_MODES)), label="Compare")
            models = gr.Dropdown(
                choices, value=choices[:MIN_MODELS], multiselect=True, max_choices=MAX_MODELS,
                allow_custom_value=True, label=f"Models ({MIN_MODELS} to {MAX_MODELS})",
                info="Or type a Hugging Face Hub id (org/name) and press Enter", elem_id="compare-models",
            )  # fmt: skip
            one_model = gr.Dropdown(
                choices, value=choices[0] if choices else None, allow_custom_value=True, label="Model",
                visible=False,
            )  # fmt: skip
            variants = gr.CheckboxGroup(
                list(VARIANTS), value=list(VARIANTS), label="Preprocessing variants", visible=False
            )
            uploads = gr.File(
                label="Radiographs: DICOM, PNG (8/16-bit), JPEG, TIFF or BMP", file_count="multiple",
                type="filepath", height=120, elem_id="compare-upload",
            )  # fmt: skip
            use_examples = gr.Checkbox(
                bool(examples), label=f"Add the {len(examples)} example images", visible=bool(examples)
            )
            target = gr.Dropdown(
                [TOP_CLASS], value=TOP_CLASS, allow_custom_value=True, label="Explain the class"
            )
            method = gr.Dropdown(fast_methods, value=DEFAULT_METHOD, label="Explanation method")
            run = gr.Button("Compare", variant="primary", elem_id="compare-run")
        with gr.Column(scale=8, min_width=420):
            headline = gr.Markdown(
                "Pick the models and the images, then press **Compare**.", elem_id="compare-headline"
            )
            summary = gr.Dataframe(label="Summary per model", interactive=False, elem_id="compare-summary")
            with gr.Row():
                csv_file = gr.DownloadButton("Download CSV", size="md", elem_id="compare-csv")
                png_file = gr.DownloadButton("Download grid (PNG)", size="md", elem_id="compare-png")
            gr.Markdown("**Grid**: a row per image, a column per model or variant; shaded rows disagree.")
            grid = gr.Image(
                label="Comparison grid",
                show_label=False,  # the label would cover the grid's column headers
                type="filepath",
                format="png",
                interactive=False,
                buttons=["fullscreen"],
                elem_id="compare-grid",
            )

    def switch_mode(label: str) -> tuple:
        by_models = COMPARE_MODES[label] == "models"
        return tuple(gr.update(visible=show) for show in (by_models, not by_models, not by_models))

    def classes(label: str, names: list[str] | None, one: str | None) -> dict:
        """The classes of the chosen models (loading them: the comparison needs them anyway)."""
        picked = (names or []) if COMPARE_MODES[label] == "models" else ([one] if one else [])
        loaded = []
        for name in picked:
            try:
                loaded.append(predictor.load(name))
            except ModelLoadError as err:
                gr.Warning(str(err), title="Model not loaded")
            except Exception as err:  # corrupt weights raise whatever safetensors/torch raise
                log.exception("loading %s failed", name)
                gr.Warning(f"{name}: {type(err).__name__}: {err}", title="Model not loaded")
        return gr.update(choices=[TOP_CLASS, *class_options(loaded)])

    def compare(
        label: str,
        names: list[str] | None,
        one: str | None,
        variant_names: list[str],
        files: list[str] | None,
        add_examples: bool,
        target_class: str,
        cam_method: str,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio recognises a tracker by its default)
    ) -> tuple:
        """Compare models (or preprocessing variants) on the uploaded images and/or the examples.

        Returns the headline, the summary table, the grid PNG, and the CSV and PNG files to download.
        """
        items = images_from_paths([*(files or []), *(examples if add_examples else [])])
        options = {
            "target": None if target_class in (None, "", TOP_CLASS) else target_class,
            "method": cam_method,
            "progress": lambda fraction, message: progress(fraction, desc=message),
        }
        try:
            if COMPARE_MODES[label] == "models":
                result = compare_models(predictor, names or [], items, **options)
            else:
                result = compare_preprocessing(
                    predictor, one or "", items, variants=variant_names or [], **options
                )
        except ValueError as err:  # too few models, no images, no variants
            raise gr.Error(str(err), title="Cannot compare", print_exception=False) from None
        png, text = grid_png(result), to_csv(result)
        folder = DOWNLOAD_DIR / hashlib.sha256(png + text.encode()).hexdigest()[:20]
        folder.mkdir(parents=True, exist_ok=True)
        png_path, csv_path = folder / "chexlab-comparison.png", folder / "chexlab-comparison.csv"
        png_path.write_bytes(png)
        csv_path.write_text(text)
        _prune(DOWNLOAD_DIR, DOWNLOADS_KEPT)
        rows = result.summary_rows()
        table = {"headers": list(rows[0]), "data": [list(row.values()) for row in rows]}
        return f"**{result.headline()}**", table, str(png_path), str(csv_path), str(png_path)

    mode.change(switch_mode, mode, [models, one_model, variants], queue=False, api_visibility="private")
    gr.on(
        [mode.change, models.change, one_model.change],
        classes,
        [mode, models, one_model],
        target,
        concurrency_id=MODEL_RUNS,
        api_visibility="private",
    )
    run.click(
        compare,
        [mode, models, one_model, variants, uploads, use_examples, target, method],
        [headline, summary, grid, csv_file, png_file],
        api_name="compare",
        concurrency_id=MODEL_RUNS,
    )
