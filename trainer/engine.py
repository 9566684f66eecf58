"""Training on HF Accelerate: the same code runs on a CPU, one GPU, or many GPUs/nodes (`accelerate launch`).

`fit` trains phase by phase (e.g. backbone frozen at a high learning rate, then everything at a low one),
validates every epoch, keeps the best weights, writes an atomic checkpoint after every epoch so that
`--resume` continues after a crash or a kill, and finally evaluates on the test split and writes the model
folder.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from safetensors.torch import load_file
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler
from torch import nn
from torch.utils.data import DataLoader

from trainer import run_data
from trainer.checkpoint import (
    BEST_WEIGHTS,
    TrainState,
    adopt,
    atomic_write,
    check_resume,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from trainer.config import PhaseConfig, RunConfig, TrainConfig, save_config
from trainer.data import XRayDataset
from trainer.errors import ChexlabError
from trainer.metrics import evaluate_predictions
from trainer.modeling import channels_last, channels_last_batch, create_classifier, freeze_backbone
from trainer.ood import captured_features, has_pooled_features
from trainer.reporting import Predictions, finish_run
from trainer.task import Task
from trainer.transforms import InputSpec

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tb"
HISTORY_COLUMNS = (
    "epoch",
    "phase",
    "train_loss",
    "val_loss",
    "val_auc",
    "val_accuracy",
    "lr",
    "images_per_s",
    "seconds",
)


# Test hook: with CHEXLAB_PAUSE_AT=EPOCH:BATCH (1-based), a run logs PAUSE_MESSAGE after that batch's update
# and waits until its stdin closes, so a test can act (e.g. kill it) at a point the run itself reports.
# Training images whose features the OOD statistics are fitted on: a seeded sample of larger training splits
# (the Ledoit-Wolf covariance of 1,280-dimensional features changes little beyond a couple of thousand).
OOD_TRAIN_IMAGES = 2000
PAUSE_ENV = "CHEXLAB_PAUSE_AT"
PAUSE_MESSAGE = "paused at epoch %d, batch %d"


class TrainingDiverged(ChexlabError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"  # CPU autocast is slower than fp32 on most CPUs


def make_optimizer(model: nn.Module, train: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """timm's optimizer factory (AdamW, Adam or Nesterov SGD) over the trainable parameters of `model`."""
    return create_optimizer_v2(
        model,
        opt=train.optimizer,
        lr=lr,
        weight_decay=train.weight_decay,
        momentum=train.momentum,
        filter_bias_and_bn=not train.decay_bias_and_norm,
    )


