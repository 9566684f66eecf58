"""The end of a run: calibration fitted on validation, thresholds chosen on the calibrated validation
probabilities, val/test metrics (with CIs) on calibrated probabilities, the OOD gate's statistics, plots,
summary, model folder. metrics.json's layout: `trainer.trust`."""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from trainer import __version__
from trainer.calibration import calibrate
from trainer.checkpoint import TrainState, atomic_write
from trainer.config import RunConfig
from trainer.integrity import write_checksums
from trainer.metrics import choose_thresholds, evaluate_predictions
from trainer.ood import fit_statistics
from trainer.subgroups import evaluate_subgroups
from trainer.trust import RELIABILITY_PNG, ood_section, summary_lines, with_split_metrics, write_reliability

if TYPE_CHECKING:
    from trainer.run_data import RunData

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    """Model outputs for one split, in dataset order of `indices`; `features`: pooled (N, D) or None."""

    probs: np.ndarray
    targets: np.ndarray
    indices: np.ndarray
    features: np.ndarray | None = None


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON atomically (readers never see half a file)."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2, allow_nan=False)))


def evaluate_split(
    cfg: RunConfig, data: RunData, split: str, pred: Predictions, thresholds: list[float]
) -> dict[str, Any]:
    """`evaluate_predictions` for one split, with patient-level bootstrap CIs."""
    return evaluate_predictions(
        data.task,
        data.label_names,
        pred.targets,
        pred.probs,
        data.patient_ids(pred.indices),
        thresholds,
        n_bootstrap=cfg.eval.n_bootstrap,
        seed=cfg.train.seed,
        negative_name=data.negative_name,
    )


def write_predictions(path: Path, data: RunData, pred: Predictions) -> None:
    """One row per image: path, patient, target(s) and probabilities."""
    import pandas as pd

    frame = pd.DataFrame(
        {"path": data.relative_paths(pred.indices), "patient_id": data.patient_ids(pred.indices)}
    )
    names = data.label_names
    probs = pred.probs.reshape(len(pred.probs), -1)
    targets = pred.targets.reshape(len(pred.targets), -1)
    if data.task.multi_label:
        for i, name in enumerate(names):
            frame[f"target_{name}"] = targets[:, i]
    else:
        frame["target"] = [names[int(t)] if data.task.exclusive else int(t) for t in targets[:, 0]]
    for i, name in enumerate(names):
        frame[f"prob_{name}"] = probs[:, i]
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def recipe(cfg: RunConfig, *, input_size: int, tta: bool) -> dict[str, Any]:
    """run.json's `recipe`: what a model card says about how the model was trained."""
    return {
        "arch": cfg.model.arch,
        "init": cfg.model.init,
        "head": asdict(cfg.model.head),
        "phases": [asdict(p) for p in cfg.train.phases],
        "batch_size": cfg.train.batch_size,
        "optimizer": cfg.train.optimizer,
        "schedule": cfg.train.schedule,
        "input_size": input_size,
        "pipeline": cfg.preprocess.to_list(),
        "augment": asdict(cfg.augment),
        "tta": tta,
    }


