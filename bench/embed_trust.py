"""Give the embedded models their calibration and OOD statistics, and regenerate their model cards.

    python bench/embed_trust.py                       # all three; needs ../shared/data
    python bench/embed_trust.py --models nih-binary

Not a benchmark: it lives in bench/ because it reads ../shared, like bench/gate_data.py, whose single-pass
outputs of each model's own patient-wise splits it uses (what `predict`, `evaluate` and the demo compute:
the original runs' test metrics averaged a test-time zoom, which no inference path does). Per model:

1. the calibration fitted on the validation split, with ECE/Brier/NLL before and after on validation and
   test, and the OOD statistics of the training split's features with the threshold passing 99 % of the
   validation images (`gate_data.fit_gate`);
2. the thresholds chosen again, on the calibrated validation probabilities, by the config's `eval.threshold`
   method (as `trainer.reporting.finish_run` does), and the validation and test metrics at them with
   patient-level bootstrap CIs; where the config names `data.subgroup_columns`, the test split per subgroup
   (`trainer.subgroups.evaluate_subgroups`); the share of test images the feature score flags (as `fit`);
3. a run folder rebuilt under runs/embedded/<name>/ (config.yaml, run.json, metrics.json, plots/: ROC,
   confusion and the reliability diagram redrawn, the training curves of the original run copied), from
   which `hub_cards.write_card` renders demo/models/<name>/README.md;
4. the model folder's config.json and ood.safetensors written by `save_pretrained` from the loaded weights;
   model.safetensors is left in place and must come out byte-identical (checked; the run stops otherwise).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import gate_data  # noqa: E402
from hub_cards import write_card  # noqa: E402
from trainer import ood  # noqa: E402
from trainer.calibration import Calibration, probabilities_from_logits  # noqa: E402
from trainer.config import RunConfig, save_config  # noqa: E402
from trainer.export import WEIGHTS_NAME, ModelInfo, save_pretrained  # noqa: E402
from trainer.metrics import choose_thresholds, evaluate_predictions  # noqa: E402
from trainer.plots import plot_confusion, plot_roc  # noqa: E402
from trainer.reporting import recipe, write_json  # noqa: E402
from trainer.subgroups import evaluate_subgroups  # noqa: E402
from trainer.trust import RELIABILITY_PNG, ood_section, write_reliability  # noqa: E402

RUNS = REPO / "runs" / "embedded"
# What the original runs' run.json said and nothing else keeps (their run folders are gone): from the cards
# they rendered.
TRAINING_RUNS: dict[str, dict[str, Any]] = {
    "nih-binary": {"epochs_run": 10, "best_epoch": 6, "seconds_per_epoch": 264.6, "images_per_s": 2.3},
    "nih-findings": {"epochs_run": 11, "best_epoch": 7, "seconds_per_epoch": 43.2, "images_per_s": 12.8},
    "pediatric-pneumonia": {
        "epochs_run": 12,
        "best_epoch": 8,
        "seconds_per_epoch": 89.4,
        "images_per_s": 9.3,
    },
}
DEVICE = "CPU (x86_64)"


def sha256(path: Path) -> str:
    """The file's SHA-256, hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def trust_metrics(
    name: str, calibration: Calibration, stats: ood.FeatureStatistics
) -> tuple[dict[str, Any], dict[str, np.ndarray], list[float]]:
    """metrics.json of the rebuilt run (val, test, calibration, ood, subgroups), the calibrated probabilities
    per split and the thresholds chosen on the calibrated validation probabilities."""
    cfg = gate_data.model_config(name)
    _, info = gate_data.load(name)
    table, membership = gate_data.model_table(name, info)
    parts = {split: table.subset(membership == split) for split in ("val", "test")}
    outputs = {split: gate_data.outputs(name, split) for split in parts}
    probs = {
        split: probabilities_from_logits(calibration.scale_logits(out.logits), info.task)
        for split, out in outputs.items()
    }
    thresholds = choose_thresholds(
        info.task,
        outputs["val"].targets,
        probs["val"],
        method=cfg.eval.threshold,
        target_sensitivity=cfg.eval.target_sensitivity,
    )
    metrics: dict[str, Any] = {
        split: evaluate_predictions(
            info.task,
            info.label_names,
            outputs[split].targets,
            probs[split],
            parts[split].patient_ids,
            thresholds,
            n_bootstrap=cfg.eval.n_bootstrap,
            seed=cfg.train.seed,
            negative_name=info.negative_name,
        )
        for split in parts
    }
    metrics["calibration"] = calibration.to_dict()
    metrics["ood"] = ood_section(stats, outputs["test"].features)
    if cfg.data.subgroup_columns:
        metrics["subgroups"] = evaluate_subgroups(
            cfg.data,
            parts["test"],
            probs["test"],
            thresholds,
            negative_name=info.negative_name,
            n_bootstrap=cfg.eval.n_bootstrap,
        )
    return metrics, probs, thresholds


