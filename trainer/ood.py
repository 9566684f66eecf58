"""Is this an image the model can judge? Image-level checks, a feature-space score, and one verdict per image.

Two layers, combined by `assess`:

1. `image_checks(xray)`: checks that need no model, each with a reason a user understands: blank or
   near-constant pixels (an all-black PNG, an all-NaN TIFF, which the reader turns into zeros), pictures that
   are mostly one flat value (documents, drawings, screenshots), tiny images, extreme aspect ratios, colour
   pictures, and DICOM headers naming another modality (CT, MR, ultrasound, ...) or body part.
2. `FeatureStatistics.score(features)`: the Mahalanobis distance of an image's pooled penultimate features
   (`features_and_logits`), scaled to unit length, from those of the model's training images, higher = less
   like them. The covariance is Ledoit-Wolf shrunk (scikit-learn), since a few hundred training images
   cannot estimate a 1,280-dimensional covariance; the threshold passes `PASS_RATE` (99 %) of the validation
   images.

Why this score (bench/ood.py, docs/benchmarks.md): an energy score on the logits separates the embedded
models' test images from non-chest pictures with an AUROC of only 0.60-0.76 (a binary model has one logit,
so its energy is a function of its one probability and cannot tell a confident "abnormal" on a lion from one
on a chest); the Mahalanobis distance of the features reaches about 0.99. Scaling the features to unit
length first (Mueller & Hein 2025, "Mahalanobis++") removes the feature norm, which varies a lot between
images of one kind: on the embedded models it passed more of their own test images at the same threshold
rule (98-100 % against 95-98 %) and flagged as much of the tuning corpus or more on two of the three.

Stored next to the weights: `ood.safetensors` with the tensors `mean` (D,) float32, `components` (D, R)
float16, `variances` (R,) float32 and `residual_variance` (1,) float32 — the shrunk covariance in the exact
form `U diag(v) U^T + r (I - U U^T)`, R < N training images, a third of a D x D precision matrix in float32
for the embedded models (1.2-1.9 MB) — and in config.json's `chexlab` block (see
`FeatureStatistics.config_entry`)::

    "ood": {"score": "mahalanobis_l2", "file": "ood.safetensors", "threshold": 38.2, "pass_rate": 0.99,
            "n_train": 484, "n_val": 112, "feature_dim": 1280, "shrinkage": 0.31}

A folder without them still loads: `load_statistics` returns None and `assess` runs the image-level checks
only, with `NO_STATISTICS_NOTE`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.errors import ChexlabError
from trainer.io import XRay

log = logging.getLogger(__name__)

OOD_FILE = "ood.safetensors"
CONFIG_KEY = "ood"
SCORE = "mahalanobis_l2"
PASS_RATE = 0.99
NO_STATISTICS_NOTE = (
    "this model carries no statistics of its training images: only the image-level checks ran (blank, tiny, "
    "colour, non-chest DICOM, ...)"
)

# Image-level limits, set against the ~2,300 chest radiographs in ../shared/data (none comes near any of
# them: smallest side 208 px, aspect ratio at most 1.72, 1-99 % intensity spread at least 0.39, at most 45 %
# of the pixels at one 8-bit level, all gray) and the non-chest pictures of bench/ood_corpus.py.
MIN_SIDE = 64
MAX_ASPECT = 2.0
MIN_SPREAD = 0.05
MAX_FLAT_SHARE = 0.7
MAX_CHROMA = 0.08
# DICOM modalities that hold projection radiographs (CR, DX; RG is film), and ones that may (secondary
# capture, other): anything else is not a chest radiograph.
RADIOGRAPH_MODALITIES = ("CR", "DX", "RG", "OT", "SC")
MODALITY_NAMES = {
    "CT": "a CT slice",
    "MR": "an MR image",
    "US": "an ultrasound image",
    "NM": "a nuclear medicine image",
    "PT": "a PET image",
    "MG": "a mammogram",
    "XA": "an angiogram",
    "RF": "a fluoroscopy image",
    "IO": "a dental radiograph",
    "PX": "a dental panoramic radiograph",
    "SEG": "a segmentation",
    "RTDOSE": "a radiotherapy dose map",
    "RTIMAGE": "a radiotherapy image",
    "XC": "an external camera photograph",
    "ES": "an endoscopy image",
    "OP": "an ophthalmic photograph",
    "SM": "a microscopy slide",
}
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG", "RIB", "TORAX", "TORSO")
DICOM_COLOUR = ("RGB", "YBR", "PALETTE")
_CHECK_PIXELS = 1_000_000  # the intensity checks look at about this many pixels of a larger image


class OODError(ChexlabError, ValueError):
    """OOD statistics that cannot be fitted, read or used; the message says why."""


# ------------------------------------------------------------------------------------------ image checks


def image_checks(xray: XRay) -> list[str]:
    """Reasons, in words, why `xray` is not a chest radiograph this model can judge; [] when none applies."""
    pixels = np.asarray(xray.pixels, dtype=np.float32)
    reasons = [*_shape_reasons(*pixels.shape), *_intensity_reasons(pixels)]
    if xray.chroma > MAX_CHROMA:
        reasons.append(
            "this looks like a colour photograph or picture, not a radiograph (radiographs are gray)"
        )
    return reasons + _dicom_reasons(xray)


def _shape_reasons(height: int, width: int) -> list[str]:
    if min(height, width) < MIN_SIDE:
        return [
            f"the image is tiny ({height}x{width} px); a chest radiograph needs at least {MIN_SIDE} px a side"
        ]
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT:
        return [
            f"the image is {ratio:.1f} times as long as it is wide ({height}x{width} px); a chest radiograph "
            f"is roughly square (at most {MAX_ASPECT:g}:1)"
        ]
    return []


def _intensity_reasons(pixels: np.ndarray) -> list[str]:
    step = max(1, math.ceil(math.sqrt(pixels.size / _CHECK_PIXELS)))  # an even subsample of a large image
    values = pixels[::step, ::step]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return ["the image has no readable pixel values (all NaN or infinite)"]
    low, high = np.percentile(values, [1, 99])
    if high - low < MIN_SPREAD:
        return [
            "the image is blank: (nearly) all pixels have the same value, e.g. all black, or a float image "
            "without readable values (NaN)"
        ]
    levels = np.bincount(np.rint(np.clip(values, 0, 1) * 255).astype(np.int64), minlength=256)
    flat = levels.max() / values.size
    if flat > MAX_FLAT_SHARE:
        return [
            f"{flat:.0%} of the image is one flat value, as in a document, a drawing or a screenshot, not a "
            "radiograph"
        ]
    return []


def _dicom_reasons(xray: XRay) -> list[str]:
    if xray.source_format != "dicom":
        return []
    reasons = []
    modality = xray.header.get("modality", "").strip().upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        what = MODALITY_NAMES.get(modality, f"a {modality} image")
        reasons.append(f"the DICOM header says this is {what} (Modality {modality}), not a chest radiograph")
    body_part = xray.header.get("body_part", "").strip().upper()
    if body_part and not any(part in body_part for part in CHEST_BODY_PARTS):
        reasons.append(f"the DICOM header says the body part is {body_part}, not the chest")
    if xray.photometric.upper().startswith(DICOM_COLOUR):
        reasons.append(f"the DICOM holds a colour image ({xray.photometric}); radiographs are grayscale")
    return reasons


# ------------------------------------------------------------------------------------------ features


@torch.no_grad()
def features_and_logits(model: nn.Module, tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled penultimate features (N, D) and logits (N, C) of a timm classifier, from one backbone pass.

    The features are timm's `forward_head(..., pre_logits=True)`: what the classifier layer (or chexlab's mlp
    and dense_bn heads) receives. The model is put in eval mode.
    """
    model.eval()
    features, logits = pooled_features_and_logits(model, tensors)
    return features.float(), logits.float()


