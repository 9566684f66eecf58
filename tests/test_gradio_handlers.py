"""demo.gradio_handlers without a server: settings, results, errors at the UI boundary, models per session."""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from demo import gradio_handlers as handlers
from demo.gradio_handlers import SETTINGS_FIELDS, TOGGLE_FIELDS, TOP_CLASS, App, Example, Settings
from demo.gradio_ui import build_demo, default_examples
from demo.heatmap_checks import DeletionCheck, HeatmapCheck, LungShare
from demo.predictor import Predictor
from demo.switches import Toggles
from tests.demo_support import save_tiny_model, write_inputs


def _no_progress(*args: object, **kwargs: object) -> None:
    pass


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> App:
    root = tmp_path_factory.mktemp("handlers")
    save_tiny_model(root / "tiny", pipeline=[{"op": "crop_body"}])
    save_tiny_model(root / "other", pipeline=[{"op": "clahe", "clip_limit": 3}], seed=1)
    predictor = Predictor({"tiny": root / "tiny"}, max_pixels=5_000_000)
    return App.of(predictor, download_dir=root / "downloads")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_inputs(tmp_path_factory.mktemp("inputs"))


def test_settings_fields_are_the_api_parameters(app: App) -> None:
    api = build_demo(app.predictor, examples=[]).get_api_info()["named_endpoints"]
    for endpoint in ("/predict", "/explain"):
        names = [p["parameter_name"] for p in api[endpoint]["parameters"]]
        assert names == ["file", "model", *SETTINGS_FIELDS]
    assert TOGGLE_FIELDS == ("clahe", "clip_limit", "white_balance", "crop_body", "crop_lungs", "invert")
    settings = Settings.from_inputs(
        {"use_model_preprocessing": False, "clahe": True, "clip_limit": 3, "invert": True,
         "cam_method": "HiResCAM", "target_class": "normal", "opacity": 0.7}
    )  # fmt: skip
    assert settings.preprocessing == Toggles(clahe=True, clip_limit=3.0, invert=True)
    assert (settings.cam_method, settings.target, settings.opacity) == ("HiResCAM", "normal", 0.7)
    assert Settings.from_inputs({}) == Settings() and Settings().target is None
    assert Settings().preprocessing is None  # the model's own


def test_predict_returns_every_output_as_files(app: App, files: dict[str, Path]) -> None:
    first, outputs = list(handlers.predict_in_stages(app, str(files["png8"]), "tiny", target_class=TOP_CLASS))
    assert len(first) == len(outputs) == len(handlers.PREDICT_OUTPUTS)
    # The first update: the answer and the map; the lossless download, the checks and histograms follow.
    early = dict(zip(handlers.PREDICT_OUTPUTS, first, strict=True))
    pending = [name for name, value in early.items() if value == gr.skip()]
    assert pending == ["download", "histograms"] and early["map_note"].endswith("Checking the map…")
    assert early["result"]["explanation"]["score_drop"] is None
    named = dict(zip(handlers.PREDICT_OUTPUTS, outputs, strict=True))
    assert named["overlay"] == early["overlay"]  # the same file: the page does not fetch it again
    assert named["probabilities"] == early["probabilities"]
    assert len(handlers.predict(app, str(files["png8"]), "tiny")) == len(handlers.API_OUTPUTS)
    assert "Checking" not in named["map_note"] and named["result"]["explanation"]["score_drop"] is not None
    probabilities, decision, overlay, download = (
        named[k] for k in ("probabilities", "decision", "overlay", "download")
    )
    (before, after), details, cam_note = named["before_after"], named["details"], named["map_note"]
    assert set(probabilities["value"]) == {"abnormal", "normal"} and "threshold (0.50)" in decision
    # The caption comes with the first update, not after the second.
    assert early["probabilities"]["label"] == "Class probabilities (decision threshold: abnormal ≥ 0.50)"
    assert early["warning"] == {"__type__": "update", "value": "", "visible": False}
    assert named["result"]["flagged"] is False
    assert Path(download).name in ("chest_Grad-CAM_abnormal.png", "chest_Grad-CAM_normal.png")
    assert Path(overlay).name == Path(download).stem + ".jpg"  # shown compact, downloaded lossless
    assert Image.open(overlay).format == "JPEG" and Image.open(download).format == "PNG"
    shown, lossless = np.asarray(Image.open(overlay)), np.asarray(Image.open(download))
    assert shown.shape == lossless.shape == (512, 512, 3)
    assert np.abs(shown.astype(int) - lossless.astype(int)).mean() < 3  # the same picture
    assert Image.open(before).format == Image.open(after).format == "JPEG"
    assert not np.array_equal(np.asarray(Image.open(before)), np.asarray(Image.open(after)))  # body crop
    assert "8 bits" in details and cam_note.startswith("Grad-CAM for **")
    again = handlers.explain(app, str(files["png8"]), "tiny", cam_method="HiResCAM", target_class="normal")
    assert Path(again[1]).name == "chest_HiResCAM_normal.png" and again[2].startswith(
        "HiResCAM for **normal**"
    )


