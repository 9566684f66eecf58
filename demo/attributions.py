"""Pixel attributions on Captum: Integrated Gradients and SmoothGrad, beside the CAMs of `demo.cam`.

A CAM says which region of the last feature map mattered (coarse, 7x7 for a 224-px EfficientNet); these say
which *pixels* did, at the input's resolution, by following the gradients of the class score back to the
image. `explain_attribution` follows `demo.cam.explain`'s conventions and returns the same `Explanation`:
the class index per the task's binary convention (1 = positive, 0 = negative, whose score is -logit), the
model's lock held, its mode restored and no gradients left; the heatmap is float32 (H, W) in [0, 1] and goes
through `demo.overlay.overlay` like a CAM. The methods' names and descriptions are in `demo.methods`.

Both methods run the model many times (the step or sample count, in batches of `BATCH`), so they cost about
that many forward and backward passes; see `demo.methods.CPU_SECONDS` for what that means on a CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torchvision.transforms.functional as TF

from demo.cam import Explanation, model_lock
from demo.methods import (
    INTEGRATED_GRADIENTS,
    MAX_STEPS,
    attribution_method,
    baseline_name,
)
from trainer.task import Task, TaskError

logger = logging.getLogger(__name__)

BATCH = 8  # images per forward/backward pass: bounds peak memory whatever the step count
NOISE = 0.15  # SmoothGrad noise, as a fraction of the input's value range (Smilkov et al. 2017: 10-20 %)
HEATMAP_PERCENTILE = 99.0  # pixel attributions are spiky: scale to this percentile, not to the maximum
# Raw pixel attributions are speckle on an overlay; a Gaussian of this sigma (a fraction of the longer side:
# 4 px at 224) makes the regions readable. 0 keeps the raw pixels.
SMOOTHING = 1 / 56


def explain_attribution(
    model: torch.nn.Module,
    input_tensor: torch.Tensor,
    *,
    task: Task | str,
    target_index: int | None = None,
    method: str = INTEGRATED_GRADIENTS,
    steps: int | None = None,
    baseline: str = "black",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    smoothing: float = SMOOTHING,
    seed: int = 0,
) -> Explanation:
    """Predict and explain one image with Integrated Gradients or SmoothGrad.

    Args:
        model: a classifier returning logits (N, C). It runs in eval mode; its previous mode is restored and
            no gradients are left on its parameters. In-place activations are fine (no hooks are used).
        input_tensor: the normalised image, (3, H, W) or (1, 3, H, W).
        task: the model's task; decides the probabilities and the binary class convention.
        target_index: the class to explain; binary: 1 = positive (the logit), 0 = negative (-logit).
            Default: the top class; binary: positive if P >= 0.5.
        method: a key of `demo.methods.ATTRIBUTION_METHODS`.
        steps: Integrated Gradients' path steps or SmoothGrad's noisy samples, 1 to `MAX_STEPS`; default
            the method's `default_steps`.
        baseline: Integrated Gradients' reference image, one of `BASELINES`; "black" needs `mean` and `std`.
        mean, std: the model's input normalisation (`InputSpec.mean/std`), to place black in its input space.
        smoothing: the heatmap's Gaussian sigma as a fraction of the image's longer side; 0 = raw pixels.
        seed: SmoothGrad's noise seed (the caller's random state is left untouched).

    Returns:
        An `Explanation` whose heatmap is float32 (H, W) in [0, 1]: positive attributions (Integrated
        Gradients) or gradient magnitudes (SmoothGrad), summed over the colour channels, smoothed and scaled
        to their 99th percentile; all zeros when nothing raised the score.

    Raises:
        ValueError: unknown method, task or baseline, a bad step count or input shape, target_index out of
            range, a binary model without exactly one logit, or a black baseline without `mean`/`std`.
    """
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency  # here: captum imports matplotlib

    spec = attribution_method(method)
    task = Task.parse(task)
    steps = spec.default_steps if steps is None else steps
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be between 1 and {MAX_STEPS}; got {steps}")
    if not 0.0 <= smoothing <= 0.25:
        raise ValueError(f"smoothing must be between 0 and 0.25 (of the image side); got {smoothing}")
    x = _one_image(input_tensor)
    reference = _baseline_tensor(baseline, x, mean, std) if method == INTEGRATED_GRADIENTS else None
    with model_lock(model):
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                logits = model(x).detach()[0].float()
            index = _target(task, logits, target_index)

            def score(batch: torch.Tensor) -> torch.Tensor:
                # class_score picks from one image's logits (C,); on (C, N) it picks each image's score.
                return task.class_score(model(batch).T, index)

            # The caller may be in inference mode, or have frozen every parameter: the input's own gradient
            # is all that is needed.
            with torch.inference_mode(False), torch.enable_grad():
                inputs = x.clone().requires_grad_(True)
                if reference is not None:
                    raw = IntegratedGradients(score).attribute(
                        inputs, baselines=reference, n_steps=steps, internal_batch_size=BATCH
                    )
                    evidence = raw.detach()[0].sum(0).clamp(min=0)
                else:
                    stdev = NOISE * float(x.max() - x.min())
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(seed)
                        raw = NoiseTunnel(Saliency(score)).attribute(
                            inputs,
                            nt_type="smoothgrad",
                            nt_samples=steps,
                            nt_samples_batch_size=BATCH,
                            stdevs=stdev,
                        )
                    evidence = raw.detach()[0].sum(0)
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)
    heatmap = _scale(evidence.float().cpu().numpy(), smoothing)
    probabilities = logits.softmax(-1) if task.exclusive else logits.sigmoid()
    return Explanation(probabilities.cpu().numpy(), logits.cpu().numpy(), heatmap, index, method)


def _one_image(input_tensor: torch.Tensor) -> torch.Tensor:
    x = input_tensor.unsqueeze(0) if input_tensor.dim() == 3 else input_tensor
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"explain takes one image, (C, H, W) or (1, C, H, W); got shape {list(x.shape)}")
    return x.detach().float()


def _target(task: Task, logits: torch.Tensor, target_index: int | None) -> int:
    """The class to explain, checked against the model's outputs (as `demo.cam` does)."""
    if task.single_logit and logits.shape[-1] != 1:
        raise TaskError(f"a binary model has one logit, this one has {logits.shape[-1]}; use 'multiclass'")
    if target_index is None:
        return task.default_class_index(logits)
    valid = task.num_explainable(logits.shape[-1])
    if not 0 <= target_index < valid:
        raise TaskError(f"target_index {target_index} out of range for a {task} model; valid: 0-{valid - 1}")
    return target_index


