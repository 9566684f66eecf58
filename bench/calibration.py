"""Calibration of the embedded models: ECE, Brier score and NLL on each test split, before and after.

    python bench/calibration.py     # needs ../shared/data; writes docs/benchmarks.md's "calibration" section

Per embedded model (demo/models/<name>): the calibration (`trainer.calibration.fit_calibration`: one
temperature, plus an offset for sigmoid outputs, per finding for multi-label) is fitted on its validation
split and scored once on its test split, both as bench/gate_data.py reproduces them (single-pass logits, as
`predict` and the demo run). Beside each ECE: the 95th percentile of the ECE a perfectly calibrated model
shows on the same test images (outcomes drawn from the calibrated probabilities 2,000 times, seeded).
Reliability diagrams go to runs/gate/<name>/reliability-test.png.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import gate_data  # noqa: E402
from bench.report import replace_section  # noqa: E402
from trainer.calibration import Calibration, compare_calibration, fit_calibration, probabilities_from_logits  # noqa: E402
from trainer.calibration_plots import plot_reliability  # noqa: E402
from trainer.metrics import evaluate_predictions  # noqa: E402


def model_calibration(name: str) -> tuple[Calibration, dict[str, Any]]:
    """The model's calibration fitted on validation, with before/after metrics and AUCs per split."""
    _, info = gate_data.load(name)
    val = gate_data.outputs(name, "val")
    calibration = fit_calibration(val.logits, val.targets, info.task)
    metrics: dict[str, Any] = {}
    for split in ("val", "test"):
        out = gate_data.outputs(name, split)
        before = probabilities_from_logits(out.logits, info.task)
        after = probabilities_from_logits(calibration.scale_logits(out.logits), info.task)
        report = compare_calibration(before, after, out.targets, info.task)
        for stage, probs in (("before", before), ("after", after)):
            report[stage]["auc"] = _auc(info.task, info.label_names, out.targets, probs)
        metrics[split] = report
        if split == "test":
            title = (
                f"{name}: test split ({len(out.targets)} images), fitted on validation ({len(val.targets)})"
            )
            png = gate_data.OUT / name / "reliability-test.png"
            plot_reliability(before, after, out.targets, info.task, png, title=title,
                             ece_chance=report["ece_chance_95"])  # fmt: skip
    return calibration.with_metrics(metrics), metrics


def _auc(task: str, label_names: list[str], targets: Any, probs: Any) -> float | None:
    headline = evaluate_predictions(task, label_names, targets, probs, None, None, n_bootstrap=0)["headline"]
    return headline["auc"]["value"]


def _parameters(calibration: Calibration) -> str:
    temperatures = ", ".join(f"{t:.2f}" for t in calibration.temperatures)
    if not calibration.offsets:
        return f"T = {temperatures}"
    return f"T = {temperatures}; b = " + ", ".join(f"{b:+.2f}" for b in calibration.offsets)


def section(results: dict[str, tuple[Calibration, dict[str, Any]]]) -> str:
    lines = [
        "## Calibration of the embedded models",
        "",
        "`python bench/calibration.py` — each embedded model's calibration fitted on its validation split "
        "(one temperature T; sigmoid outputs also an offset b, `z / T + b`; multi-label: per finding), "
        "scored on its test split (the fixed patient-wise splits of configs/defaults, single-pass logits). "
        "ECE: 15 equal-width bins (binary and multi-class: top-class probability vs correct; multi-label: "
        "each finding's probability vs its label, pooled). *Chance*: the ECE a perfectly calibrated model "
        "stays under on the same images in 95 % of 2,000 simulated label draws. Brier: binary and pooled "
        "multi-label in [0, 1], multi-class summed over classes in [0, 2]. AUC: binary, macro one-vs-rest, "
        "mean over findings.",
        "",
        "| model | fitted on val | test images | ECE before | ECE after | chance (95 %) "
        "| Brier before → after | NLL before → after | AUC before → after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for name, (calibration, metrics) in results.items():
        test = metrics["test"]
        before, after = test["before"], test["after"]
        within = after["ece"] <= test["ece_chance_95"]
        lines.append(
            f"| {name} | {_parameters(calibration)} ({calibration.n_images} images) | {len(_test(name))} "
            f"| {before['ece']:.3f} | **{after['ece']:.3f}** | {test['ece_chance_95']:.3f} "
            f"| {before['brier']:.3f} → {after['brier']:.3f} | {before['nll']:.3f} → {after['nll']:.3f} "
            f"| {_fmt(before['auc'])} → {_fmt(after['auc'])} |"
        )
        val = metrics["val"]
        notes.append(
            f"- {name}: ECE after {'within' if within else 'outside'} the chance range "
            f"({after['ece']:.3f} vs {test['ece_chance_95']:.3f}); on validation (where it was fitted) "
            f"{val['before']['ece']:.3f} → {val['after']['ece']:.3f}."
        )
    return "\n".join([*lines, "", *notes])


def _test(name: str) -> Any:
    return gate_data.outputs(name, "test").targets


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def main() -> None:
    results = {name: model_calibration(name) for name in gate_data.MODELS}
    replace_section("calibration", section(results))
    print("wrote the calibration section of docs/benchmarks.md")


if __name__ == "__main__":
    main()
