"""Shared pytest fixtures: offline Hub, a private HF cache, and the real data in ../shared."""

from __future__ import annotations

import os
from pathlib import Path

# huggingface_hub reads these once, at import time: set them before anything imports it.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CHEXLAB_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(autouse=True)
def offline_hub(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test runs offline against an empty, private Hugging Face cache."""
    hf_home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setenv("CHEXLAB_CACHE", str(hf_home / "chexlab"))  # file checks, record indexes
    return hf_home


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or a skip (with the reason) when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs the real data at {path} (../shared beside the checkout); not present here")
    return path


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or skip."""
    return shared_path("data")