def _baseline_tensor(
    baseline: str, x: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None
) -> torch.Tensor:
    if baseline_name(baseline) == "blurred":
        # A blur over about a tenth of the image keeps the overall anatomy and removes what is fine.
        sigma = max(x.shape[-2:]) / 20
        size = 2 * int(2 * sigma) + 1
        return TF.gaussian_blur(x, [size, size], [sigma, sigma])
    if mean is None or std is None:
        raise ValueError("a black baseline needs the model's input mean and std (its InputSpec)")
    black = [-m / s for m, s in zip(mean, std, strict=True)]  # (0 - mean) / std, per channel
    if len(black) != x.shape[1]:
        raise ValueError(f"mean/std have {len(black)} channels, the input {x.shape[1]}")
    return torch.tensor(black, dtype=x.dtype).view(1, -1, 1, 1).expand_as(x).contiguous()


def _scale(evidence: np.ndarray, smoothing: float) -> np.ndarray:
    """float32 (H, W) in [0, 1]: smoothed, divided by a high percentile of the positive values, clipped."""
    evidence = np.nan_to_num(evidence, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
    if smoothing > 0:
        evidence = cv2.GaussianBlur(evidence, (0, 0), sigmaX=smoothing * max(evidence.shape))
    positive = evidence[evidence > 0]
    if positive.size == 0:
        logger.debug("no positive attribution: the heatmap is all zeros")
        return np.zeros(evidence.shape, dtype=np.float32)
    top = float(np.percentile(positive, HEATMAP_PERCENTILE))
    return np.clip(evidence / top, 0.0, 1.0).astype(np.float32)
