"""Class activation maps for chexlab models.

Load a model once, pass it through `prepare_for_cam`, then call `explain` per image: one forward pass gives
the probabilities and the heatmap together. The default method, Grad-CAM, costs about one forward pass: the
network runs without gradients up to the explained layer and records a graph only for the layers after it
(for a timm model: its last block and the head), so the backward pass is that short tail. The other methods
run on pytorch-grad-cam, imported on their first use only (it pulls in scikit-learn, pandas, scipy and
matplotlib). `demo.overlay` blends the heatmap onto the image the model saw.
"""

from __future__ import annotations

import functools
import importlib
import logging
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from demo.methods import CAM_METHODS
from trainer.errors import ChexlabError
from trainer.modeling import cam_target_layer, channels_last
from trainer.task import Task

if TYPE_CHECKING:
    from pytorch_grad_cam.base_cam import BaseCAM

logger = logging.getLogger(__name__)

target_layer = cam_target_layer  # the layer explain() uses by default: timm's feature_info[-1]["module"]

_locks: weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


class CamError(ChexlabError, ValueError):
    """An unknown CAM method, an input of the wrong shape, or a target class the model does not have."""


@dataclass(frozen=True)
class Explanation:
    """What the model said about one image, and where it looked.

    probabilities/logits: 1-D over the model's outputs; for a binary model a single value, P(positive).
    heatmap: float32 (H, W) in [0, 1] at the input tensor's resolution; all zeros when the method found no
        positive evidence for the target.
    target_index: the class explained; for a binary model 1 = positive, 0 = negative (`Task.class_index`).
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
    The weights are stored channels-last (`trainer.modeling.channels_last`); inputs need no conversion.
    Returns the same model, modified in place.
    """
    channels_last(model)
    for module in model.modules():
        if getattr(module, "inplace", None) is True:
            module.inplace = False
    if hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(False)
    return model


def model_lock(model: torch.nn.Module) -> threading.RLock:
    """The lock `explain` holds on `model` while its hooks are registered.

    The CAM hooks sit on the shared target module, so any other forward of the same model during an `explain`
    (another thread, another Streamlit session) would add its activations to that call's, or (Grad-CAM) have
    its explained layer's output swapped; Ablation-CAM even swaps the target layer out for a while. Take this
    lock around other forwards that may run concurrently.
    """
    with _locks_guard:
        return _locks.setdefault(model, threading.RLock())


def _target_index(task: Task, index: int | None, logits: torch.Tensor) -> int:
    """The class to explain, from one image's logits (C,): `index` checked, or the default one."""
    num_outputs = logits.shape[-1]
    if task.single_logit and num_outputs != 1:
        raise CamError(f"a binary model has one logit, this one has {num_outputs}; use 'multiclass'")
    if index is None:
        return task.default_class_index(logits)
    valid = task.num_explainable(num_outputs)
    if not 0 <= index < valid:
        raise CamError(f"target_index {index} out of range for a {task} model; valid: 0-{valid - 1}")
    return index


