"""The Streamlit comparison page: its logic through AppTest, and the real page served on loopback in Chromium.

The page is configured through CHEXLAB_COMPARE_MODELS (two tiny models) and CHEXLAB_COMPARE_FOLDER (a few
synthetic radiographs and a bad file). The browser screenshot goes to test-artifacts/compare-page.png.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from demo.comparison import sample_images
from tests.conftest import REPO_ROOT
from tests.demo_support import ARTIFACTS, chromium, free_port, save_tiny_model, write_inputs

PAGE = str(REPO_ROOT / "demo" / "compare.py")
HANG_GUARD_S = 900  # AppTest and Playwright need a limit; it only stops a hung run, no work has to beat it
pytestmark = pytest.mark.filterwarnings("ignore:.*no patient ids")  # the label readers' note for training


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compare_page")
    save_tiny_model(root / "models" / "tiny-binary", pipeline=[{"op": "crop_body"}])
    save_tiny_model(root / "models" / "tiny-classes", task="multiclass", seed=1)
    files = write_inputs(root / "all")
    images = root / "images"
    images.mkdir()
    for kind in ("png8", "dicom", "text"):  # two radiographs and a text file named .png
        (images / files[kind].name).write_bytes(files[kind].read_bytes())
    (images / "labels.csv").write_text(
        f"path,label\n{files['png8'].name},abnormal\n{files['dicom'].name},normal\n"
    )
    return {"root": root, "images": images, "a": root / "models" / "tiny-binary",
            "b": root / "models" / "tiny-classes"}  # fmt: skip


@pytest.fixture
def env(setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv("CHEXLAB_COMPARE_MODELS", f"{setup['a']},{setup['b']}")
    monkeypatch.setenv("CHEXLAB_COMPARE_FOLDER", str(setup["images"]))
    monkeypatch.setenv("CHEXLAB_EXAMPLES", "")
    monkeypatch.setenv("CHEXLAB_PUBLIC", "0")  # local use: folders may be typed (see test_public_mode)
    return setup


def _page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=HANG_GUARD_S)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


def test_page_opens_with_the_chosen_models_and_the_disclaimer(env: dict[str, Path]) -> None:
    at = _page()
    assert at.multiselect(key="models").value == ["tiny-binary", "tiny-classes"]  # the presets, by name
    assert any("not a diagnostic device" in text for text in _texts(at.warning))
    assert any("press **Compare**" in text for text in _texts(at.info))
    assert at.text_input[0].value == str(env["images"])


@pytest.fixture
def gallery_env(setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """No preset folder: the page opens on the sample gallery."""
    monkeypatch.setenv("CHEXLAB_COMPARE_MODELS", f"{setup['a']},{setup['b']}")
    monkeypatch.delenv("CHEXLAB_COMPARE_FOLDER", raising=False)
    monkeypatch.setenv("CHEXLAB_EXAMPLES", "")
    monkeypatch.setenv("CHEXLAB_PUBLIC", "0")
    return setup


def test_first_open_shows_the_gallery_accuracy_auc_and_the_paired_statement(
    gallery_env: dict[str, Path],
) -> None:
    at = _page()  # no button pressed
    summary = at.dataframe[0].value
    assert list(summary["column"]) == ["tiny-binary", "tiny-classes"]
    assert list(summary["analysed"]) == [len(sample_images())] * 2
    # The binary model answers every labelled image; the 3-class one's names match only "normal" (one class:
    # no AUC), which the table shows as a blank rather than a number.
    assert list(summary["labelled"]) == [17, 6] and summary["AUC"][0] != "" and summary["AUC"][1] == ""
    assert all(summary["accuracy"] != "")
    assert "Is the difference real?" in [str(h.value) for h in at.subheader]
    markdown = " ".join(_texts(at.markdown))
    assert "is the image abnormal?" in markdown and "McNemar" in markdown
    assert any("bootstrap resamples" in text for text in _texts(at.markdown))
    assert "By subgroup" in [str(h.value) for h in at.subheader]
    assert any("sample gallery" in text for text in _texts(at.caption))
    assert not any("settings changed" in text for text in _texts(at.info))


def test_first_open_in_public_mode_offers_no_folder_box(
    gallery_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHEXLAB_PUBLIC", "1")
    at = _page()
    assert not at.text_input  # no folder to type, and no preset folder: only the gallery and uploads
    assert at.radio[1].options == ["Examples", "Upload"]
    assert list(at.dataframe[0].value["column"]) == ["tiny-binary", "tiny-classes"]
    body = " ".join(str(e.value) for e in [*at.markdown, *at.caption, *at.error, *at.info, *at.success])
    assert "Is the difference real?" in [str(h.value) for h in at.subheader]
    assert str(gallery_env["root"]) not in body and "/demo/examples" not in body  # names, never paths


def test_compare_produces_the_grid_summary_and_downloads(env: dict[str, Path]) -> None:
    at = _page()
    at.button(key="run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    summary = at.dataframe[0].value
    assert list(summary["column"]) == ["tiny-binary", "tiny-classes"]
    assert list(summary["analysed"]) == [2, 2] and list(summary["failed"]) == [1, 1]
    # labels.csv: "abnormal" and "normal" both map to the binary model, only "normal" to the 3-class one.
    assert list(summary["labelled"]) == [2, 1] and summary["accuracy"][0] in ("0%", "50%", "100%")
    # Per row: the radiograph and one overlay per model; the unreadable file has neither.
    assert len(at.image) == 2 * 3
    errors = _texts(at.error)
    assert len(errors) == 2 and all("not an image" in text for text in errors)  # one per model, in place
    assert any(
        "models disagree" in text or "models agree" in text for text in _texts(at.info) + _texts(at.success)
    )
    assert len(at.get("download_button")) == 2
    markdown = " ".join(_texts(at.markdown))
    assert "**tiny-binary**" in markdown and "**tiny-classes**" in markdown

    at.slider(key="opacity").set_value(0.0).run()  # re-blended in place: no new run, no stale notice
    assert not any("settings changed" in text for text in _texts(at.info))
    at.selectbox(key="method").set_value("HiResCAM").run()
    assert any("settings changed" in text for text in _texts(at.info))


def test_unloadable_model_is_reported_in_place(env: dict[str, Path]) -> None:
    at = _page()
    missing = str(env["root"] / "no-such-model")
    at.multiselect(key="models").set_value(["tiny-binary", missing]).run()
    assert any("could not be loaded" in text for text in _texts(at.error))
    at.button(key="run").click().run()
    assert not at.exception
    assert list(at.dataframe[0].value["analysed"]) == [2, 0]
    assert any(text.startswith("Not loaded") for text in _texts(at.error))
    assert len(at.image) == 2 * 2  # the other model's grid is still there


def test_too_few_models_and_a_bad_folder_are_messages(env: dict[str, Path]) -> None:
    at = _page()
    at.multiselect(key="models").set_value(["tiny-binary"]).run()
    at.button(key="run").click().run()
    assert any("Pick 2 to 4" in text for text in _texts(at.error)) and not at.exception
    assert not at.dataframe

    at.text_input[0].set_value(str(env["root"] / "nowhere")).run()
    assert any("no such folder" in text for text in _texts(at.error)) and not at.exception


def test_preprocessing_mode_shows_one_column_per_variant(env: dict[str, Path]) -> None:
    at = _page()
    at.radio(key="mode").set_value("preprocessing").run()
    at.selectbox(key="variant_model").set_value("tiny-binary").run()
    at.button(key="run").click().run()
    assert not at.exception
    assert list(at.dataframe[0].value["column"]) == [
        "Raw", "CLAHE", "White balance", "Lung crop", "Model's own",
    ]  # fmt: skip
    captions = " ".join(_texts(at.caption))
    assert "Preprocessing: crop_body" in captions and "Preprocessing: clahe (clip 2)" in captions
    # Per good row: the radiograph, then the produced image and the map for each of 5 variants.
    assert len(at.image) == 2 * (1 + 2 * 5)


@pytest.mark.filterwarnings("ignore:::gradio.queueing")
def test_gradio_compare_page_shares_the_comparison(setup: dict[str, Path], tmp_path: Path) -> None:
    """The Compare page of the Gradio app (for Spaces): the same comparison through its /compare endpoint."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from demo.gradio_ui import build_demo
    from demo.predictor import Predictor
    from tests.demo_support import serve

    predictor = Predictor({"tiny-binary": setup["a"], "tiny-classes": setup["b"]}, max_pixels=5_000_000)
    images = sorted(setup["images"].glob("*.png")) + sorted(setup["images"].glob("*.dcm"))
    with serve(lambda: build_demo(predictor, examples=images), tmp_path / "cache") as url:
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        headline, table, stats, grid, csv_path, png_path = client.predict(
            "Models side by side", ["tiny-binary", "tiny-classes"], None, [],
            [handle_file(str(images[0]))], True, "Top class", "Grad-CAM", api_name="/compare",
        )  # fmt: skip
        with pytest.raises(AppError, match="pick 2 to 4"):
            client.predict(
                "Models side by side", ["tiny-binary"], None, [], None, True, "Top class", "Grad-CAM",
                api_name="/compare",
            )  # fmt: skip
    assert "disagree" in headline or "agree" in headline
    assert "**Is the difference real?**" in stats  # the gallery's labels: the paired statistics
    assert [row[0] for row in table["data"]] == ["tiny-binary", "tiny-classes"]
    # One upload, the gallery and the operator's three examples, one of which (notes.png) is unreadable.
    shown = 1 + len(sample_images(images))
    assert [row[1:3] for row in table["data"]] == [[shown - 1, 1], [shown - 1, 1]]
    assert Path(grid).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(png_path).stat().st_size > 0
    lines = Path(csv_path).read_text().splitlines()
    assert lines[0].startswith("image,label,column") and len(lines) == 1 + shown * 2