class PlateauSchedule(Scheduler):
    """torch's ReduceLROnPlateau on the validation loss, once per epoch, behind timm's scheduler interface.

    timm's own PlateauLRScheduler is deprecated and leaves its patience counters out of `state_dict`, so a
    resumed run would forget them.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        super().__init__(optimizer, "lr")
        self._plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=0.3, patience=1
        )

    def _get_lr(self, t: int) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def step(self, epoch: int, metric: float | None = None) -> None:
        if metric is not None:
            self._plateau.step(metric)

    def state_dict(self) -> dict[str, Any]:
        return self._plateau.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._plateau.load_state_dict(state_dict)


def make_scheduler(
    optimizer: torch.optim.Optimizer, train: TrainConfig, updates_per_epoch: int, epochs: int
) -> Scheduler:
    """Linear warm-up, then cosine decay to 0 (or constant) per optimiser update; or plateau per epoch.

    The caller calls `step_update(updates so far)` after every optimiser update and `step(epoch, val_loss)`
    after every epoch; each schedule acts on the calls it is made for.
    """
    if train.schedule == "plateau":
        return PlateauSchedule(optimizer)
    total = max(1, updates_per_epoch * epochs)
    warmup = min(total - 1, round(train.warmup_epochs * updates_per_epoch))
    # timm counts in "epochs" of one update each here: the warm-up is a whole number of updates.
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=train.schedule,
        num_epochs=total - warmup,
        warmup_epochs=warmup,
        warmup_lr=optimizer.param_groups[0]["lr"] / (warmup + 1),
        warmup_prefix=True,
        step_on_epochs=False,
        updates_per_epoch=1,
    )
    return scheduler


def _score(metrics: dict[str, float | None], monitor: str) -> float | None:
    """Higher is better for every monitored quantity (the loss is negated)."""
    value = metrics.get("loss" if monitor == "loss" else monitor)
    if value is None or not math.isfinite(value):
        return None
    return -value if monitor == "loss" else value


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Scheduler,
    accelerator: Accelerator,
    *,
    task: Task,
    epoch: int,
    updates: int,
    max_steps: int | None,
    max_grad_norm: float | None,
    progress: bool,
    describe_batch: Any,
) -> tuple[float, float, int]:
    """One pass over `loader`; returns (mean loss, images per second, optimiser updates in the phase so far).

    `updates` counts the phase's optimiser updates before this epoch; the schedule follows that count.

    Raises:
        TrainingDiverged: the loss is NaN/inf (the message names the epoch, batch and its images).
    """
    from tqdm.auto import tqdm

    model.train()
    total_loss, seen, start = 0.0, 0, time.perf_counter()
    steps = len(loader) if max_steps is None else min(len(loader), max_steps)
    bar = tqdm(
        total=steps,
        desc=f"epoch {epoch + 1}",
        disable=not (progress and accelerator.is_local_main_process),
        leave=False,
    )
    for step, (images, targets, indices) in enumerate(loader):
        if step >= steps:
            break
        with accelerator.accumulate(model):
            logits = model(channels_last_batch(images))
            loss = loss_fn(logits.float(), targets.to(task.target_dtype))
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"the loss became {loss.item()} at epoch {epoch + 1}, batch {step + 1} "
                    f"(images: {describe_batch(indices)}); the last good checkpoint is kept. "
                    "Lower the learning rate or check these images, then continue with --resume."
                )
            accelerator.backward(loss)
            if max_grad_norm and accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            # The schedule counts optimiser updates, not micro-batches of gradient accumulation.
            if accelerator.sync_gradients:
                updates += 1
                scheduler.step_update(updates)
            optimizer.zero_grad(set_to_none=True)
        if step == 0:  # start-up cost (workers, first decodes) is visible in the log; bench/scale.py reads it
            log.info("epoch %d: first training step done", epoch + 1)
        batch = images.shape[0] * accelerator.num_processes
        total_loss += loss.item() * images.shape[0]
        seen += batch
        rate = seen / max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{rate:.1f}")
        bar.update(1)
        if os.environ.get(PAUSE_ENV) == f"{epoch + 1}:{step + 1}":
            log.warning(PAUSE_MESSAGE, epoch + 1, step + 1)
            sys.stdin.read()
    bar.close()
    elapsed = time.perf_counter() - start
    # The epoch's loss over every process's images, not just this process's share.
    local = torch.tensor([total_loss, seen / accelerator.num_processes], dtype=torch.float64)
    summed = accelerator.reduce(local.to(accelerator.device), reduction="sum").cpu()
    return float(summed[0] / max(float(summed[1]), 1.0)), seen / max(elapsed, 1e-9), updates


@torch.no_grad()
def predict_loader(
    model: nn.Module,
    loader: DataLoader,
    accelerator: Accelerator,
    *,
    task: Task,
    tta: bool = False,
    features: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Probabilities, targets, split positions and (with `features`) pooled features (N, D) of every item of
    `loader`, gathered from all processes. The features are the un-augmented pass's (the first under TTA)."""
    model.eval()
    all_probs, all_targets, all_indices, all_features = [], [], [], []
    seen: list[torch.Tensor] = []
    with ExitStack() as stack:
        if features:
            seen = stack.enter_context(captured_features(accelerator.unwrap_model(model)))
        for images, targets, indices in loader:
            images = channels_last_batch(images)
            probs = task.probabilities(model(images).float())
            if tta:
                probs = (probs + task.probabilities(model(_zoom(images, 0.92)).float())) / 2
            gathered = [probs, targets, indices, *(seen[:1] if features else [])]
            seen.clear()
            gathered = accelerator.gather_for_metrics(tuple(gathered))
            all_probs.append(gathered[0].cpu().numpy())
            all_targets.append(gathered[1].cpu().numpy())
            all_indices.append(gathered[2].cpu().numpy())
            if features:
                all_features.append(gathered[3].cpu().numpy())
    return (
        np.concatenate(all_probs),
        np.concatenate(all_targets),
        np.concatenate(all_indices),
        np.concatenate(all_features) if features else None,
    )


