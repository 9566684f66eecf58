"""Public mode: what a visitor types is never a server path, never uses the server's token, never changes what
another visitor sees. Checked on the catalog, the handlers, a real Gradio server on loopback (gradio_client),
a stand-in Hub on loopback, and the Streamlit page through AppTest."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from streamlit.testing.v1 import AppTest

from demo import gradio_handlers as handlers
from demo.catalog import ModelCatalog, is_public
from demo.gradio_handlers import App
from demo.gradio_ui import build_demo
from demo.predictor import ModelLoadError, Predictor
from tests.conftest import REPO_ROOT
from tests.demo_support import save_tiny_model, serve, write_inputs
from tests.hub_standin import hub_standin
from trainer.model_source import ModelSource, SourceKind

pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")

HANG_GUARD_S = 900  # AppTest needs a limit; it only stops a hung run, no work has to beat it


def _probes(tmp_path: Path) -> list[tuple[str, str]]:
    """Pairs of inputs, one naming something that exists on the server and one that does not."""
    model = tmp_path / "models" / "tiny"
    return [
        (str(model), str(tmp_path / "models" / "gone")),
        (f"local-dir:{model}", f"local-dir:{tmp_path / 'gone'}"),
        ("/etc", "/etc-nope"),
        ("/proc/self/cwd", "/proc/self/nowhere"),
        (str(model / "config.json"), str(model / "other.json")),
        (f"{model}/../tiny", f"{model}/../nope"),
    ]


def _same_answer(first: str, first_input: str, second: str, second_input: str) -> bool:
    return first.replace(first_input, "<input>") == second.replace(second_input, "<input>")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("public")
    save_tiny_model(root / "models" / "tiny", pipeline=[{"op": "crop_body"}])
    save_tiny_model(root / "hub" / "visitor", seed=1)
    save_tiny_model(root / "hub" / "operator", seed=2)
    write_inputs(root / "inputs")
    return root


def test_public_mode_is_detected_and_can_be_forced() -> None:
    assert not is_public({}, bind_address="127.0.0.1") and not is_public({}, bind_address="::1")
    assert not is_public({}, bind_address="localhost")
    assert is_public({}, bind_address="0.0.0.0") and is_public({}, bind_address=None)
    assert is_public({"SPACE_ID": "me/chexlab"}, bind_address="127.0.0.1")
    assert is_public({"CHEXLAB_PUBLIC": "1"}, bind_address="127.0.0.1")
    assert not is_public({"CHEXLAB_PUBLIC": "0", "SPACE_ID": "me/chexlab"}, bind_address="0.0.0.0")
    with pytest.raises(ValueError, match="CHEXLAB_PUBLIC must be 1"):
        is_public({"CHEXLAB_PUBLIC": "maybe"})


def test_catalog_refuses_every_path_with_one_answer(root: Path) -> None:
    catalog = ModelCatalog.of({"tiny": root / "models" / "tiny"}, public=True)
    assert catalog.resolve("tiny").source.kind is SourceKind.LOCAL  # the operator's folder is fine
    for there, missing in _probes(root):
        answers = []
        for text in (there, missing):
            with pytest.raises(ModelLoadError) as caught:
                catalog.resolve(text)
            answers.append(str(caught.value))
        assert _same_answer(answers[0], there, answers[1], missing), answers
        assert "offered models (tiny)" in answers[0] and "folder" not in answers[0]
    local = ModelCatalog.of({"tiny": root / "models" / "tiny"})
    assert local.resolve(str(root / "models" / "tiny")).name == "tiny"  # locally, folders still work


def test_visitor_hub_ids_are_anonymous_and_validated(root: Path) -> None:
    catalog = ModelCatalog.of(
        {"tiny": root / "models" / "tiny", "op": ModelSource.hub("org/op")}, public=True
    )
    typed = catalog.resolve("org/visitor@v2")
    assert (
        typed.source == ModelSource.hub("org/visitor", "v2", anonymous=True) and typed.key == "org/visitor@v2"
    )
    assert catalog.resolve("hf-hub:org/visitor").source.anonymous
    assert catalog.resolve("hf-hub:org/op") == catalog.resolve("op")  # offered: the operator's source
    assert not catalog.resolve("org/op").source.anonymous
    for text in ("hf-hub:../../etc", "hf-hub:" + "x" * 5000, "org/" + "y" * 5000, "org/name@../../x"):
        with pytest.raises(ModelLoadError, match="not a Hugging Face Hub model id|not a Hub revision") as err:
            catalog.resolve(text)
        assert len(str(err.value)) < 500


def test_an_offered_folder_that_fails_names_no_path(root: Path) -> None:
    predictor = Predictor({"gone": root / "models" / "gone"}, public=True)
    with pytest.raises(ModelLoadError) as caught:
        predictor.load("gone")
    assert str(root) not in str(caught.value) and "gone could not be loaded" in str(caught.value)
    assert handlers.load_default(App.of(predictor))[1] == (
        "**The default model could not be loaded.** Load a model from the Hub in the Model panel."
    )


def test_a_visitors_model_stays_in_their_session(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler behind the model menu and the Hub box, with two sessions' gr.State values."""
    app = App.of(Predictor({"tiny": root / "models" / "tiny"}, public=True))
    with hub_standin({"org/visitor": root / "hub" / "visitor"}, monkeypatch):
        first = handlers.choose_model(app, "org/visitor", "tiny", [], progress=lambda *a, **k: None)
    menu, previous, session = first[:3]
    assert previous == "org/visitor" and session == [["org/visitor", "org/visitor"]]
    assert ("org/visitor", "org/visitor") in menu["choices"]
    second = handlers.choose_model(app, "tiny", "tiny", [], progress=lambda *a, **k: None)
    assert second[0]["choices"] == [("tiny", "tiny")] and second[2] == []  # another session: offered only
    assert app.predictor.choices() == ["tiny"]


