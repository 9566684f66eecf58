"""The five seed recipes (configs/*.yaml) on the closest real data in ../shared, at a scale a CPU allows.

The recipes name the original studies' data (Shenzhen, the full NIH release, ...), which is not here:
`local_overrides` keeps each recipe's model, head, preprocessing and schedule shape and points its `data:` at
the nearest local dataset. tests/test_recipes.py smoke-runs the same mapping for a few steps.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.report import replace_section, with_ci
from trainer import engine
from trainer.config import load_config
from trainer.nih import NIH_FINDINGS

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
OUT = REPO / "runs" / "bench" / "recipes"
RECIPES = ("chexnet-transfer", "efficientnet-nih14", "simple-cnn", "clahe-wb-transfer", "inceptionv3-nih15")
PUBLISHED = {
    "chexnet-transfer": "accuracy 0.8761, sensitivity 0.8909, specificity 0.8621 (Shenzhen TB, 662 images)",
    "efficientnet-nih14": "mean AUC 0.8428 (full NIH, 112,120 images)",
    "simple-cnn": "accuracy 0.61, sensitivity 0.74, specificity 0.48 (1,942 NIH images)",
    "clahe-wb-transfer": "3-class accuracy 0.9745 (InceptionResNetV2, 1,823 images)",
    "inceptionv3-nih15": "AUC 0.7301, binary accuracy 0.9307 (full NIH, 15 labels)",
}
LOCAL_DATA = {
    "chexnet-transfer": "nih_cxr14_subset, binary No_Finding vs any finding (Shenzhen TB is not here)",
    "efficientnet-nih14": "nih_cxr14_subset, the 14 findings (several have < 20 positives)",
    "simple-cnn": "nih_cxr14_subset, binary No_Finding vs any finding",
    "clahe-wb-transfer": "covid19_pneumonia_normal, 3 classes",
    "inceptionv3-nih15": "nih_cxr14_subset, 14 findings + No_Finding",
}


def local_overrides(recipe: str, shared: Path = SHARED) -> list[str]:
    """Config overrides that point `recipe` at the closest dataset in `shared`/data."""
    nih = [f"data.root={shared / 'data' / 'nih_cxr14_subset'}", "data.format=csv", "data.labels=labels.csv"]
    binary = [
        *nih,
        "data.task=binary",
        "data.normal_label=No_Finding",
        "data.label_column=null",
        "data.positive=null",
    ]
    lite0 = f"model.init=file:{shared / 'weights' / 'tf_efficientnet_lite0.in1k.timm.safetensors'}"
    return {
        "chexnet-transfer": binary,
        "efficientnet-nih14": [
            *nih,
            "data.task=multilabel",
            f"data.label_columns={list(NIH_FINDINGS)}",
            "data.train_val_list=null",
            "data.test_list=null",
            lite0,
        ],
        "simple-cnn": binary,
        "clahe-wb-transfer": [f"data.root={shared / 'data' / 'covid19_pneumonia_normal'}"],
        "inceptionv3-nih15": [
            *nih,
            "data.task=multilabel",
            "data.patient_column=patient_id",
            "data.patient_pattern=null",
        ],
    }[recipe]


def offline_init(recipe: str, chexnet: Path | None) -> list[str]:
    """Stand-ins for initial weights that cannot be had offline (CheXNet; timm's ImageNet tags)."""
    if recipe == "chexnet-transfer":
        return [f"model.init=local-dir:{chexnet}", "model.new_head=true"]
    if recipe in ("clahe-wb-transfer", "inceptionv3-nih15"):
        return ["model.init=null"]
    return []


def cpu_scale(recipe: str) -> list[str]:
    """Shorter schedules and smaller inputs, so that each recipe runs in minutes on 2 CPU cores."""
    phases = load_config(REPO / "configs" / f"{recipe}.yaml").train.phases
    short = ", ".join(
        f"{{epochs: {min(p.epochs, 2)}, lr: {p.lr}, freeze_backbone: {str(p.freeze_backbone).lower()}}}"
        for p in phases
    )
    return [
        f"train.phases=[{short}]",
        "model.input_size=128",
        "train.batch_size=32",
        "data.num_workers=1",
        f"data.cache_dir={REPO / 'runs' / 'cache'}",
        "eval.n_bootstrap=1000",
    ]


def run_recipes(report_only: bool = False) -> None:
    """Train (unless done) and report every recipe; CheXNet's stand-in is a DenseNet121 trained here first."""
    chexnet = OUT / "chexnet-stand-in" / "model"
    if not report_only and not chexnet.is_dir():
        engine.fit(
            load_config(
                REPO / "configs" / "inceptionv3-nih15.yaml",
                [
                    *local_overrides("inceptionv3-nih15"),
                    *cpu_scale("inceptionv3-nih15"),
                    "model.arch=densenet121",
                    "model.head={type: linear}",
                    "model.init=null",
                    f"output_dir={OUT}",
                    "name=chexnet-stand-in",
                ],
            ),
            progress=False,
        )
    for recipe in RECIPES if not report_only else ():
        run = OUT / recipe
        if not (run / "metrics.json").is_file():
            overrides = [
                *local_overrides(recipe),
                *offline_init(recipe, chexnet),
                *cpu_scale(recipe),
                f"output_dir={OUT}",
            ]
            engine.fit(load_config(REPO / "configs" / f"{recipe}.yaml", overrides), progress=False)
    replace_section("recipes", recipes_section())


def recipes_section() -> str:
    lines = [
        "## The seed recipes on the data here",
        "",
        "`python bench/quality.py --recipes` — each `configs/<recipe>.yaml` with its model, head, "
        "preprocessing and schedule shape, on the closest dataset in ../shared (patient-wise split, test "
        "part), scaled for a 2-core CPU: at most 2 epochs per phase, 128 px input. Initial weights that "
        "cannot be had offline are "
        "replaced: CheXNet by a DenseNet121 trained here on the NIH subset's 15 labels, timm's ImageNet "
        "InceptionV3 / InceptionResNetV2 by random initialisation. These are smoke-scale numbers, not "
        "reproductions.",
        "",
        "| recipe | data here | AUC | accuracy | sensitivity | specificity | published (their data) |",
        "|---|---|---|---|---|---|---|",
    ]
    for recipe in RECIPES:
        path = OUT / recipe / "metrics.json"
        if not path.is_file():
            continue
        head = json.loads(path.read_text())["test"]["headline"]
        cells = " | ".join(with_ci(head[k]) for k in ("auc", "accuracy", "sensitivity", "specificity"))
        lines.append(f"| {recipe} | {LOCAL_DATA[recipe]} | {cells} | {PUBLISHED[recipe]} |")
    return "\n".join(lines)
