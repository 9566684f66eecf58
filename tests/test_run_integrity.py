"""`--resume` checks every file of a real run before any work, and says what is damaged and what to do.

One real tiny run (three epochs) is trained once; each test damages a copy of its folder the way disks,
kills and hostile users do, then resumes it through the CLI in-process.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.synthetic import write_binary_dataset
from trainer import engine, run_data
from trainer.checkpoint import (
    BEST_WEIGHTS,
    CHECKPOINT_NAME,
    PREVIOUS_BEST,
    PREVIOUS_CHECKPOINT,
    load_checkpoint,
)
from trainer.cli import main as cli_main
from trainer.config import load_config
from trainer.integrity import damaged_files

EPOCHS = 3
FORBIDDEN = ("Traceback", "weights_only", "unpickl", "Unpickl")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("integrity")
    write_binary_dataset(root / "data", n_patients=24)
    cfg = load_config(
        None,
        [
            f"output_dir={root / 'runs'}",
            "name=run",
            "model.arch=chexlab_simple_cnn",
            "model.input_size=64",
            "data.num_workers=0",
            "eval.n_bootstrap=50",
            f"data.root={root / 'data'}",
            "data.labels=labels.csv",
            "data.label_column=label",
            "data.task=binary",
            "data.positive=abnormal",
            f"train.phases=[{{epochs: {EPOCHS}, lr: 3.0e-3}}]",
            "train.batch_size=8",
            "train.monitor=loss",  # defined on every epoch, so there are best weights to check
        ],
    )
    return engine.fit(cfg, progress=False)


@pytest.fixture
def run(finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the finished run; loading data or building a model before the checks fails the test."""
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the run folder was checked")

    monkeypatch.setattr(run_data, "prepare", no_work)
    monkeypatch.setattr(engine, "create_classifier", no_work)
    return copy


def _resume(run: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = cli_main(["fit", "--no-progress", "--resume", str(run), *extra])
    err = capsys.readouterr().err
    for text in FORBIDDEN:
        assert text not in err, err
    return code, err


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_run_keeps_the_previous_checkpoint_and_best_weights(finished_run: Path) -> None:
    latest = load_checkpoint(finished_run)
    assert latest["state"]["epoch"] == EPOCHS
    assert (finished_run / PREVIOUS_CHECKPOINT).is_file()
    assert latest["files"]["best.safetensors"] == _sha(finished_run / BEST_WEIGHTS)
    assert latest["files"]["config.yaml"] == _sha(finished_run / "config.yaml")
    assert latest["files"]["split.csv"] == _sha(finished_run / "split.csv")
    header = (finished_run / CHECKPOINT_NAME).read_bytes().split(b"\n", 1)[0]
    assert header.startswith(b"CHEXLAB-CHECKPOINT 1 sha256=")
    listed = (finished_run / "SHA256SUMS").read_text()
    for name in (
        "config.yaml",
        "metrics.json",
        "model/model.safetensors",
        "model/README.md",
        CHECKPOINT_NAME,
    ):
        assert f"{_sha(finished_run / name)}  {name}\n" in listed
    assert damaged_files(finished_run) == []


def _reduce_pickle(marker: Path) -> bytes:
    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    return pickle.dumps(Payload())


def _with_valid_header(body: bytes) -> bytes:
    """A hostile body under a header whose checksum matches: only torch.load's own refusal stops it."""
    return b"CHEXLAB-CHECKPOINT 1 sha256=%s\n%s" % (hashlib.sha256(body).hexdigest().encode(), body)


def _flip_64_bytes(data: bytes) -> bytes:
    damaged = bytearray(data)
    generator = torch.Generator().manual_seed(0)
    for position in torch.randint(200, len(data), (64,), generator=generator).tolist():
        damaged[position] ^= 0xFF
    return bytes(damaged)


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        ("empty", "is empty (0 bytes)"),
        ("random", "is not a chexlab checkpoint"),
        ("flipped", "is damaged: its"),
        ("reduce-pickle", "is not a chexlab checkpoint"),
        ("reduce-pickle-with-header", "holds something other than tensors and plain data"),
        ("torch-pickle-with-header", "holds something other than tensors and plain data"),
    ],
)
def test_a_damaged_or_hostile_checkpoint_is_named_before_any_work(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str, says: str
) -> None:
    checkpoint = run / CHECKPOINT_NAME
    marker = tmp_path / "payload-ran"
    if damage == "empty":
        checkpoint.write_bytes(b"")
    elif damage == "random":
        noise = torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
        checkpoint.write_bytes(noise.numpy().tobytes())
    elif damage == "flipped":
        checkpoint.write_bytes(_flip_64_bytes(checkpoint.read_bytes()))
    elif damage == "reduce-pickle":
        checkpoint.write_bytes(_reduce_pickle(marker))
    elif damage == "reduce-pickle-with-header":
        checkpoint.write_bytes(_with_valid_header(_reduce_pickle(marker)))
    else:  # torch's zip format around a __reduce__ payload
        buffer = io.BytesIO()
        torch.save({"model": {}, "evil": _Evil(marker)}, buffer)
        checkpoint.write_bytes(_with_valid_header(buffer.getvalue()))

    code, err = _resume(run, capsys)

    assert code == 2
    assert f"cannot resume {run}" in err and f"{checkpoint} {says}" in err
    assert "--last-good" in err and "after epoch 2" in err  # the previous checkpoint is intact
    assert not marker.exists()


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_last_good_resumes_from_the_previous_epoch(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / CHECKPOINT_NAME).write_bytes(b"")

    code, _ = _resume(run, capsys, "--last-good")

    assert code == 0
    history = pd.read_csv(run / "metrics.csv")
    assert list(history["epoch"]) == list(range(1, EPOCHS + 1))  # epoch 3 trained again, once
    assert load_checkpoint(run)["state"]["epoch"] == EPOCHS
    assert (run / "model" / "model.safetensors").is_file()


def test_a_truncated_best_weights_file_is_found_at_resume_time(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    best = run / BEST_WEIGHTS
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    state = load_checkpoint(run)["state"]

    code, err = _resume(run, capsys)

    assert code == 2
    assert f"{best} ({best.stat().st_size:,} bytes) does not match the checksum checkpoint.pt recorded" in err
    if state["best_epoch"] == EPOCHS:  # the previous checkpoint's best weights are best.previous.safetensors
        assert (run / PREVIOUS_BEST).is_file() and "--last-good" in err
    else:  # both checkpoints vouch for the truncated file
        assert "No intact checkpoint is left" in err


def test_a_kill_between_the_two_renames_resumes_from_the_previous_checkpoint(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / CHECKPOINT_NAME).unlink()  # save_checkpoint moved it to checkpoint.previous.pt, then died

    code, err = _resume(run, capsys)

    assert code == 0, err
    assert list(pd.read_csv(run / "metrics.csv")["epoch"]) == list(range(1, EPOCHS + 1))


def test_a_changed_config_is_named_and_not_trained_with(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("batch_size: 8", "batch_size: 4"))

    code, err = _resume(run, capsys)

    assert code == 2
    assert f"{config} (" in err and "must not change while it runs" in err
    assert "KEY=VALUE overrides after --resume" in err


def test_a_run_without_checkpoint_says_to_start_again(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (run / CHECKPOINT_NAME).unlink()
    (run / PREVIOUS_CHECKPOINT).unlink()

    code, err = _resume(run, capsys)

    assert code == 2
    assert "stopped before its first epoch finished; start it again without --resume" in err
