"""What each part of chexlab's nih-binary recipe is worth: one change at a time, judged on validation only.

    python bench/ablations.py                 # train every variant not yet trained, rewrite the section
    python bench/ablations.py --report-only   # rewrite the section from finished runs

Every variant trains on the same fixed patient-wise split as bench/quality.py (runs/bench/<task>/split.csv)
into runs/bench/<task>/ablations/<variant>. The table reports validation AUC only: the variant to adopt is
chosen on validation, so that the test part stays untouched until the chosen recipe is reported once in the
quality table.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.quality import OUT, fixed_split, run_chexlab, task_config, train_baseline  # noqa: E402
from bench.report import replace_section, with_ci  # noqa: E402
from trainer.run_data import load_table  # noqa: E402

TASK = "nih-binary"
DIAGNOSTIC = OUT / TASK / "baseline-model-normalisation"
LITE2 = REPO.parent / "shared" / "weights" / "tf_efficientnet_lite2.in1k.timm.safetensors"
SEEDS = ("recipe", "seed-1", "seed-2")  # the unchanged recipe: chance, not a change
ADOPT_MARGIN = 0.01  # final validation AUC a change must gain to be adopted
CLAHE = "{op: clahe, clip_limit: 2.0, tile_grid: 8}"
# name -> (what changes against the recipe in configs/defaults/<task>.yaml, config overrides)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "recipe": ("configs/defaults/nih-binary.yaml as committed", []),
    # Same recipe, other training seeds (same split): how far the val AUC moves by chance alone.
    "seed-1": ("the recipe with training seed 1 (initial head, batch order, augmentation)", ["train.seed=1"]),
    "seed-2": ("the recipe with training seed 2", ["train.seed=2"]),
    "no-clahe": ("no CLAHE (raw 8-bit PNG, only letterboxed)", ["preprocess=[]"]),
    "lung-crop": ("lung crop before CLAHE", [f"preprocess=[{{op: crop_lungs}}, {CLAHE}]"]),
    "288px": ("input 288 px instead of 224", ["model.input_size=288"]),
    "no-augment": ("no augmentation", ["augment.enabled=false"]),
    "one-phase": (
        "one phase, all layers from the start (12 epochs at 3e-4)",
        ["train.phases=[{epochs: 12, lr: 3.0e-4}]"],
    ),
    "low-lr": (
        "phase 2 at 1e-4 instead of 3e-4",
        ["train.phases=[{epochs: 2, lr: 1.0e-3, freeze_backbone: true}, {epochs: 10, lr: 1.0e-4}]"],
    ),
    "baseline-schedule": (
        "the plain baseline's schedule: 2 epochs at 1e-3 frozen, 4 at 1e-4, constant lr, no warm-up",
        [
            "train.phases=[{epochs: 2, lr: 1.0e-3, freeze_backbone: true}, {epochs: 4, lr: 1.0e-4}]",
            "train.schedule=constant",
            "train.warmup_epochs=0",
        ],
    ),
    "timm-wd-groups": (
        "timm's optimizer factory default: no weight decay on biases and norm weights",
        ["train.decay_bias_and_norm=false"],
    ),
    "lite2": (
        "EfficientNet-Lite2 at its own 260 px",
        ["model.arch=tf_efficientnet_lite2", f"model.init=file:{LITE2}"],
    ),
}


def run_variants(names: list[str]) -> None:
    """Train each named variant on the task's fixed split unless its run has finished."""
    split = fixed_split(task_config(TASK, []))
    for name in names:
        _, overrides = VARIANTS[name]
        cfg = task_config(TASK, [f"output_dir={OUT / TASK / 'ablations'}", *overrides])
        run_chexlab(cfg, split, name=name)


def run_baseline_diagnostic() -> None:
    """The plain baseline with the normalisation these weights were trained with, instead of ImageNet's."""
    cfg = task_config(TASK, [])
    labels = load_table(cfg.data).label_names
    train_baseline(cfg, fixed_split(cfg), DIAGNOSTIC, labels, "--normalisation", "model")