def test_nothing_to_do_without_a_file(app: App) -> None:
    assert all(isinstance(value, type(gr.skip())) for value in handlers.explain(app, None, "tiny"))
    (skipped,) = handlers.rerun(app, None, "tiny")
    assert len(skipped) == len(handlers.PREDICT_OUTPUTS)
    assert len(handlers.clear()) == len(handlers.PREDICT_OUTPUTS)
    with pytest.raises(gr.Error, match="Upload a radiograph first"):
        handlers.analyse(app, None, "tiny", Settings())


@pytest.mark.parametrize(
    ("model", "file", "message"),
    [
        ("tiny", "text", "not an image"),
        ("tiny", "huge", "megapixels"),
        ("nope", "png8", "unknown model 'nope'"),
        ("hf-hub:../../etc", "png8", "not a Hugging Face Hub model id"),
    ],
)
def test_errors_a_user_can_fix_are_shown_as_they_are(
    app: App, files: dict[str, Path], model: str, file: str, message: str
) -> None:
    with pytest.raises(gr.Error, match=message):
        handlers.analyse(app, str(files[file]), model, Settings())
    with pytest.raises(gr.Error, match="unknown class 'pneumonia'"):
        handlers.analyse(app, str(files["png8"]), "tiny", Settings(target_class="pneumonia"))


