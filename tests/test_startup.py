"""The page serves before the models' side is imported (demo/startup.py, issue 16): it is built and served
without torch, shows the model's side as loading, and each page load fills it in once the predictor is ready.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from demo import gradio_handlers as handlers
from demo.catalog import ModelCatalog
from demo.gradio_handlers import TOGGLE_FIELDS, TOP_CLASS, App
from demo.startup import Startup
from tests.conftest import REPO_ROOT
from tests.demo_support import save_tiny_model

MODELS_SIDE = ("torch", "timm", "torchvision", "safetensors.torch", "captum", "pytorch_grad_cam")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> ModelCatalog:
    root = tmp_path_factory.mktemp("startup")
    save_tiny_model(root / "tiny", pipeline=[{"op": "crop_body"}, {"op": "clahe", "clip_limit": 3}])
    return ModelCatalog.of({"tiny": root / "tiny"}, "tiny")


def _started(catalog: ModelCatalog) -> App:
    app = App(Startup(catalog).start())
    app.predictor  # noqa: B018 (a test may wait for it: the page never does)
    return app


def _fields(values: tuple[Any, ...]) -> dict[str, Any]:
    """start_page's updates by what they fill in (`_Page.model_side`'s order)."""
    names = ("error", "model", "previous", "model_info", "target", *TOGGLE_FIELDS, "prep_note", "layer")
    assert len(values) == len(names)
    return dict(zip(names, values, strict=True))


def test_the_page_is_built_and_served_without_the_models_side() -> None:
    # A fresh interpreter, as app.py starts: the page is built around a predictor that has not started, and
    # served; none of the model libraries is imported by then (the page's load would start it).
    code = f"""
import json, socket, sys
from unittest import mock
import httpx
from demo.catalog import ModelCatalog
from demo.gradio_ui import build_demo, launch_options
from demo.startup import Startup
demo = build_demo(Startup(ModelCatalog.from_env({{}})))
with socket.socket() as free:
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
options = {{**launch_options(), "server_name": "127.0.0.1", "server_port": port}}
with mock.patch("gradio.networking.url_ok", lambda url: httpx.head(url, timeout=None).is_success):
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **options)
page = httpx.get(url, timeout=None)
demo.close()
print(json.dumps([page.status_code, "Loading the default model" in page.text,
                  [name for name in {list(MODELS_SIDE)!r} if name in sys.modules]]))
"""
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    status, loading, imported = json.loads(run.stdout.strip().splitlines()[-1])
    assert (status, loading, imported) == (200, True, [])


def test_whatever_needs_the_predictor_starts_it_if_nobody_did(catalog: ModelCatalog) -> None:
    startup = Startup(catalog)
    assert not startup.done()
    assert startup.predictor.loaded("tiny") is not None and startup.done()
    assert startup.start() is startup and startup.predictor is startup.predictor  # one predictor


def test_the_page_load_fills_in_the_default_model(catalog: ModelCatalog) -> None:
    app = _started(catalog)
    assert app.predictor.loaded("tiny") is not None  # loaded by the start-up thread, before any page
    shown = _fields(handlers.start_page(app))
    assert shown["error"]["visible"] is False
    assert shown["model"]["value"] == shown["previous"] == "tiny"
    assert shown["model_info"].startswith("**tiny**")
    assert shown["target"]["choices"] == [TOP_CLASS, "abnormal", "normal"]
    assert (shown["crop_body"], shown["clahe"], shown["clip_limit"], shown["invert"]) == (
        True,
        True,
        3.0,
        False,
    )
    assert "crop_body → clahe (clip 3)" in shown["prep_note"]["value"]
    assert shown["layer"]["value"] == app.predictor.loaded("tiny").default_later_layer().module


def test_a_default_model_that_does_not_load_is_reported_on_the_page(tmp_path: Path) -> None:
    catalog = ModelCatalog.of({"gone": tmp_path / "gone"}, "gone")
    shown = _fields(handlers.start_page(_started(catalog)))
    assert shown["error"]["visible"] is True
    assert "default model could not be loaded" in shown["error"]["value"]
    assert shown["model"]["value"] is None and shown["model_info"] == "No model loaded."


def test_a_predictor_that_did_not_start_is_reported_and_nothing_else_breaks(catalog: ModelCatalog) -> None:
    broken = Startup(catalog, no_such_option="/secret/path")  # Predictor() itself fails: a TypeError
    shown = _fields(handlers.start_page(App(broken)))
    assert shown["error"]["visible"] is True
    assert "could not be started" in shown["error"]["value"] and "/secret" not in shown["error"]["value"]
    assert shown["model_info"] == "No model loaded."
