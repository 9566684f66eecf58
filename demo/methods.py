"""The explanation methods the demo offers, by name, with what each shows and costs: the menus' vocabulary.

Importable without torch (the page is served before the models load, see app.py); `demo.cam` computes the
CAMs and `demo.attributions` the pixel attributions.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

# method name -> its class in pytorch_grad_cam (imported when a method other than Grad-CAM is first used)
CAM_METHODS: MappingProxyType[str, str] = MappingProxyType(
    {
        "Grad-CAM": "GradCAM",  # computed by demo.cam at the cost of a forward pass (`_grad_cam`)
        "Grad-CAM++": "GradCAMPlusPlus",
        "HiResCAM": "HiResCAM",
        "LayerCAM": "LayerCAM",
        "EigenCAM": "EigenCAM",  # class-agnostic: the same map whatever the target
        "XGrad-CAM": "XGradCAM",
        "Score-CAM": "ScoreCAM",
        "Ablation-CAM": "AblationCAM",
    }
)
SLOW_METHODS: MappingProxyType[str, str] = MappingProxyType(
    {
        "Score-CAM": "runs the model once per feature channel (often 1,000+): minutes on a CPU",
        "Ablation-CAM": "runs the model once per ablated feature channel (often 1,000+): minutes on a CPU",
    }
)
INTEGRATED_GRADIENTS = "Integrated Gradients"
SMOOTHGRAD = "SmoothGrad"
BASELINES = ("black", "blurred")  # Integrated Gradients only; SmoothGrad has no baseline
MAX_STEPS = 128  # bounds the time and memory a public demo spends on one image


@dataclass(frozen=True)
class AttributionMethod:
    """One attribution method: its default step count and what it shows, in words for the UI."""

    name: str
    default_steps: int
    shows: str
    steps_mean: str


ATTRIBUTION_METHODS: MappingProxyType[str, AttributionMethod] = MappingProxyType(
    {
        INTEGRATED_GRADIENTS: AttributionMethod(
            INTEGRATED_GRADIENTS,
            32,
            "which pixels raised the class score, compared with a baseline image: the gradients are added up "
            "along a straight path from the baseline to this image, so the bright pixels together account "
            "for the score's difference between the two",
            "steps along the path",
        ),
        SMOOTHGRAD: AttributionMethod(
            SMOOTHGRAD,
            16,
            "where the class score is most sensitive to small changes of the pixels, averaged over noisy "
            "copies of the image to remove gradient noise; it does not say whether a pixel speaks for or "
            "against the class",
            "noisy copies",
        ),
    }
)
BASELINE_TEXT = MappingProxyType(
    {
        "black": "an all-black image (no X-ray signal): bright, dense areas such as bone stand out more",
        "blurred": "a blurred copy of this image: only fine detail (edges, texture) is attributed",
    }
)
# CPU seconds on one core (process time, torch.set_num_threads(1), median of 3) for one explanation of the
# embedded nih-binary model (EfficientNet-Lite0, 224 px) at the default step counts; Grad-CAM takes 0.2 s and
# a plain forward pass 0.06 s on the same core. Both methods scale linearly with the step count.
CPU_SECONDS: MappingProxyType[str, float] = MappingProxyType({INTEGRATED_GRADIENTS: 4.4, SMOOTHGRAD: 2.2})


def describe(method: str, *, steps: int | None = None, baseline: str = "black") -> str:
    """What a method shows, its baseline and step count, and its CPU time: the UI's text beside it."""
    spec = attribution_method(method)
    steps = spec.default_steps if steps is None else steps
    parts = [f"**{spec.name}** shows {spec.shows}."]
    if method == INTEGRATED_GRADIENTS:
        parts.append(f"Baseline: {BASELINE_TEXT[baseline_name(baseline)]}.")
    seconds = CPU_SECONDS[method] * steps / spec.default_steps
    parts.append(
        f"{steps} {spec.steps_mean}, so {steps} forward and backward passes of the model: about "
        f"{max(seconds, 0.1):.1f} s on one CPU core for a 224-px EfficientNet-Lite0 (a Grad-CAM takes 0.2 s)."
    )
    return " ".join(parts)


# Every heatmap method the demo offers: the CAMs, then the pixel attributions (Captum).
EXPLANATION_METHODS: tuple[str, ...] = (*CAM_METHODS, *ATTRIBUTION_METHODS)


def attribution_method(method: str) -> AttributionMethod:
    """The method called `method`; ValueError naming the valid ones otherwise."""
    if method not in ATTRIBUTION_METHODS:
        raise ValueError(f"unknown attribution method {method!r}; valid: {', '.join(ATTRIBUTION_METHODS)}")
    return ATTRIBUTION_METHODS[method]


def baseline_name(baseline: str) -> str:
    """`baseline` if Integrated Gradients knows it; ValueError naming the valid ones otherwise."""
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; valid: {', '.join(BASELINES)}")
    return baseline
