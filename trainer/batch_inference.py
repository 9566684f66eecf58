"""Batch prediction on files that keeps every core busy: decoding and preprocessing in worker processes, the
forward pass through `trainer.runtime.ForwardRunner` (ONNX Runtime when available) in the main one.

The rows are those `python -m trainer predict` writes: one per image, in input order, with the calibrated
probability of every class (6 decimals), the decision at the model's thresholds (empty when the OOD gate
flags the image: the decision is withheld), the gate's `ood_score` (higher = less like the training images;
empty without statistics) and `ood` (1 = flagged, 0 = not), the warnings (the reader's, the preprocessing's
and the gate's reasons), or the error that made the image unreadable. The image-level checks run in the
workers, beside the decoding; the feature score on the pooled features the runner returns with the logits.
Worker processes rather than threads: the preprocessing ops are partly Python and numpy code that holds the
GIL, and processes scale whatever the mix.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainer.export import ModelInfo
from trainer.inference import InputTransform, judge_verdict
from trainer.io import XRayReadError, load_xray
from trainer.ood import image_checks, verdict
from trainer.runtime import ForwardRunner, available_cores
from trainer.task import Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Item:
    """One image after a worker read, checked and preprocessed it: the model input, or why it is unreadable"""

    path: str
    tensor: torch.Tensor | None
    warnings: tuple[str, ...]
    error: str
    reasons: tuple[str, ...] = ()  # the OOD gate's image-level reasons (`trainer.ood.image_checks`)


class _Images(Dataset[_Item]):
    """Reads and preprocesses image `i` (in a worker process when the loader has workers)."""

    def __init__(self, paths: Sequence[Path], transform: InputTransform) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> _Item:
        path = self.paths[index]
        try:
            xray = load_xray(path)
        except XRayReadError as err:
            return _Item(str(path), None, (), str(err))
        prepared = self.transform(xray.pixels)
        return _Item(
            str(path), prepared.tensor, (*xray.warnings, *prepared.warnings), "", tuple(image_checks(xray))
        )


def _as_list(items: list[_Item]) -> list[_Item]:
    return items


@dataclass
class BatchSummary:
    """What a batch prediction did: images predicted, unreadable, and flagged by the OOD gate (no decision).

    `notes`: what the user should know about the model (e.g. a folder without calibration or statistics).
    """

    predicted: int = 0
    unreadable: int = 0
    flagged: int = 0
    backend: str = ""
    seconds: float = 0.0
    notes: tuple[str, ...] = ()
    out: Path | None = None

    def line(self) -> str:
        """One line for people, e.g. "745 predicted, 0 unreadable, 3 flagged (onnxruntime, 21.3 s)"."""
        return (
            f"{self.predicted} predicted, {self.unreadable} unreadable, {self.flagged} flagged "
            f"({self.backend}, {self.seconds:.1f} s)"
        )


def header(task: Task | str, label_names: Sequence[str], negative_name: str | None) -> list[str]:
    """The CSV header: path, prob_<class> for every class a user sees, decision, ood_score, ood, warnings,
    error."""
    names = Task.parse(task).output_names(label_names, negative_name)
    return ["path", *(f"prob_{name}" for name in names), "decision", "ood_score", "ood", "warnings", "error"]


def predict_rows(
    model: nn.Module,
    info: ModelInfo,
    paths: Sequence[Path],
    *,
    batch_size: int = 16,
    workers: int | None = None,
    runner: ForwardRunner | None = None,
    progress: bool = False,
    summary: BatchSummary | None = None,
) -> Iterator[list[str]]:
    """The CSV rows (without the header) for `paths`, in order, as `python -m trainer predict` writes them.

    Args:
        model: the loaded model (used to build a runner when none is given).
        info: its `trainer.export.ModelInfo` (task, label names, thresholds, pipeline, data config).
        paths: image files.
        batch_size: images per forward pass (and per task handed to a worker).
        workers: decoding processes; default one per available core, 0 = decode in this process.
        runner: the forward pass; default `ForwardRunner.for_model(model, info.data_config["input_size"])`.
        progress: show a progress bar (tqdm, on stderr).
        summary: filled in with the counts as rows are produced.
    """
    task = Task.parse(info.task)
    names = task.output_names(info.label_names, info.negative_name)
    runner = runner or ForwardRunner.for_model(model, info.data_config["input_size"])
    summary = summary if summary is not None else BatchSummary()
    summary.backend = runner.backend
    summary.notes = info.notes
    workers = available_cores() if workers is None else workers
    images = _Images(paths, InputTransform.for_model(info))
    loader = DataLoader(
        images,
        batch_size=batch_size,
        num_workers=min(workers, max(1, len(paths) // batch_size)) if workers else 0,
        collate_fn=_as_list,
    )
    from tqdm.auto import tqdm

    with tqdm(total=len(paths), unit="img", disable=not progress, desc="predict") as bar:
        for batch in loader:
            tensors = [item.tensor for item in batch if item.tensor is not None]
            features, logits = runner.run(torch.stack(tensors)) if tensors else (None, None)
            probs = iter(task.probabilities(logits).numpy() if logits is not None else [])
            pooled = iter(features.numpy() if features is not None else [])
            for item in batch:
                if item.tensor is None:
                    summary.unreadable += 1
                    yield [item.path, *([""] * len(names)), "", "", "", "", item.error]
                    continue
                judged = judge_verdict(info, next(probs), verdict(item.reasons, next(pooled, None), info.ood))
                by_name = task.class_probabilities(judged.probabilities, info.label_names, info.negative_name)
                score = judged.verdict.score
                summary.predicted += 1
                summary.flagged += judged.withheld
                yield [
                    item.path,
                    *(f"{by_name[n]:.6f}" for n in names),
                    "|".join(judged.decided),
                    "" if score is None else f"{score:.3f}",
                    str(int(judged.withheld)),
                    " / ".join((*item.warnings, *judged.verdict.reasons)),
                    "",
                ]
            bar.update(len(batch))


def write_predictions(
    model: nn.Module,
    info: ModelInfo,
    paths: Sequence[Path],
    out: str | Path,
    **options: Any,
) -> BatchSummary:
    """Predict `paths` and write the CSV `python -m trainer predict` writes; options as `predict_rows`.

    Returns:
        The counts, the backend that ran the forward passes and the time taken.
    """
    started = time.perf_counter()
    out = Path(out)
    summary = BatchSummary(out=out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header(info.task, info.label_names, info.negative_name))
        writer.writerows(predict_rows(model, info, paths, summary=summary, **options))
    summary.seconds = time.perf_counter() - started
    log.info("%s: %s", out, summary.line())
    for note in summary.notes:
        log.warning("%s: %s", info.source, note)
    return summary
