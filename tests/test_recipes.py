"""Every seed recipe in configs/ trains for a few steps on the closest real dataset in ../shared/data.

The recipes name the data layout of the original studies (Shenzhen, the full NIH release, ...), which is not
here; each test keeps the recipe (architecture, head, preprocessing, schedule) and points `data:` at the local
copy that comes closest. Small inputs, two steps per epoch and one epoch per phase keep this a smoke test:
it proves the recipe runs end to end and writes a complete run folder, not how well it does (that is
bench/quality.py's job).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, shared_path
from trainer import engine
from trainer.config import load_config

NIH_FINDINGS = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
    "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
]  # fmt: skip

SMOKE = [
    "model.input_size=96",
    "train.batch_size=8",
    "train.max_steps_per_epoch=2",
    "train.early_stopping_patience=null",
    "data.num_workers=0",
    "data.check_decode=false",
    "eval.n_bootstrap=20",
]


def _nih(task: str, extra: list[str]) -> list[str]:
    root = shared_path("data", "nih_cxr14_subset")
    return [f"data.root={root}", "data.format=csv", "data.labels=labels.csv", f"data.task={task}", *extra]


def _one_epoch_per_phase(path: Path) -> str:
    phases = load_config(path).train.phases
    return "train.phases=[" + ", ".join(
        f"{{epochs: 1, lr: {p.lr}, freeze_backbone: {str(p.freeze_backbone).lower()}}}" for p in phases
    ) + "]"


def _run(tmp_path: Path, recipe: str, overrides: list[str]) -> dict:
    path = REPO_ROOT / "configs" / f"{recipe}.yaml"
    cfg = load_config(path, [*SMOKE, _one_epoch_per_phase(path), *overrides, f"output_dir={tmp_path}"])
    run = engine.fit(cfg, progress=False)
    assert (run / "model" / "model.safetensors").is_file() and (run / "model" / "README.md").is_file()
    assert (run / "plots" / "roc.png").is_file()
    return json.loads((run / "metrics.json").read_text())["test"]


def _lite0() -> str:
    return "model.init=file:" + str(shared_path("weights", "tf_efficientnet_lite0.in1k.timm.safetensors"))


@pytest.mark.shared
@pytest.mark.slow
def test_chexnet_transfer(tmp_path: Path) -> None:
    # CheXNet's weights cannot be had offline: stand in a DenseNet121 chexlab model trained here on NIH
    # findings (CXR-to-CXR transfer, as the recipe does), then fine-tune its frozen backbone on binary labels.
    source = load_config(
        REPO_ROOT / "configs" / "inceptionv3-nih15.yaml",
        [*SMOKE, *_nih("multilabel", []), "model.arch=densenet121", "model.head={type: linear}",
         "train.phases=[{epochs: 1, lr: 1.0e-3}]", f"output_dir={tmp_path}", "name=chexnet-stand-in"],
    )  # fmt: skip
    chexnet = engine.fit(source, progress=False) / "model"
    metrics = _run(tmp_path, "chexnet-transfer", [*_nih("binary", ["data.normal_label=No_Finding"]),
                   "data.label_column=null", "data.positive=null", f"model.init=local-dir:{chexnet}",
                   "model.new_head=true"])  # fmt: skip
    assert metrics["label_names"] == ["abnormal"] and metrics["negative_name"] == "normal"


@pytest.mark.shared
@pytest.mark.slow
def test_efficientnet_nih14(tmp_path: Path) -> None:
    metrics = _run(tmp_path, "efficientnet-nih14", [*_nih("multilabel", [f"data.label_columns={NIH_FINDINGS}"]),
                   "data.train_val_list=null", "data.test_list=null", _lite0()])  # fmt: skip
    assert metrics["label_names"] == NIH_FINDINGS


@pytest.mark.shared
@pytest.mark.slow
def test_simple_cnn(tmp_path: Path) -> None:
    metrics = _run(tmp_path, "simple-cnn", _nih("binary", ["data.normal_label=No_Finding"]))
    assert metrics["task"] == "binary"


@pytest.mark.shared
@pytest.mark.slow
def test_clahe_wb_transfer(tmp_path: Path) -> None:
    # InceptionResNetV2's ImageNet weights are not here offline: the smoke run starts from random weights.
    root = shared_path("data", "covid19_pneumonia_normal")
    metrics = _run(tmp_path, "clahe-wb-transfer", [f"data.root={root}", "model.init=null", "model.input_size=128"])
    assert sorted(metrics["label_names"]) == ["covid19", "normal", "viral_pneumonia"]


@pytest.mark.shared
@pytest.mark.slow
def test_inceptionv3_nih15(tmp_path: Path) -> None:
    metrics = _run(tmp_path, "inceptionv3-nih15", [*_nih("multilabel", []), "model.init=null", "model.input_size=128"])
    assert metrics["label_names"] == [*NIH_FINDINGS, "No_Finding"]
