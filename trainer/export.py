"""Saving a trained classifier as a model folder in timm's Hub layout, and loading one back.

A model folder holds `config.json` (timm's: `architecture`, `num_classes`, `label_names`, `pretrained_cfg`
with the input size and normalisation, `model_args`) with chexlab's own `chexlab` block beside timm's keys,
and `model.safetensors`. So `timm.create_model("local-dir:DIR", pretrained=True)` and, once pushed,
`timm.create_model("hf-hub:org/name", pretrained=True)` rebuild the network unchanged (linear heads; the
"mlp" and "dense_bn" heads need chexlab), while chexlab's `load_model` also gets the task, labels,
preprocessing pipeline and thresholds that make it an X-ray classifier.

A timm config.json without a `chexlab` block (an ImageNet checkpoint, say) is refused by `load_model`: its
outputs are not X-ray findings, and nothing says how to preprocess a radiograph for it or where to put the
decision threshold. Such weights are a starting point for training (`model.init`), not a model to predict
with.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from timm.models import save_for_hf
from torch import nn

from trainer import __version__
from trainer.calibration import CONFIG_KEY as CALIBRATION_KEY
from trainer.calibration import Calibration, CalibrationError, read_calibration
from trainer.errors import ChexlabError
from trainer.model_source import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    ModelLoadError,
    ModelSource,
    ModelSourceError,
    SourceKind,
    optional_model_file,
    read_model_folder,
)
from trainer.modeling import HeadConfig, head_config, model_data_config, model_from_folder, saved_label_names
from trainer.ood import CONFIG_KEY as OOD_KEY
from trainer.ood import NO_STATISTICS_NOTE, OOD_FILE, FeatureStatistics, OODError, load_statistics
from trainer.preprocess import Pipeline, PreprocessError
from trainer.task import Task

log = logging.getLogger(__name__)

# Keys of a dataset summary that describe this machine, not the data: kept out of a publishable config.json.
LOCAL_KEYS = ("root",)


class ExportError(ChexlabError, ValueError):
    """A model that cannot be written as a model folder: its labels, head, input size or dtype do not fit."""


@dataclass(frozen=True)
class ModelInfo:
    """What a saved chexlab model says about itself (from its config.json)."""

    source: ModelSource  # where it was loaded from (with the revision, if any)
    arch: str  # timm architecture name
    task: Task
    label_names: list[str]  # output order; binary: [positive_name]
    negative_name: str | None  # binary only
    pipeline: Pipeline  # preprocessing before the letterbox and normalisation
    thresholds: list[float]  # binary: 1, multilabel: one per finding, multiclass: [] (argmax)
    data_config: dict[str, Any]  # input_size (3, H, W), mean, std, interpolation, crop_pct
    head: HeadConfig
    metrics: dict[str, Any] = field(default_factory=dict)  # headline metrics per split, as trained
    training_data: dict[str, Any] = field(default_factory=dict)  # dataset summary (name, sizes, label counts)
    chexlab_version: str | None = None  # the chexlab that saved it
    config: dict[str, Any] = field(default_factory=dict)  # the raw config.json
    calibration: Calibration | None = None  # None only while building; load_model always sets one
    ood: FeatureStatistics | None = None  # the OOD gate's statistics; None for a folder without them

    @property
    def notes(self) -> tuple[str, ...]:
        """What a user should know about this folder: no calibration, no OOD statistics."""
        found = []
        if self.calibration is not None and self.calibration.note:
            found.append(self.calibration.note)
        if self.ood is None:
            found.append(NO_STATISTICS_NOTE)
        return tuple(found)

    def calibrated(self, probs: np.ndarray) -> np.ndarray:
        """The stored calibration applied to raw probabilities ((N,) binary, else (N, C))."""
        return probs if self.calibration is None else self.calibration.apply(probs, self.task)


def _input_size(size: int | tuple[int, ...] | list[int]) -> tuple[int, int, int]:
    if isinstance(size, int):
        return (3, size, size)
    size = tuple(int(s) for s in size)
    if len(size) == 2:
        return (3, *size)
    if len(size) == 3 and size[0] == 3:
        return size
    raise ExportError(f"input_size must be an int, (H, W) or (3, H, W); got {size}")


def save_pretrained(
    model: nn.Module,
    out_dir: str | Path,
    *,
    task: Task | str,
    label_names: list[str],
    pipeline: Pipeline | list[Any],
    thresholds: list[float],
    negative_name: str | None = None,
    head: HeadConfig | dict[str, Any] | None = None,
    input_size: int | tuple[int, ...] | None = None,
    metrics_summary: dict[str, Any] | None = None,
    data_summary: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
    calibration: Calibration | None = None,
    ood: FeatureStatistics | None = None,
) -> Path:
    """Write a model folder in timm's Hub layout: config.json (with a `chexlab` block) and model.safetensors.

    Args:
        model: a classifier from `trainer.modeling.create_classifier` (any timm model with a matching head).
        out_dir: the folder to write (created; existing config.json/model.safetensors are replaced).
        task: a Task or its name.
        label_names: output names in order; binary: [positive_name].
        pipeline: the preprocessing pipeline the model was trained with (a Pipeline or its JSON list).
        thresholds: decision thresholds (binary: 1, multilabel: one per finding, multiclass: []).
        negative_name: the binary negative class name (e.g. "normal").
        head: the head config, to check against the model's own (None: taken from the model).
        input_size: the side (or (H, W)) the model was trained at; None keeps the model's data config.
        metrics_summary: headline metrics per split, e.g. {"val": {...}, "test": {...}}.
        data_summary: the training data summary (dataset name, images per split, label counts).
        dtype: torch.float16 halves the file (floating tensors only); loading restores float32.
        calibration: the fitted calibration (stored in the chexlab block); None or an identity stores none.
        ood: the OOD gate's statistics (stored as ood.safetensors, its threshold in the chexlab block).

    Returns:
        The model folder.

    Raises:
        TaskError: labels, outputs or thresholds that do not fit the task.
        ExportError: a head, input size or dtype that does not fit, or weights that overflow float16.
    """
    out_dir = Path(out_dir)
    task = Task.parse(task)
    label_names = [str(name) for name in label_names]
    thresholds = [float(t) for t in thresholds]
    task.check_outputs(label_names, int(model.num_classes), thresholds)
    model_head = head_config(model)
    if head is not None:
        given = head if isinstance(head, HeadConfig) else HeadConfig.from_dict(head)
        if given != model_head:
            raise ExportError(f"head {given} does not match the model's own head {model_head}")
    if dtype not in (torch.float32, torch.float16):
        raise ExportError(f"dtype must be torch.float32 or torch.float16, got {dtype}")
    pipeline = pipeline if isinstance(pipeline, Pipeline) else Pipeline.from_list(pipeline)

    data_config = model_data_config(model)
    if input_size is not None:
        data_config["input_size"] = _input_size(input_size)
    # chexlab letterboxes the whole radiograph to the input size and never centre-crops. So does timm's own
    # eval transform with crop_mode "border" and crop_pct 1.0 (the longest side resized to the input, the
    # other padded); "center" would cut the lung apices or bases off a portrait film.
    data_config["crop_pct"] = 1.0
    data_config["crop_mode"] = "border"
    training_data = {k: v for k, v in (data_summary or {}).items() if k not in LOCAL_KEYS}
    chexlab_block = {
        "task": task.value,
        "negative_name": negative_name if task.single_logit else None,
        "head": model_head.to_dict(),
        "preprocessing": pipeline.to_list(),
        "thresholds": thresholds,
        "metrics": metrics_summary or {},
        "training_data": training_data,
        "weights_dtype": str(dtype).removeprefix("torch."),
        "chexlab_version": __version__,
    }
    if calibration is not None and calibration.calibrated:
        chexlab_block[CALIBRATION_KEY] = calibration.to_dict()
    if ood is not None:
        chexlab_block[OOD_KEY] = ood.config_entry()
    weights = _weights(model, dtype) if dtype != torch.float32 else None
    write_model_folder(model, out_dir, label_names, chexlab_block, data_config, weights=weights, ood=ood)
    log.info("saved a %s %s model (%s weights) to %s", task, model.pretrained_cfg.get("architecture"),
             chexlab_block["weights_dtype"], out_dir)  # fmt: skip
    return out_dir


def write_model_folder(
    model: nn.Module,
    out_dir: Path,
    label_names: list[str],
    chexlab_block: dict[str, Any],
    data_config: dict[str, Any],
    *,
    weights: dict[str, torch.Tensor] | None = None,
    ood: FeatureStatistics | None = None,
) -> None:
    """config.json (timm's keys, `label_names`, the `chexlab` block), model.safetensors and, with OOD
    statistics, ood.safetensors into `out_dir`; a stale ood.safetensors of an earlier export is removed.

    Args:
        weights: the tensors to store instead of the model's own (e.g. cast to float16).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    # timm's save_for_hf writes the model's own tensors, and safetensors takes only contiguous ones: a model
    # trained channels-last (trainer.modeling.channels_last) is written from a contiguous copy.
    if not all(tensor.is_contiguous() for tensor in model.state_dict().values()):
        model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    # Written next to the destination, then moved into place: a crash never leaves half a file behind.
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as tmp:
        save_for_hf(
            model,
            tmp,
            model_config={
                "label_names": label_names,
                # The tag and licence timm carries over describe the initial (e.g. ImageNet) weights, not
                # these: the model's licence is in its card.
                "pretrained_cfg": {"tag": None, "license": None},
                "chexlab": chexlab_block,
            },
            safe_serialization=True,  # timm's default also writes a pickle (pytorch_model.bin)
            data_config=data_config,
        )
        if weights is not None:
            save_file(weights, str(Path(tmp) / WEIGHTS_NAME), metadata={"format": "pt"})
        names = [WEIGHTS_NAME, CONFIG_NAME]
        if ood is not None:
            ood.save(tmp)
            names.insert(0, OOD_FILE)
        else:
            (out_dir / OOD_FILE).unlink(missing_ok=True)
        for name in names:
            # safetensors writes owner-only files; a model folder is meant to be shared and served.
            os.chmod(Path(tmp) / name, 0o644)
            os.replace(Path(tmp) / name, out_dir / name)


def _weights(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors, floating ones in `dtype` (integer counters unchanged).

    Raises:
        ExportError: a finite weight overflows `dtype`.
    """
    weights = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if tensor.is_floating_point() and tensor.dtype != dtype:
            cast = tensor.to(dtype)
            if not torch.isfinite(cast).all() and torch.isfinite(tensor).all():
                raise ExportError(f"{name} has values outside the {dtype} range; save in float32")
            tensor = cast
        weights[name] = tensor.contiguous()
    return weights


def load_model(
    source: str | os.PathLike[str] | ModelSource,
    revision: str | None = None,
    *,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, ModelInfo]:
    """Load a chexlab model folder, from the Hub or from disk, for inference (eval mode).

    Args:
        source: a `ModelSource`, or a string as on the command line: "hf-hub:org/name[@revision]",
            "local-dir:PATH", or (without a prefix) a model folder or a run folder holding `model/`.
        revision: a Hub branch, tag or commit (overrides an @revision in the source).
        device: where to put the model.

    Returns:
        The model (float32, eval mode) and its ModelInfo.

    Raises:
        ModelLoadError: not found, offline without a cached copy, pickle-only weights, not a chexlab model, or
            weights that do not fit the architecture.
    """
    try:
        if not isinstance(source, ModelSource):
            source = ModelSource.parse(source, bare=SourceKind.LOCAL)
        source = source.with_revision(revision)
        config, state_dict = read_model_folder(source)
    except ModelSourceError as err:
        raise ModelLoadError(str(err)) from err
    block = config.get("chexlab")
    if not isinstance(block, dict):
        raise ModelLoadError(
            f"{source} is a timm model without chexlab's metadata (task, labels, preprocessing, thresholds) "
            "in its config.json, e.g. an ImageNet checkpoint: its outputs are not chest X-ray findings. "
            "Use it to start training instead (model.init in a training config)."
        )
    try:
        info = _model_info(source, config, block)
        model = model_from_folder(config, state_dict)
    except (KeyError, TypeError, ValueError, PreprocessError) as err:
        raise ModelLoadError(f"{source} has an invalid chexlab config.json: {err}") from err
    try:
        ood_file = optional_model_file(source, OOD_FILE)
        info = replace(
            info,
            calibration=read_calibration(block, info.task, int(config["num_classes"])),
            ood=load_statistics(ood_file.parent if ood_file is not None else None, block),
        )
    except (ModelSourceError, CalibrationError, OODError) as err:
        raise ModelLoadError(f"{source}: {err}") from err
    model.float().eval().to(device)
    log.info("loaded %s: %s %s model, labels %s", source, info.arch, info.task, info.label_names)
    return model, info


def _model_info(source: ModelSource, config: dict[str, Any], block: dict[str, Any]) -> ModelInfo:
    task = Task.parse(block["task"])
    labels = saved_label_names(config)
    if labels is None:
        raise ValueError("no label_names")
    thresholds = [float(t) for t in block.get("thresholds") or []]
    task.check_outputs(labels, int(config["num_classes"]), thresholds)
    pretrained = config.get("pretrained_cfg", {})
    data_config = {
        "input_size": tuple(pretrained["input_size"]),
        "mean": tuple(pretrained["mean"]),
        "std": tuple(pretrained["std"]),
        "interpolation": pretrained.get("interpolation", "bicubic"),
        "crop_pct": pretrained.get("crop_pct", 1.0),
    }
    return ModelInfo(
        source=source,
        arch=config["architecture"],
        task=task,
        label_names=labels,
        negative_name=block.get("negative_name"),
        pipeline=Pipeline.from_list(block.get("preprocessing") or []),
        thresholds=thresholds,
        data_config=data_config,
        head=HeadConfig.from_dict(block.get("head") or {}),
        metrics=block.get("metrics") or {},
        training_data=block.get("training_data") or {},
        chexlab_version=block.get("chexlab_version"),
        config=config,
    )


def export_run(run_dir: str | Path, out_dir: str | Path, *, dtype: torch.dtype = torch.float16) -> Path:
    """Copy a finished run's model to `out_dir` (e.g. in float16, half the size), with its card and plots.

    Raises:
        ModelLoadError: the run folder holds no model.
    """
    from hub_cards import write_card

    run_dir = Path(run_dir)
    model, info = load_model(run_dir / "model")
    block = info.config["chexlab"]
    out = save_pretrained(
        model,
        out_dir,
        task=info.task,
        label_names=info.label_names,
        pipeline=info.pipeline,
        thresholds=info.thresholds,
        negative_name=info.negative_name,
        head=info.head,
        input_size=info.data_config["input_size"],
        metrics_summary=block.get("metrics"),
        data_summary=block.get("training_data"),
        dtype=dtype,
        calibration=info.calibration,
        ood=info.ood,
    )
    write_card(run_dir, out)
    return out
