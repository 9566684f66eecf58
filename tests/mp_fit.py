"""`accelerate launch tests/mp_fit.py SPY_DIR ARGS`: `python -m trainer ARGS` with spies (multi-process test).

Each process appends JSON lines to SPY_DIR/rank<N>.jsonl: the split-local positions of every training batch it
ran ({"epoch", "rows"}) and every run-folder write it made ({"write": name}). With
CHEXLAB_TEST_EXIT_AFTER_EPOCH=N the main process dies right after writing epoch N's checkpoint, as in a crash.
The spies call through to the real functions: the run itself is unchanged.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from trainer import engine, run_data
from trainer.cli import main


def _install(spy_dir: Path) -> None:
    rank = int(os.environ.get("RANK", "0"))
    log = (spy_dir / f"rank{rank}.jsonl").open("a")

    def record(event: dict[str, Any]) -> None:
        log.write(json.dumps(event) + "\n")
        log.flush()

    class RecordingLoader:
        def __init__(self, loader: Any, epoch: int) -> None:
            self.loader, self.epoch = loader, epoch

        def __len__(self) -> int:
            return len(self.loader)

        def __iter__(self):
            for batch in self.loader:
                record({"epoch": self.epoch, "rows": batch[2].tolist()})
                yield batch

    train_one_epoch = engine.train_one_epoch

    def spied_train(model: Any, loader: Any, *args: Any, **kwargs: Any) -> Any:
        return train_one_epoch(model, RecordingLoader(loader, kwargs["epoch"]), *args, **kwargs)

    engine.train_one_epoch = spied_train

    def spy_write(module: Any, name: str) -> None:
        real = getattr(module, name)

        def spied(*args: Any, **kwargs: Any) -> Any:
            record({"write": name})
            result = real(*args, **kwargs)
            exit_after = os.environ.get("CHEXLAB_TEST_EXIT_AFTER_EPOCH")
            if name == "save_checkpoint" and exit_after and args[1]["state"]["epoch"] == int(exit_after):
                os._exit(3)
            return result

        setattr(module, name, spied)

    for name in ("save_config", "save_checkpoint", "_write_history", "finish_run", "atomic_write"):
        spy_write(engine, name)
    spy_write(run_data, "write_split")


if __name__ == "__main__":
    _install(Path(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