# ------------------------------------------------------------------------------- a real server, loopback


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[str]:
    predictor = Predictor(
        {"tiny": root / "models" / "tiny", "org/operator": ModelSource.hub("org/operator")},
        public=True,
        max_pixels=5_000_000,
    )
    with serve(lambda: build_demo(predictor, examples=[]), root / "cache") as url:
        yield url


def _client(url: str, root: Path) -> Client:
    return Client(url, verbose=False, download_files=str(root / "downloads"))


def _error(call) -> str:
    with pytest.raises(AppError) as caught:
        call()
    return str(caught.value)


def test_paths_get_the_same_answer_through_the_api(server: str, root: Path) -> None:
    client = _client(server, root)
    image = handle_file(str(root / "inputs" / "chest.png"))

    def compare(text: str) -> str:  # /compare answers in place: its headline and its CSV
        headline, _, _, _, csv_path, _ = client.predict(
            "Models side by side", ["tiny", text], None, [], [image], False, "Top class", "Grad-CAM",
            api_name="/compare",
        )  # fmt: skip
        return headline + Path(csv_path).read_text()

    calls = {
        "/predict": lambda text: _error(lambda: client.predict(image, model=text, api_name="/predict")),
        "/explain": lambda text: _error(lambda: client.predict(image, model=text, api_name="/explain")),
        "/compare": compare,
    }
    for there, missing in _probes(root):
        for endpoint, call in calls.items():
            first, second = call(there), call(missing)
            assert first != "Error" and "Traceback" not in first, (endpoint, first)
            assert _same_answer(first, there, second, missing), (endpoint, first, second)
            assert str(root) not in first.replace(there, "<input>"), (endpoint, first)


def test_bad_hub_ids_are_messages_not_errors(server: str, root: Path) -> None:
    client = _client(server, root)
    image = handle_file(str(root / "inputs" / "chest.png"))
    for text in ("hf-hub:../../etc", "hf-hub:" + "a" * 5000):
        message = _error(lambda text=text: client.predict(image, model=text, api_name="/predict"))
        assert "not a Hugging Face Hub model id" in message and len(message) < 600


def test_visitor_hub_ids_are_fetched_without_the_servers_token(
    server: str, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_space_owner_secret")
    client = _client(server, root)
    image = handle_file(str(root / "inputs" / "chest.png"))
    repos = {"org/visitor": root / "hub" / "visitor", "org/operator": root / "hub" / "operator"}
    with hub_standin(repos, monkeypatch) as hub:
        typed = client.predict(image, model="org/visitor", api_name="/predict")
        offered = client.predict(image, model="org/operator", api_name="/predict")
        missing = _error(lambda: client.predict(image, model="org/private", api_name="/predict"))
    assert "threshold" in typed[1] and "threshold" in offered[1]
    visitor = hub.headers_for("org/visitor")
    assert visitor and all("authorization" not in headers for headers in visitor)
    assert all(
        h.get("authorization") == "Bearer hf_space_owner_secret" for h in hub.headers_for("org/operator")
    )
    assert "private or gated)" in missing and "hf auth login" not in missing
    assert all("authorization" not in headers for headers in hub.headers_for("org/private"))

    # Another session sees only the offered models, in its menu and in every message.
    other = _client(server, root)
    refused = _error(lambda: other.predict(image, model="nope", api_name="/predict"))
    assert "offered models (tiny, org/operator)" in refused and "visitor" not in refused
    config = other.config
    menus = [c["props"] for c in config["components"] if c.get("props", {}).get("elem_id") == "model"]
    assert [choice[1] for choice in menus[0]["choices"]] == ["tiny", "org/operator"]


# --------------------------------------------------------------------------------------- Streamlit page


@pytest.fixture
def public_page(root: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    images = root / "images"
    images.mkdir(exist_ok=True)
    (images / "chest.png").write_bytes((root / "inputs" / "chest.png").read_bytes())
    monkeypatch.setenv("CHEXLAB_PUBLIC", "1")
    monkeypatch.setenv("CHEXLAB_COMPARE_MODELS", f"{root / 'models' / 'tiny'},{root / 'hub' / 'visitor'}")
    monkeypatch.setenv("CHEXLAB_COMPARE_FOLDER", str(images))
    monkeypatch.setenv("CHEXLAB_EXAMPLES", "")
    at = AppTest.from_file(str(REPO_ROOT / "demo" / "compare.py"), default_timeout=HANG_GUARD_S)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_streamlit_page_in_public_mode(public_page: AppTest, root: Path) -> None:
    at = public_page
    assert not at.text_input  # no folder box: the operator's preset folder only
    assert at.multiselect(key="models").value == ["tiny", "visitor"]  # the operator's presets
    assert at.radio[1].options == ["Examples", "Folder", "Upload"]
    answers = []
    for text in (str(root / "models" / "tiny"), str(root / "models" / "gone")):
        at.multiselect(key="models").set_value(["tiny", text]).run()
        errors = [str(e.value) for e in at.error]
        assert errors and not at.exception
        answers.append(errors[0].replace(text, "<input>"))
    assert answers[0] == answers[1] and str(root) not in answers[0]
    at.multiselect(key="models").set_value(["tiny", "visitor"]).run()
    at.button(key="run").click().run()
    assert not at.exception and list(at.dataframe[0].value["column"]) == ["tiny", "visitor"]
    body = " ".join(str(e.value) for e in [*at.markdown, *at.caption, *at.error, *at.info, *at.success])
    assert str(root) not in body
