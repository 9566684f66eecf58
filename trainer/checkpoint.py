"""Training checkpoints that a crash, a kill or a damaged disk cannot turn into lost or wrong work.

A checkpoint holds the model and optimiser state plus plain-data training state. Its file starts with a
one-line header carrying the sha256 of the rest, and it records the sha256 of the files the run depends on
(config.yaml, split.csv, the best weights), so `--resume` can check everything before any work starts. The
payload is read with `torch.load(weights_only=True)`, which refuses anything but tensors and plain
containers, and only after its checksum matched. Each save keeps the checkpoint and the best weights it
replaces as `*.previous.*`, so a damaged latest checkpoint still leaves the previous epoch to resume from.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

from trainer.errors import ChexlabError
from trainer.integrity import sha256_file

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.previous.pt"
BEST_WEIGHTS = "best.safetensors"
PREVIOUS_BEST = "best.previous.safetensors"
RUN_INPUTS = ("config.yaml", "split.csv")  # written once when a run starts; every checkpoint vouches for them
_MAGIC = b"CHEXLAB-CHECKPOINT"
_FORMAT = b"1"
_PAYLOAD_KEYS = ("model", "optimizer", "scheduler", "phase", "updates", "state", "rng", "files")


class CheckpointError(ChexlabError, RuntimeError):
    """A checkpoint, or a file it vouches for, is damaged or not chexlab's; the message says what to do."""


class NoCheckpoint(CheckpointError, FileNotFoundError):
    """The run folder has no checkpoint: the run stopped before its first epoch finished."""


@dataclass
class TrainState:
    """Plain-data progress of a run, saved in every checkpoint."""

    epoch: int = 0  # epochs completed, over all phases
    best_score: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0  # epochs since the last improvement, within the current phase
    history: list[dict[str, float]] = field(default_factory=list)


def atomic_write(path: Path, write: Any) -> None:
    """Call `write(tmp_path)`, then move the result over `path` in one step.

    `os.replace` is atomic on POSIX, so readers (and a resumed run after a SIGKILL) see either the old
    file or the new one, never a half-written one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def rng_state() -> dict[str, Any]:
    """The random generators' states, so a resumed run draws what an uninterrupted one would."""
    numpy_state = np.random.get_state(legacy=False)["state"]  # MT19937: {"key": uint32 (624,), "pos": int}
    return {
        "python": random.getstate(),
        "numpy": torch.from_numpy(numpy_state["key"].astype(np.int64)),
        "numpy_pos": int(numpy_state["pos"]),
        "torch": torch.get_rng_state(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])


def _write_rotating(path: Path, previous: Path, data: bytes) -> None:
    """Write `data` to `path` in one step, keeping the file it replaces as `previous`.

    A kill between the two renames leaves `path` missing and `previous` intact, which `check_resume` reads
    as an interrupted save.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _contiguous(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}


def save_checkpoint(
    run_dir: Path, payload: dict[str, Any], *, best_weights: dict[str, torch.Tensor] | None = None
) -> Path:
    """Write RUN_DIR/checkpoint.pt (and, given `best_weights`, RUN_DIR/best.safetensors first).

    The best weights go first and the checkpoint that vouches for them second, so that whenever the process
    dies, the newest complete checkpoint and the files it records are on disk under their own or their
    `*.previous.*` names.

    Args:
        run_dir: the run folder (holding config.yaml and split.csv).
        payload: state dicts and plain data, keys `_PAYLOAD_KEYS` except "files".
        best_weights: the model's weights when this epoch is the best so far.
    """
    if best_weights is not None:
        _write_rotating(
            run_dir / BEST_WEIGHTS, run_dir / PREVIOUS_BEST, safetensors_bytes(_contiguous(best_weights))
        )
    files = {
        name: sha256_file(run_dir / name)
        for name in (*RUN_INPUTS, BEST_WEIGHTS)
        if (run_dir / name).is_file()
    }
    buffer = io.BytesIO()
    torch.save({**payload, "files": files}, buffer)
    body = buffer.getvalue()
    header = b"%s %s sha256=%s\n" % (_MAGIC, _FORMAT, hashlib.sha256(body).hexdigest().encode())
    path = run_dir / CHECKPOINT_NAME
    _write_rotating(path, run_dir / PREVIOUS_CHECKPOINT, header + body)
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The payload of one checkpoint file, after its checksum matched.

    Raises:
        NoCheckpoint: there is no such file.
        CheckpointError: it is empty, not a chexlab checkpoint, damaged, or holds more than plain data.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NoCheckpoint(f"no checkpoint at {path}") from None
    if not data:
        raise CheckpointError(f"{path} is empty (0 bytes)")
    header, newline, body = data[:200].partition(b"\n")
    fields = header.split(b" ")
    if not newline or len(fields) != 3 or fields[0] != _MAGIC or not fields[2].startswith(b"sha256="):
        raise CheckpointError(f"{path} is not a chexlab checkpoint (its first line is not chexlab's header)")
    if fields[1] != _FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {fields[1].decode(errors='replace')}, not 1")
    body = data[len(header) + 1 :]
    if hashlib.sha256(body).hexdigest() != fields[2].removeprefix(b"sha256=").decode(errors="replace"):
        raise CheckpointError(
            f"{path} is damaged: its {len(data):,} bytes do not match the checksum in its header"
        )
    try:
        with (
            warnings.catch_warnings()
        ):  # torch's warnings about odd pickles talk of weights_only: not for users
            warnings.simplefilter("ignore")
            payload = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (the bytes match their checksum, so only a file made by
        # something other than chexlab gets here; whatever torch raises, the answer is the same, and its
        # own message, which may suggest unpickling, must not reach the user)
        log.debug("torch.load refused %s: %s", path, type(err).__name__)
        raise CheckpointError(
            f"{path} holds something other than tensors and plain data, so it was refused unread "
            "(chexlab did not write it)"
        ) from None
    missing = [key for key in _PAYLOAD_KEYS if not isinstance(payload, dict) or key not in payload]
    if missing:
        raise CheckpointError(
            f"{path} lacks {', '.join(missing)}: it was not written by this version of chexlab"
        )
    return payload


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The payload of RUN_DIR/checkpoint.pt (checked against its own checksum only; see `check_resume`)."""
    return read_checkpoint(run_dir / CHECKPOINT_NAME)


