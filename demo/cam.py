"""Class activation maps for chexlab models, on pytorch-grad-cam, plus the overlay the UIs show.

Load a model once, pass it through `prepare_for_cam`, then call `explain` per image: one forward pass gives
the probabilities and the heatmap together. `overlay` blends the heatmap onto the image the model saw.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import cv2
import numpy as np
import torch
from matplotlib import colormaps
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.ablation_layer import AblationLayer
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.find_layers import replace_layer_recursive

from trainer.labels import TASKS
from trainer.modeling import cam_target_layer

logger = logging.getLogger(__name__)

Task = Literal["binary", "multiclass", "multilabel"]

CAM_METHODS: MappingProxyType[str, type[BaseCAM]] = MappingProxyType(
    {
        "Grad-CAM": GradCAM,
        "Grad-CAM++": GradCAMPlusPlus,
        "HiResCAM": HiResCAM,
        "LayerCAM": LayerCAM,
        "EigenCAM": EigenCAM,  # class-agnostic: the same map whatever the target
        "XGrad-CAM": XGradCAM,
        "Score-CAM": ScoreCAM,
        "Ablation-CAM": AblationCAM,
    }
)
SLOW_METHODS: MappingProxyType[str, str] = MappingProxyType(
    {
        "Score-CAM": "runs the model once per feature channel (often 1,000+): minutes on a CPU",
        "Ablation-CAM": "runs the model once per ablated feature channel (often 1,000+): minutes on a CPU",
    }
)

target_layer = cam_target_layer  # the layer explain() uses by default: timm's feature_info[-1]["module"]

_locks: weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


@dataclass(frozen=True)
class Explanation:
    """What the model said about one image, and where it looked.

    probabilities/logits: 1-D over the model's outputs; for "binary" a single value, P(positive).
    heatmap: float32 (H, W) in [0, 1] at the input tensor's resolution; all zeros when the method found no
        positive evidence for the target.
    target_index: the class explained; for "binary" 1 = positive, 0 = negative (the label convention).
    """

    probabilities: np.ndarray
    logits: np.ndarray
    heatmap: np.ndarray
    target_index: int
    method: str


def prepare_for_cam(model: torch.nn.Module) -> torch.nn.Module:
    """Make a model safe for CAM hooks; call once, after loading and before the first `explain`.

    pytorch-grad-cam saves the target layer's output as is (sharing its storage), so an in-place operation
    after that layer silently changes the map: e.g. a BatchNorm inside a timm ResNet or DenseNet block is
    followed by an in-place ReLU. Every module with an `inplace` flag (nn.ReLU, nn.SiLU, timm's act layers,
    ...) is switched to out-of-place; in-place functional ops and residual `x += shortcut` cannot be, so
    explain block outputs (the feature_info modules, which are not affected) rather than layers inside them.
    Gradient checkpointing is switched off, since recomputing blocks in backward re-fires the forward hooks.
    The outputs are unchanged. Returns the same model, modified in place.
    """
    for module in model.modules():
        if getattr(module, "inplace", None) is True:
            module.inplace = False
    if hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(False)
    return model


def model_lock(model: torch.nn.Module) -> threading.RLock:
    """The lock `explain` holds on `model` while its hooks are registered.

    The CAM hooks sit on the shared target module, so any other forward of the same model during an `explain`
    (another thread, another Streamlit session) would add its activations to that call's; Ablation-CAM even
    swaps the target layer out for a while. Take this lock around other forwards that may run concurrently.
    """
    with _locks_guard:
        return _locks.setdefault(model, threading.RLock())


def _check_names(task: str, method: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; valid: {', '.join(CAM_METHODS)}")


class _Target:
    """The scalar a CAM method explains: a class logit, or -logit for the negative class of a binary model.

    The number of outputs is known only once the model has run, so the index is checked (or, by default, set
    to the top class) from `cam.outputs`, the logits of the real forward pass: Score-CAM calls its targets on
    masked copies of the input only, and EigenCAM never calls them.
    """

    def __init__(self, task: str, index: int | None, cam: BaseCAM) -> None:
        self.task, self.index, self.cam, self.resolved = task, index, cam, False

    def resolve(self) -> int:
        if self.resolved:
            return self.index
        logits = self.cam.outputs.detach()[0]
        num_outputs = logits.shape[-1]
        if self.task == "binary" and num_outputs != 1:
            raise ValueError(f"a binary model has one logit, this one has {num_outputs}; use 'multiclass'")
        valid = 2 if self.task == "binary" else num_outputs
        if self.index is None:
            self.index = int(logits[0] >= 0) if self.task == "binary" else int(logits.argmax())
        elif not 0 <= self.index < valid:
            task, index = self.task, self.index
            raise ValueError(f"target_index {index} out of range for a {task} model; valid: 0-{valid - 1}")
        self.resolved = True
        return self.index

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        index = self.resolve()
        if self.task == "binary":
            return output[0] if index == 1 else -output[0]
        return output[index]


def explain(
    model: torch.nn.Module,
    input_tensor: torch.Tensor,
    *,
    task: Task,
    target_index: int | None = None,
    method: str = "Grad-CAM",
    layer: torch.nn.Module | None = None,
) -> Explanation:
    """Predict and explain one image with a single forward pass.

    Args:
        model: a classifier returning logits (N, C); pass it through `prepare_for_cam` once first. It runs in
            eval mode; its previous mode is restored and no gradients are left on its parameters.
        input_tensor: the normalised image, (3, H, W) or (1, 3, H, W).
        task: "binary" (one logit), "multiclass" (softmax) or "multilabel" (sigmoid per finding).
        target_index: the class to explain; binary: 1 = positive (the logit), 0 = negative (-logit, so the map
            shows the evidence for "normal"). Default: the top class; binary: positive if P >= 0.5.
        method: a key of `CAM_METHODS` (see `SLOW_METHODS` for the slow ones).
        layer: the layer to explain; default `target_layer(model)`.

    Raises:
        ValueError: unknown task or method, wrong input shape, target_index out of range, or a binary model
            without exactly one logit.
    """
    _check_names(task, method)
    if input_tensor.dim() == 3:
        input_tensor = input_tensor.unsqueeze(0)
    if input_tensor.dim() != 4 or input_tensor.shape[0] != 1:
        shape = list(input_tensor.shape)
        raise ValueError(f"explain takes one image, (C, H, W) or (1, C, H, W); got shape {shape}")
    layer = target_layer(model) if layer is None else layer
    extra = {"ablation_layer": AblationLayer()} if method == "Ablation-CAM" else {}  # its default is shared
    with model_lock(model):
        was_training = model.training
        # Inference mode (a caller's or the input's) would forbid the backward pass; a clone of the input with
        # requires_grad keeps the graph alive even when every parameter is frozen.
        with torch.inference_mode(False), torch.enable_grad():
            x = input_tensor.clone().requires_grad_(True)
            try:
                with CAM_METHODS[method](model=model, target_layers=[layer], **extra) as cam:
                    target = _Target(task, target_index, cam)
                    try:
                        grayscale = cam(x, targets=[target])
                    except IndexError as exc:  # BaseCAM.__exit__ would swallow it (and print): re-raise
                        raise RuntimeError(f"{method} failed on this model: {exc}") from exc
                    index = target.resolve()
                    logits = cam.outputs.detach()[0].float().cpu()
            finally:
                if extra:  # Ablation-CAM restores the layer only when it succeeds
                    replace_layer_recursive(model, extra["ablation_layer"], layer)
                model.zero_grad(set_to_none=True)
                model.train(was_training)
    probabilities = logits.softmax(-1) if task == "multiclass" else logits.sigmoid()
    heatmap = np.clip(np.nan_to_num(grayscale[0], nan=0.0), 0.0, 1.0).astype(np.float32)
    if not heatmap.any():
        logger.debug("%s found no positive evidence for class %d: the heatmap is all zeros", method, index)
    return Explanation(probabilities.numpy(), logits.numpy(), heatmap, index, method)


def overlay(
    image: np.ndarray, heatmap: np.ndarray, *, opacity: float = 0.4, colormap: str = "jet"
) -> np.ndarray:
    """Blend a heatmap, resized to the image, onto a grayscale image.

    Args:
        image: float (H, W) in [0, 1].
        heatmap: float (h, w) in [0, 1]; resized bilinearly to (H, W).
        opacity: 0 gives the plain grayscale image, 1 the pure colour map.
        colormap: a matplotlib colormap name.

    Returns:
        uint8 RGB (H, W, 3).
    """
    if image.ndim != 2 or heatmap.ndim != 2:
        raise ValueError(f"overlay takes 2-D image and heatmap; got {image.shape} and {heatmap.shape}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1]; got {opacity}")
    if colormap not in colormaps:
        raise ValueError(f"unknown colormap {colormap!r}; use a matplotlib name: jet, inferno, viridis, ...")
    height, width = image.shape
    heat = cv2.resize(np.asarray(heatmap, dtype=np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    colour = colormaps[colormap](np.clip(heat, 0.0, 1.0))[..., :3]
    gray = np.repeat(np.clip(image, 0.0, 1.0)[..., None], 3, axis=-1)
    return np.rint(255.0 * ((1.0 - opacity) * gray + opacity * colour)).astype(np.uint8)
