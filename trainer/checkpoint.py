"""Atomic training checkpoints, so that a crash or a kill loses at most the epoch in progress.

A checkpoint holds the model and optimiser state plus plain-data training state; it is loaded with
`torch.load(weights_only=True)`, which refuses anything but tensors and plain containers.
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_NAME = "checkpoint.pt"


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


def save_checkpoint(run_dir: Path, payload: dict[str, Any]) -> Path:
    """Write `payload` (state dicts and plain data) to RUN_DIR/checkpoint.pt atomically."""
    path = run_dir / CHECKPOINT_NAME
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """Read RUN_DIR/checkpoint.pt.

    Raises:
        FileNotFoundError: the run folder has no checkpoint to resume from.
    """
    path = run_dir / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}: the run ended before its first epoch finished; "
            "start it again without --resume"
        )
    return torch.load(path, map_location="cpu", weights_only=True)
