"""`python -m trainer import-weights`: CheXNet, torchxrayvision and timm checkpoints as chexlab model folders.

Each checkpoint is a real DenseNet121 (torchvision's, random weights) saved with its source's key layout; the
imported model must compute what the original network computes on the input that source expects.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn

from trainer.cli import main
from trainer.import_weights import CHEXNET_LABELS, TORCHXRAYVISION_LABELS, WeightsImportError, import_weights
from trainer.modeling import create_classifier, model_data_config
from trainer.transforms import to_model_tensor

SIZE = 64  # DenseNet121 runs on any size; small keeps the forward passes fast


@pytest.fixture(scope="module")
def densenet() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.densenet121(num_classes=14).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that a mix-up of them shows
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


def _chexnet_checkpoint(state: dict[str, torch.Tensor]) -> dict:
    """arnoweng/CheXNet's model.pth.tar: DataParallel around `densenet121`, old layer names, a Sequential."""
    renamed = OrderedDict()
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue  # torch 0.3 checkpoints have no step counters
        key = re.sub(r"\.(norm|relu|conv)([12])\.", r".\1.\2.", key)
        key = key.replace("classifier.", "classifier.0.")
        renamed[f"module.densenet121.{key}"] = value
    return {"epoch": 7, "arch": "densenet121", "state_dict": renamed, "best_loss": 0.1523}


def test_chexnet_reproduction(tmp_path: Path, densenet: nn.Module) -> None:
    torch.save(_chexnet_checkpoint(densenet.state_dict()), tmp_path / "model.pth.tar")
    assert (
        main(
            [
                "import-weights",
                str(tmp_path / "model.pth.tar"),
                str(tmp_path / "chexnet"),
                "--format",
                "chexnet",
            ]
        )
        == 0
    )
    config = json.loads((tmp_path / "chexnet" / "config.json").read_text())
    assert config["architecture"] == "densenet121" and config["label_names"] == list(CHEXNET_LABELS)
    assert config["pretrained_cfg"]["mean"] == [0.485, 0.456, 0.406]
    assert config["chexlab"]["imported"]["format"] == "chexnet"
    with pytest.raises(WeightsImportError, match="after mapping torchxrayvision names"):
        import_weights(tmp_path / "model.pth.tar", tmp_path / "wrong", "torchxrayvision")  # old layer names

    # As model.init: backbone and (same labels) head; ImageNet-normalised RGB in, CheXNet's logits out.
    model = create_classifier("densenet121", 14, init=f"local-dir:{tmp_path / 'chexnet'}",
                              label_names=list(CHEXNET_LABELS)).eval()  # fmt: skip
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), densenet(x), rtol=1e-4, atol=1e-4)
    # For other labels (CheXNet transfer to normal / abnormal), a new head on the CheXNet backbone.
    binary = create_classifier("densenet121", 1, init=f"local-dir:{tmp_path / 'chexnet'}",
                               label_names=["abnormal"], new_head=True)  # fmt: skip
    assert torch.equal(binary.features.conv0.weight, model.features.conv0.weight)


def test_torchxrayvision_densenet(tmp_path: Path) -> None:
    torch.manual_seed(1)
    xrv = torchvision.models.densenet121(num_classes=18)
    xrv.features.conv0 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)  # one channel
    xrv.eval()
    torch.save(xrv.state_dict(), tmp_path / "xrv.pt")
    import_weights(tmp_path / "xrv.pt", tmp_path / "xrv", "torchxrayvision")
    model = create_classifier("densenet121", 18, init=f"local-dir:{tmp_path / 'xrv'}",
                              label_names=list(TORCHXRAYVISION_LABELS)).eval()  # fmt: skip
    data_config = model_data_config(model)  # the folder's recorded normalisation travels with the init
    assert data_config["input_size"] == (3, 224, 224)

    # chexlab's input for pixels p in [0, 1] equals torchxrayvision's 2048 p - 1024 on each of three channels.
    pixels = torch.rand(2, 1, SIZE, SIZE)
    ours = torch.stack([to_model_tensor(p, data_config["mean"], data_config["std"]) for p in pixels])
    assert ours.shape == (2, 3, SIZE, SIZE)
    torch.testing.assert_close(ours[:, :1], 2048 * pixels - 1024, rtol=0, atol=1e-3)
    with torch.no_grad():
        torch.testing.assert_close(model(ours), xrv(2048 * pixels - 1024), rtol=1e-3, atol=1e-3)


def test_timm_state_dict_and_labels(tmp_path: Path) -> None:
    source = timm.create_model("test_resnet", num_classes=3)
    torch.save({"model": source.state_dict(), "epoch": 3}, tmp_path / "w.pth")
    with pytest.raises(WeightsImportError, match="needs --arch"):
        import_weights(tmp_path / "w.pth", tmp_path / "out", "timm")
    with pytest.raises(WeightsImportError, match="3 outputs but 2 label names"):
        import_weights(tmp_path / "w.pth", tmp_path / "out", "timm", arch="test_resnet", labels=["a", "b"])
    out = import_weights(
        tmp_path / "w.pth", tmp_path / "out", "timm", arch="test_resnet", labels=["a", "b", "c"]
    )
    model = create_classifier("test_resnet", 3, init=f"local-dir:{out}", label_names=["a", "b", "c"]).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source.eval()(x))
    with pytest.raises(WeightsImportError, match="has no classifier weights 'classifier.weight'"):
        import_weights(tmp_path / "w.pth", tmp_path / "other", "timm", arch="test_efficientnet")


class Pickled(nn.Module):
    """A whole pickled model, as torchxrayvision's own release files are."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)


def test_anything_but_tensors_is_refused_unopened(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.save(Pickled(), tmp_path / "whole.pt")
    assert (
        main(["import-weights", str(tmp_path / "whole.pt"), str(tmp_path / "o"), "--format", "chexnet"]) == 2
    )
    message = capsys.readouterr().err
    assert "more than plain tensors" in message and "Pickled" in message and "state_dict()" in message
    assert not (tmp_path / "o" / "model.safetensors").exists()
    torch.save({"epoch": 1, "note": "no weights here"}, tmp_path / "empty.pt")
    with pytest.raises(WeightsImportError, match="holds no state dict"):
        import_weights(tmp_path / "empty.pt", tmp_path / "o", "chexnet")
    with pytest.raises(WeightsImportError, match="not found"):
        import_weights(tmp_path / "nope.pth", tmp_path / "o", "chexnet")