def train_features(
    model: nn.Module, cfg: RunConfig, data: run_data.RunData, spec: InputSpec, accelerator: Accelerator
) -> np.ndarray:
    """Pooled features of up to `OOD_TRAIN_IMAGES` training images (a seeded sample), without augmentation:
    what the OOD gate's statistics are fitted on."""
    rows = data.rows("train")
    if len(rows) > OOD_TRAIN_IMAGES:
        rows = np.sort(np.random.default_rng(cfg.train.seed).choice(rows, OOD_TRAIN_IMAGES, replace=False))
    dataset = XRayDataset(
        data.table.subset(rows), spec, pipeline=cfg.preprocess, cache_dir=cfg.data.cache_dir
    )
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, num_workers=cfg.data.num_workers)
    prepared_model, loader = accelerator.prepare(model, loader)
    *_, features = predict_loader(prepared_model, loader, accelerator, task=data.task, features=True)
    accelerator.free_memory()
    assert features is not None
    return features


def _zoom(images: torch.Tensor, fraction: float) -> torch.Tensor:
    """Centre crop to `fraction` of the side and scale back: a mild test-time augmentation."""
    size = images.shape[-1]
    crop = round(size * fraction)
    top = (size - crop) // 2
    cropped = images[..., top : top + crop, top : top + crop]
    return nn.functional.interpolate(cropped, size=(size, size), mode="bilinear", align_corners=False)


def validation_metrics(
    task: Task, label_names: list[str], targets: np.ndarray, probs: np.ndarray
) -> dict[str, float | None]:
    """AUC and accuracy at default decisions (0.5 / argmax), without CIs: cheap enough for every epoch."""
    headline = evaluate_predictions(task, label_names, targets, probs, None, None, n_bootstrap=0)["headline"]
    return {"auc": headline["auc"]["value"], "accuracy": headline["accuracy"]["value"]}


def validation_loss(loss_fn: nn.Module, task: Task, probs: np.ndarray, targets: np.ndarray) -> float:
    """The loss on gathered validation probabilities (logits recovered from probabilities)."""
    eps = 1e-6
    logits = task.logits_from_probabilities(torch.from_numpy(np.clip(probs, eps, 1 - eps)).float())
    with torch.no_grad():
        return float(loss_fn.cpu()(logits, torch.from_numpy(targets).to(task.target_dtype)))


def _write_history(run_dir: Path, history: list[dict[str, float]]) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(history)

    atomic_write(run_dir / "metrics.csv", write)


def _phase_bounds(phases: list[PhaseConfig]) -> list[tuple[int, int]]:
    """(first epoch, end epoch) of each phase in the run's global epoch count."""
    bounds, start = [], 0
    for phase in phases:
        bounds.append((start, start + phase.epochs))
        start += phase.epochs
    return bounds


