"""The embedded default models: small, loadable by chexlab and by plain timm alike, with honest cards."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import ModelCard
from PIL import Image

from tests.conftest import REPO_ROOT
from tests.synthetic import assert_timm_keeps_the_whole_film, radiograph
from trainer.export import load_model

MODELS = sorted(p.parent for p in (REPO_ROOT / "demo" / "models").glob("*/config.json"))
MAX_BYTES = 15 * 1024 * 1024


def test_the_demo_default_is_embedded() -> None:
    assert (REPO_ROOT / "demo" / "models" / "nih-binary" / "model.safetensors").is_file()


@pytest.mark.parametrize("folder", MODELS, ids=[p.name for p in MODELS])
def test_model_folder(folder: Path) -> None:
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size < MAX_BYTES, f"{folder.name} is {size / 2**20:.1f} MiB"
    assert not [f for f in folder.rglob("*") if f.suffix in (".bin", ".pth", ".pt", ".ckpt")]

    model, info = load_model(str(folder))
    plain = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(2, *info.data_config["input_size"])
    with torch.no_grad():
        assert torch.allclose(model(x), plain(x), atol=1e-5)  # float16 on disk, float32 in memory, either way

    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "timm" and card.data.pipeline_tag == "image-classification"
    assert "not a medical device" in card.text
    reported = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    saved = json.loads((folder / "config.json").read_text())["chexlab"]["metrics"]["test"]
    assert reported[("test", "roc_auc")] == pytest.approx(saved["auc"]["value"], abs=1e-4)
    for plot in ("roc.png", "confusion.png", "training_curves.png"):
        assert (folder / "plots" / plot).is_file()


@pytest.mark.parametrize("folder", MODELS, ids=[p.name for p in MODELS])
def test_plain_timm_keeps_the_whole_film(folder: Path) -> None:
    assert_timm_keeps_the_whole_film(timm.create_model(f"local-dir:{folder}", pretrained=True))


def test_predict_cli_on_the_default_model(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(radiograph(rng, size=256, opacity=i == 1)).save(images / f"{i}.png")
    (images / "broken.png").write_text("not an image")
    out = tmp_path / "preds.csv"
    model = "demo/models/nih-binary"
    command = [sys.executable, "-m", "trainer", "predict", model, str(images), "--out", str(out)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^3 predicted, 1 unreadable, \d flagged \((onnxruntime|pytorch), ", result.stdout, re.M)
    assert "3 predicted, 1 unreadable" in result.stderr  # the log line says the same
    with out.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == [
        "path",
        "prob_abnormal",
        "prob_normal",
        "decision",
        "ood_score",
        "ood",
        "warnings",
        "error",
    ]
    assert len(rows) == 5
    broken = next(r for r in rows if "broken.png" in r[0])
    assert "not an image" in broken[-1]
    for row in rows[1:]:
        if row is not broken:  # a decision, or none (withheld) for an image the OOD gate flags, with why
            assert (
                row[3] in ("abnormal", "normal")
                if row[5] == "0"
                else (row[5] == "1" and row[3] == "" and row[6])
            )


# Logits of the embedded models on five radiographs (four gallery PNGs and the built-in DICOM) through the
# inference path as it was before the refactor of issue 13 (commit b14319b: load_xray -> prepare_input ->
# the model), stored once. The path today (load_xray -> InputTransform) must give the same raw logits.
STORED_LOGITS = REPO_ROOT / "tests" / "data" / "embedded_logits_wave1.npz"


@pytest.mark.parametrize("folder", MODELS, ids=[p.name for p in MODELS])
def test_embedded_models_give_the_logits_stored_before_the_refactor(folder: Path) -> None:
    from demo.examples import builtin_example
    from trainer.inference import InputTransform
    from trainer.io import load_xray

    stored = np.load(STORED_LOGITS)
    paths = [
        builtin_example() if name.endswith(".dcm") else REPO_ROOT / "demo" / "examples" / name
        for name in stored["files"]
    ]
    model, info = load_model(str(folder))
    transform = InputTransform.for_model(info)
    tensors = torch.stack([transform(load_xray(path).pixels).tensor for path in paths])
    with torch.no_grad():
        logits = model(tensors).float().numpy()
    np.testing.assert_allclose(logits, stored[folder.name.replace("-", "_")], atol=1e-5, rtol=0)
