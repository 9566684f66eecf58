"""`accelerate launch` with two CPU processes (gloo): sharding, one writer, resume, gathered predictions.

Two processes with 8 images each per step do what one process with 16 images per step does, when nothing in
the step depends on the batch split: no BatchNorm (the simple CNN has none), no dropout, no augmentation. The
gradients are averaged across processes, the mean of two means of 8 equals the mean of 16, and the seeded
sampler hands out the same images per step. So the runs agree up to float rounding in the all-reduce: 1e-4 on
losses and probabilities (measured differences are ~1e-6), and identical AUCs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.synthetic import write_binary_dataset
from trainer import engine
from trainer.config import load_config, save_config
from trainer.label_readers import read_csv_labels
from trainer.splits import write_split

REPO = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-4
SETTINGS = [
    "model.arch=chexlab_simple_cnn",
    "model.input_size=64",
    "model.drop_rate=0.0",
    "augment.enabled=false",
    "data.num_workers=0",
    "data.label_column=label",
    "data.task=binary",
    "data.positive=abnormal",
    "data.negative_name=normal",
    "eval.n_bootstrap=20",
    "train.phases=[{epochs: 2, lr: 3.0e-3}]",
]


def _data(root: Path) -> list[str]:
    """48 one-image patients; a split of 32 train (whole batches), 7 val and 9 test (uneven last batches)."""
    write_binary_dataset(root, n_patients=48, images_per_patient=1)
    table = read_csv_labels(root / "labels.csv", label_column="label", positive="abnormal")
    split = np.array(["train"] * 32 + ["val"] * 7 + ["test"] * 9)
    write_split(table, np.random.default_rng(0).permutation(split), root / "split.csv")
    return [f"data.root={root}", "data.labels=labels.csv", f"data.split_file={root / 'split.csv'}"]


def _launch(args: list[str], spy: Path, **env: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(REPO / "tests" / "mp_fit.py"), str(spy), *args,
    ]  # fmt: skip
    spy.mkdir(exist_ok=True)
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(REPO), **env}
    return subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=900)


def _events(spy: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (spy / f"rank{rank}.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_two_processes_match_one_and_resume(tmp_path: Path) -> None:
    data = _data(tmp_path / "data")
    reference = engine.fit(
        load_config(None, [*SETTINGS, *data, "train.batch_size=16", f"output_dir={tmp_path}", "name=one"]),
        progress=False,
    )
    config = tmp_path / "two.yaml"
    two = load_config(None, [*SETTINGS, *data, "train.batch_size=8", f"output_dir={tmp_path}", "name=two"])
    save_config(two, config)
    run = tmp_path / "two"

    # A crash right after epoch 1's checkpoint, then --resume on the same two processes.
    crashed = _launch(["fit", "--config", str(config), "--no-progress"], tmp_path / "spy1",
                      CHEXLAB_TEST_EXIT_AFTER_EPOCH="1")  # fmt: skip
    assert crashed.returncode != 0 and (run / "checkpoint.pt").is_file(), crashed.stderr[-3000:]
    assert not (run / "metrics.json").exists()
    resumed = _launch(["fit", "--resume", str(run), "--no-progress"], tmp_path / "spy2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr and "after epoch 1" in resumed.stderr

    # Each step, the two processes ran disjoint halves of the training set; together, all of it.
    for spy, epochs in ((tmp_path / "spy1", [0]), (tmp_path / "spy2", [1])):
        for epoch in epochs:
            rows = [
                [r for e in _events(spy, rank) if e.get("epoch") == epoch for r in e["rows"]]
                for rank in (0, 1)
            ]
            assert len(rows[0]) == len(rows[1]) == 16 and not set(rows[0]) & set(rows[1])
            assert sorted(rows[0] + rows[1]) == list(range(32))
        # Only the main process wrote to the run folder.
        assert any("write" in e for e in _events(spy, 0))
        assert not [e for e in _events(spy, 1) if "write" in e]

    # Every test and validation image was predicted exactly once, despite the padded uneven last batches.
    split = pd.read_csv(tmp_path / "data" / "split.csv")
    for part, size in (("test", 9), ("val", 7)):
        ours = pd.read_csv(run / f"predictions_{part}.csv").set_index("path").sort_index()
        theirs = pd.read_csv(reference / f"predictions_{part}.csv").set_index("path").sort_index()
        assert len(ours) == size and ours.index.is_unique
        assert sorted(ours.index) == sorted(split.loc[split["split"] == part, "path"])
        np.testing.assert_allclose(ours["prob_abnormal"], theirs["prob_abnormal"], atol=TOLERANCE)

    # The two-process run's numbers are the one-process run's.
    history, expected = pd.read_csv(run / "metrics.csv"), pd.read_csv(reference / "metrics.csv")
    for column in ("train_loss", "val_loss", "val_auc"):
        np.testing.assert_allclose(history[column], expected[column], rtol=TOLERANCE, atol=TOLERANCE)
    ours = json.loads((run / "metrics.json").read_text())["test"]["headline"]
    theirs = json.loads((reference / "metrics.json").read_text())["test"]["headline"]
    assert ours["auc"]["value"] == theirs["auc"]["value"]