def test_anything_else_is_a_short_message_with_the_traceback_in_the_log(
    app: App, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise IndexError("tensor index 7 is out of bounds in /srv/secret/path.py")

    monkeypatch.setattr(app.predictor, "predict_in_stages", broken)
    with caplog.at_level(logging.ERROR), pytest.raises(gr.Error) as caught:
        handlers.analyse(app, str(files["png8"]), "tiny", Settings())
    assert "internal error (IndexError)" in caught.value.message and "/srv/secret" not in caught.value.message
    assert "Traceback" in caplog.text and "/srv/secret/path.py" in caplog.text


def test_preprocessing_switches(app: App) -> None:
    app.predictor.load("tiny")
    use, *values, status = handlers.use_own(app, "tiny", True, **dict.fromkeys(TOGGLE_FIELDS, False))
    assert use and dict(zip(TOGGLE_FIELDS, values, strict=True))["crop_body"] is True
    assert "model's own preprocessing" in status["value"]
    matches, status = handlers.switched(app, "tiny", clahe=True, clip_limit=2.0)
    assert (
        not matches and "Custom preprocessing" in status["value"] and status["elem_classes"] == ["chx-warn"]
    )
    matches, _ = handlers.switched(app, "tiny", crop_body=True, clip_limit=2.0)
    assert matches  # the switches amount to the model's own pipeline again


def test_choosing_models_keeps_them_in_the_session(app: App, tmp_path: Path) -> None:
    other = str(app.predictor.resolve("tiny").source.path.parent / "other")
    menu, previous, session, summary, classes, use, *rest = handlers.choose_model(
        app, other, "tiny", [], progress=_no_progress
    )
    key = app.predictor.resolve(other).key
    assert previous == key and session == [["other", key]] and ("other", key) in menu["choices"]
    assert "clahe (clip 3)" in summary and use is True and classes["value"] == TOP_CLASS
    assert app.predictor.choices() == ["tiny"]  # the shared menu never grows
    with pytest.warns(UserWarning, match="unknown model 'nope'"):
        failed = handlers.choose_model(app, "nope", key, session, progress=_no_progress)
    assert failed[0]["value"] == key  # the previous model is put back
    assert handlers.choose_model(app, "  ", key, session, progress=_no_progress)[0] == gr.skip()


def test_saved_files_are_pruned(app: App) -> None:
    folders = [
        handlers.save_files(app, {"x.bin": str(i).encode()}) for i in range(handlers.DOWNLOADS_KEPT + 5)
    ]
    kept = [folder for folder in folders if folder.exists()]
    assert len(kept) <= handlers.DOWNLOADS_KEPT and folders[-1] in kept
    assert (folders[-1] / "x.bin").read_bytes() == str(handlers.DOWNLOADS_KEPT + 4).encode()
    assert not list(folders[-1].glob(".*"))  # no temporary files left behind


def test_a_flagged_image_gets_the_warning_and_no_threshold_caption(app: App, files: dict[str, Path]) -> None:
    named = dict(zip(handlers.API_OUTPUTS, handlers.predict(app, str(files["photo"]), "tiny"), strict=True))
    assert "colour photograph" in named["warning"] and named["decision"].startswith("**No decision")
    assert "not meaningful" in handlers.probabilities_caption(named["result"])
    page = dict(
        zip(
            handlers.PREDICT_OUTPUTS,
            list(handlers.predict_in_stages(app, str(files["photo"]), "tiny"))[0],
            strict=True,
        )
    )
    assert page["warning"]["visible"] is True and page["probabilities"]["label"].endswith("(see the warning)")
    assert "no calibration" in named["model_notes"] and "no calibration" not in named["notes"]


def test_heatmap_checks_in_words() -> None:
    check = HeatmapCheck(LungShare(0.62, 0.45), DeletionCheck(0.71, 0.52))
    text = handlers.check_markdown(check, "abnormal")
    assert "**62 %** of the map lies on the lung fields, whose box covers 45 %" in text
    assert "more than chance" in text and "from 0.71 to **0.52**: the map points at" in text
    rising = handlers.check_markdown(HeatmapCheck(LungShare(0.3, 0.45), DeletionCheck(0.4, 0.6)), "viral")
    assert "no more than chance" in rising and "the score rises" in rising
    empty = HeatmapCheck(LungShare(None, None, "no lungs found (flat image)"), DeletionCheck(0.5, None))
    text = handlers.check_markdown(empty, "normal")
    assert "not measured, no lungs found (flat image)" in text and "Deletion check: not run" in text


def test_the_gallery_is_the_default_examples_with_labels() -> None:
    examples = default_examples()
    captions = [example.caption for example in examples]
    assert len(examples) >= 16 and all(example.path.is_file() for example in examples)
    assert any("No Finding" in caption for caption in captions)
    assert any("viral pneumonia" in caption for caption in captions)
    assert Example.of(Path("/x/y/chest.png")) == Example(Path("/x/y/chest.png"), "chest.png")


def test_attribution_notes_explain_baseline_steps_and_time() -> None:
    note, baseline, steps = handlers.method_note("Integrated Gradients", "blurred", 64)
    assert note["visible"] and "blurred copy" in note["value"] and "64 steps" in note["value"]
    assert " s on one CPU core" in note["value"] and baseline["visible"] and steps["visible"]
    note, baseline, steps = handlers.method_note("SmoothGrad", "black", 0)
    assert "noisy copies" in note["value"] and not baseline["visible"] and steps["visible"]
    assert not any(update["visible"] for update in handlers.method_note("Grad-CAM", "black", 0))
