"""Published chest X-ray checkpoints as chexlab model folders, to start training from.

``python -m trainer import-weights SRC OUT --format chexnet|torchxrayvision|timm`` reads a PyTorch
checkpoint with ``torch.load(weights_only=True)`` - plain tensors and containers only, so a file that needs
unpickling of anything else is refused with the reason, never run - maps its key names onto the timm
architecture and writes OUT in timm's Hub layout (``config.json`` + ``model.safetensors``). OUT is then a
``model.init`` (``local-dir:OUT``; ``model.new_head: true`` when the run's labels differ) or any tool's
``local-dir:`` source. It is a starting point, not a validated classifier: it has no decision thresholds.

Formats:

* ``chexnet`` - CheXNet reproductions (e.g. ``model.pth.tar``): a DenseNet121 under
  ``module.densenet121.features.*``, torchvision's old layer names (``norm.1``, ``conv.1``, ...), a
  14-output classifier ``module.densenet121.classifier.0.*`` (Linear, then a Sigmoid); ImageNet
  normalisation at 224 px on RGB input.
* ``torchxrayvision`` - torchxrayvision's DenseNets as a state dict (``features.*``, ``classifier.*``): 18
  pathologies, one input channel, pixels scaled to [-1024, 1024] at 224 px. chexlab feeds three identical
  channels, so the first convolution is divided by three across them, and records ``mean`` 0.5 and ``std``
  1/2048 in the folder - which turns chexlab's [0, 1] pixels into exactly torchxrayvision's input range.
* ``timm`` - a state dict of any timm architecture (``--arch``), key names as timm's.

``--labels`` names the outputs where the checkpoint's own names are not known (or differ).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch
from torch import Tensor

from trainer.errors import ChexlabError
from trainer.export import write_model_folder

__all__ = ["CHEXNET_LABELS", "FORMATS", "TORCHXRAYVISION_LABELS", "WeightsImportError", "import_weights"]

log = logging.getLogger(__name__)

CHEXNET_LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
TORCHXRAYVISION_LABELS = (
    "Atelectasis",
    "Consolidation",
    "Infiltration",
    "Pneumothorax",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Effusion",
    "Pneumonia",
    "Pleural_Thickening",
    "Cardiomegaly",
    "Nodule",
    "Mass",
    "Hernia",
    "Lung Lesion",
    "Fracture",
    "Lung Opacity",
    "Enlarged Cardiomediastinum",
)
_IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
# torchxrayvision's input is 2048 * p - 1024 for pixels p in [0, 1]: (p - 0.5) / (1 / 2048).
_XRV_RANGE = {"mean": (0.5, 0.5, 0.5), "std": (1 / 2048,) * 3}
_WRAPPER_PREFIXES = ("module.", "model.", "densenet121.", "_orig_mod.")
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net")


class WeightsImportError(ChexlabError, ValueError):
    """A checkpoint that cannot be imported: not plain tensors, or keys that do not fit the architecture."""


@dataclass(frozen=True)
class Format:
    """How one kind of checkpoint maps onto timm."""

    arch: str | None  # None: given with --arch
    labels: tuple[str, ...] | None  # None: generic output names unless --labels
    data_config: dict[str, Any] = field(default_factory=dict)
    description: str = ""


FORMATS = {
    "chexnet": Format(
        "densenet121", CHEXNET_LABELS, {**_IMAGENET, "input_size": (3, 224, 224)}, "a CheXNet reproduction"
    ),
    "torchxrayvision": Format(
        "densenet121",
        TORCHXRAYVISION_LABELS,
        {**_XRV_RANGE, "input_size": (3, 224, 224)},
        "a torchxrayvision DenseNet (one channel, pixels in [-1024, 1024])",
    ),
    "timm": Format(None, None, {}, "a timm state dict"),
}


def load_tensors(path: Path) -> dict[str, Tensor]:
    """The state dict in a checkpoint: plain tensors only, nested under "state_dict" (or similar) or not.

    Raises:
        WeightsImportError: missing, anything but tensors and plain containers, or no state dict inside.
    """
    if not path.is_file():
        raise WeightsImportError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return safetensors.torch.load_file(str(path))
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsImportError(
            f"{path} holds more than plain tensors, so chexlab does not load it (unpickling it could run "
            f"any code): {_refusal_reason(str(exc))}. If you trust it, re-save just its weights in the "
            "library that made it, e.g. `torch.save(model.state_dict(), 'weights.pt')` (torchxrayvision: "
            "`torch.save(xrv.models.DenseNet(weights='densenet121-res224-all').state_dict(), 'xrv.pt')`), "
            "and import that"
        ) from None
    except (RuntimeError, OSError, EOFError) as exc:
        raise WeightsImportError(f"cannot read {path} as a PyTorch checkpoint: {exc}") from None
    state = loaded
    while isinstance(state, dict) and not _all_tensors(state):
        nested = next((state[k] for k in _NESTED_KEYS if isinstance(state.get(k), dict)), None)
        if nested is None:
            kinds = {k: type(v).__name__ for k, v in list(state.items())[:8]}
            raise WeightsImportError(
                f"{path} holds no state dict (a mapping of names to tensors); its entries: {kinds}"
            )
        state = nested
    if not isinstance(state, dict) or not state:
        raise WeightsImportError(f"{path} holds a {type(state).__name__}, not a state dict")
    return dict(state)


def _refusal_reason(message: str) -> str:
    """What torch's weights-only unpickler objected to, in one line."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    if found:
        return f"it refers to {found.group(1)}, which only unpickling could rebuild"
    found = re.search(r"WeightsUnpickler error: ([^\n]+)", message)
    return found.group(1) if found else (message.strip().splitlines() or ["not plain tensors"])[0]


