"""A realistic run folder, as `python -m trainer fit` writes it, built from synthetic predictions.

Shared by the card, export and push tests: the metrics come from the real `trainer.metrics`, the plots are
real (tiny) PNG files, and the config has a full `card:` section.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hub_cards import CardInfo
from trainer.config import PhaseConfig, load_config, save_config
from trainer.metrics import evaluate_predictions
from trainer.modeling import HeadConfig
from trainer.preprocess import Pipeline
from trainer.task import Task

LABELS = {
    Task.BINARY: ["pneumonia"],
    Task.MULTICLASS: ["normal", "bacterial_pneumonia", "viral_pneumonia"],
    Task.MULTILABEL: ["Atelectasis", "Effusion", "Pneumonia", "Hernia"],
}
PIPELINE = [{"op": "clahe", "clip_limit": 2.0}, {"op": "crop_lungs"}]
CARD = {
    "license": "cc-by-4.0",
    "datasets": [],
    "dataset_name": "Kermany pediatric pneumonia (chexlab subset)",
    "data_description": "Pediatric chest radiographs (ages 1-5) from Guangzhou Women and Children's "
    "Medical Center.",
    "data_license": "CC BY 4.0",
    "data_citation": "Kermany, Zhang, Goldbaum. Labeled Optical Coherence Tomography (OCT) and Chest X-Ray "
    "Images for Classification. Mendeley Data, v2, 2018.",
    "base_model": None,
    "initial_weights": "EfficientNet-Lite0 ImageNet weights (Tan & Le 2019, Google, Apache-2.0)",
    "limitations": ["Children only: adult radiographs were never seen."],
    "tags": ["pneumonia"],
    "citation": "",
}


def _predictions(task: Task, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Targets and informative but imperfect probabilities."""
    n_labels = len(LABELS[task])
    if task.single_logit:
        y = rng.integers(0, 2, n)
        p = 1 / (1 + np.exp(-(2.0 * y - 1 + rng.normal(0, 1.2, n))))
        return y, p
    if task.exclusive:
        y = rng.integers(0, n_labels, n)
        logits = rng.normal(0, 1.0, (n, n_labels))
        logits[np.arange(n), y] += 1.5
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return y, p
    y = (rng.random((n, n_labels)) < [0.3, 0.2, 0.4, 0.0]).astype(float)  # Hernia: no positive at all
    y[rng.random((n, n_labels)) < 0.05] = np.nan
    p = 1 / (1 + np.exp(-(2.0 * np.nan_to_num(y) - 1 + rng.normal(0, 1.2, y.shape))))
    return y, p


def fake_metrics(task: Task | str, n: int, seed: int) -> dict[str, Any]:
    task = Task.parse(task)
    rng = np.random.default_rng(seed)
    y, p = _predictions(task, n, rng)
    patients = [f"p{i // 2}" for i in range(n)]  # two images per patient
    thresholds = None if task.exclusive else [0.4] * len(LABELS[task])
    return evaluate_predictions(task, LABELS[task], y, p, patients, thresholds, n_bootstrap=100, seed=seed)