def finish_run(
    cfg: RunConfig,
    data: RunData,
    model: nn.Module,
    predictions: dict[str, Predictions],
    state: TrainState,
    *,
    input_size: int,
    seconds: float,
    train_features: np.ndarray | None = None,
) -> dict[str, Any]:
    """Calibrate on val, choose thresholds on the calibrated val probabilities, evaluate val and test on
    calibrated probabilities, fit the OOD gate, write metrics/plots/run.json and the model folder.

    Args:
        predictions: "val" and "test", as the model gives them (uncalibrated; with features for the gate).
        input_size: the side the model was trained at.
        train_features: pooled features of (a sample of) the training images; None: no OOD statistics.
    """
    from hub_cards import write_card
    from trainer.export import save_pretrained

    run_dir = cfg.run_dir
    pipeline = cfg.preprocess
    raw = predictions
    calibration = calibrate(raw["val"].probs, raw["val"].targets, data.task)
    calibration = with_split_metrics(
        calibration, {split: (pred.probs, pred.targets) for split, pred in raw.items()}, data.task
    )
    predictions = {
        split: replace(pred, probs=calibration.apply(pred.probs, data.task)) for split, pred in raw.items()
    }
    val = predictions["val"]
    thresholds = choose_thresholds(
        data.task,
        val.targets,
        val.probs,
        method=cfg.eval.threshold,
        target_sensitivity=cfg.eval.target_sensitivity,
    )
    metrics: dict[str, Any] = {
        split: evaluate_split(cfg, data, split, pred, thresholds) for split, pred in predictions.items()
    }
    metrics["calibration"] = calibration.to_dict()
    if cfg.data.subgroup_columns:  # the test split, per group of each metadata column
        test = predictions["test"]
        metrics["subgroups"] = evaluate_subgroups(
            cfg.data,
            data.table.subset(test.indices),
            test.probs,
            thresholds,
            negative_name=data.negative_name,
            n_bootstrap=cfg.eval.n_bootstrap,
        )
    ood = None
    if train_features is not None and val.features is not None and predictions["test"].features is not None:
        ood = fit_statistics(train_features, val.features)
        metrics["ood"] = ood_section(ood, predictions["test"].features)
    for line in summary_lines(metrics):
        log.info("%s", line)
    write_json(run_dir / "metrics.json", metrics)
    for split, pred in predictions.items():
        write_predictions(run_dir / f"predictions_{split}.csv", data, pred)

    # here: matplotlib and scikit-learn cost fit's start-up about a second (issue 14) and are needed only now
    from trainer.plots import plot_confusion, plot_roc, plot_training_curves

    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    test = predictions["test"]
    write_reliability(
        calibration, raw["test"].probs, test.targets, data.task, plots / RELIABILITY_PNG, "test"
    )
    plot_roc(
        data.task,
        data.label_names,
        test.targets,
        test.probs,
        plots / "roc.png",
        thresholds=thresholds,
        title=f"ROC, test split ({len(test.probs)} images)",
    )
    plot_confusion(metrics["test"], plots / "confusion.png")
    plot_training_curves(run_dir / "metrics.csv", plots / "training_curves.png")

    epochs = state.history
    dataset = data.summary()
    run_info = {
        "chexlab_version": __version__,
        "dataset": dataset,
        "recipe": recipe(cfg, input_size=input_size, tta=cfg.eval.tta),
        "timing": {
            "seconds_total": round(seconds, 1),
            "seconds_per_epoch": round(float(np.mean([r["seconds"] for r in epochs])), 2) if epochs else None,
            "images_per_s": round(float(np.mean([r["images_per_s"] for r in epochs])), 1) if epochs else None,
            "device": torch.cuda.get_device_name()
            if torch.cuda.is_available()
            else f"CPU ({platform.processor() or platform.machine()})",
        },
        "best_epoch": state.best_epoch,
        "epochs_run": len(state.history),  # fewer than planned when early stopping ended a phase
        "monitor": cfg.train.monitor,
    }
    write_json(run_dir / "run.json", run_info)

    model_dir = save_pretrained(
        model,
        run_dir / "model",
        task=data.task,
        label_names=data.label_names,
        negative_name=data.negative_name,
        pipeline=pipeline,
        thresholds=thresholds,
        head=cfg.model.head,
        input_size=input_size,
        metrics_summary={split: metrics[split]["headline"] for split in predictions},
        data_summary=dataset,
        calibration=calibration,
        ood=ood,
    )
    write_card(run_dir, model_dir)
    write_checksums(run_dir)  # last: it lists every file above
    log.info("run finished: %s (test AUC %s)", run_dir, metrics["test"]["headline"]["auc"]["value"])
    return metrics
