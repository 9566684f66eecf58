"""trainer.model_source: one parser for every source string, Hub ids validated before any request, and
anonymous Hub fetches that never carry this machine's token (checked against a stand-in Hub on loopback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.demo_support import save_tiny_model
from tests.hub_standin import hub_standin
from trainer.export import load_model
from trainer.model_source import (
    INIT_KINDS,
    ModelLoadError,
    ModelSource,
    ModelSourceError,
    SourceKind,
    anonymous_cache_dir,
    read_model_folder,
)


@pytest.mark.parametrize(
    ("text", "kind", "location", "revision"),
    [
        ("hf-hub:org/name", SourceKind.HUB, "org/name", None),
        ("hf-hub:org/name@v2", SourceKind.HUB, "org/name", "v2"),
        ("hf-hub:org/name@refs/pr/1", SourceKind.HUB, "org/name", "refs/pr/1"),
        ("local-dir:/models/a", SourceKind.LOCAL, "/models/a", None),
        ("file:/w/lite0.safetensors", SourceKind.FILE, "/w/lite0.safetensors", None),
        ("timm", SourceKind.TIMM, "", None),
        ("timm:in1k", SourceKind.TIMM, "in1k", None),
    ],
)
def test_a_prefix_decides(text: str, kind: SourceKind, location: str, revision: str | None) -> None:
    source = ModelSource.parse(text, kinds=INIT_KINDS)
    assert (source.kind, source.location, source.revision) == (kind, location, revision)
    assert str(source) == text and ModelSource.parse(str(source), kinds=INIT_KINDS) == source


def test_a_bare_string_is_what_the_caller_says_never_guessed(tmp_path: Path) -> None:
    for text in ("org/name", "runs/nih-binary", "x.safetensors"):
        with pytest.raises(ModelSourceError, match="has no prefix"):
            ModelSource.parse(text, kinds=INIT_KINDS)
        # A command line that takes folders: even an id-shaped string is a folder.
        assert ModelSource.parse(text, bare=SourceKind.LOCAL) == ModelSource(SourceKind.LOCAL, text)
    assert ModelSource.parse(tmp_path, bare=SourceKind.LOCAL).path == tmp_path
    # Prefixes outside `kinds` are not recognised: loading a model knows no file: or timm.
    assert ModelSource.parse("timm", bare=SourceKind.LOCAL).kind is SourceKind.LOCAL
    assert ModelSource.parse("file:x.safetensors", bare=SourceKind.LOCAL).location == "file:x.safetensors"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hf-hub:../../etc", "not a Hugging Face Hub model id"),
        ("hf-hub:" + "a" * 5000, "not a Hugging Face Hub model id"),
        ("hf-hub:org/name@../../refs", "not a Hub revision"),
        ("hf-hub:org//name", "not a Hugging Face Hub model id"),
        ("hf-hub:", "is not of the form hf-hub:org/name"),
        ("local-dir:", "is not of the form local-dir:PATH"),
    ],
)
def test_invalid_sources_are_messages(text: str, message: str) -> None:
    with pytest.raises(ModelSourceError, match=message) as caught:
        ModelSource.parse(text)
    assert len(str(caught.value)) < 400  # a 5,000-character input is not quoted back whole


def test_file_sources_are_safetensors() -> None:
    with pytest.raises(ModelSourceError, match="arbitrary code"):
        ModelSource.parse("file:weights.pth", kinds=INIT_KINDS)
    with pytest.raises(ModelSourceError, match="not a .safetensors file"):
        ModelSource.parse("file:weights.npz", kinds=INIT_KINDS)


def test_names_and_revisions() -> None:
    hub = ModelSource.hub("org/name")
    assert hub.name == "org/name" and hub.with_revision("v1").name == "org/name@v1"
    assert ModelSource.parse("local-dir:/a/b/tiny").name == "tiny"
    with pytest.raises(ModelSourceError, match="applies to hf-hub sources"):
        ModelSource.parse("local-dir:/a").with_revision("v1")
    with pytest.raises(ModelLoadError, match="applies to hf-hub sources"):
        load_model("local-dir:/a", revision="v1")


def test_run_folders_and_missing_folders(tmp_path: Path) -> None:
    save_tiny_model(tmp_path / "run" / "model")
    config, _ = read_model_folder(ModelSource.parse(tmp_path / "run", bare=SourceKind.LOCAL))
    assert config["chexlab"]["task"] == "binary"
    with pytest.raises(ModelSourceError, match="not found: .* is not a directory"):
        read_model_folder(f"local-dir:{tmp_path / 'nowhere'}")
    with pytest.raises(ModelSourceError, match="holds initial weights"):
        read_model_folder(ModelSource.parse("timm", kinds=INIT_KINDS))


def test_anonymous_hub_fetches_carry_no_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_tiny_model(tmp_path / "tiny")
    monkeypatch.setenv("HF_TOKEN", "hf_server_secret")
    with hub_standin({"org/tiny": tmp_path / "tiny", "org/other": tmp_path / "tiny"}, monkeypatch) as hub:
        _, info = load_model(ModelSource.hub("org/tiny", anonymous=True))
        assert info.label_names == ["abnormal"] and info.source.anonymous
        anonymous = hub.headers_for("org/tiny")
        assert anonymous and all("authorization" not in headers for headers in anonymous)
        load_model("hf-hub:org/other")  # an operator's id: the machine's own login applies
        assert all(h.get("authorization") == "Bearer hf_server_secret" for h in hub.headers_for("org/other"))
        with pytest.raises(
            ModelLoadError, match="no Hub repository org/missing .or it is private or gated.$"
        ):
            load_model(ModelSource.hub("org/missing", anonymous=True))
    # Anonymous downloads have a cache of their own: nothing fetched with the token is served to them.
    assert any(anonymous_cache_dir().glob("models--org--tiny"))
    assert not any(anonymous_cache_dir().glob("models--org--other"))
