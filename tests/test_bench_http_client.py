"""bench/http_client.py against the real app on loopback: the page's way of calling /predict."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from bench.http_client import GradioHttpClient, GradioHttpError
from demo.gradio_handlers import API_OUTPUTS
from demo.gradio_ui import build_demo
from demo.predictor import Predictor
from tests.demo_support import save_tiny_model, serve, write_inputs

pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("app")
    save_tiny_model(root / "tiny")
    predictor = Predictor({"tiny": root / "tiny"}, max_pixels=5_000_000)
    with serve(lambda: build_demo(predictor, examples=[]), root / "examples") as address:
        yield address


def test_predict_answers_as_gradio_client_does_and_says_how_long_the_server_took(
    url: str, files: dict[str, Path], tmp_path: Path
) -> None:
    with GradioHttpClient(url) as client:
        answers = [client.predict(files[kind]) for kind in ("png8", "png16")]  # one session, two calls
        result = dict(zip(API_OUTPUTS, answers[0].outputs, strict=True))
        overlay = client.save(result["overlay"], tmp_path)
    reference = Client(url, verbose=False, download_files=str(tmp_path / "reference"))
    outputs = reference.predict(handle_file(str(files["png8"])), api_name="/predict")
    expected = dict(zip(API_OUTPUTS, outputs, strict=True))
    assert result["probabilities"] == expected["probabilities"]  # the same defaults for the other inputs
    assert result["decision"] == expected["decision"]
    assert overlay.read_bytes() == Path(expected["overlay"]).read_bytes()
    assert all(0.0 < answer.server_seconds < 60.0 for answer in answers)


def test_a_failed_call_raises_with_the_servers_message(url: str, files: dict[str, Path]) -> None:
    with GradioHttpClient(url) as client:
        with pytest.raises(GradioHttpError, match="(?i)not an image"):
            client.predict(files["text"])
        assert client.predict(files["png8"]).outputs  # the session goes on
