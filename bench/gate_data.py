"""The embedded models' outputs on their own splits, and the calibration and OOD statistics fitted from them.

    python bench/gate_data.py                 # all three models; writes runs/gate/<model>/
    python bench/gate_data.py --models nih-binary

Each embedded model (demo/models/<name>) was trained on the patient-wise split that
configs/defaults/<name>.yaml draws from ../shared/data (chexlab's `patient_split`, seed 0); the split is drawn
again here and checked against the image counts the model's config.json records. Every image goes through
the model's own preprocessing and one forward pass (no test-time augmentation: what `predict` and the demo
do), giving logits and pooled features per split, cached in runs/gate/<name>/outputs-<split>.npz.

From these, per model, `fit_gate` writes what the integration puts into the model folder:
- runs/gate/<name>/ood.safetensors: the training features' statistics (`trainer.ood.FeatureStatistics`);
- runs/gate/<name>/chexlab.json: the `calibration` and `ood` entries of config.json's `chexlab` block
  (temperatures fitted on the validation split, the OOD threshold passing 99 % of validation images).
bench/calibration.py and bench/ood.py read the same cached outputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainer import calibration, ood  # noqa: E402
from trainer.config import RunConfig, load_config  # noqa: E402
from trainer.data import XRayDataset  # noqa: E402
from trainer.evaluate import align_labels  # noqa: E402
from trainer.export import ModelInfo, load_model  # noqa: E402
from trainer.labels import LabelTable  # noqa: E402
from trainer.run_data import load_table  # noqa: E402
from trainer.splits import patient_split  # noqa: E402
from trainer.transforms import InputSpec  # noqa: E402

MODELS = ("nih-binary", "nih-findings", "pediatric-pneumonia")
MODEL_DIR = REPO / "demo" / "models"
OUT = REPO / "runs" / "gate"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitOutputs:
    """One split of one model: logits (N, C), pooled features (N, D), targets and image paths."""

    logits: np.ndarray
    features: np.ndarray
    targets: np.ndarray
    paths: list[str]


def load(name: str) -> tuple[torch.nn.Module, ModelInfo]:
    """An embedded model by name."""
    return load_model(str(MODEL_DIR / name))


def model_config(name: str) -> RunConfig:
    """The model's training config (configs/defaults/<name>.yaml), its data root made absolute."""
    cfg = load_config(REPO / "configs" / "defaults" / f"{name}.yaml", [])
    if not Path(cfg.data.root).is_absolute():
        cfg = replace(cfg, data=replace(cfg.data, root=str((REPO / cfg.data.root).resolve())))
    return cfg


def model_table(name: str, info: ModelInfo) -> tuple[LabelTable, np.ndarray]:
    """The model's label table (in its output order) and its patient-wise split, checked against config.json.

    Raises:
        RuntimeError: the split's sizes differ from the ones the model was trained with.
    """
    cfg = model_config(name)
    table = align_labels(load_table(cfg.data), info)
    split = patient_split(
        table, val=cfg.data.val_fraction, test=cfg.data.test_fraction, seed=cfg.data.split_seed
    )
    sizes = {part: int((split == part).sum()) for part in SPLITS}
    trained = info.training_data.get("n_images", {})
    if trained and sizes != {part: trained[part] for part in SPLITS}:
        raise RuntimeError(f"{name}: the split drawn here {sizes} differs from the model's {trained}")
    return table, split


def outputs(name: str, split: str, *, batch_size: int = 32) -> SplitOutputs:
    """Logits and features of one split (cached)."""
    cache = OUT / name / f"outputs-{split}.npz"
    if cache.is_file():
        data = np.load(cache, allow_pickle=False)
        return SplitOutputs(data["logits"], data["features"], data["targets"], data["paths"].tolist())
    model, info = load(name)
    table, membership = model_table(name, info)
    part = table.subset(membership == split)
    dataset = XRayDataset(part, InputSpec.from_data_config(info.data_config), pipeline=info.pipeline)
    logits, features = [], []
    for images, _, _ in DataLoader(dataset, batch_size=batch_size, num_workers=0):
        pooled, out = ood.features_and_logits(model, images)
        features.append(pooled.numpy())
        logits.append(out.numpy())
    result = SplitOutputs(
        np.concatenate(logits),
        np.concatenate(features),
        part.targets,
        [part.ref(i) for i in range(len(part))],
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, logits=result.logits, features=result.features, targets=result.targets,
             paths=np.asarray(result.paths))  # fmt: skip
    return result


def fit_gate(name: str) -> tuple[calibration.Calibration, ood.FeatureStatistics]:
    """The model's calibration (fitted on validation) and OOD statistics (train; threshold on validation)."""
    _, info = load(name)
    train, val, test = (outputs(name, split) for split in SPLITS)
    fitted = calibration.fit_calibration(val.logits, val.targets, info.task)
    metrics = {}
    for split, out in (("val", val), ("test", test)):
        before = calibration.probabilities_from_logits(out.logits, info.task)
        after = calibration.probabilities_from_logits(fitted.scale_logits(out.logits), info.task)
        metrics[split] = calibration.compare_calibration(before, after, out.targets, info.task)
    stats = ood.fit_statistics(train.features, val.features)
    return fitted.with_metrics(metrics), stats


def write_gate(name: str, out_dir: Path) -> Path:
    """Write ood.safetensors and chexlab.json (the config.json entries) for one model into `out_dir`."""
    fitted, stats = fit_gate(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats.save(out_dir)
    entries = {calibration.CONFIG_KEY: fitted.to_dict(), ood.CONFIG_KEY: stats.config_entry()}
    path = out_dir / "chexlab.json"
    path.write_text(json.dumps(entries, indent=2, allow_nan=False) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated embedded model names")
    parser.add_argument(
        "--out", type=Path, default=OUT, help="writes OUT/<model>/{ood.safetensors,chexlab.json}"
    )
    args = parser.parse_args()
    for name in (m for m in args.models.split(",") if m):
        path = write_gate(name, args.out / name)
        entries = json.loads(path.read_text())
        cal, gate = entries[calibration.CONFIG_KEY], entries[ood.CONFIG_KEY]
        print(f"{name}: temperatures {cal['temperatures']}, offsets {cal['offsets']}, "
              f"OOD threshold {gate['threshold']:.2f} -> {path.parent}")  # fmt: skip


if __name__ == "__main__":
    main()