def pooled_features_and_logits(model: nn.Module, tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`features_and_logits` without its mode and gradient settings, for graphs that are traced (ONNX)."""
    maps = model.forward_features(tensors)
    return model.forward_head(maps, pre_logits=True), model.forward_head(maps)


def has_pooled_features(model: nn.Module) -> bool:
    """Whether `model` is a timm-style classifier whose pooled features `features_and_logits` can read."""
    return callable(getattr(model, "forward_features", None)) and callable(
        getattr(model, "forward_head", None)
    )


@contextmanager
def captured_features(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the pooled features of every forward pass of `model` while the block runs.

    A forward hook on timm's classifier layer (`get_classifier()`) records its input: in eval mode that is
    exactly `features_and_logits`' features, so any forward (a CAM method's included) also yields them.
    """
    seen: list[torch.Tensor] = []

    def record(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        seen.append(args[0].detach().float().reshape(args[0].shape[0], -1))

    handle = model.get_classifier().register_forward_hook(record)
    try:
        yield seen
    finally:
        handle.remove()


# ------------------------------------------------------------------------------------------ statistics


@dataclass(frozen=True, eq=False)  # eq=False: numpy arrays do not compare to a single bool
class FeatureStatistics:
    """A Gaussian model of the training images' unit-length features, and the score threshold.

    The covariance is `U diag(variances) U^T + residual_variance (I - U U^T)` (U = `components`, D x R,
    orthonormal columns): Ledoit-Wolf's shrunk covariance, exactly, when R is the rank of the sample
    covariance.

    Attributes:
        mean: (D,) mean unit-length training feature.
        components: (D, R) principal directions of the training features.
        variances: (R,) shrunk variances along them.
        residual_variance: the shrunk variance in every other direction.
        threshold: scores above it are flagged (inf: never).
        pass_rate: the share of validation images the threshold passes.
        n_train: training images the statistics were fitted on.
        n_val: validation images the threshold was set on.
        shrinkage: Ledoit-Wolf's shrinkage coefficient.
    """

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    residual_variance: float
    threshold: float = math.inf
    pass_rate: float = PASS_RATE
    n_train: int = 0
    n_val: int = 0
    shrinkage: float = 0.0

    @property
    def feature_dim(self) -> int:
        return int(self.mean.shape[0])

    def score(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Mahalanobis distances (N,) of features (N, D), or of one (D,) vector, from the training features.

        Both are scaled to unit length first.
        """
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if x.shape[1] != self.feature_dim:
            raise OODError(
                f"the features have {x.shape[1]} dimensions but the statistics {self.feature_dim}: they "
                "belong to another model"
            )
        centred = unit_length(x) - self.mean
        projected = centred @ self.components
        residual = np.maximum((centred**2).sum(axis=1) - (projected**2).sum(axis=1), 0.0)
        squared = (projected**2 / self.variances).sum(axis=1) + residual / self.residual_variance
        return np.sqrt(squared)

    def flagged(self, scores: np.ndarray) -> np.ndarray:
        """Whether each score is above the threshold."""
        return np.asarray(scores) > self.threshold

    def with_threshold(self, val_features: np.ndarray, pass_rate: float = PASS_RATE) -> FeatureStatistics:
        """A copy whose threshold passes `pass_rate` of the validation images (their score quantile)."""
        if not 0.0 < pass_rate <= 1.0:
            raise OODError(f"pass_rate must be in (0, 1], got {pass_rate}")
        scores = self.score(val_features)
        if scores.size == 0:
            raise OODError("no validation images to set the OOD threshold on")
        threshold = float(np.quantile(scores, pass_rate, method="higher"))
        return _replace(self, threshold=threshold, pass_rate=pass_rate, n_val=int(scores.size))

    def config_entry(self) -> dict[str, Any]:
        """The `ood` entry of config.json's `chexlab` block."""
        return {
            "score": SCORE,
            "file": OOD_FILE,
            "threshold": float(self.threshold),
            "pass_rate": float(self.pass_rate),
            "n_train": int(self.n_train),
            "n_val": int(self.n_val),
            "feature_dim": self.feature_dim,
            "shrinkage": float(self.shrinkage),
        }

    def save(self, folder: str | os.PathLike) -> Path:
        """Write `ood.safetensors` into `folder` (the model folder); returns its path."""
        from safetensors.numpy import save_file

        path = Path(folder) / OOD_FILE
        tensors = {
            "mean": self.mean.astype(np.float32),
            # float16 halves the file; the scores move by < 0.03 % (bench/ood.py's images: no flag changes).
            "components": np.ascontiguousarray(self.components, dtype=np.float16),
            "variances": self.variances.astype(np.float32),
            "residual_variance": np.array([self.residual_variance], dtype=np.float32),
        }
        save_file(tensors, str(path), metadata={"format": "np", "score": SCORE})
        os.chmod(path, 0o644)
        return path


def fit_statistics(
    train_features: np.ndarray, val_features: np.ndarray | None = None, *, pass_rate: float = PASS_RATE
) -> FeatureStatistics:
    """Fit the training features' shrunk Gaussian, and the threshold on the validation features if given.

    Raises:
        OODError: fewer than two training images, or features that are not a finite (N, D) array.
    """
    from sklearn.covariance import ledoit_wolf_shrinkage

    x = np.asarray(train_features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2 or not np.isfinite(x).all():
        raise OODError(f"need finite features of two or more training images, (N, D); got shape {x.shape}")
    x = unit_length(x)
    mean = x.mean(axis=0)
    centred = x - mean
    shrinkage = float(ledoit_wolf_shrinkage(x))
    # Ledoit-Wolf's covariance is (1 - s) S + s mu I, mu = trace(S) / D, S = centred^T centred / N, rank < N:
    # its eigenvectors are S's, which the SVD of the centred data gives without forming a D x D matrix.
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    sample_variances = singular**2 / len(x)
    keep = sample_variances > 1e-10 * max(float(sample_variances.max()), 1e-300)
    residual = max(shrinkage * float(sample_variances.sum()) / x.shape[1], 1e-12)
    stats = FeatureStatistics(
        mean=mean,
        components=vt[keep].T,
        variances=(1 - shrinkage) * sample_variances[keep] + residual,
        residual_variance=residual,
        n_train=len(x),
        shrinkage=shrinkage,
    )
    return stats if val_features is None else stats.with_threshold(val_features, pass_rate)


def unit_length(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean length (an all-zero row stays zero)."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def load_statistics(folder: str | os.PathLike | None, chexlab: Mapping[str, Any]) -> FeatureStatistics | None:
    """The OOD statistics of a model folder, or None when it has none (an older folder).

    Args:
        folder: the model folder (holding `ood.safetensors`); None when the folder has no such file (e.g. a
            Hub repository without one).
        chexlab: its config.json's `chexlab` block (holding the `ood` entry).

    Raises:
        OODError: an `ood` entry without its file (or the reverse), an unknown score, or a malformed file.
    """
    entry = chexlab.get(CONFIG_KEY)
    name = entry.get("file", OOD_FILE) if isinstance(entry, Mapping) else OOD_FILE
    path = Path(folder) / name if folder is not None else None
    if entry is None:
        if path is not None and path.is_file():
            raise OODError(
                f"{path} is there but config.json has no chexlab.{CONFIG_KEY} entry (its threshold)"
            )
        return None
    if not isinstance(entry, Mapping) or entry.get("score") != SCORE:
        raise OODError(f"config.json's chexlab.{CONFIG_KEY} must name the score {SCORE!r}; got {entry!r}")
    if path is None or not path.is_file():
        raise OODError(f"config.json has an OOD threshold but {name} is missing: copy it with the weights")
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
        stats = FeatureStatistics(
            mean=tensors["mean"].astype(np.float64),
            components=tensors["components"].astype(np.float64),
            variances=tensors["variances"].astype(np.float64),
            residual_variance=float(tensors["residual_variance"][0]),
            threshold=float(entry["threshold"]),
            pass_rate=float(entry.get("pass_rate", PASS_RATE)),
            n_train=int(entry.get("n_train", 0)),
            n_val=int(entry.get("n_val", 0)),
            shrinkage=float(entry.get("shrinkage", 0.0)),
        )
    except (SafetensorError, KeyError, IndexError, TypeError, ValueError, OSError) as exc:
        raise OODError(f"cannot read the OOD statistics in {path}: {exc}; re-export the model") from exc
    dim = stats.feature_dim
    if stats.components.shape[0] != dim or stats.variances.shape != (stats.components.shape[1],):
        raise OODError(f"{path} holds inconsistent shapes; re-export the model")
    return stats


def _replace(stats: FeatureStatistics, **changes: Any) -> FeatureStatistics:
    from dataclasses import replace

    return replace(stats, **changes)


# ------------------------------------------------------------------------------------------ verdict


@dataclass(frozen=True)
class Verdict:
    """Whether one image is out of distribution for a model, and why.

    Attributes:
        score: the feature score (higher = less like the training images); None without statistics or when
            the image never reached the model.
        flagged: True when any reason applies; the model's decision should then be withheld.
        reasons: the image-level reasons, then the score's, in words.
        note: e.g. that the model has no statistics, so only the image-level checks ran.
    """

    score: float | None
    flagged: bool
    reasons: tuple[str, ...]
    note: str | None = None

    @property
    def warning(self) -> str:
        """The reasons as one line (for a CSV `warnings` cell or a UI banner); "" when not flagged."""
        return "; ".join(self.reasons)


SCORE_REASON = (
    "unlike the chest radiographs this model was trained on (OOD score {score:.1f} > {threshold:.1f})"
)


def assess(
    xray: XRay, features: np.ndarray | torch.Tensor | None, stats: FeatureStatistics | None
) -> Verdict:
    """The verdict on one image: the image-level checks, then the feature score when there are statistics.

    Args:
        xray: the image as read.
        features: its pooled features (D,) or (1, D) from `features_and_logits`; None to skip the score.
        stats: the model's statistics (`load_statistics`), None for a folder without them.
    """
    return verdict(image_checks(xray), features, stats)


def verdict(
    reasons: Sequence[str], features: np.ndarray | torch.Tensor | None, stats: FeatureStatistics | None
) -> Verdict:
    """`assess` with the image-level reasons already found (e.g. by a worker process that read the image)."""
    found = list(reasons)
    note = NO_STATISTICS_NOTE if stats is None else None
    score = None
    if stats is not None and features is not None:
        score = float(stats.score(np.asarray(features, dtype=np.float64).reshape(1, -1))[0])
        if score > stats.threshold:
            found.append(SCORE_REASON.format(score=score, threshold=stats.threshold))
    return Verdict(score, bool(found), tuple(found), note)


def assess_batch(
    xrays: Sequence[XRay], features: np.ndarray | torch.Tensor | None, stats: FeatureStatistics | None
) -> list[Verdict]:
    """`assess` for a batch: features (N, D) in the order of `xrays`."""
    rows = [None] * len(xrays) if features is None else np.asarray(features, dtype=np.float64)
    return [assess(xray, row, stats) for xray, row in zip(xrays, rows, strict=True)]