def fit(cfg: RunConfig, *, resume: bool = False, last_good: bool = False, progress: bool = True) -> Path:
    """Train, validate, checkpoint, evaluate and export one run; returns the run folder.

    Args:
        cfg: the resolved run configuration (for `resume`, the one saved in the run folder).
        resume: continue from RUN_DIR/checkpoint.pt instead of starting afresh; the checkpoint and every
            file it vouches for are verified before any work starts.
        last_good: with `resume`, continue from the previous epoch's checkpoint if the latest is damaged.
        progress: show a progress bar (main process only).

    Raises:
        CheckpointError: (resume) a damaged or changed run file; the message says which and what to do.
    """
    run_dir = cfg.run_dir
    point = check_resume(run_dir, last_good=last_good) if resume else None
    accelerator = Accelerator(
        mixed_precision=_mixed_precision(cfg.train.mixed_precision),
        gradient_accumulation_steps=cfg.train.grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        log_with="tensorboard",
        project_dir=str(run_dir),
    )
    set_seed(cfg.train.seed)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if point is None:
            save_config(cfg, run_dir / "config.yaml")
        else:
            adopt(point)
            _write_history(run_dir, point.payload["state"]["history"])  # rewritten, never read back
    accelerator.wait_for_everyone()

    # The main process reads, checks and splits first (filling the check cache, writing split.csv); the others
    # then find both ready instead of racing it.
    with accelerator.main_process_first():
        data = run_data.prepare(cfg, run_dir, write_split=accelerator.is_main_process)
    model = create_classifier(
        cfg.model.arch,
        data.num_outputs,
        head=cfg.model.head,
        init=cfg.model.init,
        drop_rate=cfg.model.drop_rate,
        label_names=data.label_names,
        new_head=cfg.model.new_head,
    )
    channels_last(model)  # before the optimiser and Accelerate's wrappers see the parameters
    spec = run_data.input_spec(model, cfg.model.input_size)
    loaders = run_data.loaders(cfg, data, spec)
    loss_fn = data.task.loss(
        data.targets("train"),
        data.num_outputs,
        class_weights=cfg.train.class_weights,
        pos_weight=cfg.train.pos_weight,
    ).to(accelerator.device)

    state = TrainState()
    checkpoint: dict[str, Any] | None = None
    if point is not None:
        checkpoint = point.payload
        model.load_state_dict(checkpoint["model"])
        state = TrainState(**checkpoint["state"])
        restore_rng_state(checkpoint["rng"])
        log.info("resuming %s after epoch %d", run_dir, state.epoch)

    accelerator.init_trackers(TENSORBOARD_DIR)  # RUN_DIR/tb; trackers log on the main process only
    started = time.perf_counter()
    for phase_index, (phase, (first, end)) in enumerate(
        zip(cfg.train.phases, _phase_bounds(cfg.train.phases), strict=True)
    ):
        if state.epoch >= end:
            continue
        if state.epoch <= first:
            state.bad_epochs = 0  # patience counts within a phase
        freeze_backbone(model, phase.freeze_backbone)
        optimizer = make_optimizer(model, cfg.train, phase.lr)
        # Each process sees its shard of the batches once the loader is prepared for several processes.
        steps = math.ceil(len(loaders["train"]) / accelerator.num_processes)
        if cfg.train.max_steps_per_epoch is not None:
            steps = min(steps, cfg.train.max_steps_per_epoch)
        scheduler = make_scheduler(
            optimizer, cfg.train, math.ceil(steps / cfg.train.grad_accum), phase.epochs
        )
        updates = 0
        if checkpoint is not None and checkpoint["phase"] == phase_index:
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            updates = checkpoint["updates"]
        prepared_model, optimizer, train_loader, val_loader = accelerator.prepare(
            model, optimizer, loaders["train"], loaders["val"]
        )
        for epoch in range(max(state.epoch, first), end):
            train_loader.set_epoch(epoch)
            epoch_start, lr = time.perf_counter(), optimizer.param_groups[0]["lr"]
            train_loss, rate, updates = train_one_epoch(
                prepared_model,
                train_loader,
                loss_fn,
                optimizer,
                scheduler,
                accelerator,
                task=data.task,
                epoch=epoch,
                updates=updates,
                max_steps=cfg.train.max_steps_per_epoch,
                max_grad_norm=cfg.train.max_grad_norm,
                progress=progress,
                describe_batch=lambda local: data.describe_rows(data.rows("train")[local.cpu().numpy()]),
            )
            probs, targets, _, _ = predict_loader(prepared_model, val_loader, accelerator, task=data.task)
            val = validation_metrics(data.task, data.label_names, targets, probs)
            val["loss"] = validation_loss(loss_fn, data.task, probs, targets)
            scheduler.step(epoch + 1 - first, val["loss"])
            row = {
                "epoch": epoch + 1,
                "phase": phase_index + 1,
                "train_loss": train_loss,
                "val_loss": val["loss"],
                "val_auc": val.get("auc"),
                "val_accuracy": val.get("accuracy"),
                "lr": lr,
                "images_per_s": rate,
                "seconds": time.perf_counter() - epoch_start,
            }
            state.history.append(row)
            state.epoch = epoch + 1
            score = _score(val, cfg.train.monitor)
            improved = score is not None and (state.best_score is None or score > state.best_score)
            if improved:
                state.best_score, state.best_epoch, state.bad_epochs = score, epoch + 1, 0
            else:
                state.bad_epochs += 1
            patience = cfg.train.early_stopping_patience
            stop_phase = patience is not None and state.bad_epochs >= patience and state.epoch < end
            if stop_phase:
                log.info(
                    "early stopping phase %d after epoch %d (no improvement for %d epochs)",
                    phase_index + 1,
                    epoch + 1,
                    patience,
                )
                state.epoch, state.bad_epochs = end, 0
            if accelerator.is_main_process:
                weights = accelerator.unwrap_model(prepared_model).state_dict()
                save_checkpoint(
                    run_dir,
                    {
                        "model": weights,
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "updates": updates,
                        "phase": phase_index,
                        "state": asdict(state),
                        "rng": rng_state(),
                    },
                    best_weights=weights if improved else None,
                )
                _write_history(run_dir, state.history)
                log.info(
                    "epoch %d/%d: train loss %.4f, val loss %.4f, val auc %s, %.1f img/s",
                    epoch + 1,
                    _phase_bounds(cfg.train.phases)[-1][1],
                    train_loss,
                    val["loss"],
                    val.get("auc"),
                    rate,
                )
            accelerator.log(_scalars(row), step=row["epoch"])
            accelerator.wait_for_everyone()
            if stop_phase:
                break
        # Phases rebuild the optimizer over a different parameter set; drop the old wrappers first.
        accelerator.free_memory()
        checkpoint = None

    if (run_dir / BEST_WEIGHTS).is_file():
        model.load_state_dict(load_file(str(run_dir / BEST_WEIGHTS)))
    else:  # the monitored metric was never defined (e.g. a validation split with one class only)
        log.warning(
            "no epoch had a defined validation %s: keeping the last epoch's weights", cfg.train.monitor
        )
    predictions = {}
    gate = has_pooled_features(model)  # every timm classifier; the OOD gate needs its pooled features
    for split in ("val", "test"):
        prepared_model, loader = accelerator.prepare(model, loaders[split])
        probs, targets, indices, features = predict_loader(
            prepared_model, loader, accelerator, task=data.task, tta=cfg.eval.tta, features=gate
        )
        predictions[split] = Predictions(probs, targets, data.rows(split)[indices], features)
        accelerator.free_memory()
    train = train_features(model, cfg, data, spec, accelerator) if gate else None
    if accelerator.is_main_process:
        finish_run(
            cfg,
            data,
            model,
            predictions,
            state,
            input_size=spec.size,
            seconds=time.perf_counter() - started,
            train_features=train,
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()  # closes the TensorBoard writer
    return run_dir


def _scalars(row: dict[str, Any]) -> dict[str, float]:
    """An epoch's history row as TensorBoard scalars ("train/loss", "val/auc", ...) without undefined ones."""
    return {
        key.replace("_", "/", 1): value
        for key, value in row.items()
        if key not in ("epoch", "phase") and value is not None
    }