def test_gradio_compare_page_opens_on_the_labelled_gallery(setup: dict[str, Path]) -> None:
    """The first-open handler: the first two offered models on the gallery, with accuracy, AUC and the
    paired statement; computed once and shown to every visitor alike."""
    from demo.gradio_compare import first_open
    from demo.gradio_handlers import App
    from demo.predictor import Predictor

    predictor = Predictor({"tiny-binary": setup["a"], "tiny-classes": setup["b"]}, max_pixels=5_000_000)
    app = App.of(predictor, download_dir=setup["root"] / "downloads")
    headline, table, stats, grid, csv_path, _ = first_open(app)
    assert table["headers"][:2] == ["column", "analysed"] and {"accuracy", "AUC"} <= set(table["headers"])
    assert [row[0] for row in table["data"]] == ["tiny-binary", "tiny-classes"]
    assert [row[table["headers"].index("AUC")] != "" for row in table["data"]] == [True, False]
    assert "agree" in headline or "disagree" in headline
    labelled = sum(item.label is not None for item in sample_images())
    assert (
        f"**Is the difference real?** Compared on {labelled} labelled images, on the question every" in stats
    )
    assert "happens by chance in" in stats or "cannot be compared" in stats
    assert "McNemar's test" in stats and "**By subgroup**" in stats and "Counts only (groups of" in stats
    assert Path(grid).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "nih_00001823_000.png" in Path(csv_path).read_text()
    assert first_open(app)[2] == stats  # the same comparison again, not a new run


