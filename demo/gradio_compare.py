"""The Compare page of the Gradio app: the Streamlit comparison (`demo/comparison.py`) for Spaces, which run
only Gradio. `compare_page(app)` lays it out inside `build_demo`; the handlers are plain functions of the
`App`, like the main page's.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from gradio.context import Context

from demo.comparison import DISCLAIMER as COMPARE_DISCLAIMER
from demo.comparison import (
    MAX_IMAGES,
    MAX_MODELS,
    MIN_MODELS,
    VARIANTS,
    Comparison,
    ImageItem,
    class_options,
    compare_models,
    compare_preprocessing,
    grid_png,
    sample_images,
    to_csv,
)
from demo.comparison_stats import difference_report, split_subgroups, subgroup_rows
from demo.gradio_handlers import DEFAULT_METHOD, TOP_CLASS, App, bind, save_files
from demo.methods import CAM_METHODS, SLOW_METHODS
from trainer.errors import ChexlabError, internal_error

if TYPE_CHECKING:  # the models' side (torch): the page is laid out before it is imported (app.py)
    from demo.predictor import LoadedModel

log = logging.getLogger(__name__)

__all__ = ["MODES", "compare", "compare_classes", "compare_page", "first_open", "switch_mode"]

MODES = {"Models side by side": "models", "Preprocessing variants of one model": "preprocessing"}
INTRO = (
    "The same radiographs through 2-4 models, or through one model with different preprocessing: each "
    "model's decision, probabilities and class activation map side by side, the images where they disagree "
    "first. The same comparison as the Streamlit page (`streamlit run demo/compare.py`). It opens on the "
    "labelled sample gallery, so accuracy, AUC and whether a difference is real show at once."
)
_first_open_lock = threading.Lock()
_first_open_results: dict[int, Comparison] = {}  # id(predictor) -> the first-open comparison


def compare_page(app: App, model_runs: str) -> None:
    """The page's components and events (inside a `gr.Blocks` route); `model_runs`: the concurrency group."""
    choices = app.catalog.names()
    fast_methods = [name for name in CAM_METHODS if name not in SLOW_METHODS]
    gr.Markdown(f"# Compare models and preprocessing\n{INTRO}", elem_classes="chx-header")
    gr.Markdown(COMPARE_DISCLAIMER, elem_classes="chx-disclaimer", elem_id="compare-disclaimer")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=300):
            mode = gr.Radio(list(MODES), value=next(iter(MODES)), label="Compare")
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
            examples = _examples(app)
            use_examples = gr.Checkbox(
                bool(examples), label=f"Use the {len(examples)} sample radiographs (labelled)",
                visible=bool(examples), elem_id="compare-gallery",
            )  # fmt: skip
            target = gr.Dropdown(
                [TOP_CLASS], value=TOP_CLASS, allow_custom_value=True, label="Explain the class"
            )
            method = gr.Dropdown(fast_methods, value=DEFAULT_METHOD, label="Explanation method")
            run = gr.Button("Compare", variant="primary", elem_id="compare-run")
        with gr.Column(scale=8, min_width=420):
            headline = gr.Markdown(
                "Comparing the first models on the sample gallery…", elem_id="compare-headline"
            )
            summary = gr.Dataframe(label="Summary per model", interactive=False, elem_id="compare-summary")
            stats = gr.Markdown(elem_id="compare-stats")
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

    mode.change(switch_mode, mode, [models, one_model, variants], queue=False, api_visibility="private")
    gr.on(
        [mode.change, models.change, one_model.change],
        bind(compare_classes, app),
        [mode, models, one_model],
        target,
        concurrency_id=model_runs,
        api_visibility="private",
    )
    if Context.root_block is not None and examples and len(choices) >= MIN_MODELS:
        Context.root_block.load(
            bind(first_open, app), None, [headline, summary, stats, grid, csv_file, png_file],
            concurrency_id=model_runs, api_visibility="private",
        )  # fmt: skip
    run.click(
        bind(compare, app),
        [mode, models, one_model, variants, uploads, use_examples, target, method],
        [headline, summary, stats, grid, csv_file, png_file],
        api_name="compare",
        concurrency_id=model_runs,
    )


def switch_mode(label: str) -> tuple[dict[str, Any], ...]:
    """Show the inputs of the chosen mode: several models, or one model and its variants."""
    by_models = MODES[label] == "models"
    return tuple(gr.update(visible=show) for show in (by_models, not by_models, not by_models))


