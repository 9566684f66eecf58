"""Streamlit page: compare chexlab models, or preprocessing variants of one model, on the same radiographs.

    streamlit run demo/compare.py

Teaching use: pick 2-4 models (or one model and several preprocessing variants) and a few images; the grid
shows each model's probabilities, decision and class activation map per image, the images where they
disagree come first, and the comparison downloads as a CSV and a PNG. The logic lives in
`demo/comparison.py` (shared with the Gradio app's Compare page); this file is only the page.

Environment variables (besides CHEXLAB_DEFAULT_MODEL, CHEXLAB_MODELS, CHEXLAB_EXAMPLES and CHEXLAB_PUBLIC, as
in the Gradio app; see `demo/catalog.py`):
    CHEXLAB_COMPARE_MODELS  the models selected at start, comma-separated names, folders or Hub ids
                            (offered, and selected at start; default: the first embedded models)
    CHEXLAB_COMPARE_FOLDER  a folder of images selected at start as the image source

In public mode (on a Space, CHEXLAB_PUBLIC=1, or listening on every interface, Streamlit's default unless
`--server.address 127.0.0.1`), visitors pick offered models or type Hub ids, and the folder source is the
preset folder only: nothing they type is looked up on the server's disk.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # `streamlit run demo/compare.py` puts demo/, not the checkout, on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import streamlit as st
from PIL import Image

from demo.catalog import DEFAULT_MODEL_ENV, MODELS_ENV, PUBLIC_ENV, SPACE_ENV, is_public
from demo.comparison import (
    DISCLAIMER,
    MAX_IMAGES,
    MAX_MODELS,
    MIN_MODELS,
    VARIANTS,
    Cell,
    Comparison,
    ImageItem,
    class_options,
    compare_models,
    compare_preprocessing,
    grid_png,
    images_from_folder,
    sample_images,
    to_csv,
    with_labels_file,
)
from demo.comparison_stats import difference_report, split_subgroups, subgroup_rows
from demo.encoding import as_uint8
from demo.examples import example_files
from demo.methods import CAM_METHODS, SLOW_METHODS
from demo.predictor import LoadedModel, Predictor
from trainer.allocator import Profile, tune_allocator
from trainer.errors import ChexlabError, internal_error
from trainer.model_source import quote

log = logging.getLogger(__name__)

MODELS_PRESET_ENV = "CHEXLAB_COMPARE_MODELS"
FOLDER_PRESET_ENV = "CHEXLAB_COMPARE_FOLDER"
TOP_CLASS = "Top class"
MODES = {"models": "Models side by side", "preprocessing": "Preprocessing variants of one model"}
SOURCES = ("Examples", "Folder", "Upload")
UPLOAD_TYPES = ["png", "jpg", "jpeg", "dcm", "dicom", "tif", "tiff", "bmp"]
CELL_SIDE = 240  # images in the grid are shown (and sent to the browser) at most this wide
SAMPLES_KEY = "samples"  # the image choice "the sample gallery" (the same files for every visitor)
FAST_METHODS = [name for name in CAM_METHODS if name not in SLOW_METHODS]
FOLDER_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    ChexlabError,
)  # a folder that is gone or holds no images
CSS = """
<style>
.chx-disagree { color: #b42318; font-weight: 600; }
.chx-right { color: #067647; } .chx-wrong { color: #b42318; }
</style>
"""


@st.cache_resource(show_spinner=False)
def get_predictor(env: tuple[tuple[str, str], ...], public: bool) -> Predictor:
    """The predictor shared by every session (it holds the loaded models); keyed by the model settings.

    Models are shared across sessions and threads: `Predictor.load` loads each once under a lock, and every
    forward pass with CAM hooks runs under the model's `demo.cam.model_lock`. What a session types or loads
    stays in its own `st.session_state`.
    """
    tune_allocator(Profile.SERVER)  # once per server process: see trainer/allocator.py
    environ = dict(env)
    presets = tuple(m.strip() for m in environ.get(MODELS_PRESET_ENV, "").split(",") if m.strip())
    return Predictor.from_env(environ, extra=presets, public=public, max_models=MAX_MODELS + 1)


def _model_env() -> tuple[tuple[str, str], ...]:
    names = (DEFAULT_MODEL_ENV, MODELS_ENV, MODELS_PRESET_ENV, PUBLIC_ENV, SPACE_ENV)
    return tuple((name, os.environ.get(name, "")) for name in names)


def main() -> None:
    st.set_page_config(page_title="chexlab · compare models", page_icon="🩻", layout="wide")
    st.markdown(CSS, unsafe_allow_html=True)
    st.title("Compare models and preprocessing")
    st.warning(DISCLAIMER, icon="⚠️")
    try:
        public = is_public(bind_address=st.get_option("server.address"))
        _page(get_predictor(_model_env(), public))
    except Exception as err:  # the UI boundary: a message in place, never a stack trace
        log.exception("the comparison page failed")
        st.error(f"Something went wrong: {internal_error(err)}. Reload the page or change the settings.")


def _page(predictor: Predictor) -> None:
    presets = [m.strip() for m in os.environ.get(MODELS_PRESET_ENV, "").split(",") if m.strip()]
    named = (predictor.catalog.offered_name(preset) for preset in presets)
    selected = [name for name in named if name is not None]
    offered = predictor.choices()
    with st.sidebar:
        st.header("Settings")
        mode = st.radio("Compare", list(MODES), format_func=MODES.get, key="mode")
        where = (
            "a Hugging Face Hub id (org/name)"
            if predictor.public
            else "a model folder or a Hub id (org/name)"
        )
        if mode == "models":
            # A typed model is this session's own option (kept by the widget), never another visitor's.
            models = st.multiselect(
                f"Models ({MIN_MODELS} to {MAX_MODELS})",
                offered,
                default=(selected or offered)[:MAX_MODELS] if len(offered) >= MIN_MODELS else selected,
                format_func=lambda name: _label(predictor, name),
                max_selections=MAX_MODELS,
                accept_new_options=True,
                help=f"The offered models, or type {where} and press Enter.",
                key="models",
            )
            variants: list[str] = []
        else:
            model = st.selectbox(
                "Model", offered, format_func=lambda name: _label(predictor, name), accept_new_options=True,
                help=f"An offered model, or {where}.", key="variant_model",
            )  # fmt: skip
            models = [model] if model else []
            variants = st.multiselect("Preprocessing variants", list(VARIANTS), default=list(VARIANTS))
        images, images_key = _image_picker(predictor.public)

    loaded = _load_models(predictor, models)
    with st.sidebar:
        st.header("Explanation")
        target = st.selectbox("Explain the class", [TOP_CLASS, *class_options(loaded)], key="target")
        method = st.selectbox("Method", FAST_METHODS, key="method")
        opacity = st.slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key="opacity")
        run = st.button("Compare", type="primary", width="stretch", key="run")

    settings = (mode, tuple(models), tuple(variants), images_key, target, method)
    first_open = "comparison" not in st.session_state and images_key == SAMPLES_KEY and mode == "models"
    if run or (first_open and MIN_MODELS <= len(loaded) == len(models)):
        # First open on the sample gallery: the labelled comparison at once.
        result = _run(
            predictor, mode, models, variants, images, None if target == TOP_CLASS else target, method
        )
        if result is not None:
            st.session_state["comparison"], st.session_state["settings"] = result, settings
    shown: Comparison | None = st.session_state.get("comparison")
    if shown is None:
        st.info("Pick the models and the images in the sidebar, then press **Compare**.")
        return
    if st.session_state.get("settings") != settings:
        st.info("The settings changed since this comparison: press **Compare** to update it.")
    _show(shown.with_opacity(opacity))


def _label(predictor: Predictor, name: str) -> str:
    """How a model is listed: its name (a typed folder by its folder name)."""
    try:
        return predictor.resolve(name).name
    except ChexlabError:
        return quote(name)


def _image_picker(public: bool) -> tuple[list[ImageItem], object]:
    """The images chosen in the sidebar, and a key that changes when the choice does.

    In public mode the folder is the operator's preset only: a visitor never names a server path.
    """
    st.header("Images")
    preset = os.environ.get(FOLDER_PRESET_ENV, "").strip()
    sources = [s for s in SOURCES if s != "Folder" or preset or not public]
    source = st.radio("From", sources, index=sources.index("Folder") if preset else 0, horizontal=True)
    if source == "Folder":
        if public:
            st.caption(f"The folder this page was set up with ({Path(preset).name}).")
            folder = preset
        else:
            folder = st.text_input(
                "Folder of radiographs", value=preset, placeholder="../shared/data/kermany_pneumonia",
                help="Images at its top level, or one sub-folder per class (the labels); a labels.csv beside "
                "the images gives labels too.",
            ).strip()  # fmt: skip
        limit = st.slider("Images at most", 1, MAX_IMAGES, 8)
        if not folder:
            return [], None
        try:
            return images_from_folder(folder, limit=limit), (folder, limit)
        except FOLDER_ERRORS as err:
            st.error(str(err) if not public else "The preset folder of images cannot be read.")
            return [], None
    if source == "Upload":
        uploads = st.file_uploader(
            "Radiographs (DICOM, PNG 8/16-bit, JPEG, TIFF, BMP)", type=UPLOAD_TYPES,
            accept_multiple_files=True,
        )  # fmt: skip
        labels = st.file_uploader(
            "Labels (optional CSV: file, labels; patient_id, sex, age, view if known)", type=["csv"],
            help="Matched to the images by file name: accuracy, AUC, the paired statistics and subgroups.",
        )  # fmt: skip
        contents = [(f.name, f.getvalue()) for f in uploads or []][:MAX_IMAGES]
        key = tuple(hashlib.sha256(data).hexdigest() for _, data in contents)
        items = [ImageItem(name, data) for name, data in contents]
        if labels is None:
            return items, key
        text = labels.getvalue().decode("utf-8", errors="replace")
        try:
            items = with_labels_file(items, text)
        except ChexlabError as err:
            st.error(f"Labels not used: {err}")
        return items, (key, hashlib.sha256(text.encode()).hexdigest())
    items = sample_images(example_files(limit=MAX_IMAGES))
    labelled = sum(item.label is not None for item in items)
    st.caption(f"The sample gallery: {len(items)} radiographs, {labelled} with labels (demo/examples).")
    return items, SAMPLES_KEY


def _load_models(predictor: Predictor, names: Sequence[str]) -> list[LoadedModel]:
    """Load the chosen models (cached after the first time); a failure is shown in place."""
    loaded = []
    for name in names:
        label = _plain(_label(predictor, name))
        try:
            with st.spinner(f"Loading {label}…"):
                loaded.append(predictor.load(name))
        except ChexlabError as err:  # ModelLoadError: unknown, missing, offline, not a chexlab model
            st.error(f"**Model {label} could not be loaded.** {err}")
        except Exception as err:  # weights that break the model, or a bug
            log.exception("loading %s failed", name)
            st.error(f"**Model {label} could not be loaded**: {internal_error(err)}.")
    return loaded


def _run(
    predictor: Predictor,
    mode: str,
    models: list[str],
    variants: list[str],
    images: list[ImageItem],
    target: str | None,
    method: str,
) -> Comparison | None:
    """Run the comparison with a progress bar; None (and a message in place) when it cannot run."""
    bar = st.progress(0.0, text="Starting…")

    def progress(fraction: float, message: str) -> None:
        bar.progress(min(1.0, fraction), text=message)

    try:
        if mode == "models":
            return compare_models(predictor, models, images, target=target, method=method, progress=progress)
        if not models:
            raise ValueError("pick the model whose preprocessing variants to compare")
        return compare_preprocessing(
            predictor, models[0], images, variants=variants, target=target, method=method,
            progress=progress,
        )  # fmt: skip
    except ChexlabError as err:  # too few models, no images, no variants
        st.error(str(err)[:1].upper() + str(err)[1:])
        return None
    finally:
        bar.empty()


def _show(result: Comparison) -> None:
    if result.disagreements:
        st.info(result.headline(), icon=":material/compare_arrows:")
    else:
        st.success(result.headline())
    st.subheader("Summary")
    st.dataframe(result.summary_rows(), hide_index=True, width="content")
    if result.labelled:
        st.caption(
            "Accuracy and AUC count only the images whose label matches this model's classes; on a few "
            "images they say little. Flagged images (unlike the training images) get no decision and are "
            "left out of both."
        )
        _difference(result)
    with st.container(horizontal=True):
        st.download_button(
            "Download CSV", to_csv(result), file_name="chexlab-comparison.csv", mime="text/csv",
            on_click="ignore", icon=":material/download:",
        )  # fmt: skip
        st.download_button(
            "Download grid (PNG)", grid_png(result), file_name="chexlab-comparison.png", mime="image/png",
            on_click="ignore", icon=":material/download:",
        )  # fmt: skip
    st.subheader("Grid")
    target = result.target or "each model's top class"
    st.caption(f"{result.method} maps for {target}. Red = the strongest evidence for that class.")
    _grid(result)


def _difference(result: Comparison) -> None:
    """Is the difference real? The paired statistics in words, then the subgroups."""
    report = difference_report(result)
    if report is None:
        return
    st.subheader("Is the difference real?")
    st.markdown(report.question)
    if report.models:
        st.table(report.auc_rows(), hide_index=True, width="content")
    for sentence in report.sentences():
        st.markdown(f"- {_plain(sentence)}")
    scored, counted = split_subgroups(subgroup_rows(result))
    if scored or counted:
        st.subheader("By subgroup")
        st.caption("Sex, age band and view from the labels, at each model's own decision.")
        if scored:
            st.table(scored, hide_index=True, width="content")
        if counted:
            st.markdown(_plain(counted))


def _grid(result: Comparison) -> None:
    pair = result.mode == "preprocessing"
    spec = [1.3 if pair else 1] + [2 if pair else 1.2] * len(result.columns)
    header = st.columns(spec, vertical_alignment="bottom")
    header[0].markdown("**Image**")
    for slot, column in zip(header[1:], result.columns, strict=True):
        slot.markdown(f"**{column.name}**")
        if column.error:
            slot.error(f"Not loaded: {column.error}")
        elif column.preprocessing:
            slot.caption(f"Preprocessing: {column.preprocessing}  \n{column.rule.capitalize()}")
    for row in result.rows:
        with st.container(border=True):
            slots = st.columns(spec)
            with slots[0]:
                if row.thumbnail is not None:
                    st.image(as_uint8(row.thumbnail), width=CELL_SIDE)
                short = Path(row.image.name).name
                st.markdown(f"**{_plain(short)}**", help=row.image.name if short != row.image.name else None)
                if row.image.label:
                    st.caption(f"Label: {_plain(row.image.label)}")
                if row.disagree:
                    st.markdown('<span class="chx-disagree">Disagreement</span>', unsafe_allow_html=True)
            for slot, cell in zip(slots[1:], row.cells, strict=True):
                with slot:
                    _cell(cell, pair)


def _cell(cell: Cell, pair: bool) -> None:
    pred = cell.prediction
    if pred is None:
        st.error(cell.error or "No result.")
        return
    overlay = Image.fromarray(pred.overlay).resize((CELL_SIDE, CELL_SIDE), Image.Resampling.BILINEAR)
    if pair:
        produced, explained = st.columns(2)
        produced.image(as_uint8(pred.after), caption="What the model sees", width="stretch")
        explained.image(overlay, caption=pred.method, width="stretch")
    else:
        st.image(overlay, width=CELL_SIDE)
    verdict: dict[bool | None, str] = {
        True: ' <span class="chx-right">(right)</span>',
        False: ' <span class="chx-wrong">(wrong)</span>',
        None: "",
    }
    if cell.withheld:
        flag = '<span class="chx-wrong">**Flagged: no decision.**</span>'
        st.markdown(f"{flag} {_plain(pred.verdict.warning)}", unsafe_allow_html=True)
    else:
        st.markdown(f"**{_plain(cell.decision)}**{verdict[cell.correct]}", unsafe_allow_html=True)
    top = sorted(pred.probabilities.items(), key=lambda item: -item[1])[:4]
    st.caption("  \n".join(f"{name}: {p:.2f}" for name, p in top))
    if cell.check is not None:
        st.caption(f"Heatmap check: {cell.check_text()}")
    notes = ([cell.note] if cell.note else []) + list(pred.warnings)
    if notes:
        with st.expander(f"Notes ({len(notes)})"):
            st.caption("\n\n".join(notes))


def _plain(text: str) -> str:
    """`text` shown as is in Markdown (file names such as train__person1_virus.png hold emphasis marks)."""
    return "".join(f"\\{c}" if c in "\\`*_[]<>#|~$" else c for c in text)


if __name__ == "__main__":
    main()
