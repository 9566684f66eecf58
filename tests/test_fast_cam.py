"""demo.cam's own Grad-CAM equals pytorch-grad-cam's GradCAM on every backbone family and head chexlab offers
and on the embedded models, from one forward pass without a backward pass through the backbone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from pytorch_grad_cam import GradCAM
from torch import nn

from demo.cam import explain, prepare_for_cam, target_layer
from trainer.export import load_model
from trainer.modeling import HeadConfig, create_classifier
from trainer.task import Task

MODELS = Path(__file__).resolve().parent.parent / "demo" / "models"
# (architecture, head, input H x W): non-square inputs catch an H/W swap.
CASES = [
    ("densenet121", "linear", (64, 80)),
    ("tf_efficientnet_lite0", "linear", (64, 80)),
    ("resnet10t", "linear", (64, 80)),
    ("inception_v3", "linear", (107, 115)),
    ("chexlab_simple_cnn", "linear", (64, 80)),
    ("resnet10t", "mlp", (64, 80)),
    ("resnet10t", "dense_bn", (64, 80)),
]
HEADS = {
    "linear": HeadConfig(),
    "mlp": HeadConfig(type="mlp", widths=[16, 8]),
    "dense_bn": HeadConfig(type="dense_bn"),
}


class _Score:
    """pytorch-grad-cam target: the score `Task.class_score` defines for explanation index `index`."""

    def __init__(self, task: Task, index: int) -> None:
        self.task, self.index = task, index

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return self.task.class_score(output, self.index)


def library_grad_cam(model: nn.Module, x: torch.Tensor, task: Task, index: int) -> np.ndarray:
    with GradCAM(model=model, target_layers=[target_layer(model)]) as cam:
        return cam(x.clone().requires_grad_(True), targets=[_Score(task, index)])[0]


def assert_same_as_library(model: nn.Module, x: torch.Tensor, task: Task) -> float:
    """Fast Grad-CAM vs the library's on a few classes; returns the largest difference."""
    with torch.no_grad():
        logits = model(x)[0]
    worst, peaks = 0.0, []
    explainable = task.num_explainable(logits.shape[-1])
    for index in sorted({0, 1, explainable - 1}):  # both binary classes; the first two and the last otherwise
        fast = explain(model, x, task=task, target_index=index, method="Grad-CAM")
        expected = library_grad_cam(model, x, task, index)
        assert fast.heatmap.shape == expected.shape == tuple(x.shape[-2:])
        peaks.append(float(expected.max()))
        worst = max(worst, float(np.abs(fast.heatmap - expected).max()))
        np.testing.assert_allclose(fast.logits, logits.numpy(), rtol=1e-5, atol=1e-5)
    assert max(peaks) > 0.5  # real maps, not empty ones on both sides (a class may have no evidence)
    assert worst <= 1e-5, worst
    return worst


@pytest.mark.parametrize(("arch", "head", "size"), CASES)
def test_fast_grad_cam_equals_pytorch_grad_cam(arch: str, head: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    # Binary for the heads: the map of one of its two classes (+logit, -logit) is never empty.
    task = Task.MULTILABEL if head == "linear" else Task.BINARY
    model = create_classifier(arch, 1 if task is Task.BINARY else 3, head=HEADS[head])
    if head == "dense_bn":  # untrained BatchNorm statistics would make the one output a constant
        model.get_classifier()[1].running_var.fill_(0.5)
    model = prepare_for_cam(model.eval())
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    assert_same_as_library(model, x, task)


@pytest.mark.parametrize("name", ["nih-binary", "nih-findings", "pediatric-pneumonia"])
def test_fast_grad_cam_equals_pytorch_grad_cam_on_the_embedded_models(name: str) -> None:
    model, info = load_model(MODELS / name)
    model = prepare_for_cam(model)
    size = info.data_config["input_size"][1:]
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(2))
    assert_same_as_library(model, x, Task.parse(info.task))


def test_one_forward_and_no_backward_through_the_backbone() -> None:
    torch.manual_seed(0)
    model = prepare_for_cam(timm.create_model("resnet10t", num_classes=2).eval())
    forwards: list[int] = []
    backwards: list[str] = []
    handles = [model.register_forward_pre_hook(lambda module, args: forwards.append(1))]
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            hook = module.register_full_backward_hook(lambda m, gi, go, name=name: backwards.append(name))
            handles.append(hook)
    try:
        result = explain(model, torch.randn(1, 3, 64, 80), task="multiclass", method="Grad-CAM")
    finally:
        for handle in handles:
            handle.remove()
    assert result.heatmap.max() > 0.5
    assert forwards == [1]
    assert backwards == []  # every convolution is in layer4 or before it: none is differentiated
    assert all(p.grad is None for p in model.parameters())


def test_a_layer_called_twice_falls_back_to_the_library() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.conv(x).relu().mean((2, 3)) + self.conv(x).mean((2, 3)))

    torch.manual_seed(0)
    model = Twice().eval()
    x = torch.randn(1, 3, 16, 20, generator=torch.Generator().manual_seed(0))
    fast = explain(model, x, task="multiclass", target_index=1, method="Grad-CAM", layer=model.conv)
    with GradCAM(model=model, target_layers=[model.conv]) as cam:
        expected = cam(x.clone().requires_grad_(True), targets=[_Score(Task.MULTICLASS, 1)])[0]
    np.testing.assert_allclose(fast.heatmap, expected, atol=1e-6)


HEAVY = ("matplotlib", "scipy", "pandas", "sklearn", "pytorch_grad_cam")
IMPORTS_SCRIPT = """
import json, sys
import numpy as np, torch
from demo.cam import explain, prepare_for_cam
from demo.overlay import overlay
from trainer.modeling import create_classifier

model = prepare_for_cam(create_classifier("chexlab_simple_cnn", 1).eval())
result = explain(model, torch.randn(3, 64, 64), task="binary")
overlay(np.zeros((80, 80), np.float32), result.heatmap)
after_grad_cam = sorted(name for name in sys.modules if name.split(".")[0] in {heavy})
explain(model, torch.randn(3, 64, 64), task="binary", method="HiResCAM")
print(json.dumps([after_grad_cam, "pytorch_grad_cam" in sys.modules]))
"""


def test_a_grad_cam_prediction_imports_no_heavy_module() -> None:
    script = IMPORTS_SCRIPT.replace("{heavy}", repr(set(HEAVY)))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=MODELS.parent.parent, check=True
    )
    after_grad_cam, library_loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert after_grad_cam == []
    assert library_loaded  # the other methods still work, importing pytorch-grad-cam on first use