# ------------------------------------------------------------------------------------------- browser


@pytest.fixture
def served(env: dict[str, Path]) -> Iterator[str]:
    """`streamlit run demo/compare.py` on a free loopback port; its URL while it serves."""
    port = free_port()
    command = [
        sys.executable, "-m", "streamlit", "run", PAGE, "--server.headless", "true",
        "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none", "--client.toolbarMode", "minimal",
    ]  # fmt: skip
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        command, cwd=REPO_ROOT, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert server.stdout is not None
    try:
        url, seen = f"http://127.0.0.1:{port}", []
        # Streamlit prints its URL once it listens: wait for that line (or for it to exit), not for a clock.
        for line in server.stdout:
            seen.append(line)
            if url in line:
                break
        else:
            pytest.fail("streamlit exited before serving:\n" + "".join(seen[-40:]))
        threading.Thread(target=server.stdout.read, daemon=True).start()  # keep the pipe from filling up
        with urllib.request.urlopen(f"{url}/_stcore/health") as response:
            assert response.read() == b"ok"
        yield url
    finally:
        server.terminate()
        server.wait()


@pytest.mark.browser
def test_real_page_in_chromium(served: str) -> None:
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.set_default_timeout(HANG_GUARD_S * 1000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(served, wait_until="load")
        page.get_by_text("not a diagnostic device").wait_for()
        page.get_by_role("button", name="Compare").click()
        page.get_by_role("heading", name="Summary", exact=True).wait_for()
        page.get_by_text("not an image").first.wait_for()
        images = page.locator("[data-testid='stMain'] img")
        page.wait_for_function(
            "n => Array.from(document.querySelectorAll(\"[data-testid='stMain'] img\"))"
            ".filter(img => img.complete && img.naturalWidth > 0).length >= n",
            arg=6,
        )
        # Streamlit scrolls inside its main block, which a full-page screenshot does not unroll.
        height = page.evaluate("() => document.querySelector(\"[data-testid='stMain']\").scrollHeight")
        page.set_viewport_size({"width": 1500, "height": min(int(height) + 40, 8000)})
        page.wait_for_function("() => Array.from(document.images).every(img => img.complete)")
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "compare-page.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"\nscreenshot: {shot}")
        body = page.locator("body").inner_text()
        assert "tiny-binary" in body and "tiny-classes" in body
        assert "Download CSV" in body and "Download grid (PNG)" in body
        assert images.count() >= 6 and "Traceback" not in body
        assert not errors, f"JavaScript errors on the page: {errors}"
