"""The CLI's error boundary: user errors are one line and exit 2; bugs are a short note, a logged traceback
and exit 70."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer import cli
from trainer.cli import EXIT_BUG, EXIT_USER_ERROR, main


def _png(path: Path) -> Path:
    Image.fromarray((np.arange(64 * 48).reshape(48, 64) % 251).astype(np.uint8)).save(path)
    return path


def test_a_chexlab_error_is_one_line_and_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.strip() == "error: fit needs --config FILE.yaml (or --resume RUN_DIR)"


def test_a_path_through_a_file_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = _png(tmp_path / "chest.png")
    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("a file, not a folder")
    assert main(["preprocess", str(image), "--out", str(not_a_folder / "out")]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Not a directory" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("The size of tensor a (3) must match the size of tensor b (4) at dimension 1"),
        ValueError("operands could not be broadcast together with shapes (3,) (4,)"),
        MemoryError(),
    ],
    ids=["shape-bug", "plain-value-error", "out-of-memory"],
)
def test_anything_else_is_a_bug_with_its_traceback_in_a_log_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: Exception
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr("trainer.contact_sheet.preprocess_files", broken)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # where the CLI writes the log
    assert main(["preprocess", str(_png(tmp_path / "chest.png")), "--out", str(tmp_path / "out")]) == EXIT_BUG
    err = capsys.readouterr().err
    assert err.startswith(f"internal error: {type(error).__name__}")
    assert "This is a bug in chexlab" in err and "Traceback" not in err
    (logged,) = re.findall(r"The traceback is in (\S+);", err)
    text = Path(logged).read_text()
    assert Path(logged).parent == tmp_path
    assert "unexpected error in `python -m trainer preprocess`" in text
    assert "Traceback (most recent call last)" in text and f"{type(error).__name__}" in text
    assert str(error) in text and "in broken" in text


def test_verbose_shows_the_traceback_instead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("trainer.contact_sheet.preprocess_files", broken)
    with pytest.raises(RuntimeError, match="boom"):
        main(["-v", "preprocess", str(_png(tmp_path / "chest.png")), "--out", str(tmp_path / "out")])


def test_user_errors_are_chexlab_errors_and_the_os_errors_a_user_causes() -> None:
    from trainer.config import ConfigError
    from trainer.export import ExportError
    from trainer.hub import PushError
    from trainer.io import XRayReadError
    from trainer.labels import DataError
    from trainer.model_source import ModelLoadError
    from trainer.modeling import ArchitectureError
    from trainer.preprocess import PreprocessError
    from trainer.task import TaskError

    kinds = [ConfigError, DataError, ExportError, ModelLoadError, PushError, XRayReadError, PreprocessError]
    for kind in (*kinds, TaskError, ArchitectureError):
        assert cli.is_user_error(kind("x")), kind
    assert issubclass(DataError, ValueError) and issubclass(PushError, RuntimeError)  # old bases kept
    assert cli.is_user_error(PermissionError(13, "Permission denied"))
    assert cli.is_user_error(OSError(28, "No space left on device"))
    assert not cli.is_user_error(OSError(5, "Input/output error"))
    assert not cli.is_user_error(ValueError("a bare ValueError is a bug"))
