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

from bench.quality import OUT, fixed_split, run_chexlab, task_config  # noqa: E402
from bench.report import replace_section, with_ci  # noqa: E402

TASK = "nih-binary"
LITE2 = REPO.parent / "shared" / "weights" / "tf_efficientnet_lite2.in1k.timm.safetensors"
CLAHE = "{op: clahe, clip_limit: 2.0, tile_grid: 8}"
# name -> (what changes against the recipe in configs/defaults/<task>.yaml, config overrides)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "recipe": ("configs/defaults/nih-binary.yaml as committed", []),
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


def _epochs(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


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
        "'final' re-scores those weights as the run reports them (with test-time augmentation when the "
        "recipe uses it), with a patient-bootstrap 95 % CI. Time per epoch on this machine's 2-core CPU.",
        "",
        "| variant | change | best epoch | val AUC at best epoch | final val AUC | s/epoch |",
        "|---|---|---:|---:|---|---:|",
    ]
    for name, (change, _) in VARIANTS.items():
        run = OUT / TASK / "ablations" / name
        if not (run / "metrics.json").is_file():
            continue
        info = json.loads((run / "run.json").read_text())
        epochs = _epochs(run)
        best = max(epochs, key=lambda row: float(row["val_auc"] or "nan"))
        final = json.loads((run / "metrics.json").read_text())["val"]["headline"]["auc"]
        lines.append(
            f"| {name} | {change} | {best['epoch']} / {len(epochs)} | {float(best['val_auc']):.3f} | "
            f"{with_ci(final)} | {info['timing']['seconds_per_epoch']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if not args.report_only:
        run_variants([v for v in args.variants.split(",") if v])
    replace_section("ablations", ablation_section())
    print("wrote docs/benchmarks.md")


if __name__ == "__main__":
    main()