def _all_tensors(mapping: dict) -> bool:
    return bool(mapping) and all(isinstance(v, Tensor) for v in mapping.values())


def _strip_wrappers(name: str) -> str:
    """'module.densenet121.features.x' -> 'features.x': DataParallel and model-attribute prefixes."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix) :], True
    return name


def _chexnet_key(name: str) -> str:
    name = _strip_wrappers(name)
    name = re.sub(r"\.(norm|relu|conv)\.([12])\.", r".\1\2.", name)  # torchvision < 0.4 layer names
    return re.sub(r"^classifier\.0\.", "classifier.", name)  # Sequential(Linear, Sigmoid)


def map_keys(state: dict[str, Tensor], fmt: str) -> dict[str, Tensor]:
    """The checkpoint's tensors under timm's names (and shapes) for ``fmt``."""
    if fmt == "chexnet":
        return {_chexnet_key(k): v for k, v in state.items()}
    mapped = {_strip_wrappers(k): v for k, v in state.items()}
    if fmt == "torchxrayvision":
        conv = mapped.get("features.conv0.weight")
        if conv is not None and conv.shape[1] == 1:
            # Three identical channels through weights w/3 each sum to the one channel through w.
            mapped["features.conv0.weight"] = conv.repeat(1, 3, 1, 1) / 3
    return mapped


def import_weights(
    src: str | os.PathLike,
    out: str | os.PathLike,
    fmt: str,
    *,
    arch: str | None = None,
    labels: list[str] | None = None,
) -> Path:
    """Convert a checkpoint into a chexlab model folder (see the module docstring).

    Args:
        src: the checkpoint (``.pth``, ``.pth.tar``, ``.pt``, ``.bin`` or ``.safetensors``).
        out: the model folder to write.
        fmt: "chexnet", "torchxrayvision" or "timm".
        arch: the timm architecture (needed for "timm"; the others are DenseNet121).
        labels: output names, in order (default: the format's own, or output_0, output_1, ...).

    Returns:
        The model folder.

    Raises:
        WeightsImportError: an unknown format, a refused or unreadable checkpoint, keys or shapes that do not
            fit the architecture, or labels that do not match the outputs.
    """
    if fmt not in FORMATS:
        raise WeightsImportError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    spec = FORMATS[fmt]
    arch = arch or spec.arch
    if arch is None:
        raise WeightsImportError("--format timm needs --arch, the timm architecture the weights are for")
    if spec.arch is not None and arch != spec.arch:
        raise WeightsImportError(f"{fmt} checkpoints are {spec.arch}, not {arch}")
    if not timm.is_model(arch):
        raise WeightsImportError(f"unknown timm architecture {arch!r}; see timm.list_models()")
    source = Path(src)
    state = map_keys(load_tensors(source), fmt)
    skeleton = timm.create_model(arch, pretrained=False)
    classifier = skeleton.pretrained_cfg["classifier"]
    weight = state.get(f"{classifier}.weight")
    if weight is None:
        raise WeightsImportError(
            f"{source} has no classifier weights '{classifier}.weight' for {arch} after mapping {fmt} names; "
            f"its first keys: {list(state)[:5]}"
        )
    num_classes = int(weight.shape[0])
    names = list(labels) if labels is not None else list(spec.labels or ())
    if not names:
        names = [f"output_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise WeightsImportError(
            f"{source} has {num_classes} outputs but {len(names)} label names were given: {names}"
        )
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    _load_exactly(model, state, source, fmt)
    imported = {"format": fmt, "description": spec.description, "source": source.name}
    out_dir = Path(out)
    write_model_folder(
        model,
        out_dir,
        names,
        {"task": "multilabel", "head": {"type": "linear"}, "imported": imported},
        {**spec.data_config, "crop_pct": 1.0},
    )
    log.info("imported %s (%s, %d outputs) into %s", source, fmt, num_classes, out_dir)
    return out_dir


def _load_exactly(model: torch.nn.Module, state: dict[str, Tensor], source: Path, fmt: str) -> None:
    """Every tensor of the model from ``state`` (BatchNorm's step counters may be absent, as in old files).

    Raises:
        WeightsImportError: missing or unexpected keys, or shapes that differ, each listed.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: {tuple(v.shape)} instead of {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        raise WeightsImportError(
            f"{source} does not fit {type(model).__name__} as --format {fmt}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(wrong)} of another shape (e.g. {wrong[:2]}); is it another format or architecture?"
        )
    model.load_state_dict({**expected, **state})
