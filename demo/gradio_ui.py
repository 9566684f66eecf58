"""The Gradio demo: upload a chest radiograph; see the model's probabilities, decision and where it looked.

`build_demo(predictor)` lays the page out and wires its events to the handlers in `demo/gradio_handlers.py`
(the Compare page is `demo/gradio_compare.py`); it has no side effects at import, and neither it nor the
handlers import torch: given a predictor still starting (`demo.startup.Startup`), the page serves at once
and fills in the model's side when it is ready. `app.py` launches it with
`launch_options()` (Gradio 6 takes theme and CSS at launch). The same events serve the browser and the API:
`/predict` (everything for one image, with the out-of-distribution flag and the heatmap's checks in its
`result`), `/explain` (only the heatmap, for another class, method or opacity), `/activations` (what the
network sees) and `/compare`, all usable from `gradio_client`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from demo import gradio_handlers as handlers
from demo.encoding import DISPLAY_FORMAT
from demo.examples import builtin_example, example_files
from demo.gallery import GalleryItem, gallery
from demo.gradio_compare import compare_page
from demo.gradio_handlers import (
    DEFAULT_BASELINE,
    DEFAULT_METHOD,
    DEFAULT_OPACITY,
    DEFAULT_STEPS,
    HISTOGRAMS_TITLE,
    NO_IMAGE,
    PROBABILITIES,
    TOP_CLASS,
    App,
    Example,
    bind,
)
from demo.methods import ATTRIBUTION_METHODS, BASELINE_TEXT, EXPLANATION_METHODS, MAX_STEPS, SLOW_METHODS
from demo.startup import Startup
from demo.switches import Toggles

if TYPE_CHECKING:
    from demo.predictor import LoadedModel, Predictor

log = logging.getLogger(__name__)

__all__ = ["DISCLAIMER", "TOP_CLASS", "bind_address", "build_demo", "default_examples", "launch_options"]

# Every event that runs a model shares one concurrency group, so that at most CONCURRENCY run at once (the
# default Space has 2 vCPUs); more requests wait in the queue, up to QUEUE_SIZE.
MODEL_RUNS = "model"
CONCURRENCY = 2
QUEUE_SIZE = 32
MAX_FILE_SIZE = "100mb"  # an uncompressed 16-bit CR is 10-30 MB; load_xray also caps the pixel count
# Gradio keeps every image it serves in its file cache: every 5 minutes, files older than 15 are deleted.
DELETE_CACHE = (300, 900)
SESSIONS_KEPT = 1000  # Gradio's per-session state (the models a visitor loaded) for this many sessions

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
    "Everything here is also an API: `/predict`, `/explain`, `/activations` and `/compare`, usable from "
    '`gradio_client` (see "Use via API" at the bottom of the page).'
)
ACTIVATIONS_INTRO = (
    "The feature maps of the network's first convolution and of a later block for this image: the channels "
    "that respond most strongly, one tile each (as the simple-cnn study showed them)."
)
PASTE_NOTE = (
    "Copy an image, then press the clipboard button. Pasted images are 8-bit: upload DICOM and 16-bit files "
    "in the other tab to keep their full range."
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
.block.chx-ood { border: 2px solid #e5484d !important; border-left: 8px solid #e5484d !important;
  background: #fff0f0; color: #7a1116; border-radius: 8px; padding: .7rem 1rem !important; }
.chx-ood h3 { margin: 0 0 .3rem 0; color: #a1161d; }
.chx-ood ul { margin: .1rem 0 .3rem 0; }
.dark .block.chx-ood { background: #3b0d0f; color: #ffb3b5; }
.dark .chx-ood h3 { color: #ffb3b5; }
.chx-quiet { font-size: .8rem; color: var(--body-text-color-subdued); }
"""


def bind_address(environ: Mapping[str, str] | None = None) -> str:
    """The address the app listens on: GRADIO_SERVER_NAME (0.0.0.0 on Spaces), else loopback only."""
    env = os.environ if environ is None else environ
    return env.get("GRADIO_SERVER_NAME") or "127.0.0.1"


