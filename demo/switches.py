"""The preprocessing switches a demo visitor can flip, and a pipeline in words: importable without torch."""

from __future__ import annotations

from dataclasses import dataclass

from trainer.preprocess import Pipeline

__all__ = ["Toggles", "describe_pipeline"]


@dataclass(frozen=True)
class Toggles:
    """The preprocessing switches a user can flip; `to_pipeline` orders them the way chexlab trains.

    Order: invert (so that bright = dense before any search), crops (so that intensity statistics come from
    the body, not the collimator margins), white balance, CLAHE.
    """

    clahe: bool = False
    clip_limit: float = 2.0
    white_balance: bool = False
    crop_body: bool = False
    crop_lungs: bool = False
    invert: bool = False

    ORDER = ("invert", "crop_body", "crop_lungs", "white_balance", "clahe")

    @classmethod
    def from_pipeline(cls, pipeline: Pipeline) -> Toggles:
        """The switches that reproduce `pipeline` as closely as switches can (other ops have no switch)."""
        ops = {step.op: dict(step.params) for step in pipeline}
        clip = ops.get("clahe", {}).get("clip_limit", cls.clip_limit)
        return cls(clip_limit=float(clip), **{name: name in ops for name in cls.ORDER})

    def to_pipeline(self, base: Pipeline | None = None) -> Pipeline:
        """The pipeline these switches stand for; parameters other than the clip limit come from `base`."""
        params = {step.op: dict(step.params) for step in (base or Pipeline())}
        steps = []
        for name in self.ORDER:
            if getattr(self, name):
                step = {"op": name, **params.get(name, {})}
                if name == "clahe":
                    step["clip_limit"] = self.clip_limit
                steps.append(step)
        return Pipeline.from_list(steps)


def describe_pipeline(pipeline: Pipeline) -> str:
    """A pipeline in words for people, e.g. "crop_body → clahe (clip 2.0)"; "none" when empty."""
    parts = []
    for step in pipeline:
        params = dict(step.params)
        parts.append(f"{step.op} (clip {params['clip_limit']:g})" if step.op == "clahe" else step.op)
    return " → ".join(parts) or "none"