def _epochs(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _final_auc(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())["val"]["headline"]["auc"]


def ablation_section() -> str:
    split = pd.read_csv(OUT / TASK / "split.csv")
    val = split[split["split"] == "val"]
    lines = [
        f"## What each part of the {TASK} recipe does",
        "",
        "`python bench/ablations.py` — one change at a time against `configs/defaults/nih-binary.yaml`, on "
        f"the quality benchmark's fixed split. **Validation only** ({len(val)} images of "
        f"{val['patient_id'].nunique()} patients): the test part is kept for the one recipe reported above. "
        "'best epoch' is the epoch with the highest validation AUC (the weights kept); its AUC is a little "
        "optimistic because the epoch was picked on the same images. "
        "'final' re-scores the same weights as the run reports them, with the recipe's test-time "
        "augmentation (the mean over the image and a 92 % centre zoom) and a patient-bootstrap 95 % CI, so "
        "the two AUC columns differ by the test-time augmentation alone. Time per epoch on this machine's "
        "2-core CPU.",
        "",
        "| variant | change | best epoch | val AUC at best epoch | final val AUC | Δ final | s/epoch |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    reference = OUT / TASK / "ablations" / "recipe"
    base = _final_auc(reference)["value"] if (reference / "metrics.json").is_file() else None
    adopted, seed_aucs = [], []
    for name, (change, _) in VARIANTS.items():
        run = OUT / TASK / "ablations" / name
        if not (run / "metrics.json").is_file():
            continue
        info = json.loads((run / "run.json").read_text())
        epochs = _epochs(run)
        best = max(epochs, key=lambda row: float(row["val_auc"] or "nan"))
        final = _final_auc(run)
        delta = final["value"] - base if base is not None else None
        if name in SEEDS:
            seed_aucs.append(final["value"])
        elif delta is not None and delta >= ADOPT_MARGIN:
            adopted.append(name)
        lines.append(
            f"| {name} | {change} | {best['epoch']} / {len(epochs)} | {float(best['val_auc']):.3f} | "
            f"{with_ci(final)} | {'' if delta is None else f'{delta:+.3f}'} | "
            f"{info['timing']['seconds_per_epoch']:.0f} |"
        )
    lines += [
        "",
        f"Rule: a change replaces the recipe's setting only if its final validation "
        f"AUC beats the recipe's by at least {ADOPT_MARGIN}; smaller differences are noise at this size (the "
        f"CIs are about ±0.04). Adopted: {', '.join(adopted) or 'none'}.",
    ]
    if len(seed_aucs) > 1:
        lines += [
            "",
            f"Chance alone: the unchanged recipe with {len(seed_aucs)} training seeds reaches a final "
            f"validation AUC of {min(seed_aucs):.3f} to {max(seed_aucs):.3f}.",
        ]
    plain, diagnostic = OUT / TASK / "baseline" / "timing.json", DIAGNOSTIC / "timing.json"
    if plain.is_file() and diagnostic.is_file():
        imagenet_auc = json.loads(plain.read_text())["best_val_auc"]
        model_auc = json.loads(diagnostic.read_text())["best_val_auc"]
        lines += [
            "",
            "Where the gap to the plain baseline comes from: its best validation AUC (no test-time "
            f"augmentation, compare with 'val AUC at best epoch') is {imagenet_auc:.3f}. The same script "
            "with the normalisation these tf_efficientnet weights were trained with (mean and std 0.5, which "
            "chexlab reads from the model's pretrained config) instead of ImageNet's statistics reaches "
            f"{model_auc:.3f}. The baseline-schedule row keeps the baseline's short schedule and differs "
            "from it in that normalisation, CLAHE, chexlab's radiograph augmentation instead of horizontal "
            "flips, batch norms frozen with the backbone in phase 1, dropout 0.2 before the head, weight "
            "decay 1e-4 instead of 1e-2 and gradient clipping.",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--variants", help="comma-separated subset (default: all, and the plain-baseline diagnostic)"
    )
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if not args.report_only:
        run_variants([v for v in (args.variants or ",".join(VARIANTS)).split(",") if v])
        if args.variants is None:
            run_baseline_diagnostic()
    replace_section("ablations", ablation_section())
    print("wrote docs/benchmarks.md")


if __name__ == "__main__":
    main()
