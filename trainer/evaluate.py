"""`python -m trainer evaluate RUN_DIR|MODEL --data ...`: score a saved model on any labelled dataset.

The model is judged at its stored decision thresholds (chosen on its own validation split), never at
thresholds tuned on the data being scored.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from trainer.config import ConfigError, DataConfig, load_config
from trainer.data import XRayDataset
from trainer.export import ModelInfo, load_model
from trainer.inference import predict_tensors
from trainer.labels import DataError, LabelTable
from trainer.metrics import evaluate_predictions
from trainer.plots import plot_confusion, plot_roc
from trainer.reporting import write_json
from trainer.run_data import SPLIT_FILE, load_split, load_table
from trainer.subgroups import evaluate_subgroups
from trainer.transforms import InputSpec

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


def predict_table(
    model: torch.nn.Module, info: ModelInfo, table: LabelTable, *, batch_size: int = 16
) -> np.ndarray:
    """Probabilities for every row of `table`, through the model's own preprocessing."""
    dataset = XRayDataset(table, InputSpec.from_data_config(info.data_config), pipeline=info.pipeline)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=0)
    return np.concatenate([predict_tensors(model, images, info.task) for images, _, _ in loader])


def _select(table: LabelTable, split: np.ndarray | None, name: str) -> LabelTable:
    if name == "all" or split is None:
        return table
    return table.subset(split == name)


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

    Args:
        source: a run folder (its model and data are used), a model folder, local-dir:PATH or hf-hub:org/name.
        data: a config YAML whose `data:` section names the dataset (required for a bare model).
        split: train | val | test | all; a run's own split.csv decides membership.
        out_dir: where to write; default RUN_DIR/eval-<split> or ./eval-<split>.
        overrides: `data.key=value` overrides of the data config.
    """
    run_dir = Path(source)
    is_run = (run_dir / "config.yaml").is_file() and (run_dir / "model").is_dir()
    model, info = load_model(str(run_dir / "model") if is_run else source)
    if data is None and not is_run:
        raise ConfigError(
            "evaluating a model that is not a run folder needs --data CONFIG.yaml naming the dataset"
        )
    data_cfg: DataConfig = load_config(data if data else run_dir / "config.yaml", overrides).data
    table = align_labels(load_table(data_cfg), info)
    has_split = (is_run and data is None) or data_cfg.split_file is not None
    if split != "all" and not has_split:
        log.info("the dataset has no saved split: scoring all %d images", len(table))
        split = "all"
    membership = load_split(data_cfg, table, run_dir, write=False) if has_split else None
    if is_run and data is None and not (run_dir / SPLIT_FILE).is_file():
        raise FileNotFoundError(
            f"{run_dir / SPLIT_FILE} is missing; the run's test split cannot be recovered"
        )
    part = _select(table, membership, split)
    probs = predict_table(model, info, part)
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
    out = Path(out_dir) if out_dir else (run_dir if is_run else Path(".")) / f"eval-{split}"
    out.mkdir(parents=True, exist_ok=True)
    report = {split: metrics, "source": source, "data_root": str(table.root)}
    if data_cfg.subgroup_columns:
        report["subgroups"] = evaluate_subgroups(data_cfg, info, part, probs, n_bootstrap=n_bootstrap)
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
        table.root,
        split,
        len(part),
        metrics["headline"]["auc"]["value"],
    )
    return out / "metrics.json"
