"""Every seed recipe in configs/ trains for a few steps on the closest real dataset in ../shared/data.

The mapping from each recipe to local data (and stand-ins for initial weights that cannot be had offline)
is bench/recipes.py's, the one the benchmark uses. Small inputs, two steps per epoch and one epoch per phase
keep this a smoke test: it proves each recipe runs end to end and writes a complete run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.recipes import RECIPES, local_overrides, offline_init
from tests.conftest import REPO_ROOT, SHARED, shared_path
from trainer import engine
from trainer.config import load_config
from trainer.nih import NIH_FINDINGS

SMOKE = [
    "model.input_size=96",
    "train.batch_size=8",
    "train.max_steps_per_epoch=2",
    "train.early_stopping_patience=null",
    "data.num_workers=0",
    "data.check_decode=false",
    "eval.n_bootstrap=20",
]
EXPECTED_LABELS = {
    "chexnet-transfer": ["abnormal"],
    "efficientnet-nih14": NIH_FINDINGS,
    "simple-cnn": ["abnormal"],
    "clahe-wb-transfer": ["covid19", "normal", "viral_pneumonia"],
    "inceptionv3-nih15": [*NIH_FINDINGS, "No_Finding"],
}


def _one_epoch_per_phase(recipe: str) -> str:
    phases = load_config(REPO_ROOT / "configs" / f"{recipe}.yaml").train.phases
    steps = ", ".join(
        f"{{epochs: 1, lr: {p.lr}, freeze_backbone: {str(p.freeze_backbone).lower()}}}" for p in phases
    )
    return f"train.phases=[{steps}]"


@pytest.fixture(scope="module")
def chexnet_stand_in(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CheXNet cannot be had offline: a DenseNet121 chexlab model trained here on NIH labels stands in."""
    shared_path("data", "nih_cxr14_subset")
    out = tmp_path_factory.mktemp("chexnet")
    cfg = load_config(
        REPO_ROOT / "configs" / "inceptionv3-nih15.yaml",
        [
            *local_overrides("inceptionv3-nih15", SHARED),
            *SMOKE,
            "model.arch=densenet121",
            "model.head={type: linear}",
            "model.init=null",
            "train.phases=[{epochs: 1, lr: 1.0e-3}]",
            f"output_dir={out}",
            "name=chexnet",
        ],
    )
    return engine.fit(cfg, progress=False) / "model"


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_on_local_data(recipe: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    shared_path("data")
    shared_path("weights")
    chexnet = request.getfixturevalue("chexnet_stand_in") if recipe == "chexnet-transfer" else None
    overrides = [
        *local_overrides(recipe, SHARED),
        *offline_init(recipe, chexnet),
        *SMOKE,
        _one_epoch_per_phase(recipe),
        f"output_dir={tmp_path}",
    ]
    cfg = load_config(REPO_ROOT / "configs" / f"{recipe}.yaml", overrides)
    run = engine.fit(cfg, progress=False)
    assert (run / "model" / "model.safetensors").is_file() and (run / "model" / "README.md").is_file()
    assert (run / "plots" / "roc.png").is_file()
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert sorted(metrics["label_names"]) == sorted(EXPECTED_LABELS[recipe])
    assert metrics["n_images"] > 0