def _min_max(image: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's `scale_cam_image` for one map: shifted to 0 and scaled to a maximum of ~1."""
    image = image - np.min(image)
    return image / (1e-7 + np.max(image))


def _grad_cam(
    model: torch.nn.Module, x: torch.Tensor, layer: torch.nn.Module, task: Task, index: int | None
) -> tuple[torch.Tensor, np.ndarray, int] | None:
    """Grad-CAM of one image as pytorch-grad-cam computes it, with a backward pass through the tail only.

    The forward runs without gradients; a hook on `layer` replaces its output by a leaf that requires grad and
    switches gradient recording on for the rest of the forward (`torch.no_grad` restores the caller's mode on
    exit). The gradient of the class score with respect to that leaf is all Grad-CAM needs: per channel the
    spatial mean of the gradient weights the activations. Returns (logits (C,), heatmap, index), or None when
    `layer` did not run exactly once (then the caller uses pytorch-grad-cam).
    """
    leaves: list[torch.Tensor] = []
    calls = 0

    def record_from_here(module: torch.nn.Module, args: Any, output: Any) -> torch.Tensor | None:
        nonlocal calls
        calls += 1
        if calls > 1 or not isinstance(output, torch.Tensor) or output.dim() != 4:
            return None
        leaf = output.detach().requires_grad_(True)
        leaves.append(leaf)
        torch.set_grad_enabled(True)
        # A clone, so that an in-place op after the layer (a residual `x += shortcut`) changes neither the
        # activations kept for the map nor a leaf that autograd would refuse to see modified.
        return leaf.clone()

    handle = layer.register_forward_hook(record_from_here)
    try:
        with torch.no_grad():
            output = model(x)
    finally:
        handle.remove()
    if calls != 1 or not leaves:
        return None
    logits = output[0]
    index = _target_index(task, index, logits.detach())
    score = task.class_score(logits, index)
    (activations,) = leaves
    if score.requires_grad:
        (gradients,) = torch.autograd.grad(score, activations, allow_unused=True, materialize_grads=True)
    else:  # the output does not depend on the layer
        gradients = torch.zeros_like(activations)
    # The same numpy float32 arithmetic as pytorch-grad-cam's GradCAM, for the same map.
    activation = activations.detach().float().cpu().numpy()
    weights = np.mean(gradients.float().cpu().numpy(), axis=(2, 3))
    cam = np.maximum((weights[:, :, None, None] * activation).sum(axis=1)[0], 0)
    height, width = x.shape[-2:]
    heatmap = _min_max(np.maximum(cv2.resize(np.float32(_min_max(cam)), (width, height)), 0))
    return logits.detach(), heatmap, index


@functools.cache
def _cam_class(method: str) -> type[BaseCAM]:
    return getattr(importlib.import_module("pytorch_grad_cam"), CAM_METHODS[method])


class _Target:
    """The scalar a pytorch-grad-cam method explains: `Task.class_score` of the real forward pass's class.

    The number of outputs is known only once the model has run, so the index is checked (or, by default, set
    to the top class) from `cam.outputs`, the logits of the real forward pass: Score-CAM calls its targets on
    masked copies of the input only, and EigenCAM never calls them.
    """

    def __init__(self, task: Task, index: int | None, cam: BaseCAM) -> None:
        self.task, self.index, self.cam = task, index, cam
        self.resolved: int | None = None

    def resolve(self) -> int:
        if self.resolved is None:
            self.resolved = _target_index(self.task, self.index, self.cam.outputs.detach()[0])
        return self.resolved

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return self.task.class_score(output, self.resolve())


def _library_cam(
    model: torch.nn.Module,
    x: torch.Tensor,
    layer: torch.nn.Module,
    task: Task,
    index: int | None,
    method: str,
) -> tuple[torch.Tensor, np.ndarray, int]:
    """(logits (C,), heatmap, index) from pytorch-grad-cam's implementation of `method`."""
    from pytorch_grad_cam.ablation_layer import AblationLayer
    from pytorch_grad_cam.utils.find_layers import replace_layer_recursive

    ablation = AblationLayer() if method == "Ablation-CAM" else None  # its default instance is shared
    extra = {"ablation_layer": ablation} if ablation is not None else {}
    # A clone of the input with requires_grad keeps the graph alive even when every parameter is frozen.
    x = x.requires_grad_(True)
    try:
        with torch.enable_grad(), _cam_class(method)(model=model, target_layers=[layer], **extra) as cam:
            target = _Target(task, index, cam)
            try:
                grayscale = cam(x, targets=[target])
            except IndexError as exc:  # BaseCAM.__exit__ would swallow it (and print): re-raise
                raise RuntimeError(f"{method} failed on this model: {exc}") from exc
            return cam.outputs.detach()[0], grayscale[0], target.resolve()
    finally:
        model.zero_grad(set_to_none=True)  # the library's backward() filled the parameters' .grad
        if ablation is not None:  # Ablation-CAM restores the layer only when it succeeds
            replace_layer_recursive(model, ablation, layer)


def explain(
    model: torch.nn.Module,
    input_tensor: torch.Tensor,
    *,
    task: Task | str,
    target_index: int | None = None,
    method: str = "Grad-CAM",
    layer: torch.nn.Module | None = None,
) -> Explanation:
    """Predict and explain one image with a single forward pass.

    Args:
        model: a classifier returning logits (N, C); pass it through `prepare_for_cam` once first. It runs in
            eval mode; its previous mode is restored and no gradients are left on its parameters.
        input_tensor: the normalised image, (3, H, W) or (1, 3, H, W).
        task: the model's task: binary (one logit), multiclass (softmax) or multilabel (sigmoid per finding).
        target_index: the class to explain; binary: 1 = positive (the logit), 0 = negative (-logit, so the map
            shows the evidence for "normal"). Default: the top class; binary: positive if P >= 0.5.
        method: a key of `CAM_METHODS` (see `SLOW_METHODS` for the slow ones).
        layer: the layer to explain; default `target_layer(model)`.

    Raises:
        TaskError: an unknown task.
        CamError: an unknown method, a wrong input shape, target_index out of range, or a binary model
            without exactly one logit.
        RuntimeError: the model failed inside the CAM method.
    """
    task = Task.parse(task)
    if method not in CAM_METHODS:
        raise CamError(f"unknown CAM method {method!r}; valid: {', '.join(CAM_METHODS)}")
    if input_tensor.dim() == 3:
        input_tensor = input_tensor.unsqueeze(0)
    if input_tensor.dim() != 4 or input_tensor.shape[0] != 1:
        shape = list(input_tensor.shape)
        raise CamError(f"explain takes one image, (C, H, W) or (1, C, H, W); got shape {shape}")
    layer = target_layer(model) if layer is None else layer
    with model_lock(model):
        was_training = model.training
        if was_training:  # each switch walks every module (0.6 ms for EfficientNet-Lite0)
            model.eval()
        # Inference mode (a caller's or the input's) would forbid any backward pass; the clone is an ordinary
        # tensor even when the input was made in inference mode.
        try:
            with torch.inference_mode(False):
                x = input_tensor.clone()
                result = None
                if method == "Grad-CAM":
                    try:
                        result = _grad_cam(model, x, layer, task, target_index)
                    except IndexError as exc:  # like pytorch-grad-cam's methods: the model failed
                        raise RuntimeError(f"{method} failed on this model: {exc}") from exc
                if result is None:
                    result = _library_cam(model, x, layer, task, target_index, method)
        finally:
            if was_training:
                model.train()
    logits, grayscale, index = result
    logits = logits.float().cpu()
    probabilities = logits.softmax(-1) if task.exclusive else logits.sigmoid()
    heatmap = np.clip(np.nan_to_num(grayscale, nan=0.0), 0.0, 1.0).astype(np.float32)
    if not heatmap.any():
        logger.debug("%s found no positive evidence for class %d: the heatmap is all zeros", method, index)
    return Explanation(probabilities.numpy(), logits.numpy(), heatmap, index, method)
