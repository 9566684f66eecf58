"""The demo in a real browser: Playwright drives Debian's chromium through uploads, switches and a bad file.

Screenshots go to test-artifacts/ at the repository root (git-ignored); their paths are printed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.catalog import MODELS_DIR, ModelCatalog
from demo.gradio_handlers import STARTING
from demo.gradio_ui import build_demo
from demo.predictor import Predictor
from demo.startup import Startup
from tests.conftest import shared_path
from tests.demo_support import ARTIFACTS, chromium, save_tiny_model, serve, write_inputs

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore:::gradio.queueing")]

HANG_GUARD_MS = int(
    os.environ.get("CHEXLAB_HANG_GUARD_MS", "900000")
)  # Playwright needs a limit; it only stops a hung run, no work has to beat it


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path]) -> Iterator[str]:
    root = tmp_path_factory.mktemp("app")
    save_tiny_model(root / "tiny", pipeline=[{"op": "crop_body"}, {"op": "clahe"}])
    predictor = Predictor({"tiny": root / "tiny"}, max_pixels=5_000_000)
    with serve(
        lambda: build_demo(predictor, examples=[files["png8"], files["dicom"]]), root / "cache"
    ) as url:
        yield url


@pytest.fixture
def page(browser) -> Iterator[object]:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(HANG_GUARD_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    page.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _open(page, url: str) -> None:
    page.goto(url, wait_until="load")  # Gradio keeps a connection open: never "networkidle"
    page.locator("#upload input[type=file]").wait_for(state="attached")


def _upload(page, path: Path) -> None:
    page.locator("#upload input[type=file]").set_input_files(str(path))


def _wait_for_results(page) -> None:
    page.locator("#probabilities").get_by_text("%").first.wait_for()
    heatmap = page.locator("#heatmap img").first
    heatmap.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=heatmap.element_handle())
    page.locator("#before-after img").first.wait_for()


def _screenshot(page, name: str) -> Path:
    page.wait_for_function("() => Array.from(document.images).every(img => img.complete)")
    path = ARTIFACTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    print(f"\nscreenshot: {path}")
    return path


def test_upload_shows_probabilities_and_heatmap(page, url: str, files: dict[str, Path]) -> None:
    _open(page, url)
    assert "not a medical device" in page.locator("#disclaimer").inner_text()
    _upload(page, files["dicom"])
    _wait_for_results(page)
    _screenshot(page, "demo-tiny-model.png")
    probabilities = page.locator("#probabilities").inner_text()
    assert "abnormal" in probabilities and "normal" in probabilities
    assert "threshold (0.50)" in page.locator("#decision").inner_text()
    assert page.locator("#heatmap img").first.evaluate("img => img.naturalWidth") == 512
    assert page.locator("#download").is_visible()
    assert "DX" in page.locator("#details").inner_text()  # the DICOM header summary


class _SlowStartup(Startup):
    """A start-up that makes its predictor only once `go` is set: as while torch is still importing."""

    def __init__(self, catalog: ModelCatalog) -> None:
        super().__init__(catalog)
        self.go = threading.Event()

    def _make(self) -> None:
        self.go.wait()
        super()._make()


def test_the_page_serves_while_the_model_starts_then_fills_in(
    page, tmp_path: Path, files: dict[str, Path]
) -> None:
    # The page is open while the predictor is still being made (app.py serves it while torch imports): the
    # model panel says so; then the same page, not reloaded, fills in the model's side and analyses an upload.
    save_tiny_model(tmp_path / "tiny", pipeline=[{"op": "crop_body"}])
    catalog = ModelCatalog.of({"tiny": tmp_path / "tiny"}, "tiny")
    startup = _SlowStartup(catalog)
    with serve(lambda: build_demo(startup, examples=[]), tmp_path / "cache") as url:
        _open(page, url)
        page.get_by_text(STARTING).wait_for()
        _screenshot(page, "demo-starting.png")
        assert not page.get_by_label("Body crop").is_checked()
        startup.go.set()
        page.get_by_text("Trained with preprocessing: crop_body").wait_for()
        assert page.get_by_label("Body crop").is_checked()
        _upload(page, files["png8"])
        _wait_for_results(page)
        assert "abnormal" in page.locator("#probabilities").inner_text()


def test_switches_warn_and_change_what_the_model_sees(page, url: str, files: dict[str, Path]) -> None:
    _open(page, url)
    _upload(page, files["png8"])
    _wait_for_results(page)
    first = page.locator("#before-after img").last.get_attribute("src")
    assert "model's own preprocessing" in page.get_by_text("model's own preprocessing").first.inner_text()
    page.get_by_label("Invert").check()
    page.get_by_text("Custom preprocessing").wait_for()
    assert not page.get_by_label("Use the model's own preprocessing (as trained)").is_checked()
    page.wait_for_function(
        "([sel, old]) => { const imgs = document.querySelectorAll(sel); const img = imgs[imgs.length - 1];"
        " return img && img.src !== old; }",
        arg=["#before-after img", first],
    )
    page.locator("#notes").get_by_text("trained with the preprocessing").wait_for()
    _screenshot(page, "demo-custom-preprocessing.png")


def test_bad_file_shows_a_message_and_the_app_keeps_working(page, url: str, files: dict[str, Path]) -> None:
    _open(page, url)
    _upload(page, files["fake_dicom"])
    page.locator("#decision").get_by_text("No result").wait_for()
    page.get_by_text("not one (no 'DICM' marker").first.wait_for()  # the reader's message, in a toast
    _screenshot(page, "demo-bad-file.png")
    page.locator("#upload").get_by_label("Clear").click()
    _upload(page, files["png16"])
    _wait_for_results(page)
    assert "threshold" in page.locator("#decision").inner_text()


def test_real_model_and_radiograph(browser, tmp_path: Path) -> None:
    """The default model (or CHEXLAB_DEFAULT_MODEL) on a real NIH radiograph: the screenshot for people."""
    default = os.environ.get("CHEXLAB_DEFAULT_MODEL") or str(MODELS_DIR / "nih-binary")
    if not Path(default).is_dir():
        pytest.skip(f"needs the default model folder {default} (or CHEXLAB_DEFAULT_MODEL)")
    image = shared_path("data", "nih_cxr14_subset", "images", "00000150_002.png")
    predictor = Predictor({Path(default).name: default})
    examples = [shared_path("data", "dicom", "RG1_UNCR.dcm"), image]
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(HANG_GUARD_MS)
    try:
        with serve(lambda: build_demo(predictor, examples=examples), tmp_path / "cache") as url:
            _open(page, url)
            _upload(page, image)
            _wait_for_results(page)
            _screenshot(page, "demo-real-model.png")
            assert "threshold" in page.locator("#decision").inner_text()
    finally:
        page.close()


@pytest.fixture(scope="module")
def gallery_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app with its default examples: the labelled gallery shipped in demo/examples/."""
    root = tmp_path_factory.mktemp("gallery-app")
    save_tiny_model(root / "tiny")
    predictor = Predictor({"tiny": root / "tiny"})
    with serve(lambda: build_demo(predictor), root / "cache") as url:
        yield url