@dataclass(frozen=True)
class ResumePoint:
    """A checkpoint whose own bytes and every file it vouches for are intact."""

    path: Path
    payload: dict[str, Any]
    best: Path | None  # the file holding the best weights it recorded (None: no epoch had a score yet)

    @property
    def epoch(self) -> int:
        """Epochs completed when it was written."""
        return int(self.payload["state"]["epoch"])


@dataclass(frozen=True)
class _Verdict:
    point: ResumePoint | None
    damage: list[str]  # the checkpoint itself or its best weights
    changed_inputs: list[str]  # config.yaml or split.csv differ from what it recorded


def _verify(run_dir: Path, name: str) -> _Verdict:
    try:
        payload = read_checkpoint(run_dir / name)
    except NoCheckpoint:
        return _Verdict(None, [], [])
    except CheckpointError as err:
        return _Verdict(None, [str(err)], [])
    damage, changed, best = [], [], None
    for file, digest in payload["files"].items():
        if file == BEST_WEIGHTS:
            candidates = [run_dir / BEST_WEIGHTS, run_dir / PREVIOUS_BEST]
            best = next((c for c in candidates if c.is_file() and sha256_file(c) == digest), None)
            if best is None:
                damage.append(_differs(run_dir / BEST_WEIGHTS, name))
        elif not (run_dir / file).is_file() or sha256_file(run_dir / file) != digest:
            changed.append(_differs(run_dir / file, name))
    point = ResumePoint(run_dir / name, payload, best) if not (damage or changed) else None
    return _Verdict(point, damage, changed)


def _differs(path: Path, checkpoint: str) -> str:
    if not path.is_file():
        return f"{path} is missing"
    return f"{path} ({path.stat().st_size:,} bytes) does not match the checksum {checkpoint} recorded for it"


def check_resume(run_dir: Path, *, last_good: bool = False) -> ResumePoint:
    """Verify everything `--resume` will read, before any work: the checkpoint, the best weights, the inputs.

    Args:
        run_dir: the run folder.
        last_good: when the latest checkpoint is damaged, resume from the previous epoch's instead.

    Returns:
        The newest checkpoint that is intact with all its files (the previous one only when the latest was
        being replaced as the run stopped, or with `last_good`).

    Raises:
        NoCheckpoint: the run stopped before its first epoch finished.
        CheckpointError: every damaged or changed file, one per line, and what to do.
    """
    latest = _verify(run_dir, CHECKPOINT_NAME)
    if latest.point is not None:
        return latest.point
    previous = _verify(run_dir, PREVIOUS_CHECKPOINT)
    interrupted = not (run_dir / CHECKPOINT_NAME).exists()
    if previous.point is not None and (interrupted or last_good):
        log.warning(
            "resuming %s from %s (after epoch %d)%s",
            run_dir,
            PREVIOUS_CHECKPOINT,
            previous.point.epoch,
            ": the latest checkpoint was being replaced when the run stopped" if interrupted else "",
        )
        return previous.point
    if interrupted and previous.point is None and not (previous.damage or previous.changed_inputs):
        raise NoCheckpoint(
            f"no checkpoint in {run_dir}: the run stopped before its first epoch finished; "
            "start it again without --resume"
        )
    problems = latest.damage + latest.changed_inputs
    if latest.changed_inputs or previous.changed_inputs:
        problems += [] if latest.changed_inputs else previous.changed_inputs
        advice = (
            f"{' and '.join(RUN_INPUTS)} are written once when a run starts and must not change while it "
            "runs: put the original back, or start a new run. Give settings that only say where the data "
            "is (e.g. data.root) as KEY=VALUE overrides after --resume instead of editing the file."
        )
    elif previous.point is not None:
        advice = (
            f"The previous checkpoint ({PREVIOUS_CHECKPOINT}, after epoch {previous.point.epoch}) and its "
            f"files are intact: resume from it with `python -m trainer fit --resume {run_dir} --last-good` "
            f"(epoch {previous.point.epoch + 1} is trained again), or start a new run."
        )
    else:
        problems += previous.damage
        advice = "No intact checkpoint is left: start the run again in a new run folder (or delete this one)."
    listed = "\n".join(f"  - {problem}" for problem in problems)
    raise CheckpointError(f"cannot resume {run_dir}:\n{listed}\n{advice}")


def adopt(point: ResumePoint) -> None:
    """Make `point` and its best weights the run folder's current files (after resuming from a previous one).

    The next save then keeps `point` as the previous checkpoint instead of the damaged file it replaces.
    """
    run_dir = point.path.parent
    if point.best is not None and point.best.name != BEST_WEIGHTS:
        os.replace(point.best, run_dir / BEST_WEIGHTS)
    if point.path.name != CHECKPOINT_NAME:
        os.replace(point.path, run_dir / CHECKPOINT_NAME)
        log.info("%s is now %s", point.path.name, CHECKPOINT_NAME)
