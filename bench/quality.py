"""chexlab's recipe against a plain timm fine-tune, on fixed patient-wise splits of ../shared data.

    python bench/quality.py                      # the three default-model tasks, then docs/benchmarks.md
    python bench/quality.py --tasks nih-binary   # one task
    python bench/quality.py --recipes            # also the five seed recipes, at a scale a CPU allows
    python bench/quality.py --report-only        # rewrite the document from finished runs

For each task the split is drawn once (chexlab's patient-wise, label-stratified split, seed 0) and saved
before anything trains; both sides train on its train part, pick their epoch and threshold on its val part,
and are scored once on its test part with the same patient-level bootstrap. Runs go to runs/bench/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.report import replace_section, with_ci  # noqa: E402
from trainer import engine  # noqa: E402
from trainer.config import RunConfig, load_config  # noqa: E402
from trainer.labels import LabelTable  # noqa: E402
from trainer.metrics import choose_thresholds, evaluate_predictions  # noqa: E402
from trainer.run_data import load_table  # noqa: E402
from trainer.splits import patient_split, write_split  # noqa: E402

OUT = REPO / "runs" / "bench"
TASKS = ("nih-binary", "nih-findings", "pediatric-pneumonia")
HEADLINE = ("auc", "accuracy", "sensitivity", "specificity")

# The seed studies' own numbers (../shared/SEEDS.md), for context only.
PUBLISHED = {
    "nih-binary": "simple-cnn (1,942 NIH images, binary): accuracy 0.61, sensitivity 0.74, specificity 0.48",
    "nih-findings": "efficientnet-nih14 (112,120 images, 14 findings): mean AUC 0.8428; "
    "inceptionv3-nih15 (15 labels): AUC 0.7301",
    "pediatric-pneumonia": "no seed study uses this set; clahe-wb-transfer (COVID / viral / normal, adult + "
    "pediatric mix): 3-class accuracy 0.90-0.9745",
}


def task_config(task: str, overrides: list[str]) -> RunConfig:
    return load_config(
        REPO / "configs" / "defaults" / f"{task}.yaml", [f"output_dir={OUT / task}", *overrides]
    )


def draw_split(cfg: RunConfig) -> tuple[LabelTable, np.ndarray]:
    """The task's label table and its split as `fit` draws it from the config (train/val/test per row)."""
    table = load_table(cfg.data)
    return table, patient_split(
        table, val=cfg.data.val_fraction, test=cfg.data.test_fraction, seed=cfg.data.split_seed
    )