def test_a_gallery_example_is_labelled_and_one_click_gives_a_prediction(page, gallery_url: str) -> None:
    _open(page, gallery_url)
    example = page.get_by_text("Kermany child: viral pneumonia").first  # the label is on the example
    example.click()
    _wait_for_results(page)
    assert "threshold" in page.locator("#decision").inner_text()
    assert "decision threshold: abnormal ≥ 0.50" in page.locator("#probabilities").inner_text()
    page.locator("#cam-note").get_by_text("Check of this map.").wait_for()
    page.locator("#histograms img").first.wait_for()
    assert not page.locator("#ood-warning").is_visible()


def test_a_flagged_upload_shows_the_warning(page, url: str, files: dict[str, Path]) -> None:
    _open(page, url)
    _upload(page, files["photo"])
    warning = page.locator("#ood-warning")
    warning.get_by_text("not one the model can judge").wait_for()
    assert "colour photograph" in warning.inner_text()
    page.locator("#probabilities").get_by_text("not meaningful for this image").wait_for()
    assert page.locator("#decision").inner_text().startswith("No decision")
    _screenshot(page, "demo-flagged.png")
    page.locator("#upload").get_by_label("Clear").click()
    _upload(page, files["png8"])  # the next image is judged again: the warning goes
    page.locator("#decision").get_by_text("threshold").wait_for()
    warning.wait_for(state="hidden")


def test_integrated_gradients_and_the_activation_grid(page, url: str, files: dict[str, Path]) -> None:
    _open(page, url)
    _upload(page, files["png8"])
    _wait_for_results(page)
    page.locator("#method input").click()
    page.get_by_role("option", name="Integrated Gradients").click()
    page.locator("#cam-note").get_by_text("Integrated Gradients for").wait_for()
    assert "Baseline:" in page.locator("#method-note").inner_text()
    page.get_by_text("What the network sees").click()
    page.locator("#show-activations").click()
    page.locator("#activations-note").get_by_text("first convolution (conv_stem)").wait_for()
    for grid in ("#first-grid img", "#later-grid img"):
        image = page.locator(grid).first
        image.wait_for()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    _screenshot(page, "demo-ig-activations.png")
