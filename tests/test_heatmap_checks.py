"""demo.heatmap_checks: the map's share on the lungs, and the score drop when its top 20 % is removed."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from torch import nn

import trainer.modeling  # noqa: F401  (registers chexlab_simple_cnn with timm)
from demo.cam import explain, prepare_for_cam
from demo.heatmap_checks import check_heatmap, deletion_check, impute_linear, lung_share
from tests.synthetic import radiograph
from trainer.calibration import Calibration
from trainer.inference import InputTransform
from trainer.preprocess import Pipeline, find_lungs
from trainer.transforms import InputSpec

SIZE = 256


def _chest() -> np.ndarray:
    return radiograph(np.random.default_rng(0), size=SIZE).astype(np.float32) / 255.0


def _blob(cy: float, cx: float, size: int = SIZE, sigma: float = 0.04) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2)).astype(np.float32)


def test_a_map_on_a_lung_scores_near_one_and_a_map_on_a_corner_near_zero() -> None:
    image = _chest()
    on_lung = lung_share(image, _blob(0.5, 0.32))  # the synthetic left lung's centre
    corner = lung_share(image, _blob(0.06, 0.06))
    assert on_lung.share is not None and on_lung.share > 0.99
    assert corner.share is not None and corner.share < 0.01
    box, _ = find_lungs(image)
    assert box is not None and on_lung.area == pytest.approx(box.area / image.size)
    even = lung_share(image, np.ones((7, 7)))  # a coarse CAM grid, resized to the image
    assert even.share == pytest.approx(even.area, abs=0.02)


def test_no_lungs_or_an_empty_map_give_no_share_and_say_why() -> None:
    noise = np.random.default_rng(1).random((SIZE, SIZE)).astype(np.float32)
    result = lung_share(noise, _blob(0.5, 0.5))
    assert result.share is None and result.area is None and result.note.startswith("no lungs found (")
    empty = lung_share(_chest(), np.zeros((SIZE, SIZE)))
    assert empty.share is None and empty.note == "the heatmap is empty"


class RegionModel(nn.Module):
    """A binary classifier whose only evidence is the mean brightness of one region (rows, cols)."""

    def __init__(self, rows: slice, cols: slice) -> None:
        super().__init__()
        self.rows, self.cols = rows, cols

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 8.0 * x[:, :1, self.rows, self.cols].mean(dim=(1, 2, 3))[:, None]


EVIDENCE = (slice(16, 48), slice(8, 24))  # 12.5 % of a 64 x 64 image


def _input() -> tuple[torch.Tensor, np.ndarray]:
    """A dark 64 x 64 image (-1 normalised) that is bright (+1) on the evidence region; its indicator map."""
    x = -torch.ones(3, 64, 64)
    x[:, EVIDENCE[0], EVIDENCE[1]] = 1.0
    region = np.zeros((64, 64), dtype=np.float32)
    region[EVIDENCE] = 1.0
    return x, region


def test_removing_the_evidence_drops_the_score_and_removing_elsewhere_does_not() -> None:
    model = RegionModel(*EVIDENCE).eval()
    x, region = _input()
    on = deletion_check(model, x, region + 0.01, task="binary", target_index=1)
    assert on.before == pytest.approx(torch.sigmoid(torch.tensor(8.0)).item(), rel=1e-6)
    assert on.after is not None and on.after < 0.01 and on.drop is not None and on.drop > 0.98
    elsewhere = np.zeros((64, 64), dtype=np.float32)
    elsewhere[:, 40:] = 1.0
    off = deletion_check(model, x, elsewhere, task="binary", target_index=1)
    assert off.drop == pytest.approx(0.0, abs=1e-6)
    # The negative class of the same model: removing the evidence for "abnormal" raises P(normal).
    negative = deletion_check(model, x, region, task="binary", target_index=0)
    assert (
        negative.before == pytest.approx(1 - on.before)
        and negative.drop is not None
        and negative.drop < -0.98
    )
    # With the model's temperature the probabilities are the calibrated ones.
    calibrated = Calibration((4.0,), (-0.5,), method="temperature+offset")
    warm = deletion_check(model, x, region, task="binary", target_index=1, calibration=calibrated)
    assert warm.before == pytest.approx(torch.sigmoid(torch.tensor(8.0 / 4.0 - 0.5)).item(), rel=1e-6)


def test_exactly_the_top_fraction_is_removed_even_when_the_map_is_mostly_zero() -> None:
    # The map is non-zero on 12.5 % of the pixels only; the other 7.5 % removed are the first zeros in raster
    # order (top rows), so a model looking at the bottom rows is untouched. A percentile threshold at 0 would
    # remove the whole image.
    x, region = _input()
    bottom = RegionModel(slice(56, 64), slice(0, 64)).eval()
    x[:, 56:, :] = 0.5
    check = deletion_check(bottom, x, region, task="binary", target_index=1)
    assert check.after == pytest.approx(check.before, abs=1e-6)
    assert deletion_check(bottom, x, np.zeros((8, 8)), task="binary", target_index=1).after is None


def test_multiclass_uses_the_softmax_probability_of_the_explained_class() -> None:
    class TwoClass(RegionModel):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            score = super().forward(x)
            return torch.cat([score, -score, torch.zeros_like(score)], dim=1)

    x, region = _input()
    check = deletion_check(TwoClass(*EVIDENCE).eval(), x, region, task="multiclass", target_index=0)
    assert check.before == pytest.approx(torch.softmax(torch.tensor([8.0, -8.0, 0.0]), 0)[0].item())
    assert check.drop is not None and check.drop > 0.9


def test_bad_arguments_are_refused() -> None:
    model = RegionModel(*EVIDENCE).eval()
    x, region = _input()
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\)"):
        deletion_check(model, x, region, task="binary", target_index=1, fraction=1.0)
    with pytest.raises(ValueError, match="takes one image"):
        deletion_check(model, torch.stack([x, x]), region, task="binary", target_index=1)
    with pytest.raises(ValueError, match="a heatmap is 2-D"):
        lung_share(_chest(), np.zeros((2, 3, 4)))


def test_checks_on_a_real_grad_cam_of_a_timm_model() -> None:
    torch.manual_seed(0)
    model = prepare_for_cam(timm.create_model("chexlab_simple_cnn", num_classes=1).eval())
    spec = InputSpec(128, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    prepared = InputTransform(Pipeline(), spec)(_chest())
    explanation = explain(model, prepared.tensor, task="binary", target_index=1)
    result = check_heatmap(
        model, prepared.image, prepared.tensor, explanation.heatmap, task="binary", target_index=1
    )
    assert result.lungs.area is not None and 0.2 < result.lungs.area < 0.8
    if explanation.heatmap.any():
        assert result.lungs.share is not None and 0.0 <= result.lungs.share <= 1.0
        assert result.deletion.after is not None and 0.0 <= result.deletion.after <= 1.0
    assert result.deletion.before == pytest.approx(float(explanation.probabilities[0]), abs=1e-5)


# pytorch-grad-cam's own imputer hands a tensor to numpy, which warns; the warning is theirs.
@pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")
@pytest.mark.parametrize("shape", [(3, 40, 56), (1, 17, 9)])
def test_the_linear_imputation_equals_pytorch_grad_cams_road_imputer(shape: tuple[int, int, int]) -> None:
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    rng = np.random.default_rng(3)
    image = rng.normal(size=shape).astype(np.float32)
    removed = rng.random(shape[1:]) < 0.3
    removed[:4, :4] = True  # a corner block: border pixels lose the weight of their missing neighbours
    theirs = NoisyLinearImputer(noise=0.0)(
        torch.from_numpy(image), torch.from_numpy((~removed).astype(np.float32))
    )
    ours = impute_linear(image, removed)
    assert ours.dtype == np.float32 and np.abs(ours - theirs.numpy()).max() < 1e-5
    assert np.array_equal(ours[:, ~removed], image[:, ~removed])  # known pixels are untouched
    assert np.array_equal(impute_linear(image, np.zeros(shape[1:], dtype=bool)), image)
    with pytest.raises(ValueError, match="nothing to impute them from"):
        impute_linear(image, np.ones(shape[1:], dtype=bool))


def test_the_explanations_logits_give_the_same_check_without_the_extra_forward() -> None:
    calls = []

    class Counting(RegionModel):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[0])
            return super().forward(x)

    model = Counting(*EVIDENCE).eval()
    x, region = _input()
    fresh = deletion_check(model, x, region, task="binary", target_index=1)
    assert len(calls) == 2
    reused = deletion_check(model, x, region, task="binary", target_index=1, logits=model(x[None])[0])
    assert len(calls) == 4  # the call above, and only the imputed image inside the check
    assert reused == fresh