def compare_classes(app: App, label: str, names: list[str] | None, one: str | None) -> dict[str, Any]:
    """The classes of the chosen models (loading them: the comparison needs them anyway)."""
    picked = (names or []) if MODES[label] == "models" else ([one] if one else [])
    loaded: list[LoadedModel] = []
    for name in picked:
        try:
            loaded.append(app.predictor.load(name))
        except ChexlabError as err:
            gr.Warning(str(err), title="Model not loaded")
        except Exception as err:  # weights that break the model, or a bug
            log.exception("loading %s failed", name)
            gr.Warning(f"{name}: {internal_error(err)}", title="Model not loaded")
    return gr.update(choices=[TOP_CLASS, *class_options(loaded)])


def compare(
    app: App,
    label: str,
    names: list[str] | None,
    one: str | None,
    variant_names: list[str],
    files: list[str] | None,
    add_examples: bool,
    target_class: str,
    cam_method: str,
    progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio recognises a tracker by its default)
) -> tuple[Any, ...]:
    """Compare models (or preprocessing variants) on the uploaded images and/or the examples.

    Returns the headline, the summary table, "is the difference real?" (Markdown), the grid PNG, and the CSV
    and PNG files to download.
    """
    # Uploads are the visitor's own files: no labels are looked up beside them on the server.
    items = [ImageItem(Path(path).name, path) for path in files or []][:MAX_IMAGES]
    items += _examples(app) if add_examples else []
    options: dict[str, Any] = {
        "target": None if target_class in (None, "", TOP_CLASS) else target_class,
        "method": cam_method,
        "progress": lambda fraction, message: progress(fraction, desc=message),
    }
    try:
        if MODES[label] == "models":
            result = compare_models(app.predictor, names or [], items, **options)
        else:
            result = compare_preprocessing(app.predictor, one or "", items, variants=variant_names, **options)
    except ChexlabError as err:  # too few models, no images, no variants
        raise gr.Error(str(err), title="Cannot compare", print_exception=False) from None
    except Exception as err:
        log.exception("the comparison failed")
        raise gr.Error(f"The comparison failed: {internal_error(err)}.", title="Unexpected error",
                       print_exception=False) from None  # fmt: skip
    return _outputs(app, result)


def first_open(app: App) -> tuple[Any, ...]:
    """What the page shows on first open: the first offered models on the sample gallery, with labels.

    The same for every visitor (the operator's models and files), so it is computed once per predictor.
    """
    with _first_open_lock:
        key = id(app.predictor)
        if key not in _first_open_results:
            try:
                _first_open_results[key] = compare_models(
                    app.predictor, app.catalog.names()[:MIN_MODELS], _examples(app)
                )
            except ChexlabError as err:
                note = f"Pick the models and the images, then press **Compare**. ({err})"
                return (note, None, None, None, None, None)
        result = _first_open_results[key]
    return _outputs(app, result)


def _examples(app: App) -> list[ImageItem]:
    return sample_images(app.examples)


def _outputs(app: App, result: Comparison) -> tuple[Any, ...]:
    """The headline, the summary table, the paired statistics and subgroups, the grid and the downloads."""
    png, text = grid_png(result), to_csv(result)
    folder = save_files(app, {"chexlab-comparison.png": png, "chexlab-comparison.csv": text.encode()})
    png_path, csv_path = folder / "chexlab-comparison.png", folder / "chexlab-comparison.csv"
    rows = result.summary_rows()
    table = {"headers": list(rows[0]), "data": [list(row.values()) for row in rows]}
    parts = []
    report = difference_report(result)
    if report is not None:
        parts += [report.markdown(), _markdown_table(report.auc_rows())]
    scored, counted = split_subgroups(subgroup_rows(result))
    if scored or counted:
        parts.append("**By subgroup** (sex, age band, view from the labels)")
        parts += [_markdown_table(scored), counted]
    stats = "\n\n".join(part for part in parts if part)
    return f"**{result.headline()}**", table, stats, str(png_path), str(csv_path), str(png_path)


def _markdown_table(rows: list[dict[str, object]]) -> str:
    if not rows:
        return ""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row[k]).replace("|", "/") for k in header) + " |" for row in rows]
    return "\n".join(lines)