def launch_options(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments for `demo.launch()`: address, theme, CSS, upload size and session limits."""
    theme = gr.themes.Soft(primary_hue="blue", secondary_hue="sky", neutral_hue="slate")
    return {
        "server_name": bind_address(environ),
        "theme": theme,
        "css": CSS,
        "max_file_size": MAX_FILE_SIZE,
        "state_session_capacity": SESSIONS_KEPT,
    }


def default_examples() -> list[Example]:
    """The labelled sample gallery (demo/examples/), then the operator's CHEXLAB_EXAMPLES files."""
    found = [Example.of(item) for item in gallery()]
    known = {example.path for example in found}
    builtin = builtin_example()
    extra = [Example.of(path) for path in example_files(limit=64) if path not in known and path != builtin]
    return found + extra


def build_demo(
    predictor: Predictor | Startup, *, examples: Sequence[str | Path | GalleryItem | Example] | None = None
) -> gr.Blocks:
    """The Gradio app around `predictor`.

    Args:
        predictor: loads the models and runs them. A predictor: its default model is loaded here (a failure
            is shown in the app, which still starts so that another model can be loaded). A `Startup` not
            done (app.py): the page is built without the predictor and shows the model's side as loading;
            each page load fills it in once the predictor and its default model are ready.
        examples: example files or gallery items (shown with their captions); None = `default_examples()`.

    Returns:
        The Blocks app, queued for a small CPU machine (two requests at a time).
    """
    chosen = tuple(default_examples() if examples is None else [Example.of(item) for item in examples])
    app = App(predictor, chosen) if isinstance(predictor, Startup) else App.of(predictor, chosen)
    ready = app.startup.done()
    loaded, startup_error = handlers.load_default(app) if ready else (None, None)
    with gr.Blocks(title="chexlab · chest X-ray demo", delete_cache=DELETE_CACHE) as demo:
        page = _layout(app, loaded, startup_error, ready=ready)
        _wire(app, page)
        if not ready:  # every page load: the config was built with the placeholders
            demo.load(
                bind(handlers.start_page, app),
                outputs=page.model_side,
                show_progress_on=page.model_info,  # the switches and menus stay visible meanwhile
                queue=False,
                api_visibility="private",
            )
    with demo.route("Compare", "/compare"):
        compare_page(app, MODEL_RUNS)
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    return demo


@dataclass(frozen=True)
class _Page:
    """The main page's components that events read or write."""

    startup_error: gr.Markdown
    file: gr.File
    pasted: gr.Image
    analyse: gr.Button
    examples: gr.Examples | None
    model: gr.Dropdown
    hub_id: gr.Textbox
    model_info: gr.Markdown
    previous: gr.State  # the model last selected successfully (a failed load puts it back)
    session: gr.State  # [name, key] of the models this session loaded beyond the offered ones
    use_model: gr.Checkbox
    toggles: dict[str, gr.components.Component]  # by Toggles field name
    prep_note: gr.Markdown
    results: list[gr.components.Component]  # what /predict returns, in order (handlers.PREDICT_OUTPUTS)
    explained: list[gr.components.Component]  # what /explain returns, in order (handlers.EXPLAIN_OUTPUTS)
    decision: gr.Markdown
    method: gr.Dropdown
    method_note: gr.Markdown
    target: gr.Dropdown
    opacity: gr.Slider
    baseline: gr.Dropdown
    steps: gr.Slider
    layer: gr.Dropdown
    show_activations: gr.Button
    activations: list[gr.components.Component]  # what /activations returns, in order

    @property
    def model_side(self) -> list[gr.components.Component]:
        """What depends on the default model, in `handlers.start_page` order (filled in when it is ready)."""
        return [
            self.startup_error, self.model, self.previous, self.model_info, self.target, *self.switches,
            self.prep_note, self.layer,
        ]  # fmt: skip

    @property
    def switches(self) -> list[gr.components.Component]:
        """The switches in `handlers.TOGGLE_FIELDS` order, the order handlers return their values in."""
        return [self.toggles[name] for name in handlers.TOGGLE_FIELDS]

    @property
    def settings(self) -> dict[str, gr.components.Component]:
        """The components behind `handlers.SETTINGS_FIELDS`, by name (the API's parameter names)."""
        named = {
            "use_model_preprocessing": self.use_model,
            **self.toggles,
            "cam_method": self.method,
            "target_class": self.target,
            "opacity": self.opacity,
            "baseline": self.baseline,
            "steps": self.steps,
        }
        return {name: named[name] for name in handlers.SETTINGS_FIELDS}


def _layout(app: App, loaded: LoadedModel | None, startup_error: str | None, *, ready: bool) -> _Page:
    """The main page; not `ready`: the default model's side (`_Page.model_side`) shows placeholders."""
    own = Toggles.from_pipeline(loaded.info.pipeline) if loaded else Toggles()
    default = app.catalog.default if loaded or not ready else None
    hub_placeholder = "org/name of a chexlab model, then Enter"
    gr.Markdown(f"# chexlab — chest X-ray classifier\n{INTRO}", elem_classes="chx-header")
    gr.Markdown(DISCLAIMER, elem_classes="chx-disclaimer", elem_id="disclaimer")
    error = gr.Markdown(startup_error or "", visible=startup_error is not None, elem_classes="chx-error")
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=340):  # inputs
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
                    gr.Markdown(PASTE_NOTE, elem_classes="chx-small")
            analyse = gr.Button("Analyse", variant="primary", elem_id="analyse")
            examples = None
            if app.gallery:
                examples = gr.Examples(
                    [[str(example.path)] for example in app.gallery],
                    inputs=[file],
                    label="Examples with their labels (click one)",
                    example_labels=[example.caption for example in app.gallery],
                    examples_per_page=20,
                    cache_examples=False,
                    api_visibility="private",
                )
            with gr.Accordion("Model", open=True):
                model = gr.Dropdown(
                    handlers.model_choices(app, []),
                    value=default,
                    label="Model",
                    allow_custom_value=True,
                    elem_id="model",
                )
                model_info = gr.Markdown(
                    handlers.model_markdown(loaded) if ready else handlers.STARTING, elem_classes="chx-small"
                )
                hub_id = gr.Textbox(
                    label="Another model from the Hugging Face Hub",
                    placeholder=hub_placeholder,
                    submit_btn="Load",
                    elem_id="hub-id",
                )
            with gr.Accordion("Preprocessing", open=True):
                use_model = gr.Checkbox(True, label="Use the model's own preprocessing (as trained)")
                toggles: dict[str, gr.components.Component] = {}
                with gr.Row(elem_classes="chx-switches"):
                    toggles["crop_body"] = gr.Checkbox(own.crop_body, label="Body crop", min_width=110)
                    toggles["crop_lungs"] = gr.Checkbox(own.crop_lungs, label="Lung crop", min_width=110)
                    toggles["invert"] = gr.Checkbox(own.invert, label="Invert", min_width=110)
                with gr.Row(elem_classes="chx-switches"):
                    toggles["white_balance"] = gr.Checkbox(
                        own.white_balance, label="White balance", min_width=110
                    )
                    toggles["clahe"] = gr.Checkbox(own.clahe, label="CLAHE", min_width=110)
                    gr.HTML(min_width=110)  # an empty cell keeps the grid of the row above
                toggles["clip_limit"] = gr.Slider(
                    0.5,
                    10.0,
                    value=own.clip_limit,
                    step=0.5,
                    label="CLAHE clip limit",
                    info="Higher = stronger local contrast (only with CLAHE on)",
                )
                prep_note = gr.Markdown(**handlers.prep_status(loaded, True, own))
            gr.Markdown(API_NOTE, elem_classes="chx-small")
        with gr.Column(scale=7, min_width=420):  # results
            warning = gr.Markdown(visible=False, elem_classes="chx-ood", elem_id="ood-warning")
            decision = gr.Markdown(
                NO_IMAGE, label="Decision", elem_classes="chx-decision", elem_id="decision"
            )
            with gr.Row(equal_height=False):
                with gr.Column(scale=5, min_width=260):
                    heatmap = gr.Image(
                        label="Heatmap: where the model looked",
                        format=DISPLAY_FORMAT,
                        type="numpy",
                        interactive=False,
                        buttons=["fullscreen"],
                        height=380,
                        elem_id="heatmap",
                    )
                    cam_note = gr.Markdown(label="Map note", elem_classes="chx-small", elem_id="cam-note")
                with gr.Column(scale=4, min_width=220):
                    # No heading: the decision above is the answer; the caption gives its thresholds.
                    label = gr.Label(
                        label=PROBABILITIES,
                        num_top_classes=6,
                        show_heading=False,
                        elem_id="probabilities",
                    )
                    model_notes = gr.Markdown(elem_classes="chx-quiet", elem_id="model-notes")
                    methods = [
                        (f"{name} (slow)" if name in SLOW_METHODS else name, name)
                        for name in EXPLANATION_METHODS
                    ]
                    method = gr.Dropdown(
                        methods,
                        value=DEFAULT_METHOD,
                        label="Explanation method",
                        info="CAMs: regions of the last feature map; "
                        f"{' and '.join(ATTRIBUTION_METHODS)}: pixels",
                        elem_id="method",
                    )
                    method_note = gr.Markdown(visible=False, elem_classes="chx-small", elem_id="method-note")
                    # Shown with a pixel attribution only (handlers.method_note).
                    baseline = gr.Dropdown(
                        [(f"{name}: {text}", name) for name, text in BASELINE_TEXT.items()],
                        value=DEFAULT_BASELINE,
                        label="Integrated Gradients baseline (what the image is compared with)",
                        visible=False,
                        elem_id="baseline",
                    )
                    steps = gr.Slider(
                        0,
                        MAX_STEPS,
                        value=DEFAULT_STEPS,
                        step=1,
                        label="Steps (IG) / noisy copies (SmoothGrad)",
                        info="0 = the method's default; the time grows with the count",
                        visible=False,
                        elem_id="steps",
                    )
                    # Custom values: API calls may name another model's classes.
                    target = gr.Dropdown(
                        handlers.target_choices(loaded),
                        value=TOP_CLASS,
                        label="Explain the class",
                        allow_custom_value=True,
                    )
                    opacity = gr.Slider(0.0, 1.0, value=DEFAULT_OPACITY, step=0.05, label="Heatmap opacity")
                    download = gr.DownloadButton("Download overlay (PNG)", size="md", elem_id="download")
            notes = gr.Markdown(label="Notes", elem_classes="chx-notes", elem_id="notes")
            before_after = gr.ImageSlider(
                label="Before / after preprocessing",
                format=DISPLAY_FORMAT,
                type="numpy",
                interactive=False,
                max_height=520,
                elem_id="before-after",
            )
            # A row of its own: beside the slider the chart shrank to ~270 px and its legend was unreadable.
            # The chart carries its title: Gradio's label badge would cover the top of the y axis.
            histograms = gr.Image(
                label=HISTOGRAMS_TITLE,
                show_label=False,
                format="png",
                type="filepath",
                interactive=False,
                buttons=["fullscreen"],
                elem_id="histograms",
            )
            with gr.Accordion("What the network sees", open=False, elem_id="activations-panel"):
                gr.Markdown(ACTIVATIONS_INTRO, elem_classes="chx-small")
                with gr.Row():
                    layer = gr.Dropdown(
                        handlers.layer_choices(loaded),
                        value=handlers.default_layer(loaded),
                        label="Later block (default: the middle one)",
                        allow_custom_value=True,
                        elem_id="layer",
                    )
                    show_activations = gr.Button("Show what the network sees", elem_id="show-activations")
                with gr.Row(equal_height=False):
                    first_grid = gr.Image(
                        label="First convolution", type="filepath", interactive=False, elem_id="first-grid"
                    )
                    later_grid = gr.Image(
                        label="Later block", type="filepath", interactive=False, elem_id="later-grid"
                    )
                activations_note = gr.Markdown(elem_classes="chx-small", elem_id="activations-note")
            with gr.Accordion("Result as data (what /predict returns in `result`)", open=False):
                result = gr.JSON(label="Result", elem_id="result")
            with gr.Accordion("Image details (DICOM header summary, no identifiers)", open=True):
                details = gr.Markdown("No image yet.", label="Image details", elem_id="details")
    gr.Markdown(
        "chexlab is open-source research software. " + DISCLAIMER.replace("**", ""), elem_classes="chx-footer"
    )
    return _Page(
        error,
        file,
        pasted,
        analyse,
        examples,
        model,
        hub_id,
        model_info,
        previous=gr.State(default),
        session=gr.State([]),
        use_model=use_model,
        toggles=toggles,
        prep_note=prep_note,
        results=[
            label,
            decision,
            warning,
            heatmap,
            download,
            cam_note,
            before_after,
            histograms,
            notes,
            model_notes,
            details,
            result,
        ],  # fmt: skip
        explained=[heatmap, download, cam_note, result],
        decision=decision,
        method=method,
        method_note=method_note,
        target=target,
        opacity=opacity,
        baseline=baseline,
        steps=steps,
        layer=layer,
        show_activations=show_activations,
        activations=[first_grid, later_grid, activations_note],
    )