def fixed_split(cfg: RunConfig) -> Path:
    """Draw the task's split once, before any training, and keep it."""
    path = OUT / cfg.name / "split.csv"
    if not path.is_file():
        table, split = draw_split(cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_split(table, split, path)
    return path


def run_chexlab(cfg: RunConfig, split: Path, name: str = "chexlab") -> Path:
    """Train `cfg` on the fixed split into <output_dir>/<name>, resuming an unfinished run."""
    cfg = dataclasses.replace(cfg, name=name, data=dataclasses.replace(cfg.data, split_file=str(split)))
    run = cfg.run_dir
    if not (run / "metrics.json").is_file():
        engine.fit(cfg, resume=(run / "checkpoint.pt").is_file(), progress=False)
    return run


def train_baseline(cfg: RunConfig, split: Path, out: Path, labels: list[str], *extra: str) -> None:
    """Run bench/plain_baseline.py on the split unless `out` already has its predictions."""
    if not (out / "test.csv").is_file():
        command = [sys.executable, str(REPO / "bench" / "plain_baseline.py"), "--split", str(split)]
        command += ["--root", cfg.data.root, "--task", cfg.data.task, "--out", str(out)]
        if cfg.model.init is None:
            raise ValueError(f"{cfg.name} sets no model.init, the weights the plain baseline starts from")
        command += ["--weights", cfg.model.init.removeprefix("file:"), *extra, "--labels", *labels]
        subprocess.run(command, check=True, cwd=REPO)


def run_baseline(cfg: RunConfig, split: Path) -> Path:
    """Train the plain script on the same split, then score it exactly as chexlab is scored."""
    out = OUT / cfg.name / "baseline"
    table = load_table(cfg.data)
    labels = table.label_names
    train_baseline(cfg, split, out, labels)
    frame = pd.read_csv(split)
    targets = {}
    for part in ("val", "test"):
        rows = frame[frame["split"] == part]
        if table.task.exclusive:  # split.csv's "label" column holds class names
            targets[part] = rows["label"].map({n: i for i, n in enumerate(labels)}).to_numpy()
        else:  # one 0/1 column per label (binary: one)
            targets[part] = rows[labels].to_numpy(dtype=float)
    # evaluate_predictions takes binary targets and probabilities as (N, 1) as well as (N,)
    probs = {part: pd.read_csv(out / f"{part}.csv")[labels].to_numpy() for part in ("val", "test")}
    thresholds = choose_thresholds(table.task, targets["val"], probs["val"], method=cfg.eval.threshold)
    test_rows = frame[frame["split"] == "test"]
    metrics = evaluate_predictions(
        table.task,
        labels,
        targets["test"],
        probs["test"],
        test_rows["patient_id"].astype(str).tolist(),
        thresholds,
        n_bootstrap=cfg.eval.n_bootstrap,
        seed=cfg.train.seed,
        negative_name=table.negative_name,
    )
    (out / "metrics.json").write_text(json.dumps({"test": metrics}, indent=2))
    return out


def _row(task: str, method: str, metrics: dict, timing: dict) -> str:
    cells = [with_ci(metrics["headline"][k]) for k in HEADLINE]
    speed = f"{timing['seconds_per_epoch']:.0f} s, {timing['images_per_s']:.1f} img/s" if timing else "n/a"
    return f"| {task} | {method} | " + " | ".join(cells) + f" | {speed} |"


def quality_section(tasks: list[str]) -> str:
    lines = [
        "## Quality: chexlab's recipe vs a plain timm fine-tune",
        "",
        "`python bench/quality.py` — test part of a fixed patient-wise split of the ../shared data (drawn "
        "once, "
        "before training); thresholds chosen on validation (Youden); 95 % CIs from a patient-level bootstrap "
        "(2,000 resamples). Multi-class: macro one-vs-rest AUC, accuracy, mean per-class sensitivity and "
        "specificity. Multi-label: mean over findings. Training time on this machine's CPU (2 cores).",
        "",
        "| task | method | AUC | accuracy | sensitivity | specificity | time per epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for task in tasks:
        base = OUT / task
        chex = base / "chexlab"
        if not (chex / "metrics.json").is_file() or not (base / "baseline" / "metrics.json").is_file():
            continue
        ours = json.loads((chex / "metrics.json").read_text())["test"]
        plain = json.loads((base / "baseline" / "metrics.json").read_text())["test"]
        timing = json.loads((chex / "run.json").read_text())["timing"]
        plain_timing = json.loads((base / "baseline" / "timing.json").read_text())
        lines.append(_row(task, "plain baseline", plain, plain_timing))
        lines.append(_row(task, "**chexlab**", ours, timing))
        gain = ours["headline"]["auc"]["value"] - plain["headline"]["auc"]["value"]
        notes.append(
            f"- {task}: AUC {gain:+.3f} for chexlab ({ours['n_images']} test images, "
            f"{ours['n_patients']} patients). Published: {PUBLISHED[task]}."
        )
    lines += [
        "",
        *notes,
        "",
        "The published numbers are not directly comparable: other data (full NIH, other "
        "hospitals), other label sets, and splits that are not patient-wise (follow-up images of one "
        "patient on both sides inflate accuracy); most report no confidence interval.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--recipes", action="store_true", help="also run the seed recipes (bench/recipes.py)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "overrides", nargs="*", help="config overrides for both chexlab runs, e.g. train.batch_size=16"
    )
    args = parser.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    for task in tasks if not args.report_only else []:
        cfg = task_config(task, args.overrides)
        split = fixed_split(cfg)
        run_baseline(cfg, split)
        run_chexlab(task_config(task, args.overrides), split)
    replace_section("quality", quality_section(list(TASKS)))
    if args.recipes:
        from bench.recipes import run_recipes

        run_recipes(report_only=args.report_only)
    print("wrote docs/benchmarks.md")


if __name__ == "__main__":
    main()
