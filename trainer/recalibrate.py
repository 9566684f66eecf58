"""`python -m trainer calibrate RUN_DIR|MODEL --data CONFIG --out DIR`: refit a model's calibration on
labelled data of one's own site, re-choose its thresholds there, and write a new model folder.

The weights, the preprocessing and the OOD statistics are kept; the calibration (temperature scaling, as at
the end of `fit`) is fitted on the model's raw outputs for the given images, and the decision thresholds are
chosen on the newly calibrated probabilities by the data config's `eval.threshold` rule. The input folder is
never modified. The new folder's config.json records what the calibration was fitted on and its before/after
ECE, Brier and NLL on that data ("before": the model as it was, with its old calibration).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.calibration import Calibration, calibrate, compare_calibration
from trainer.config import load_config
from trainer.errors import ChexlabError
from trainer.evaluate import labelled_split, table_outputs
from trainer.export import save_pretrained
from trainer.metrics import choose_thresholds
from trainer.model_source import SourceKind
from trainer.trust import RELIABILITY_PNG, summary_lines, write_reliability

log = logging.getLogger(__name__)


class RecalibrationError(ChexlabError, ValueError):
    """An output folder that would overwrite the model being recalibrated."""


@dataclass(frozen=True)
class Recalibrated:
    """What `recalibrate` wrote: the new folder, its calibration (with before/after metrics), thresholds."""

    out: Path
    calibration: Calibration
    thresholds: list[float]
    split: str

    def lines(self) -> list[str]:
        """Before/after ECE, Brier and NLL on the data, and the thresholds, for the console."""
        temperatures = ", ".join(f"{t:.3f}" for t in self.calibration.temperatures)
        fitted = f"calibration fitted on {self.calibration.fitted_on}: temperature(s) {temperatures}"
        lines = [fitted, *summary_lines({"calibration": self.calibration.to_dict()})]
        if self.thresholds:
            lines.append("thresholds: " + ", ".join(f"{t:.3f}" for t in self.thresholds))
        return lines


def recalibrate(
    source: str,
    *,
    data: str,
    out_dir: str | Path,
    split: str = "val",
    overrides: list[str] | None = None,
) -> Recalibrated:
    """Refit the calibration and thresholds of `source` on the labelled images of `data`; save a new folder.

    Args:
        source: a run folder, a model folder, local-dir:PATH or hf-hub:org/name.
        data: a config YAML whose `data:` section names the labelled images (and whose `eval:` section the
            threshold rule).
        out_dir: the new model folder (must not be the source's).
        split: train | val | test | all of the data's saved split (`data.split_file`); all images when the
            data has none.
        overrides: `data.key=value` overrides of the data config.

    Raises:
        RecalibrationError: `out_dir` is the source's own folder.
    """
    out = Path(out_dir)
    scored = labelled_split(source, data=data, split=split, overrides=overrides)
    info, part = scored.info, scored.part
    if info.source.kind is SourceKind.LOCAL and out.resolve() == info.source.path.resolve():
        raise RecalibrationError(f"--out {out} is the model's own folder: choose a new folder")
    raw, _ = table_outputs(scored.model, info, part)
    fitted_on = f"{scored.data.name or Path(scored.data.root).name} ({scored.split}, {len(part)} images)"
    new = calibrate(raw, part.targets, info.task, fitted_on=fitted_on)
    calibrated = new.apply(raw, info.task)
    metrics = compare_calibration(info.calibrated(raw), calibrated, part.targets, info.task)
    new = new.with_metrics({scored.split: metrics})
    evaluation = load_config(data, overrides).eval
    thresholds = choose_thresholds(
        info.task,
        part.targets,
        calibrated,
        method=evaluation.threshold,
        target_sensitivity=evaluation.target_sensitivity,
    )
    dtype = (
        torch.float16 if info.config.get("chexlab", {}).get("weights_dtype") == "float16" else torch.float32
    )
    save_pretrained(
        scored.model,
        out,
        task=info.task,
        label_names=info.label_names,
        pipeline=info.pipeline,
        thresholds=thresholds,
        negative_name=info.negative_name,
        input_size=info.data_config["input_size"],
        metrics_summary=info.metrics,
        data_summary=info.training_data,
        dtype=dtype,
        calibration=new,
        ood=info.ood,
    )
    write_reliability(
        new,
        raw,
        part.targets,
        info.task,
        out / "plots" / RELIABILITY_PNG,
        scored.split,
    )
    result = Recalibrated(out, new, thresholds, scored.split)
    for line in result.lines():
        log.info("%s", line)
    return result
