"""The plain baseline: the ~100-line timm fine-tune a user would write without chexlab.

tf_efficientnet_lite0 from the same ImageNet weights, 224 px, ImageNet-style normalisation, random
horizontal flip, AdamW (head only for 2 epochs at 1e-3, then all layers for 4 epochs at 1e-4), batch 32,
the best epoch on validation. It reads chexlab's split.csv so that both sides see exactly the same images,
and writes per-image probabilities for val and test; bench/quality.py scores them with chexlab's metrics.
Deliberately no chexlab imports: this is what chexlab is measured against.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

# ImageNet statistics, what a user writes; "model" is what these tf_efficientnet weights were trained with,
# for the diagnostic run of bench/ablations.py.
NORMALISATION = {"imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), "model": ([0.5] * 3, [0.5] * 3)}


class CsvImages(Dataset):
    def __init__(
        self, frame: pd.DataFrame, root: Path, labels: list[str], softmax: bool, train: bool, norm: str
    ) -> None:
        self.paths = [root / p for p in frame["path"]]
        if softmax:  # one "label" column holding class names -> one-hot
            self.targets = (frame["label"].to_numpy()[:, None] == np.array(labels)[None]).astype(np.float32)
        else:
            self.targets = frame[labels].to_numpy(dtype=np.float32)
        steps = (
            [transforms.Resize((224, 224)), transforms.RandomHorizontalFlip()]
            if train
            else [transforms.Resize((224, 224))]
        )
        self.transform = transforms.Compose(
            [
                *steps,
                transforms.ToTensor(),
                transforms.Normalize(*NORMALISATION[norm]),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(Image.open(self.paths[i]).convert("RGB")), self.targets[i]


def outputs(model, loader, softmax):
    model.eval()
    probs, targets = [], []
    with torch.no_grad():
        for x, y in loader:
            logits = model(x)
            probs.append(logits.softmax(-1) if softmax else logits.sigmoid())
            targets.append(y)
    return torch.cat(probs).numpy(), torch.cat(targets).numpy()


def loss_fn(logits, y, softmax):
    if softmax:
        return torch.nn.functional.cross_entropy(logits, y.argmax(-1))
    known = ~torch.isnan(y)
    losses = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.nan_to_num(y), reduction="none"
    )
    return (losses * known).sum() / known.sum().clamp(min=1)


def val_auc(probs, targets):
    aucs = [
        roc_auc_score(targets[m, j], probs[m, j])
        for j in range(targets.shape[1])
        if len(np.unique(targets[(m := ~np.isnan(targets[:, j])), j])) == 2
    ]
    return float(np.mean(aucs))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--split", required=True, help="chexlab split.csv (path, split, one column per output)"
    )
    parser.add_argument("--root", required=True)
    parser.add_argument(
        "--labels", nargs="+", required=True, help="output names: split.csv columns, or classes"
    )
    parser.add_argument("--task", choices=("binary", "multiclass", "multilabel"), required=True)
    parser.add_argument("--weights", required=True, help="ImageNet tf_efficientnet_lite0 safetensors")
    parser.add_argument("--out", required=True)
    parser.add_argument("--normalisation", choices=tuple(NORMALISATION), default="imagenet")
    args = parser.parse_args()
    # The one difference between the tasks here; a name, not trainer.task.Task: no chexlab imports (above).
    softmax = args.task == "multiclass"
    torch.manual_seed(0)
    frame = pd.read_csv(args.split)
    parts = {s: frame[frame["split"] == s] for s in ("train", "val", "test")}
    loaders = {
        s: DataLoader(
            CsvImages(f, Path(args.root), args.labels, softmax, s == "train", args.normalisation),
            batch_size=32,
            shuffle=s == "train",
            num_workers=2,
        )
        for s, f in parts.items()
    }
    model = timm.create_model(
        "tf_efficientnet_lite0",
        pretrained=True,
        num_classes=len(args.labels),
        pretrained_cfg_overlay={"file": args.weights},
    )
    best, best_state, epoch_seconds = -1.0, None, []
    for epochs, lr, head_only in ((2, 1e-3, True), (4, 1e-4, False)):
        for p in model.parameters():
            p.requires_grad = not head_only
        for p in model.get_classifier().parameters():
            p.requires_grad = True
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
        for _ in range(epochs):
            start = time.perf_counter()
            model.train()
            for x, y in loaders["train"]:
                optimizer.zero_grad()
                loss_fn(model(x), y, softmax).backward()
                optimizer.step()
            epoch_seconds.append(time.perf_counter() - start)
            auc = val_auc(*outputs(model, loaders["val"], softmax))
            if auc > best:
                best, best_state = auc, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split in ("val", "test"):
        probs, _ = outputs(model, loaders[split], softmax)
        pd.DataFrame(probs, columns=args.labels).assign(path=parts[split]["path"].values).to_csv(
            out / f"{split}.csv", index=False
        )
    n_train = len(parts["train"])
    pd.Series(
        {
            "seconds_per_epoch": np.mean(epoch_seconds),
            "images_per_s": n_train / np.mean(epoch_seconds),
            "best_val_auc": best,
        }
    ).to_json(out / "timing.json")


if __name__ == "__main__":
    main()
