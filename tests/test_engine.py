"""The trainer end to end on synthetic but learnable radiographs: learning, run folder, resume, failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.synthetic import write_binary_dataset, write_multiclass_dataset, write_multilabel_dataset
from trainer import engine
from trainer.checkpoint import load_checkpoint
from trainer.config import ConfigError, load_config
from trainer.evaluate import predict_table
from trainer.export import export_run, load_model
from trainer.metrics import choose_thresholds
from trainer.run_data import load_table
from trainer.task import Task

REPO = Path(__file__).resolve().parent.parent
TINY = ["model.arch=chexlab_simple_cnn", "model.input_size=64", "data.num_workers=0", "eval.n_bootstrap=100"]


def _config(tmp_path: Path, data: list[str], *extra: str):
    return load_config(None, [f"output_dir={tmp_path / 'runs'}", "name=run", *TINY, *data, *extra])


def _binary(tmp_path: Path, n_patients: int = 60) -> list[str]:
    write_binary_dataset(tmp_path / "data", n_patients=n_patients)
    return [
        f"data.root={tmp_path / 'data'}",
        "data.labels=labels.csv",
        "data.label_column=label",
        "data.task=binary",
        "data.positive=abnormal",
        "data.negative_name=normal",
    ]


def test_binary_run_learns_and_writes_a_complete_run_folder(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path, _binary(tmp_path), "train.phases=[{epochs: 6, lr: 3.0e-3}]", "train.batch_size=16"
    )
    run = engine.fit(cfg, progress=False)

    metrics = json.loads((run / "metrics.json").read_text())
    # Chance is 0.5. The test split is small, so float rounding (e.g. the weights' memory layout) moves its
    # AUC by a few hundredths: 0.94 with contiguous weights, 0.90 channels-last (CI 0.73-1.0).
    assert metrics["test"]["headline"]["auc"]["value"] >= 0.85
    assert metrics["test"]["bootstrap"]["unit"] == "patient"
    for name in (
        "config.yaml",
        "split.csv",
        "metrics.csv",
        "run.json",
        "predictions_test.csv",
        "plots/roc.png",
        "plots/confusion.png",
        "plots/training_curves.png",
        "model/config.json",
        "model/model.safetensors",
        "model/README.md",
    ):
        assert (run / name).is_file(), name
    history = pd.read_csv(run / "metrics.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert history["images_per_s"].gt(0).all()
    assert list((run / "tb").glob("events.out.tfevents.*"))

    split = pd.read_csv(run / "split.csv")
    assert split.groupby("patient_id")["split"].nunique().max() == 1  # no patient in two splits

    model, info = load_model(str(run / "model"))
    assert info.task == "binary" and info.label_names == ["abnormal"] and info.negative_name == "normal"
    assert len(info.thresholds) == 1 and 0 < info.thresholds[0] < 1
    assert info.thresholds == metrics["test"]["thresholds"]

    # Calibrated at the end of fit: stored with the model, reported before/after, the OOD gate fitted
    assert (run / "plots" / "reliability.png").is_file() and (run / "model" / "ood.safetensors").is_file()
    assert info.calibration.calibrated and info.calibration.fitted_on == "validation"
    assert metrics["calibration"]["temperatures"] == list(info.calibration.temperatures)
    for name in ("val", "test"):
        assert set(metrics["calibration"]["metrics"][name]) == {"before", "after", "ece_chance_95"}
    # the fitted calibration lowers the NLL it minimises on the validation split
    val_metrics = metrics["calibration"]["metrics"]["val"]
    assert val_metrics["after"]["nll"] <= val_metrics["before"]["nll"] + 1e-9
    assert info.ood is not None and metrics["ood"]["threshold"] == pytest.approx(info.ood.threshold)
    assert metrics["ood"]["n_train"] == int((split["split"] == "train").sum())  # below OOD_TRAIN_IMAGES
    assert (
        metrics["ood"]["n_test"] == metrics["test"]["n_images"] and 0 <= metrics["ood"]["test_flagged"] <= 1
    )
    assert "### Calibration" in (run / "model" / "README.md").read_text()

    # The thresholds are chosen on the calibrated validation probabilities, which predictions_val.csv holds
    val_rows = pd.read_csv(run / "predictions_val.csv")
    table = load_table(load_config(run / "config.yaml").data)
    val_part = table.subset(np.isin([table.ref(i) for i in range(len(table))], val_rows["path"]))
    by_path = dict(
        zip(
            [val_part.ref(i) for i in range(len(val_part))], predict_table(model, info, val_part), strict=True
        )
    )
    raw_val = np.array([by_path[p] for p in val_rows["path"]])
    np.testing.assert_allclose(info.calibrated(raw_val), val_rows["prob_abnormal"], atol=1e-5)
    targets = val_rows["target"].to_numpy()
    calibrated_choice = choose_thresholds(Task.BINARY, targets, val_rows["prob_abnormal"].to_numpy())
    assert info.thresholds == pytest.approx(calibrated_choice)
    assert choose_thresholds(Task.BINARY, targets, raw_val) != pytest.approx(calibrated_choice)

    # `python -m trainer export` ships it in float16: half the size, the same outputs, the card along
    small = export_run(run, tmp_path / "small")
    size = (run / "model" / "model.safetensors").stat().st_size
    assert (small / "model.safetensors").stat().st_size < 0.6 * size
    assert (small / "README.md").is_file() and (small / "plots" / "roc.png").is_file()
    half, _ = load_model(str(small))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), half(x), atol=1e-2)


def test_multiclass_and_multilabel_runs(tmp_path: Path) -> None:
    write_multiclass_dataset(tmp_path / "mc", n_patients=45)
    cfg = _config(
        tmp_path,
        [
            f"data.root={tmp_path / 'mc'}",
            "data.labels=labels.csv",
            "data.label_column=label",
            "data.task=multiclass",
        ],
        "train.phases=[{epochs: 4, lr: 3.0e-3}]",
        "name=mc",
    )
    metrics = json.loads((engine.fit(cfg, progress=False) / "metrics.json").read_text())["test"]
    assert metrics["task"] == "multiclass" and sorted(metrics["label_names"]) == [
        "effusion",
        "normal",
        "opacity",
    ]
    assert metrics["headline"]["auc"]["value"] > 0.6

    write_multilabel_dataset(tmp_path / "ml", n_patients=48)
    cfg = _config(
        tmp_path,
        [f"data.root={tmp_path / 'ml'}", "data.labels=labels.csv", "data.task=multilabel"],
        "train.phases=[{epochs: 3, lr: 3.0e-3}]",
        "train.pos_weight=true",
        "name=ml",
    )
    run = engine.fit(cfg, progress=False)
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert metrics["label_names"] == ["Opacity", "Effusion"]
    assert len(metrics["thresholds"]) == 2
    assert set(metrics["per_class"]) == {"Opacity", "Effusion"}


def test_two_phase_schedule_freezes_then_unfreezes(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path,
        _binary(tmp_path, 24),
        "train.phases=[{epochs: 1, lr: 1.0e-3, freeze_backbone: true}, {epochs: 1, lr: 1.0e-4}]",
    )
    run = engine.fit(cfg, progress=False)
    history = pd.read_csv(run / "metrics.csv")
    assert list(history["phase"]) == [1, 2]
    assert history["lr"].tolist() == pytest.approx([1e-3, 1e-4])


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(
        tmp_path,
        _binary(tmp_path, 24),
        "train.phases=[{epochs: 3, lr: 1.0e-3}]",
        "train.batch_size=8",
        "train.max_steps_per_epoch=2",
    )
    real_loss = Task.loss

    def poisoned(self, *args, **kwargs):
        loss = real_loss(self, *args, **kwargs)
        calls = {"n": 0}
        original = loss.forward

        def forward(logits, targets):
            value = original(logits, targets)
            if not torch.is_grad_enabled():  # validation loss
                return value
            calls["n"] += 1
            return value * float("nan") if calls["n"] == 4 else value  # epoch 2, batch 2 (two batches/epoch)

        loss.forward = forward
        return loss

    monkeypatch.setattr(Task, "loss", poisoned)
    with pytest.raises(engine.TrainingDiverged, match=r"epoch 2, batch 2 \(images: line \d+: images/"):
        engine.fit(cfg, progress=False)
    assert load_checkpoint(cfg.run_dir)["state"]["epoch"] == 1


def test_label_set_must_match_an_initial_chexlab_model(tmp_path: Path) -> None:
    first = engine.fit(
        _config(tmp_path, _binary(tmp_path, 24), "train.phases=[{epochs: 1, lr: 1.0e-3}]"), progress=False
    )
    write_multiclass_dataset(tmp_path / "mc", n_patients=30)
    data = [
        f"data.root={tmp_path / 'mc'}",
        "data.labels=labels.csv",
        "data.label_column=label",
        "data.task=multiclass",
    ]
    with pytest.raises(ValueError, match="model.new_head"):
        engine.fit(
            _config(tmp_path, data, f"model.init=local-dir:{first / 'model'}", "name=transfer"),
            progress=False,
        )
    run = engine.fit(
        _config(
            tmp_path,
            data,
            f"model.init=local-dir:{first / 'model'}",
            "model.new_head=true",
            "name=transfer2",
            "train.phases=[{epochs: 1, lr: 1.0e-3}]",
        ),
        progress=False,
    )
    assert (run / "model" / "model.safetensors").is_file()


def test_resume_after_sigkill_mid_epoch(tmp_path: Path) -> None:
    """Kill a real `python -m trainer fit` process in epoch 2, at a batch it reports, resume it, and end with
    the same epochs."""
    args = [
        *TINY,
        *_binary(tmp_path, 60),
        "train.phases=[{epochs: 2, lr: 1.0e-3}, {epochs: 2, lr: 1.0e-4}]",
        "train.batch_size=4",
        "data.val_fraction=0.1",
        "data.test_fraction=0.1",
    ]
    run = tmp_path / "runs" / "killed"
    cmd = [
        sys.executable,
        "-m",
        "trainer",
        "fit",
        "--no-progress",
        "--output-dir",
        str(run.parent),
        "--name",
        "killed",
    ]
    config = tmp_path / "base.yaml"
    config.write_text("name: killed\n")
    proc = subprocess.Popen(
        [*cmd, "--config", str(config), *args],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1", engine.PAUSE_ENV: "2:3"},
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    marker = engine.PAUSE_MESSAGE % (2, 3)
    seen = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the run waits at the marker until killed
            seen.append(line)
            if marker in line:
                break
        assert marker in "".join(seen), "".join(seen)[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert int(load_checkpoint(run)["state"]["epoch"]) == 1  # epoch 2 was in progress
    assert not (run / "metrics.json").exists()

    resumed = subprocess.run(
        [*cmd[:4], "--no-progress", "--resume", str(run)], cwd=REPO, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    history = pd.read_csv(run / "metrics.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4]  # each epoch exactly once, no more, no fewer
    assert list(history["phase"]) == [1, 1, 2, 2]
    assert json.loads((run / "metrics.json").read_text())["test"]["headline"]["auc"]["value"] is not None


def test_cli_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_szie: 3\n")
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "fit", "--config", str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "did you mean 'batch_size'" in result.stderr
    assert "Traceback" not in result.stderr


def test_data_problems_are_reported_before_training(tmp_path: Path) -> None:
    data = _binary(tmp_path, 20)
    labels = tmp_path / "data" / "labels.csv"
    labels.write_text(labels.read_text() + "images/missing.png,P900,normal\n../outside.png,P901,abnormal\n")
    (tmp_path / "data" / "images" / "p000_0.png").write_bytes(b"not a png")
    with pytest.raises(ValueError) as err:
        engine.fit(_config(tmp_path, data), progress=False)
    message = str(err.value)
    assert "missing.png" in message and "outside.png" in message and "p000_0.png" in message
    assert "line 42" in message and "line 43" in message
    assert not (tmp_path / "runs" / "run" / "checkpoint.pt").exists()


def test_optimizers_and_schedules_step(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 1)
    for optimizer in ("adamw", "adam", "sgd"):
        for schedule in ("cosine", "plateau", "constant"):
            cfg = load_config(
                None, [f"train.optimizer={optimizer}", f"train.schedule={schedule}", "train.warmup_epochs=1"]
            )
            opt = engine.make_optimizer(model, cfg.train, 0.1)
            sched = engine.make_scheduler(opt, cfg.train, updates_per_epoch=4, epochs=3)
            lrs = []
            for update in range(1, 13):
                opt.step()
                sched.step_update(update)
                if update % 4 == 0:
                    sched.step(update // 4, 1.0)  # an epoch's end; the validation loss never improves
                lrs.append(opt.param_groups[0]["lr"])
            if schedule == "cosine":
                assert lrs[2] > lrs[0] and lrs[-1] < 0.01  # warm-up, then decay to ~0
            if schedule == "plateau":
                assert lrs[:-1] == [0.1] * 11 and lrs[-1] == pytest.approx(0.03)  # patience 1, factor 0.3
            assert np.isfinite(lrs).all()


def test_unknown_optimizer_is_a_config_error_not_sgd() -> None:
    with pytest.raises(ConfigError, match="train.optimizer must be one of adamw, adam, sgd"):
        load_config(None, ["train.optimizer=lion"])


def test_weight_decay_grouping() -> None:
    """chexlab decays every weight; timm's grouping (decay_bias_and_norm: false) spares biases and norms."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    everything = engine.make_optimizer(model, load_config(None, []).train, 0.1)
    assert [g["weight_decay"] for g in everything.param_groups] == [1e-4]
    timm_train = load_config(None, ["train.decay_bias_and_norm=false"]).train
    timm_groups = engine.make_optimizer(model, timm_train, 0.1)
    by_decay = {g["weight_decay"]: len(g["params"]) for g in timm_groups.param_groups}
    assert by_decay == {0.0: 3, 1e-4: 1}  # conv bias, BN weight and bias; the conv kernel


def test_schedule_counts_optimiser_updates_under_gradient_accumulation(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path,
        _binary(tmp_path, 24),
        "train.phases=[{epochs: 2, lr: 1.0e-3}]",
        "train.grad_accum=2",
        "train.batch_size=4",
        "train.schedule=cosine",
    )
    history = pd.read_csv(engine.fit(cfg, progress=False) / "metrics.csv")
    # half-way through a cosine schedule the factor is 0.5; counting micro-batches would have reached ~0
    assert history["lr"].tolist() == pytest.approx([1e-3, 5e-4], rel=0.15)


def test_fit_starts_without_the_plotting_libraries() -> None:
    # matplotlib and scikit-learn are needed for the run's report only: not on fit's path to its first step.
    code = (
        "import sys, trainer.cli, trainer.engine; print(sorted({'matplotlib', 'sklearn'} & set(sys.modules)))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
    assert run.stdout.strip() == "[]"
