"""The Gradio app served on loopback, driven through its named API endpoints with gradio_client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from demo.gradio_handlers import API_OUTPUTS
from demo.gradio_ui import DISCLAIMER, TOP_CLASS, build_demo
from demo.methods import CAM_METHODS
from demo.predictor import Predictor
from tests.demo_support import save_tiny_model, serve, write_inputs
from tests.test_io import FRAGMENTS

pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")

ALL_OFF = {"use_model_preprocessing": False, "clahe": False, "white_balance": False, "crop_body": False,
           "crop_lungs": False, "invert": False}  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path]) -> Iterator[Client]:
    root = tmp_path_factory.mktemp("app")
    save_tiny_model(root / "tiny", pipeline=[{"op": "crop_body"}])
    predictor = Predictor({"tiny": root / "tiny"}, max_pixels=5_000_000)
    with serve(lambda: build_demo(predictor, examples=[files["png8"]]), root / "examples") as url:
        yield Client(url, verbose=False, download_files=str(root / "downloads"))


def _predict(client: Client, path: Path, **settings) -> dict:
    outputs = client.predict(handle_file(str(path)), **settings, api_name="/predict")
    return dict(zip(API_OUTPUTS, outputs, strict=True))


def _pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_named_endpoints(client: Client) -> None:
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/predict", "/explain"} <= set(endpoints)
    params = [p["parameter_name"] for p in endpoints["/predict"]["parameters"]]
    assert params[:3] == ["file", "model", "use_model_preprocessing"] and "cam_method" in params


@pytest.mark.parametrize("kind", ["png8", "png16", "dicom"])
def test_predict(client: Client, files: dict[str, Path], kind: str) -> None:
    result = _predict(client, files[kind])
    confidences = {c["label"]: c["confidence"] for c in result["probabilities"]["confidences"]}
    assert set(confidences) == {"abnormal", "normal"} and sum(confidences.values()) == pytest.approx(1.0)
    decided = "Abnormal" if confidences["abnormal"] >= 0.5 else "Normal"  # the tiny model's threshold
    assert result["decision"].startswith(f"**{decided}**")
    assert "threshold (0.50)" in result["decision"]
    overlay = _pixels(result["overlay"])
    assert overlay.ndim == 3 and overlay.shape[2] == 3 and overlay.shape[:2] == (512, 512)
    assert Image.open(result["overlay"]).format == "JPEG"  # shown as served: compact
    before, after = (_pixels(path) for path in result["before_after"])
    assert before.shape[:2] == after.shape[:2] and not np.array_equal(before, after)  # the body crop ran
    assert "Grad-CAM for" in result["map_note"]
    if kind == "dicom":
        assert "DICOM header" in result["details"] and "Modality **DX**" in result["details"]
        assert not any(fragment in result["details"] for fragment in FRAGMENTS)
    else:
        assert "DICOM header" not in result["details"]
        assert ("16 bits" if kind == "png16" else "8 bits") in result["details"]


@pytest.mark.parametrize("switch", ["clahe", "white_balance", "crop_body", "crop_lungs", "invert"])
def test_each_switch_changes_what_the_model_sees(client: Client, files: dict[str, Path], switch: str) -> None:
    plain = _predict(client, files["png8"], **ALL_OFF)
    switched = _predict(client, files["png8"], **{**ALL_OFF, switch: True})
    assert not np.array_equal(_pixels(plain["before_after"][1]), _pixels(switched["before_after"][1]))
    assert "trained with the preprocessing 'crop_body'" in plain["notes"]  # all off differs from the model's
    assert "trained with the preprocessing" in switched["notes"] or switch == "crop_body"


@pytest.mark.parametrize("method", list(CAM_METHODS))
def test_explain_with_every_method(client: Client, files: dict[str, Path], method: str) -> None:
    overlay, download, note, _ = client.predict(
        handle_file(str(files["png8"])),
        cam_method=method,
        target_class="normal",
        opacity=0.7,
        api_name="/explain",
    )
    assert note.startswith(f"{method} for **normal**")
    assert _pixels(overlay).shape == (512, 512, 3) and Path(download).name.endswith("_normal.png")
    # Shown as served (JPEG, compact), downloaded lossless (PNG): the same picture.
    assert Image.open(overlay).format == "JPEG" and Image.open(download).format == "PNG"
    assert np.abs(_pixels(download).astype(int) - _pixels(overlay).astype(int)).mean() < 3


def test_opacity_changes_only_the_blend(client: Client, files: dict[str, Path]) -> None:
    faint, *_ = client.predict(handle_file(str(files["png8"])), opacity=0.0, api_name="/explain")
    strong, *_ = client.predict(handle_file(str(files["png8"])), opacity=1.0, api_name="/explain")
    faint, strong = _pixels(faint), _pixels(strong)
    assert (faint[..., 0] == faint[..., 2]).all()  # opacity 0: the plain grayscale image
    assert not np.array_equal(faint, strong)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("text", "not an image"),
        ("empty", "empty"),
        ("fake_dicom", "DICOM|not an image"),
        ("huge", "megapixels"),
    ],
)
def test_bad_file_gives_a_message_and_the_server_keeps_serving(
    client: Client, files: dict[str, Path], kind: str, message: str
) -> None:
    with pytest.raises(AppError, match=f"(?i){message}") as caught:
        _predict(client, files[kind])
    assert "Traceback" not in str(caught.value)
    assert _predict(client, files["png8"])["probabilities"]["confidences"]


def test_bad_settings_give_messages(client: Client, files: dict[str, Path]) -> None:
    with pytest.raises(AppError, match="unknown class 'pneumonia'"):
        _predict(client, files["png8"], target_class="pneumonia")
    with pytest.raises(AppError, match="unknown model 'nope'"):
        _predict(client, files["png8"], model="nope")
    assert _predict(client, files["png8"], target_class=TOP_CLASS)["probabilities"]


def test_page_shows_the_disclaimer(client: Client) -> None:
    import httpx

    page = httpx.get(client.src, timeout=30).text
    config = httpx.get(client.src.rstrip("/") + "/config", timeout=30).json()
    assert "chexlab" in page
    texts = [c.get("props", {}).get("value") for c in config["components"]]
    assert DISCLAIMER in texts


def test_a_non_chest_image_is_flagged_and_its_decision_withheld(
    client: Client, files: dict[str, Path]
) -> None:
    result = _predict(client, files["photo"])
    data = result["result"]
    assert data["flagged"] is True and data["withheld"] is True and data["decided"] == []
    assert any("colour photograph" in reason for reason in data["reasons"])
    assert data["probabilities_meaningful"] is False and set(data["probabilities"]) == {"abnormal", "normal"}
    assert "ood_score" in data  # None: the tiny model carries no feature statistics
    assert result["decision"].startswith("**No decision: this looks like a colour photograph")
    assert "not one the model can judge" in result["warning"] and "colour photograph" in result["warning"]
    plain = _predict(client, files["png8"])["result"]
    assert plain["flagged"] is False and plain["reasons"] == [] and plain["decided"]
    assert _predict(client, files["png8"])["warning"] == ""


def test_the_result_carries_the_heatmap_checks(client: Client, files: dict[str, Path]) -> None:
    result = _predict(client, files["png8"])
    check = result["result"]["explanation"]
    assert check["method"] == "Grad-CAM" and check["removed_fraction"] == pytest.approx(0.2)
    assert 0.0 <= check["score_before_removal"] <= 1.0
    if check["score_after_removal"] is not None:
        drop = check["score_before_removal"] - check["score_after_removal"]
        assert check["score_drop"] == pytest.approx(drop)
    assert (check["lung_share"] is None) == bool(check["lung_note"])
    assert "Check of this map." in result["map_note"] and "most salient 20 %" in result["map_note"]


def test_the_api_answers_once_complete(client: Client, files: dict[str, Path], tmp_path: Path) -> None:
    # The page gets two updates (tests/test_gradio_handlers.py); /predict answers once, complete.
    fresh = tmp_path / "fresh.png"  # an image no cache holds: the server runs both stages
    pixels = _pixels(str(files["png8"])).copy()
    pixels.flat[0] ^= 1
    Image.fromarray(pixels).save(fresh)
    job = client.submit(handle_file(str(fresh)), api_name="/predict")
    final = dict(zip(API_OUTPUTS, job.result(), strict=True))
    assert len(job.outputs()) == 1
    assert (
        "Check of this map." in final["map_note"] and final["result"]["explanation"]["score_drop"] is not None
    )
    # The grey levels as numbers: those of the upload, and after the model's body crop others.
    levels = final["result"]["grey_levels"]
    assert levels["before"]["mean"] == pytest.approx(pixels.mean() / 255, abs=1e-3)
    assert levels["before"]["p50"] == pytest.approx(np.median(pixels) / 255, abs=2e-3)
    assert abs(levels["after"]["mean"] - levels["before"]["mean"]) > 0.01
    assert {"download", "histograms"}.isdisjoint(API_OUTPUTS)  # the page's extras: one download each


@pytest.mark.parametrize("method", ["Integrated Gradients", "SmoothGrad"])
def test_pixel_attributions_through_the_api(client: Client, files: dict[str, Path], method: str) -> None:
    overlay, download, note, data = client.predict(
        handle_file(str(files["png8"])),
        cam_method=method,
        target_class="abnormal",
        baseline="blurred",
        steps=4,
        api_name="/explain",
    )
    assert note.startswith(f"{method} for **abnormal**") and "Check of this map." in note
    assert data["explanation"]["method"] == method and data["explanation"]["target"] == "abnormal"
    assert _pixels(overlay).shape == (512, 512, 3)
    assert Path(download).name == f"chest_{method.replace(' ', '')}_abnormal.png"
    with pytest.raises(AppError, match="greater than maximum value 128"):
        client.predict(handle_file(str(files["png8"])), cam_method=method, steps=1000, api_name="/explain")


def test_activation_grids_through_the_api(client: Client, files: dict[str, Path]) -> None:
    first, later, note = client.predict(
        handle_file(str(files["png8"])), layer="blocks.3", api_name="/activations"
    )
    assert "first convolution (conv_stem)" in note and "(blocks.3)" in note
    first, later = _pixels(first), _pixels(later)
    assert first.ndim == 3 and first.shape[2] == 3 and later.ndim == 3 and not np.array_equal(first, later)
    with pytest.raises(AppError, match="no layer 'nope'"):
        client.predict(handle_file(str(files["png8"])), layer="nope", api_name="/activations")