def trust_sections(task: Task | str, seed: int = 3) -> dict[str, Any]:
    """metrics.json's "calibration", "ood" and "subgroups" sections, from the real trainer functions."""
    from trainer.calibration import calibrate, compare_calibration
    from trainer.subgroups import subgroup_metrics

    task = Task.parse(task)
    rng = np.random.default_rng(seed)
    splits = {name: _predictions(task, n, rng) for name, n in (("val", 80), ("test", 90))}
    # over-confident outputs: temperature scaling has something to fix
    sharpen = {name: (y, _sharpen(p, task)) for name, (y, p) in splits.items()}
    y_val, p_val = sharpen["val"]
    targets = np.nan_to_num(y_val) if not task.multi_label else y_val
    calibration = calibrate(p_val, targets, task)
    per_split = {
        name: compare_calibration(p, calibration.apply(p, task), y, task) for name, (y, p) in sharpen.items()
    }
    y_test, p_test = sharpen["test"]
    n = len(y_test)
    thresholds = None if task.exclusive else [0.5] * len(LABELS[task])
    subgroups = subgroup_metrics(
        task,
        LABELS[task],
        y_test,
        p_test,
        [f"p{i // 2}" for i in range(n)],
        thresholds,
        {"Patient Sex": ["M", "F"] * (n // 2), "Patient Age": [str(5 + i % 80) for i in range(n)]},
        n_bootstrap=50,
    )
    ood = {
        "score": "mahalanobis_l2",
        "file": "ood.safetensors",
        "threshold": 1.234,
        "pass_rate": 0.99,
        "n_train": 300,
        "n_val": 80,
        "feature_dim": 1280,
        "shrinkage": 0.3,
        "test_flagged": 2 / 90,
        "n_test": 90,
    }
    return {
        "calibration": calibration.with_metrics(per_split).to_dict(),
        "ood": ood,
        "subgroups": subgroups,
    }


def _sharpen(probs: np.ndarray, task: Task) -> np.ndarray:
    from trainer.calibration import logits_from_probabilities, probabilities_from_logits

    return probabilities_from_logits(3.0 * logits_from_probabilities(probs, task), task).reshape(probs.shape)


def write_png(path: Path, size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.arange(size[0] * size[1]).reshape(size[1], size[0]) % 251).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def make_run_folder(
    run_dir: Path,
    *,
    task: Task | str = Task.BINARY,
    arch: str = "test_efficientnet",
    head: dict[str, Any] | None = None,
    card: dict[str, Any] | None = None,
    trust: bool = False,
) -> Path:
    """Write config.yaml, run.json, metrics.json, metrics.csv, split.csv and plots/ (no model/ folder).

    `trust` adds metrics.json's calibration, OOD and subgroup sections and plots/reliability.png.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    head = head or {"type": "linear"}
    labels = LABELS[task]
    cfg = load_config(
        None,
        [
            f"name={run_dir.name}",
            f"output_dir={run_dir.parent}",
            f"data.task={task}",
            "data.root=/data/kermany",
            "data.name=kermany_pediatric_pneumonia",
            f"model.arch={arch}",
            "model.init=timm",
            "model.input_size=64",
            "train.batch_size=16",
        ],
    )
    cfg = replace(
        cfg,
        model=replace(cfg.model, head=HeadConfig.from_dict(head)),
        preprocess=Pipeline.from_list(PIPELINE),
        train=replace(
            cfg.train,
            phases=[PhaseConfig(epochs=2, lr=1e-3, freeze_backbone=True), PhaseConfig(epochs=4, lr=1e-4)],
        ),
        card=CardInfo.from_dict(CARD if card is None else card),
    )
    save_config(cfg, run_dir / "config.yaml")
    n = {"train": 300, "val": 80, "test": 90}
    run = {
        "chexlab_version": "0.1.0",
        "dataset": {
            "name": "kermany_pediatric_pneumonia",
            "root": "/data/kermany",
            "n_images": n,
            "n_patients": {split: count // 2 for split, count in n.items()},
            "label_counts": {
                split: {label: count // (len(labels) + 1) for label in labels} for split, count in n.items()
            },
        },
        "recipe": {
            "arch": arch,
            "init": "timm",
            "head": head,
            "phases": [asdict(phase) for phase in cfg.train.phases],
            "batch_size": 16,
            "optimizer": "adamw",
            "schedule": "cosine",
            "input_size": 64,
            "pipeline": PIPELINE,
            "augment": asdict(cfg.augment),
            "tta": False,
        },
        "timing": {
            "seconds_total": 80.1,
            "seconds_per_epoch": 12.34,
            "images_per_s": 24.3,
            "device": "CPU (x86_64)",
        },
        "best_epoch": 5,
        "epochs_run": 6,
        "monitor": "auc",
    }
    (run_dir / "run.json").write_text(json.dumps(run, indent=2))
    metrics = {"val": fake_metrics(task, n["val"], seed=1), "test": fake_metrics(task, n["test"], seed=2)}
    if trust:
        metrics.update(trust_sections(task))
        write_png(run_dir / "plots" / "reliability.png")
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (run_dir / "metrics.csv").write_text("epoch,phase,train_loss,val_loss,val_auc\n1,1,0.69,0.68,0.61\n")
    (run_dir / "split.csv").write_text("path,patient_id,split\na.png,p0,train\n")
    for name in ("roc.png", "confusion.png", "training_curves.png"):
        write_png(run_dir / "plots" / name)
    return run_dir
