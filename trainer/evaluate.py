"""`python -m trainer evaluate RUN_DIR|MODEL --data ...`: score a saved model on any labelled dataset.

The model is judged at its stored decision thresholds (chosen on its own validation split, on calibrated
probabilities), never at thresholds tuned on the data being scored, and on its calibrated probabilities.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from trainer.config import ConfigError, DataConfig, load_config
from trainer.data import XRayDataset
from trainer.export import ModelInfo, load_model
from trainer.inference import predict_tensors
from trainer.labels import DataError, LabelTable
from trainer.metrics import evaluate_predictions
from trainer.ood import NO_STATISTICS_NOTE, features_and_logits, has_pooled_features
from trainer.plots import plot_confusion, plot_roc
from trainer.reporting import write_json
from trainer.run_data import SPLIT_FILE, load_split, load_table
from trainer.subgroups import evaluate_subgroups
from trainer.transforms import InputSpec
from trainer.trust import RELIABILITY_PNG, flagged_share, with_split_metrics, write_reliability

log = logging.getLogger(__name__)


def align_labels(table: LabelTable, info: ModelInfo) -> LabelTable:
    """Reorder the table's classes into the model's output order.

    Raises:
        DataError: the dataset's label set differs from the model's.
    """
    if table.task != info.task or sorted(table.label_names) != sorted(info.label_names):
        raise DataError(
            f"the dataset has {table.task} labels {table.label_names} but the model predicts "
            f"{info.task} labels "
            f"{info.label_names}; evaluate on data with the model's labels"
        )
    order = [table.label_names.index(name) for name in info.label_names]
    if table.task.exclusive:
        remap = np.argsort(order)  # dataset class index -> model class index
        targets = remap[table.targets]
    elif table.task.multi_label:
        targets = table.targets[:, order]
    else:  # binary: one label
        targets = table.targets
    return replace(table, targets=targets, label_names=list(info.label_names))


def table_outputs(
    model: torch.nn.Module, info: ModelInfo, table: LabelTable, *, batch_size: int = 16
) -> tuple[np.ndarray, np.ndarray | None]:
    """The model's raw (uncalibrated) probabilities for every row of `table`, through its own preprocessing,
    and the pooled features the OOD gate scores (None for a model without them), from one pass."""
    dataset = XRayDataset(table, InputSpec.from_data_config(info.data_config), pipeline=info.pipeline)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=0)
    gate = has_pooled_features(model)
    probs, features = [], []
    for images, _, _ in loader:
        if gate:
            pooled, logits = features_and_logits(model, images)
            features.append(pooled.numpy())
            probs.append(info.task.probabilities(logits).numpy())
        else:
            probs.append(predict_tensors(model, images, info.task))
    return np.concatenate(probs), np.concatenate(features) if gate else None


def predict_table(
    model: torch.nn.Module, info: ModelInfo, table: LabelTable, *, batch_size: int = 16
) -> np.ndarray:
    """The model's raw (uncalibrated) probabilities for every row of `table` (see `table_outputs`)."""
    return table_outputs(model, info, table, batch_size=batch_size)[0]


def _select(table: LabelTable, split: np.ndarray | None, name: str) -> LabelTable:
    if name == "all" or split is None:
        return table
    return table.subset(split == name)


@dataclass(frozen=True, eq=False)
class LabelledSplit:
    """A loaded model and the labelled images it is scored (or recalibrated) on."""

    model: torch.nn.Module
    info: ModelInfo
    data: DataConfig
    table: LabelTable  # the whole dataset, aligned to the model's labels
    part: LabelTable  # the images of `split`
    split: str  # train | val | test | all (all when the dataset has no saved split)
    run_dir: Path | None  # the run folder, when the source is one


