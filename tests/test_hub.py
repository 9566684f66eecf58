"""trainer.hub.push_folder: checks before sending, exactly what is sent, dry runs, token hygiene, failures.

Only HfApi's network calls are replaced; everything else (card rendering, reload check) runs for real.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2
import pytest
import torch
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from hub_cards import write_card
from tests.fake_run import PIPELINE, make_run_folder
from trainer import hub
from trainer.cli import main as cli_main
from trainer.export import save_pretrained
from trainer.hub import PushError, push_folder
from trainer.integrity import write_checksums
from trainer.modeling import create_classifier

FAKE_TOKEN = "hf_" + "FakeFakeFakeFakeFakeFakeFake1234"


def _run_folder(root: Path, *, poison: bool = False) -> Path:
    run_dir = make_run_folder(root / "run", task="binary", arch="test_efficientnet")
    torch.manual_seed(0)
    model = create_classifier("test_efficientnet", 1).eval()
    if poison:
        with torch.no_grad():
            model.get_classifier().bias.fill_(float("nan"))
    save_pretrained(
        model, run_dir / "model", task="binary", label_names=["pneumonia"], negative_name="normal",
        pipeline=PIPELINE, thresholds=[0.4], input_size=32,
    )  # fmt: skip
    return run_dir


def _hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


class FakeHub:
    """Stands in for HfApi's network methods; records each call and what upload_folder would read."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.tokens: list[str | None] = []
        self.uploaded: dict[str, str] = {}
        self.sizes: dict[str, int] = {}
        self.readme = ""
        self.fail = fail

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
        fake = self

        def create_repo(self: HfApi, repo_id: str, **kwargs: Any) -> str:
            fake.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
            fake.tokens.append(self.token)
            return f"https://huggingface.co/{repo_id}"

        def create_branch(self: HfApi, repo_id: str, **kwargs: Any) -> None:
            fake.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

        def upload_folder(self: HfApi, **kwargs: Any) -> SimpleNamespace:
            fake.calls.append(("upload_folder", kwargs))
            fake.tokens.append(self.token)
            if fake.fail is not None:
                raise fake.fail
            folder = Path(kwargs["folder_path"])
            for name, digest in _hashes(folder).items():
                if any(fnmatch.fnmatch(name, pattern) for pattern in kwargs["allow_patterns"]):
                    fake.uploaded[name] = digest
                    fake.sizes[name] = (folder / name).stat().st_size
            fake.readme = (folder / "README.md").read_text()
            return SimpleNamespace(
                commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc",
                pr_url=f"https://huggingface.co/{kwargs['repo_id']}/discussions/1",
            )

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_branch", create_branch)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
        monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
        return self


def test_push_run_folder_sends_exactly_the_model_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeHub().install(monkeypatch)
    run_dir = _run_folder(tmp_path)
    before = _hashes(run_dir)

    result = push_folder(run_dir, "chexlab-test/tiny", private=True)

    assert _hashes(run_dir) == before  # the card was rendered into a staging copy, not the local folder
    model_dir = run_dir / "model"
    assert [name for name, _ in fake.calls] == ["create_repo", "upload_folder"]
    assert fake.calls[0][1] == {
        "repo_id": "chexlab-test/tiny",
        "private": True,
        "exist_ok": True,
        "repo_type": "model",
    }
    upload = fake.calls[1][1]
    assert upload["repo_id"] == "chexlab-test/tiny"
    assert Path(upload["folder_path"]) != model_dir and not Path(upload["folder_path"]).exists()
    assert (upload["repo_type"], upload["create_pr"], upload["revision"]) == ("model", False, None)
    expected = {"README.md", "config.json", "model.safetensors", "plots/roc.png", "plots/confusion.png",
                "plots/training_curves.png"}  # fmt: skip
    assert set(fake.uploaded) == expected
    local = _hashes(model_dir)
    assert {name: fake.uploaded[name] for name in local} == local  # weights and config as they are
    for name in ("roc.png", "confusion.png", "training_curves.png"):  # the run's plots, for the card's links
        assert fake.uploaded[f"plots/{name}"] == _hashes(run_dir / "plots")[name]
    assert fake.tokens == [FAKE_TOKEN, FAKE_TOKEN]
    # the card was rendered for this repo
    assert 'load_model("hf-hub:chexlab-test/tiny")' in fake.readme
    assert result.url == "https://huggingface.co/chexlab-test/tiny/commit/abc"
    assert dict(result.files) == fake.sizes