def _wire(app: App, page: _Page) -> None:
    private: dict[str, Any] = {"api_visibility": "private"}
    instant: dict[str, Any] = {"queue": False, **private}
    analysis = {
        "inputs": [page.file, page.model],
        "inputs_kwargs": page.settings,
        "concurrency_id": MODEL_RUNS,
    }
    predict = {"fn": bind(handlers.predict_in_stages, app), "outputs": page.results, **analysis, **private}
    # The API's /predict: the same inputs, `handlers.API_OUTPUTS` of the outputs, answered once when
    # complete (the page gets two updates); an event without a visible trigger: no click on the page runs it.
    named = dict(zip(handlers.PREDICT_OUTPUTS, page.results, strict=True))
    api = gr.Button(visible=False)
    api_outputs = [named[name] for name in handlers.API_OUTPUTS]
    api.click(bind(handlers.predict, app), outputs=api_outputs, api_name="predict", **analysis)

    # A new image runs everything; the old results are cleared first, so that an error never sits next to
    # the previous image's results.
    run = gr.on([page.file.upload, page.analyse.click], handlers.clear, outputs=page.results, **instant)
    run.then(**predict).failure(handlers.failed, outputs=page.decision, **instant)
    pasted = page.pasted.upload(lambda path: path, page.pasted, page.file, **instant)
    pasted = pasted.then(handlers.clear, outputs=page.results, **instant).then(**predict)
    pasted.failure(handlers.failed, outputs=page.decision, **instant)
    if page.examples is not None:  # an example sets the file (by its index: never a visitor's path)
        example = page.examples.load_input_event.then(handlers.clear, outputs=page.results, **instant)
        example = example.then(**predict)
        example.failure(handlers.failed, outputs=page.decision, **instant)
    page.file.clear(handlers.clear, outputs=page.results, **instant).then(
        handlers.cleared, outputs=page.decision, **instant
    )
    page.file.change(handlers.unmark, outputs=page.decision, **instant)

    gr.on(
        [page.method.input, page.target.input, page.opacity.release, page.baseline.input, page.steps.release],
        bind(handlers.explain, app),
        outputs=page.explained,
        api_name="explain",
        trigger_mode="always_last",
        **analysis,
    )
    page.method.input(handlers.slow_warning, page.method, **instant)
    gr.on(
        [page.method.input, page.baseline.input, page.steps.release],
        handlers.method_note,
        [page.method, page.baseline, page.steps],
        [page.method_note, page.baseline, page.steps],
        **instant,
    )
    gr.on(
        [page.show_activations.click, page.layer.input],
        bind(handlers.activations, app),
        inputs=[page.file, page.model, page.layer],
        inputs_kwargs=page.settings,
        outputs=page.activations,
        api_name="activations",
        concurrency_id=MODEL_RUNS,
        trigger_mode="always_last",
    ).success(bind(handlers.layer_menu, app), [page.model, page.layer], page.layer, **instant)

    # Preprocessing: the checkbox sets the switches to the model's pipeline; touching a switch unticks it
    # (unless the switches again amount to the model's pipeline). Then the image is analysed again.
    rerun = {
        "fn": bind(handlers.rerun, app),
        "outputs": page.results,
        "trigger_mode": "always_last",
        **analysis,
        **private,
    }
    switches = page.switches
    page.use_model.input(
        bind(handlers.use_own, app),
        [page.model, page.use_model],
        [page.use_model, *switches, page.prep_note],
        inputs_kwargs=page.toggles,
        **private,
    ).then(**rerun)
    gr.on(
        [page.toggles[name].input for name in handlers.TOGGLE_FIELDS if name != "clip_limit"]
        + [page.toggles["clip_limit"].release],
        bind(handlers.switched, app),
        [page.model],
        [page.use_model, page.prep_note],
        inputs_kwargs=page.toggles,
        **private,
    ).then(**rerun)

    # Models: choosing one loads it (with progress) and resets the preprocessing to its own; a failure says
    # why and puts the previous model back.
    loading = {
        "fn": bind(handlers.choose_model, app),
        "concurrency_id": "load",
        "show_progress_on": page.model_info,
        "outputs": [
            page.model,
            page.previous,
            page.session,
            page.model_info,
            page.target,
            page.use_model,
            *switches,
            page.prep_note,
        ],
        **private,
    }
    page.model.input(inputs=[page.model, page.previous, page.session], **loading).then(**rerun)
    page.hub_id.submit(inputs=[page.hub_id, page.previous, page.session], **loading).then(**rerun)
