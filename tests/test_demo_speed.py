"""The demo's speed rules, checked by what runs, never by timing: nothing recomputed that did not change,
compact shown images beside lossless downloads, and no heavy library imported to serve a prediction."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import demo.predictor
from demo.encoding import display_bytes, png_bytes
from demo.predictor import Predictor
from demo.switches import Toggles
from tests.demo_support import save_tiny_model, write_inputs
from trainer.preprocess import Pipeline

ROOT = Path(__file__).resolve().parent.parent
# Not needed to serve a Grad-CAM prediction (issue 16): each costs start-up time and idle memory.
HEAVY = ("matplotlib", "scipy", "pandas", "sklearn", "pytorch_grad_cam", "captum")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(
        tmp_path_factory.mktemp("speed") / "tiny", pipeline=[{"op": "crop_body"}, {"op": "clahe"}]
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> Iterator[tuple[Predictor, Counter[str]]]:
    """A fresh predictor, and how often it decoded a file, ran the preprocessing, ran the model, searched the
    model input for lungs and computed the grey-level histograms."""
    calls: Counter[str] = Counter()

    def counting(name: str, function):
        def counted_call(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return counted_call

    counted_functions = {"read": "load_xray", "lungs": "find_lungs", "histograms": "compare_histograms"}
    for name, attribute in counted_functions.items():
        monkeypatch.setattr(demo.predictor, attribute, counting(name, getattr(demo.predictor, attribute)))
    monkeypatch.setattr(Pipeline, "apply", counting("preprocess", Pipeline.apply))
    predictor = Predictor({"tiny": model_dir}, max_pixels=5_000_000)
    hook = predictor.load("tiny").model.register_forward_hook(lambda *args: calls.update(["forward"]))
    yield predictor, calls
    hook.remove()


def test_class_method_and_opacity_changes_rerun_no_preprocessing(
    counted: tuple[Predictor, Counter[str]], files: dict[str, Path]
) -> None:
    predictor, calls = counted
    first = predictor.predict(files["png16"])
    assert (calls["read"], calls["preprocess"]) == (1, 1)
    assert calls["forward"] >= 1  # the prediction's, and the heatmap check's deletion passes
    other_class = predictor.predict(files["png16"], target="normal")
    other_method = predictor.predict(files["png16"], target="normal", method="HiResCAM")
    assert calls["forward"] >= 3 and (calls["read"], calls["preprocess"]) == (1, 1)
    assert (calls["lungs"], calls["histograms"]) == (1, 1)  # they depend on the image alone
    assert other_method.histograms == first.histograms and other_method.check is not None
    assert other_method.check.lungs.area == first.check.lungs.area
    assert np.array_equal(other_class.model_input, first.model_input)
    assert not np.array_equal(other_class.heatmap, first.heatmap) or first.target == "normal"
    assert other_method.method == "HiResCAM"
    forwards = calls["forward"]
    faint = predictor.predict(files["png16"], target="normal", method="HiResCAM", opacity=0.9)
    assert calls["forward"] == forwards and (calls["read"], calls["preprocess"]) == (1, 1)  # re-blend only
    assert faint.heatmap is other_method.heatmap and not np.array_equal(faint.overlay, other_method.overlay)


def test_new_preprocessing_reuses_the_decoded_file(
    counted: tuple[Predictor, Counter[str]], files: dict[str, Path]
) -> None:
    predictor, calls = counted
    predictor.predict(files["png8"])
    custom = predictor.predict(files["png8"], toggles=Toggles(invert=True))
    assert (calls["read"], calls["preprocess"]) == (1, 2) and custom.custom_preprocessing
    predictor.predict(files["png8"], toggles=Toggles(invert=True), target="normal")
    assert calls["preprocess"] == 2
    predictor.predict(files["dicom"])  # another file is read and prepared
    assert (calls["read"], calls["preprocess"]) == (2, 3)


def test_bytes_are_cached_by_content(counted: tuple[Predictor, Counter[str]], files: dict[str, Path]) -> None:
    predictor, calls = counted
    data = files["png8"].read_bytes()
    predictor.predict(data)
    predictor.predict(bytes(data), target="normal")  # the same content, another object
    assert (calls["read"], calls["preprocess"]) == (1, 1)


@pytest.mark.parametrize("shape", [(40, 30), (40, 30, 3)])
def test_shown_images_are_jpeg_and_downloads_lossless_png(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=shape, dtype=np.uint8)
    image[:, :16] = 200  # flat 16x16 JPEG blocks (luma and subsampled chroma): where JPEG is near exact
    shown, download = Image.open(io.BytesIO(display_bytes(image))), Image.open(io.BytesIO(png_bytes(image)))
    assert (shown.format, download.format) == ("JPEG", "PNG")
    assert np.array_equal(np.asarray(download), image)
    pixels = np.asarray(shown).astype(int)
    assert pixels.shape == image.shape and np.abs(pixels[:, :8] - 200).max() <= 3


def test_encoding_refuses_what_it_cannot_show() -> None:
    with pytest.raises(ValueError, match="uint8"):
        display_bytes(np.zeros((8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        png_bytes(np.zeros((8, 8, 2), dtype=np.uint8))
    rgba = np.full((8, 8, 4), 128, dtype=np.uint8)
    assert Image.open(io.BytesIO(display_bytes(rgba))).mode == "RGB"


def test_start_up_imports_no_heavy_library(model_dir: Path, files: dict[str, Path]) -> None:
    # A fresh interpreter: the whole app's modules are imported and the model is loaded (calibration and OOD
    # statistics included): none of the heavy libraries yet. The first Grad-CAM prediction then brings in
    # only scipy, for its heatmap check's linear imputation - not pytorch_grad_cam (with scikit-learn,
    # pandas and matplotlib), which only the other CAM methods use, nor captum (Integrated Gradients and
    # SmoothGrad).
    listing = "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    code = (
        "import json, sys\n"
        "from demo.predictor import Predictor\n"
        "import demo.gradio_ui, demo.gradio_handlers, demo.encoding, trainer.allocator\n"
        "import demo.heatmap_checks, demo.histograms, demo.attributions, demo.activations\n"
        f"predictor = Predictor({{'tiny': {str(model_dir)!r}}})\n"
        "predictor.load('tiny')\n"
        f"{listing}\n"
        f"predictor.predict({str(files['png16'])!r})\n"
        f"{listing}\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    started, predicted = (set(json.loads(line)) for line in run.stdout.strip().splitlines()[-2:])
    assert {"torch", "gradio"} <= started and not started & (set(HEAVY) - {"pandas"})  # Gradio imports pandas
    assert predicted & set(HEAVY) == {"scipy", "pandas"}


def test_the_http_benchmark_never_sends_a_cached_image(tmp_path: Path) -> None:
    from bench.speed import test_image, variants

    image = test_image(tmp_path)
    copies = variants(image, 3)
    original = np.asarray(Image.open(image))
    pixels = [np.asarray(Image.open(path)) for path in copies]
    assert len({path.read_bytes() for path in copies}) == 3
    for copy in pixels:
        assert copy.dtype == original.dtype and np.count_nonzero(copy != original) == 1


def test_the_app_leaves_the_gpu_compiler_out_and_still_predicts(files: dict[str, Path]) -> None:
    # app.py builds the demo on the embedded default model at import; then one prediction on the CPU.
    code = (
        "import sys, app\n"
        "from torch.utils._triton import has_triton\n"
        "from demo.predictor import Predictor\n"
        "loaded = [name for name, module in sys.modules.items() if name.startswith('triton') and module]\n"
        f"prediction = Predictor.from_env().predict({str(files['png16'])!r})\n"
        "print(loaded, has_triton(), sorted(prediction.probabilities))\n"
    )
    env = {**os.environ, "CHEXLAB_PUBLIC": "0"}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "[] False ['abnormal', 'normal']"
