"""trainer.runtime: ONNX Runtime copies equal to PyTorch, cached by weights, rebuilt when corrupt, and
PyTorch with a note whenever ONNX Runtime cannot serve a model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from trainer.export import load_model
from trainer.modeling import HeadConfig, create_classifier
from trainer.ood import features_and_logits
from trainer.runtime import ForwardRunner, RuntimeBackendError

pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "demo" / "models"
HEADS = {
    "linear": HeadConfig(),
    "mlp": HeadConfig(type="mlp", widths=[16, 8]),
    "dense_bn": HeadConfig(type="dense_bn"),
}


def tiny(head: str = "linear", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_classifier("chexlab_simple_cnn", 3, head=HEADS[head], widths=(8, 8, 8, 8, 8, 8), hidden=16)
    return model.eval()


def batch(size: int, count: int = 3) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(7))


def assert_matches(runner: ForwardRunner, model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected = model(x)
    logits = runner(x)
    assert logits.dtype == torch.float32 and logits.shape == expected.shape
    scale = max(1.0, float(expected.abs().max()))
    assert float((logits - expected).abs().max()) <= 1e-4 * scale
    np.testing.assert_allclose(runner(x.numpy()).numpy(), logits.numpy())  # numpy batches too
    if runner.has_features:  # timm classifiers: the pooled features from the same pass, as PyTorch's
        want_features, want_logits = features_and_logits(model, x)
        features, both_logits = runner.run(x)
        assert features is not None and features.shape == want_features.shape
        assert float((features - want_features).abs().max()) <= 1e-4 * max(
            1.0, float(want_features.abs().max())
        )
        np.testing.assert_allclose(both_logits.numpy(), logits.numpy())


@pytest.mark.parametrize("name", ["nih-binary", "nih-findings", "pediatric-pneumonia"])
def test_embedded_models_run_in_onnx_runtime_with_pytorchs_outputs(name: str, tmp_path: Path) -> None:
    model, info = load_model(MODELS / name)
    runner = ForwardRunner.for_model(model, info.data_config["input_size"], cache_dir=tmp_path)
    assert runner.backend == "onnxruntime" and runner.exported and runner.note == ""
    assert_matches(runner, model, batch(224))
    assert not model.training and next(model.parameters()).is_contiguous()  # the model itself is unchanged


@pytest.mark.parametrize("head", list(HEADS))
def test_every_head_type_matches(head: str, tmp_path: Path) -> None:
    model = tiny(head)
    if head == "dense_bn":
        model.get_classifier()[1].running_var.fill_(0.5)
    runner = ForwardRunner.for_model(model, (3, 64, 64), cache_dir=tmp_path)
    assert runner.backend == "onnxruntime" and runner.has_features
    assert_matches(runner, model, batch(64, count=5))
    eager = ForwardRunner.for_model(model, (3, 64, 64), backend="pytorch")
    assert eager.has_features
    assert_matches(eager, model, batch(64, count=5))


def test_the_cache_is_reused_and_keyed_by_the_weights(tmp_path: Path) -> None:
    model = tiny()
    first = ForwardRunner.for_model(model, (3, 64, 64), cache_dir=tmp_path)
    again = ForwardRunner.for_model(model, (3, 64, 64), cache_dir=tmp_path)
    assert first.exported and not again.exported and again.path == first.path and again.note == ""
    other = ForwardRunner.for_model(tiny(seed=1), (3, 64, 64), cache_dir=tmp_path)
    assert other.exported and other.path != first.path
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == sorted([first.path.name, other.path.name])
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_a_corrupt_cache_file_is_rebuilt(tmp_path: Path) -> None:
    model = tiny()
    path = ForwardRunner.for_model(model, (3, 64, 64), cache_dir=tmp_path).path
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # a truncated file
    rebuilt = ForwardRunner.for_model(model, (3, 64, 64), cache_dir=tmp_path)
    assert rebuilt.backend == "onnxruntime" and rebuilt.exported and "rebuilt" in rebuilt.note
    assert path.read_bytes() == good
    assert_matches(rebuilt, model, batch(64))


def test_outputs_that_differ_fall_back_to_pytorch_once_and_for_all(tmp_path: Path) -> None:
    class Noisy(nn.Module):  # random noise: ONNX Runtime draws other numbers than PyTorch
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).mean((2, 3)) + torch.rand(x.shape[0], 2)

    model = Noisy().eval()
    runner = ForwardRunner.for_model(model, (3, 16, 16), cache_dir=tmp_path)
    assert runner.backend == "pytorch" and "does not match" in runner.note and "differ" in runner.note
    again = ForwardRunner.for_model(model, (3, 16, 16), cache_dir=tmp_path)
    assert again.backend == "pytorch" and not again.exported and again.note == runner.note
    assert not list(tmp_path.glob("*.onnx"))  # the bad export is not kept
    with pytest.raises(RuntimeBackendError, match="ONNX Runtime cannot run this model"):
        ForwardRunner.for_model(model, (3, 16, 16), backend="onnxruntime", cache_dir=tmp_path)


def test_a_model_onnx_cannot_express_runs_in_pytorch(tmp_path: Path) -> None:
    class Spectral(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.fft.rfft2(x).abs().mean((2, 3))

    runner = ForwardRunner.for_model(Spectral(), (3, 16, 16), cache_dir=tmp_path)
    assert runner.backend == "pytorch" and "export failed" in runner.note and runner.path is None
    x = batch(16)
    torch.testing.assert_close(runner(x), Spectral()(x))


def test_pytorch_backend_and_bad_batches(tmp_path: Path) -> None:
    model = tiny()
    runner = ForwardRunner.for_model(model, (3, 64, 64), backend="pytorch", cache_dir=tmp_path)
    assert runner.backend == "pytorch" and not list(tmp_path.iterdir())
    assert_matches(runner, model, batch(64))
    assert next(model.parameters()).is_contiguous()  # channels-last is the runner's own copy
    with pytest.raises(RuntimeBackendError, match=r"batches \(N, 3, 64, 64\); got \(2, 3, 32, 32\)"):
        runner(torch.zeros(2, 3, 32, 32))
    with pytest.raises(RuntimeBackendError, match="unknown runtime backend 'tensorrt'"):
        ForwardRunner.for_model(model, backend="tensorrt")


WORKER = """
import json, sys
import torch
from trainer.modeling import create_classifier
from trainer.runtime import ForwardRunner

torch.manual_seed(0)
model = create_classifier("chexlab_simple_cnn", 2, widths=(8, 8, 8, 8, 8, 8), hidden=16).eval()
runner = ForwardRunner.for_model(model, (3, 64, 64), cache_dir=sys.argv[1])
print(json.dumps({"backend": runner.backend, "exported": runner.exported, "note": runner.note}))
"""


def test_concurrent_processes_export_once(tmp_path: Path) -> None:
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    reports = [json.loads(worker.communicate()[0].strip().splitlines()[-1]) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers)
    assert [r["backend"] for r in reports] == ["onnxruntime"] * 2
    assert sum(r["exported"] for r in reports) == 1 and all(r["note"] == "" for r in reports)


def test_without_onnxruntime_pytorch_serves_with_a_note(tmp_path: Path) -> None:
    script = "import sys; sys.modules['onnxruntime'] = None\n" + WORKER  # as if it were not installed
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], cwd=REPO, capture_output=True, text=True, check=True
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {
        "backend": "pytorch",
        "exported": False,
        "note": "PyTorch, since onnxruntime is not installed",
    }
