"""demo.predictor: reading every input kind, preprocessing switches, CAM methods, errors, model loading."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import demo.predictor
from demo.cam import model_lock
from demo.examples import builtin_example, example_files
from demo.methods import CAM_METHODS
from demo.predictor import DISPLAY_SIDE, ModelLoadError, Predictor
from demo.switches import Toggles, describe_pipeline
from tests.demo_support import SIZE, THRESHOLDS, save_tiny_model, write_inputs
from tests.test_io import FRAGMENTS
from trainer.io import XRayReadError, XRayWarning
from trainer.model_source import ModelSource
from trainer.preprocess import Pipeline

MAX_PIXELS = 5_000_000
SWITCHES = {
    "clahe": Toggles(clahe=True),
    "white_balance": Toggles(white_balance=True),
    "crop_body": Toggles(crop_body=True),
    "crop_lungs": Toggles(crop_lungs=True),
    "invert": Toggles(invert=True),
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("predictor")
    save_tiny_model(root / "models" / "tiny")  # no preprocessing of its own: every switch is a change
    save_tiny_model(
        root / "models" / "tiny-clahe", pipeline=[{"op": "crop_body"}, {"op": "clahe", "clip_limit": 3}]
    )
    return root


@pytest.fixture(scope="module")
def files(workdir: Path) -> dict[str, Path]:
    return write_inputs(workdir / "inputs")


@pytest.fixture(scope="module")
def predictor(workdir: Path) -> Predictor:
    models = {p.name: f"local-dir:{p}" for p in sorted((workdir / "models").iterdir())}
    return Predictor(models, default="tiny", max_pixels=MAX_PIXELS)


def _strings(prediction: demo.predictor.Prediction) -> str:
    return " ".join([prediction.decision, *prediction.warnings, *map(str, prediction.header.values())])


@pytest.mark.parametrize("name", ["png8", "png16", "dicom"])
def test_formats(predictor: Predictor, files: dict[str, Path], name: str) -> None:
    result = predictor.predict(files[name])
    assert list(result.probabilities) == ["abnormal", "normal"]
    assert sum(result.probabilities.values()) == pytest.approx(1.0)
    assert result.decided[0] in ("abnormal", "normal") and result.decided[0].capitalize() in result.decision
    assert result.model_input.shape == (SIZE, SIZE) and result.heatmap.shape == (SIZE, SIZE)
    assert result.before.shape == result.after.shape == (DISPLAY_SIDE, DISPLAY_SIDE)
    assert result.overlay.shape == (DISPLAY_SIDE, DISPLAY_SIDE, 3) and result.overlay.dtype == np.uint8
    assert result.pipeline == result.model_pipeline == Pipeline()
    assert result.target == max(result.probabilities, key=result.probabilities.get)  # default: the top class
    if name == "dicom":
        assert result.image_info["format"] == "DICOM" and result.image_info["bit depth"] == "12 bits"
        assert result.header["modality"] == "DX" and result.header["view_position"] == "PA"
        assert not any(fragment in _strings(result) for fragment in FRAGMENTS), "patient identifiers leaked"
    else:
        assert result.header == {}
        assert result.image_info["bit depth"] == ("16 bits" if name == "png16" else "8 bits")


def test_real_dicom_from_pydicom_data(predictor: Predictor) -> None:
    path = builtin_example()
    if path is None:
        pytest.skip("pydicom-data (RG1_UNCR.dcm) is not installed")
    with pytest.warns(XRayWarning, match="MONOCHROME1"):
        result = predictor.predict(path)
    assert result.header["modality"] == "CR" and result.header["photometric"] == "MONOCHROME1"
    assert any("MONOCHROME1" in note for note in result.warnings)  # the inversion is reported
    assert result.image_info["size"] == "1841 x 1955 px"
    # Bright = dense after the inversion: the mediastinum (centre) is brighter than the lungs beside it.
    side = result.before.shape[0]
    centre, lung = (
        result.before[side // 2, side // 2 - 10 : side // 2 + 10],
        result.before[side // 2, side // 4],
    )
    assert centre.mean() > lung


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_each_switch_changes_the_model_input(
    predictor: Predictor, files: dict[str, Path], switch: str
) -> None:
    plain = predictor.predict(files["png8"], toggles=Toggles())  # equals the model's (empty) pipeline
    switched = predictor.predict(files["png8"], toggles=SWITCHES[switch])
    assert plain.pipeline == Pipeline() and not plain.custom_preprocessing
    assert [step.op for step in switched.pipeline] == [switch]
    assert not np.array_equal(plain.model_input, switched.model_input)
    assert switched.custom_preprocessing
    assert any("trained with the preprocessing" in note for note in switched.warnings)
    assert not any("trained with the preprocessing" in note for note in plain.warnings)


def test_clip_limit_and_the_models_own_pipeline(predictor: Predictor, files: dict[str, Path]) -> None:
    own = predictor.predict(files["png8"], model="tiny-clahe")
    assert describe_pipeline(own.pipeline) == "crop_body → clahe (clip 3)"
    # Switches that amount to the model's pipeline run it exactly, without a warning.
    same = predictor.predict(
        files["png8"], model="tiny-clahe", toggles=Toggles(clahe=True, clip_limit=3.0, crop_body=True)
    )
    assert same.pipeline == own.pipeline and np.array_equal(same.model_input, own.model_input)
    assert not same.custom_preprocessing
    stronger = predictor.predict(
        files["png8"], model="tiny-clahe", toggles=Toggles(clahe=True, clip_limit=8.0, crop_body=True)
    )
    assert stronger.custom_preprocessing and not np.array_equal(stronger.model_input, own.model_input)
    # Switches keep the model's other parameters (tile grid, margins) and chexlab's order.
    ordered = Toggles(clahe=True, invert=True, crop_lungs=True, white_balance=True).to_pipeline()
    assert [step.op for step in ordered] == ["invert", "crop_lungs", "white_balance", "clahe"]
    assert Toggles.from_pipeline(own.model_pipeline) == Toggles(clahe=True, clip_limit=3.0, crop_body=True)


@pytest.mark.parametrize("method", list(CAM_METHODS))
def test_every_cam_method(predictor: Predictor, files: dict[str, Path], method: str) -> None:
    result = predictor.predict(files["png8"], method=method, target="abnormal")
    assert result.method == method and result.target == "abnormal"
    assert result.heatmap.shape == (SIZE, SIZE) and result.heatmap.dtype == np.float32
    assert np.isfinite(result.heatmap).all() and 0.0 <= result.heatmap.min() <= result.heatmap.max() <= 1.0
    if not result.heatmap.any():
        assert any("no positive evidence" in note for note in result.warnings)
    plain = predictor.predict(files["png8"], method="Grad-CAM")
    assert result.probabilities == pytest.approx(
        plain.probabilities, abs=1e-6
    )  # CAMs never change the outputs


def test_target_class_and_opacity(predictor: Predictor, files: dict[str, Path]) -> None:
    positive = predictor.predict(files["png8"], target="abnormal")
    negative = predictor.predict(files["png8"], target="normal")
    assert (positive.target, negative.target) == ("abnormal", "normal")
    assert not np.array_equal(positive.heatmap, negative.heatmap)
    with pytest.raises(ValueError, match="unknown class 'pneumonia'.*abnormal, normal"):
        predictor.predict(files["png8"], target="pneumonia")
    clear = positive.with_opacity(0.0)
    gray = np.rint(np.clip(positive.after, 0, 1) * 255).astype(np.uint8)
    assert np.abs(clear.overlay.astype(int) - gray[..., None].astype(int)).max() <= 1
    assert clear.heatmap is positive.heatmap  # re-blending runs no model
    with pytest.raises(ValueError, match="opacity"):
        predictor.predict(files["png8"], opacity=1.5)
    with pytest.raises(ValueError, match="unknown explanation method 'gradcam'"):
        predictor.predict(files["png8"], method="gradcam")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("text", "not an image"),
        ("empty", "empty"),
        ("truncated", "trunc|corrupt|damaged|incomplete"),
        ("fake_dicom", "DICOM|not an image|recogni"),
        ("huge", "megapixels"),
    ],
)
def test_bad_files_give_clear_errors(
    predictor: Predictor, files: dict[str, Path], name: str, message: str
) -> None:
    with pytest.raises(XRayReadError, match=f"(?i){message}") as caught:
        predictor.predict(files[name])
    assert "Traceback" not in str(caught.value)
    assert predictor.predict(files["png8"]).probabilities  # still serving


def test_bytes_and_file_objects(predictor: Predictor, files: dict[str, Path]) -> None:
    from_path = predictor.predict(files["png16"])
    from_bytes = predictor.predict(files["png16"].read_bytes())
    with files["png16"].open("rb") as handle:
        from_handle = predictor.predict(handle)
    assert from_bytes.probabilities == from_path.probabilities == from_handle.probabilities
    assert np.array_equal(from_bytes.heatmap, from_path.heatmap)


def test_failed_loads_change_nothing(workdir: Path, files: dict[str, Path]) -> None:
    predictor = Predictor({"tiny": workdir / "models" / "tiny"}, max_pixels=MAX_PIXELS)
    before = predictor.load("tiny")
    pickle_only = workdir / "pickle-only"
    pickle_only.mkdir(exist_ok=True)
    (pickle_only / "config.json").write_text((workdir / "models" / "tiny" / "config.json").read_text())
    torch.save({"weight": torch.zeros(1)}, pickle_only / "pytorch_model.bin")
    failures = {
        "org/not-cached": "not in the local Hugging Face cache",  # offline (the tests' Hub is offline)
        "no-such-model": "unknown model 'no-such-model'.*tiny",
        str(pickle_only): "pickle",
        str(workdir / "inputs"): "no config.json",
    }
    for name, message in failures.items():
        with pytest.raises(ModelLoadError, match=message):
            predictor.load(name)
        assert predictor.choices() == ["tiny"]
    assert predictor.load("tiny") is before  # cached: loaded once
    assert predictor.predict(files["png8"]).model == "tiny"


def test_typed_folders_load_but_never_join_the_shared_choices(workdir: Path) -> None:
    predictor = Predictor({"tiny": workdir / "models" / "tiny"})
    typed = str(workdir / "models" / "tiny-clahe")
    loaded = predictor.load(typed)
    assert loaded.name == "tiny-clahe" and predictor.choices() == ["tiny"]
    key = predictor.resolve(typed).key  # what a session's menu keeps: it selects the same model again
    assert predictor.loaded(key) is loaded and predictor.loaded(typed) is loaded
    assert predictor.loaded("org/never") is None and predictor.loaded("tiny-clahe") is None
    # The same folder typed as an offered model's path is that offered model.
    assert predictor.resolve(str(workdir / "models" / "tiny")).name == "tiny"


def test_repeated_predictions_are_identical(workdir: Path, files: dict[str, Path]) -> None:
    uncached = Predictor({"tiny": workdir / "models" / "tiny"}, cache_size=0)
    other = Predictor({"tiny": workdir / "models" / "tiny"}, cache_size=0)  # a second, fresh load
    runs = [uncached.predict(files["dicom"]) for _ in range(2)]
    runs.append(other.predict(files["dicom"]))
    for run in runs[1:]:
        assert run.probabilities == runs[0].probabilities
        assert np.array_equal(run.heatmap, runs[0].heatmap) and np.array_equal(run.overlay, runs[0].overlay)


def test_threads_share_one_model(
    workdir: Path, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real_load = demo.predictor.load_model
    barrier = threading.Barrier(4)

    def counting_load(*args, **kwargs):
        calls.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(demo.predictor, "load_model", counting_load)
    predictor = Predictor({"tiny": workdir / "models" / "tiny"}, cache_size=0)

    def work(method: str) -> demo.predictor.Prediction:
        barrier.wait()
        return predictor.predict(files["png8"], method=method)

    methods = ["Grad-CAM", "HiResCAM", "Grad-CAM", "HiResCAM"]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, methods))
    assert len(calls) == 1  # concurrent first requests load the model once
    for method, result in zip(methods, results, strict=True):
        alone = predictor.predict(files["png8"], method=method)
        assert np.array_equal(result.heatmap, alone.heatmap)  # no hook saw another thread's activations


@pytest.mark.parametrize("task", ["multilabel", "multiclass"])
def test_decisions_in_plain_words(tmp_path: Path, files: dict[str, Path], task: str) -> None:
    save_tiny_model(tmp_path / task, task=task)
    predictor = Predictor({task: tmp_path / task})
    result = predictor.predict(files["png8"])
    probs = result.probabilities
    if task == "multiclass":
        top = max(probs, key=probs.get)
        assert result.decided == [top] and top.capitalize() in result.decision
        assert sum(probs.values()) == pytest.approx(1.0)
    else:
        expected = [name for name, t in zip(probs, THRESHOLDS[task], strict=True) if probs[name] >= t]
        assert result.decided == expected
        assert ("No finding" in result.decision) == (not expected)
        for name in expected:
            assert name in result.decision


def test_densenet_family(tmp_path: Path, files: dict[str, Path]) -> None:
    save_tiny_model(tmp_path / "densenet", arch="densenet121")
    predictor = Predictor({"densenet": tmp_path / "densenet"})
    loaded = predictor.load("densenet")
    assert not any(getattr(m, "inplace", False) for m in loaded.model.modules())  # prepare_for_cam ran
    result = predictor.predict(files["png8"])
    with model_lock(loaded.model), torch.no_grad():
        tensor = torch.from_numpy(np.repeat(result.model_input[None], 3, axis=0))
        spec = loaded.transform.spec
        tensor = (tensor - torch.tensor(spec.mean).view(3, 1, 1)) / torch.tensor(spec.std).view(3, 1, 1)
        plain = torch.sigmoid(loaded.model(tensor[None].float())).item()
    assert result.probabilities["abnormal"] == pytest.approx(plain, abs=1e-5)
    assert np.isfinite(result.heatmap).all() and result.heatmap.std() > 0


def test_choices_from_the_environment(workdir: Path, tmp_path: Path) -> None:
    env = {"CHEXLAB_MODELS": "org/a, org/b,", "CHEXLAB_DEFAULT_MODEL": "tiny-clahe"}
    predictor = Predictor.from_env(env, models_dir=workdir / "models")
    assert (
        predictor.choices() == ["tiny-clahe", "tiny", "org/a", "org/b"] and predictor.default == "tiny-clahe"
    )
    assert predictor.resolve("org/a").source == ModelSource.hub("org/a")
    missing = Predictor.from_env({}, models_dir=tmp_path / "none")
    assert missing.default == "nih-binary"
    with pytest.raises(ModelLoadError, match="not a directory"):  # the UI says so
        missing.load(missing.default)


def test_example_files(workdir: Path, tmp_path: Path) -> None:
    nested = tmp_path / "datasets"
    for name in ("a", "b"):
        (nested / name / "images").mkdir(parents=True)
        for k in range(3):
            (nested / name / "images" / f"{name}{k}.png").write_bytes(b"")
    found = example_files({"CHEXLAB_EXAMPLES": f"{workdir / 'inputs'}:{nested}"}, per_folder=2)
    builtin = builtin_example()
    assert found[: 1 if builtin else 0] == ([builtin] if builtin else [])
    names = [p.name for p in found[1 if builtin else 0 :]]
    assert len(names) == 4 and names[2:] == ["a0.png", "b0.png"]  # spread across the datasets


@pytest.mark.parametrize("method", ["Integrated Gradients", "SmoothGrad"])
def test_pixel_attributions_checks_and_histograms(
    predictor: Predictor, files: dict[str, Path], method: str
) -> None:
    result = predictor.predict(files["png8"], method=method, steps=4, baseline="blurred")
    assert result.method == method and result.heatmap.shape == result.model_input.shape
    assert 0.0 <= result.check.deletion.before <= 1.0 and result.check.deletion.removed == pytest.approx(0.2)
    before, after = result.histograms
    assert before.shares.sum() == pytest.approx(1.0) and after.shares.sum() == pytest.approx(1.0)
    assert result.thresholds == {"abnormal": pytest.approx(0.5)} and result.model_notes
    with pytest.raises(ValueError, match="steps must be between 1 and"):
        predictor.predict(files["png8"], method=method, steps=0)
    with pytest.raises(ValueError, match="unknown baseline 'white'"):
        predictor.predict(files["png8"], method=method, baseline="white")


def test_activation_grids(predictor: Predictor, files: dict[str, Path]) -> None:
    first, later = predictor.activations(files["png8"], layer="blocks.1", top=4)
    assert first.layer.module == "conv_stem" and later.layer.module == "blocks.1" and len(later.channels) == 4
    assert predictor.activations(files["png8"])[1].layer.module == "blocks.2"  # the middle block
    with pytest.raises(ValueError, match="no layer 'head'"):
        predictor.activations(files["png8"], layer="head")


def test_predict_in_stages_gives_the_answer_first_and_the_same_prediction_complete(
    workdir: Path, files: dict[str, Path]
) -> None:
    predictor = Predictor({"tiny": workdir / "models" / "tiny"})
    first, complete = predictor.predict_in_stages(files["png8"], model="tiny")
    assert not first.complete and first.check is None and first.histograms is None
    assert complete.complete and complete.check is not None and complete.histograms is not None
    for field in ("probabilities", "decided", "decision", "target", "heatmap", "overlay", "verdict"):
        assert _equal(getattr(first, field), getattr(complete, field)), field
    # The check's "before" is the class probability the first stage showed (no second forward of its own).
    explained = complete.probabilities[complete.target]
    assert complete.check.deletion.before == pytest.approx(explained, abs=1e-6)
    assert _equal(predictor.predict(files["png8"], model="tiny").heatmap, complete.heatmap)
    (cached,) = predictor.predict_in_stages(files["png8"], model="tiny")  # complete at once
    assert cached.complete


def _equal(a: object, b: object) -> bool:
    return bool(np.array_equal(a, b)) if isinstance(a, np.ndarray) else a == b