def test_create_pr_and_revision_are_passed_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeHub().install(monkeypatch)
    run_dir = _run_folder(tmp_path)

    result = push_folder(run_dir, "org/name", create_pr=True, revision="dev")
    assert [name for name, _ in fake.calls] == ["create_repo", "upload_folder"]
    assert (fake.calls[1][1]["create_pr"], fake.calls[1][1]["revision"]) == (True, "dev")
    assert fake.calls[0][1]["private"] is False
    assert result.url.endswith("/discussions/1")

    fake.calls.clear()
    write_card(run_dir, run_dir / "model")  # as `fit` writes it
    push_folder(run_dir / "model", "org/name", revision="dev")  # a model folder with its card
    assert [name for name, _ in fake.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert fake.calls[1][1] == {
        "repo_id": "org/name",
        "branch": "dev",
        "exist_ok": True,
        "repo_type": "model",
    }
    assert (fake.calls[2][1]["create_pr"], fake.calls[2][1]["revision"]) == (False, "dev")


def test_dry_run_lists_files_without_network_or_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeHub().install(monkeypatch)
    monkeypatch.setattr(hub, "get_token", lambda: None)
    run_dir = _run_folder(tmp_path)

    before = _hashes(run_dir)
    result = push_folder(run_dir, "org/name", private=True, dry_run=True)

    assert fake.calls == []
    assert _hashes(run_dir) == before
    model_dir = run_dir / "model"
    files = dict(result.files)
    assert set(files) == {"README.md", "config.json", "model.safetensors", "plots/roc.png",
                          "plots/confusion.png", "plots/training_curves.png"}  # fmt: skip
    assert files["model.safetensors"] == (model_dir / "model.safetensors").stat().st_size
    text = str(result)
    assert text.startswith("dry run: would upload 6 files")
    assert "https://huggingface.co/org/name" in text and "private" in text
    for name, size in files.items():
        assert re.search(rf"{size:,d}\s+{re.escape(name)}$", text, re.MULTILINE)


def test_cli_dry_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    FakeHub().install(monkeypatch)
    run_dir = _run_folder(tmp_path)
    assert cli_main(["push", str(run_dir), "--repo-id", "org/name", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: would upload" in out and "model.safetensors" in out


def test_token_is_never_logged_printed_or_written(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = FakeHub().install(monkeypatch)
    run_dir = _run_folder(tmp_path)
    caplog.set_level(logging.DEBUG)

    result = push_folder(run_dir, "org/name")
    print(result, repr(result))
    assert cli_main(["push", str(run_dir), "--repo-id", "org/name"]) == 0

    assert fake.tokens and set(fake.tokens) == {FAKE_TOKEN}  # it was used ...
    captured = capsys.readouterr()
    assert FAKE_TOKEN not in caplog.text  # ... and never shown
    assert FAKE_TOKEN not in captured.out + captured.err
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path


@pytest.mark.parametrize(
    "error",
    [
        HfHubHTTPError(
            "500 Server Error",
            response=httpx2.Response(500, request=httpx2.Request("POST", "https://huggingface.co")),
        ),
        httpx2.ConnectError("connection reset by peer"),
        TimeoutError("timed out"),
        OfflineModeIsEnabled("HF_HUB_OFFLINE is set"),
    ],
    ids=["http-500", "connection-reset", "timeout", "offline"],
)
def test_failed_push_leaves_folder_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    fake = FakeHub(fail=error).install(monkeypatch)
    run_dir = _run_folder(tmp_path)
    write_card(run_dir, run_dir / "model")  # a local card, as `fit` writes it; the push renders another
    before = _hashes(run_dir)

    with pytest.raises(PushError, match="run the same command again") as failure:
        push_folder(run_dir, "org/name")

    assert _hashes(run_dir) == before  # not a byte changed, README.md included
    assert "org/name" in str(failure.value) and "is unchanged" in str(failure.value)
    assert [name for name, _ in fake.calls] == ["create_repo", "upload_folder"]


def test_refused_before_sending(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeHub().install(monkeypatch)
    run_dir = _run_folder(tmp_path)
    model_dir = run_dir / "model"

    with pytest.raises(PushError, match="no README.md"):
        push_folder(model_dir, "org/name")  # a model folder whose card was never written
    with pytest.raises(PushError, match="invalid repo id|needs a namespace"):
        push_folder(run_dir, "not a repo id")
    with pytest.raises(PushError, match="needs a namespace"):
        push_folder(run_dir, "name-only")
    with pytest.raises(PushError, match="neither a run folder"):
        push_folder(tmp_path, "org/name")

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(hub, "get_token", lambda: None)
    before = _hashes(run_dir)
    with pytest.raises(PushError, match="hf auth login"):
        push_folder(run_dir, "org/name")
    assert _hashes(run_dir) == before

    (model_dir / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(PushError, match="pickle"):
        push_folder(run_dir, "org/name", dry_run=True)
    assert fake.calls == []


def test_folder_that_does_not_reload_is_not_pushed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeHub().install(monkeypatch)
    run_dir = _run_folder(tmp_path / "nan", poison=True)
    with pytest.raises(PushError, match="non-finite"):
        push_folder(run_dir, "org/name")

    broken = _run_folder(tmp_path / "broken")
    (broken / "model" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(PushError, match="does not load"):
        push_folder(broken, "org/name")
    assert fake.calls == []


def test_a_model_folder_damaged_after_the_run_is_not_pushed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeHub().install(monkeypatch)
    run_dir = _run_folder(tmp_path)
    write_checksums(run_dir)  # as `fit` does last
    weights = run_dir / "model" / "model.safetensors"
    damaged = bytearray(weights.read_bytes())
    damaged[-100] ^= 0xFF  # inside a tensor: the file still loads and gives finite outputs
    weights.write_bytes(bytes(damaged))

    with pytest.raises(PushError, match=r"model\.safetensors does not match the checksum the run recorded"):
        push_folder(run_dir, "org/name")
    assert fake.calls == []

    weights.write_bytes(bytes(damaged[:-100]) + bytes([damaged[-100] ^ 0xFF]) + bytes(damaged[-99:]))
    push_folder(run_dir, "org/name")  # intact again
    assert [name for name, _ in fake.calls] == ["create_repo", "upload_folder"]