def run_info(name: str, cfg: RunConfig, info: ModelInfo) -> dict[str, Any]:
    """run.json of the rebuilt run: recipe from the config, data from config.json, the rest as recorded."""
    recorded = TRAINING_RUNS[name]
    return {
        "chexlab_version": info.chexlab_version,
        "dataset": info.training_data,
        # tta False: the metrics below are single-pass (see the module docstring)
        "recipe": recipe(cfg, input_size=int(info.data_config["input_size"][-1]), tta=False),
        "timing": {
            "seconds_per_epoch": recorded["seconds_per_epoch"],
            "images_per_s": recorded["images_per_s"],
            "device": DEVICE,
        },
        "best_epoch": recorded["best_epoch"],
        "epochs_run": recorded["epochs_run"],
        "monitor": cfg.train.monitor,
    }


def rebuild_run(
    name: str, run_dir: Path, calibration: Calibration, stats: ood.FeatureStatistics
) -> tuple[dict[str, Any], list[float]]:
    """Write the run folder the card is rendered from; returns its metrics and the new thresholds."""
    cfg = gate_data.model_config(name)
    _, info = gate_data.load(name)
    metrics, probs, thresholds = trust_metrics(name, calibration, stats)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(parents=True)
    save_config(cfg, run_dir / "config.yaml")
    write_json(run_dir / "run.json", run_info(name, cfg, info))
    write_json(run_dir / "metrics.json", metrics)
    test = gate_data.outputs(name, "test")
    plot_roc(info.task, info.label_names, test.targets, probs["test"], plots / "roc.png",
             thresholds=thresholds, title=f"ROC, test split ({len(test.targets)} images)")  # fmt: skip
    plot_confusion(metrics["test"], plots / "confusion.png")
    curves = "training_curves.png"  # the original run's: its metrics.csv is gone
    shutil.copyfile(gate_data.MODEL_DIR / name / "plots" / curves, plots / curves)
    write_reliability(calibration, probabilities_from_logits(test.logits, info.task), test.targets, info.task,
                      plots / RELIABILITY_PNG, "test")  # fmt: skip
    return metrics, thresholds


def update_model_folder(
    name: str,
    metrics: dict[str, Any],
    thresholds: list[float],
    calibration: Calibration,
    stats: ood.FeatureStatistics,
) -> None:
    """Rewrite the model folder's config.json and ood.safetensors; the weights file must not change.

    Raises:
        RuntimeError: save_pretrained would write different weights bytes (nothing is changed then).
    """
    folder = gate_data.MODEL_DIR / name
    model, info = gate_data.load(name)
    before = sha256(folder / WEIGHTS_NAME)
    with tempfile.TemporaryDirectory(prefix=f"embed-{name}-") as tmp:
        save_pretrained(
            model,
            tmp,
            task=info.task,
            label_names=info.label_names,
            negative_name=info.negative_name,
            pipeline=info.pipeline,
            thresholds=thresholds,
            head=info.head,
            input_size=tuple(info.data_config["input_size"]),
            metrics_summary={split: metrics[split]["headline"] for split in ("val", "test")},
            data_summary=info.training_data,
            dtype=torch.float16,
            calibration=calibration,
            ood=stats,
        )
        if sha256(Path(tmp) / WEIGHTS_NAME) != before:
            raise RuntimeError(f"{name}: save_pretrained would change {WEIGHTS_NAME}; left the folder as is")
        for file in ("config.json", ood.OOD_FILE):
            shutil.copyfile(Path(tmp) / file, folder / file)
    if sha256(folder / WEIGHTS_NAME) != before:
        raise RuntimeError(f"{name}: {WEIGHTS_NAME} changed")


def embed(name: str) -> dict[str, Any]:
    """Calibration, OOD statistics, thresholds, metrics and card of one embedded model; its metrics."""
    run_dir = RUNS / name
    calibration, stats = gate_data.fit_gate(name)
    metrics, thresholds = rebuild_run(name, run_dir, calibration, stats)
    update_model_folder(name, metrics, thresholds, calibration, stats)
    write_card(run_dir, gate_data.MODEL_DIR / name)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(gate_data.MODELS), help="comma-separated model names")
    args = parser.parse_args()
    for name in (m for m in args.models.split(",") if m):
        metrics = embed(name)
        test, gate = metrics["test"]["headline"], metrics["ood"]
        after = metrics["calibration"]["metrics"]["test"]["after"]
        print(f"{name}: thresholds {metrics['test']['thresholds']}, test AUC {test['auc']['value']:.4f}, "
              f"test ECE {after['ece']:.3f}, OOD threshold {gate['threshold']:.2f}, "
              f"test flagged {100 * gate['test_flagged']:.1f} %")  # fmt: skip


if __name__ == "__main__":
    main()