def labelled_split(
    source: str, *, data: str | None, split: str, overrides: list[str] | None = None
) -> LabelledSplit:
    """Load a run folder's or model's model, and the labelled images of `split` of a dataset.

    Args:
        source: a run folder (its model and data are used), a model folder, local-dir:PATH or hf-hub:org/name.
        data: a config YAML whose `data:` section names the dataset (required for a bare model).
        split: train | val | test | all; a run's own split.csv (or data.split_file) decides membership.
        overrides: `data.key=value` overrides of the data config.

    Raises:
        ConfigError: a bare model without `data`.
        DataError: the dataset's labels differ from the model's.
        FileNotFoundError: a run folder whose split.csv is missing.
    """
    run_dir = Path(source)
    is_run = (run_dir / "config.yaml").is_file() and (run_dir / "model").is_dir()
    model, info = load_model(str(run_dir / "model") if is_run else source)
    if data is None and not is_run:
        raise ConfigError("a model that is not a run folder needs --data CONFIG.yaml naming the dataset")
    data_cfg: DataConfig = load_config(data if data else run_dir / "config.yaml", overrides).data
    table = align_labels(load_table(data_cfg), info)
    has_split = (is_run and data is None) or data_cfg.split_file is not None
    if split != "all" and not has_split:
        log.info("the dataset has no saved split: using all %d images", len(table))
        split = "all"
    if is_run and data is None and not (run_dir / SPLIT_FILE).is_file():
        raise FileNotFoundError(
            f"{run_dir / SPLIT_FILE} is missing; the run's test split cannot be recovered"
        )
    membership = load_split(data_cfg, table, run_dir, write=False) if has_split else None
    part = _select(table, membership, split)
    return LabelledSplit(model, info, data_cfg, table, part, split, run_dir if is_run else None)


def evaluate_source(
    source: str,
    *,
    data: str | None = None,
    split: str = "test",
    out_dir: str | None = None,
    overrides: list[str] | None = None,
    n_bootstrap: int = 1000,
) -> Path:
    """Evaluate a run folder or a model on a dataset; writes metrics.json, predictions and plots.

    The model's stored calibration is applied (metrics on calibrated probabilities; ECE, Brier and NLL before
    and after in metrics.json's "calibration", with reliability.png), and the share of images its OOD gate's
    feature score flags is in "ood" (see `trainer.trust`).

    Args:
        source, data, split, overrides: as for `labelled_split`.
        out_dir: where to write; default RUN_DIR/eval-<split> or ./eval-<split>.
    """
    scored = labelled_split(source, data=data, split=split, overrides=overrides)
    info, part, split = scored.info, scored.part, scored.split
    raw, features = table_outputs(scored.model, info, part)
    probs = info.calibrated(raw)
    metrics = evaluate_predictions(
        info.task,
        info.label_names,
        part.targets,
        probs,
        part.patient_ids,
        info.thresholds,
        n_bootstrap=n_bootstrap,
        negative_name=info.negative_name,
    )
    out = Path(out_dir) if out_dir else (scored.run_dir or Path(".")) / f"eval-{split}"
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {split: metrics, "source": source, "data_root": str(part.root)}
    assert info.calibration is not None  # load_model always sets one
    calibration = with_split_metrics(info.calibration, {split: (raw, part.targets)}, info.task)
    report["calibration"] = {**calibration.to_dict(), "metrics": {split: calibration.metrics[split]}}
    if info.calibration.note:
        report["calibration"]["note"] = info.calibration.note
    write_reliability(calibration, raw, part.targets, info.task, out / RELIABILITY_PNG, split)
    if info.ood is not None and features is not None:
        report["ood"] = {
            **info.ood.config_entry(),
            "split": split,
            "flagged": flagged_share(info.ood, features),
            "n_scored": len(features),
        }
    else:
        report["ood"] = {"note": NO_STATISTICS_NOTE}
    if scored.data.subgroup_columns:
        report["subgroups"] = evaluate_subgroups(scored.data, info, part, probs, n_bootstrap=n_bootstrap)
    write_json(out / "metrics.json", report)
    plot_roc(
        info.task,
        info.label_names,
        part.targets,
        probs,
        out / "roc.png",
        thresholds=info.thresholds,
        title=f"ROC, {split} ({len(part)} images)",
    )
    plot_confusion(metrics, out / "confusion.png")
    log.info(
        "%s on %s (%s, %d images): AUC %s",
        source,
        part.root,
        split,
        len(part),
        metrics["headline"]["auc"]["value"],
    )
    return out / "metrics.json"
