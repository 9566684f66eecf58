"""trainer.ood: image checks on real files, the feature score on a trained tiny model, the stored form."""

from __future__ import annotations

import io
import json
import sysconfig
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image, ImageDraw
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

from tests.synthetic import radiograph
from trainer.errors import ChexlabError
from trainer.export import save_pretrained
from trainer.inference import InputTransform
from trainer.io import XRay, XRayWarning, load_xray
from trainer.modeling import HeadConfig, create_classifier
from trainer.ood import (
    CONFIG_KEY,
    NO_STATISTICS_NOTE,
    OOD_FILE,
    OODError,
    Verdict,
    assess,
    assess_batch,
    features_and_logits,
    fit_statistics,
    image_checks,
    load_statistics,
    unit_length,
)
from trainer.preprocess import Pipeline
from trainer.transforms import InputSpec

SITE = Path(sysconfig.get_paths()["purelib"])
DICOMS = SITE / "data_store" / "data"  # pydicom-data
LION = SITE / "gradio" / "media_assets" / "images" / "lion.jpg"
SPEC = InputSpec(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _chest(seed: int, opacity: bool = False, size: int = 96) -> bytes:
    return _png(radiograph(np.random.default_rng(seed), size=size, opacity=opacity))


def _text_page() -> bytes:
    page = Image.new("L", (600, 800), 250)
    draw = ImageDraw.Draw(page)
    for row in range(30):
        draw.text((30, 20 + 25 * row), "the report of the examination is attached " * 2, fill=10)
    return _png(np.asarray(page))


def _nan_tiff() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((128, 128), np.nan, dtype=np.float32), mode="F").save(buffer, format="TIFF")
    return buffer.getvalue()


def _read(source: Path | bytes) -> XRay:
    """load_xray without its notes on colour conversion and MONOCHROME1 inversion (tested in test_io)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", XRayWarning)
        return load_xray(source)


def _dicom(name: str) -> Path:
    path = DICOMS / name
    if not path.is_file():
        pytest.skip(f"pydicom-data's {name} is not installed")
    return path


# ------------------------------------------------------------------------------------------ image checks


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: _png(np.zeros((512, 512), np.uint8)), "the image is blank"),
        (lambda: _png(np.full((1, 1), 200, np.uint8)), "the image is tiny (1x1 px)"),
        (_nan_tiff, "the image is blank"),
        (
            lambda: _png(np.random.default_rng(0).integers(0, 255, (300, 1000), dtype=np.uint8)),
            "3.3 times as long",
        ),
        (_text_page, "one flat value, as in a document"),
        (lambda: LION, "colour photograph"),
        (lambda: _dicom("MR2_UNCR.dcm"), "this is an MR image (Modality MR)"),
        (lambda: _dicom("RG3_UNCR.dcm"), "the body part is EXTREMITY, not the chest"),
        (lambda: _dicom("US1_UNCR.dcm"), "an ultrasound image"),
        (lambda: _dicom("693_UNCR.dcm"), "a CT slice"),
    ],
)
def test_image_checks_name_what_is_wrong(make, expected: str) -> None:
    reasons = image_checks(_read(make()))
    assert any(expected in reason for reason in reasons), reasons


def test_chest_radiographs_pass_the_image_checks() -> None:
    assert image_checks(load_xray(_chest(0))) == []
    chest = _read(_dicom("RG1_UNCR.dcm"))  # the real CR chest radiograph pydicom-data ships
    assert chest.header["body_part"] == "CHEST" and image_checks(chest) == []


def test_the_reader_measures_colour() -> None:
    assert _read(LION).chroma > 0.1
    gray = np.asarray(Image.open(LION).convert("L"))
    assert load_xray(_png(gray)).chroma == 0.0
    assert load_xray(_png(np.stack([gray] * 3, axis=-1))).chroma == 0.0  # RGB with equal channels


# ------------------------------------------------------------------------------------------ features


@pytest.mark.parametrize(
    "head", [HeadConfig(), HeadConfig(type="mlp", widths=[32]), HeadConfig(type="dense_bn")]
)
def test_features_and_logits_for_every_head(head: HeadConfig) -> None:
    torch.manual_seed(0)
    model = create_classifier("test_efficientnet", 3, head=head).eval()
    x = torch.randn(2, 3, 64, 64)
    features, logits = features_and_logits(model, x)
    assert features.shape == (2, model.num_features)
    assert torch.allclose(logits, model(x), atol=1e-6)


def test_features_and_logits_for_the_simple_cnn_and_efficientnet_lite() -> None:
    for arch in ("chexlab_simple_cnn", "tf_efficientnet_lite0"):
        model = timm.create_model(arch, num_classes=1).eval()
        features, logits = features_and_logits(model, torch.randn(1, 3, 64, 64))
        assert features.shape == (1, model.num_features) and logits.shape == (1, 1)


# ------------------------------------------------------------------------------------------ statistics


def test_the_score_is_ledoit_wolf_mahalanobis_of_unit_length_features() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(40, 60)) @ rng.normal(size=(60, 60)) + 2.0
    query = rng.normal(size=(7, 60)) * 3.0
    stats = fit_statistics(train)
    expected = np.sqrt(LedoitWolf().fit(unit_length(train)).mahalanobis(unit_length(query)))
    assert stats.score(query) == pytest.approx(expected, rel=1e-9)
    assert stats.components.shape == (60, 39)  # rank N - 1, not a 60 x 60 matrix


def test_the_threshold_passes_the_asked_share_of_validation_images() -> None:
    rng = np.random.default_rng(1)
    stats = fit_statistics(rng.normal(size=(300, 20)), rng.normal(size=(200, 20)), pass_rate=0.9)
    val = rng.normal(size=(200, 20))
    assert stats.n_val == 200 and stats.pass_rate == 0.9
    assert 0.8 < np.mean(~stats.flagged(stats.score(val))) < 0.97  # fresh draws, so not exactly 0.9
    with pytest.raises(OODError, match="20 dimensions but the statistics"):
        fit_statistics(rng.normal(size=(5, 3))).score(val)
    with pytest.raises(OODError, match="two or more training images"):
        fit_statistics(rng.normal(size=(1, 3)))


def _batch(seeds: range) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs of synthetic radiographs (odd seeds abnormal) and their labels."""
    tensors = [
        InputTransform(Pipeline(), SPEC)(load_xray(_chest(s, opacity=s % 2 == 1)).pixels).tensor
        for s in seeds
    ]
    return torch.stack(tensors), torch.tensor([float(s % 2) for s in seeds])


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, object]:
    """A chexlab_simple_cnn trained for a few epochs on synthetic radiographs, and its fitted statistics."""
    torch.manual_seed(0)
    model = create_classifier("chexlab_simple_cnn", 1)

    train_x, train_y = _batch(range(0, 192))  # more images than feature dimensions (128)
    val_x, _ = _batch(range(1000, 1030))
    # Two gentle epochs (clipped): the model separates the classes (AUC 1) while its features stay those of
    # a radiograph model; training on to a near-zero loss collapses them onto a few directions.
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        model.train()
        for start in range(0, len(train_x), 16):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                model(train_x[start : start + 16])[:, 0], train_y[start : start + 16]
            )
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
    train_features, _ = features_and_logits(model, train_x)
    val_features, _ = features_and_logits(model, val_x)
    return model, fit_statistics(train_features.numpy(), val_features.numpy())


def _verdict(tiny, source) -> Verdict:
    model, stats = tiny
    xray = _read(source)
    features, _ = features_and_logits(model, InputTransform(Pipeline(), SPEC)(xray.pixels).tensor[None])
    return assess(xray, features, stats)


def test_a_trained_tiny_model_passes_its_own_kind_of_images(tiny) -> None:
    model, _ = tiny
    seeds = range(2000, 2030)
    inputs, labels = _batch(seeds)
    _, logits = features_and_logits(model, inputs)
    assert roc_auc_score(labels.numpy(), logits[:, 0].numpy()) > 0.9  # it did learn the task
    verdicts = [_verdict(tiny, _chest(seed, opacity=seed % 2 == 1)) for seed in seeds]
    assert np.mean([not v.flagged for v in verdicts]) >= 0.9
    assert all(v.score is not None and v.note is None for v in verdicts)


def test_a_trained_tiny_model_flags_noise_and_a_photograph_by_their_features(tiny) -> None:
    noise = _verdict(tiny, _png(np.random.default_rng(5).integers(0, 255, (96, 96), dtype=np.uint8)))
    gray_lion = _verdict(tiny, _png(np.asarray(Image.open(LION).convert("L"))))  # no colour to give it away
    _, stats = tiny
    for verdict in (noise, gray_lion):
        assert verdict.flagged and verdict.score > stats.threshold
        assert verdict.reasons[-1].startswith("unlike the chest radiographs this model was trained on")
    lion = _verdict(tiny, LION)
    assert "colour photograph" in lion.warning and lion.score > stats.threshold


def test_without_statistics_only_the_image_checks_run_with_a_note() -> None:
    black = assess(load_xray(_png(np.zeros((256, 256), np.uint8))), None, None)
    assert black.flagged and black.score is None and black.note == NO_STATISTICS_NOTE
    chest = assess(load_xray(_chest(3)), np.zeros(8), None)
    assert (
        not chest.flagged and chest.reasons == () and chest.warning == "" and chest.note == NO_STATISTICS_NOTE
    )
    batch = assess_batch([load_xray(_chest(4)), load_xray(_chest(5))], None, None)
    assert [v.flagged for v in batch] == [False, False]


# ------------------------------------------------------------------------------------------ stored form


def test_statistics_round_trip_through_a_model_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    stats = fit_statistics(rng.normal(size=(30, 16)), rng.normal(size=(20, 16)))
    model = create_classifier("test_efficientnet", 1)
    folder = save_pretrained(model, tmp_path / "model", task="binary", label_names=["abnormal"],
                             pipeline=[], thresholds=[0.5], negative_name="normal")  # fmt: skip
    assert load_statistics(folder, {}) is None  # an older folder: no statistics, not an error
    stats.save(folder)
    config = json.loads((folder / "config.json").read_text())
    config["chexlab"][CONFIG_KEY] = stats.config_entry()
    chexlab = json.loads(json.dumps(config))["chexlab"]
    assert chexlab[CONFIG_KEY]["file"] == OOD_FILE and chexlab[CONFIG_KEY]["score"] == "mahalanobis_l2"
    back = load_statistics(folder, chexlab)
    assert back is not None and back.threshold == pytest.approx(stats.threshold)
    query = rng.normal(size=(5, 16))
    assert back.score(query) == pytest.approx(stats.score(query), rel=1e-3)  # float16 components on disk
    assert (folder / OOD_FILE).stat().st_mode & 0o777 == 0o644


def test_inconsistent_statistics_are_refused_with_a_reason(tmp_path: Path) -> None:
    stats = fit_statistics(np.random.default_rng(3).normal(size=(10, 4)), np.zeros((3, 4)))
    entry = stats.config_entry()
    with pytest.raises(OODError, match="is missing: copy it with the weights") as caught:
        load_statistics(tmp_path, {CONFIG_KEY: entry})
    assert isinstance(caught.value, ChexlabError)
    stats.save(tmp_path)
    with pytest.raises(OODError, match="has no chexlab.ood entry"):
        load_statistics(tmp_path, {})
    with pytest.raises(OODError, match="must name the score 'mahalanobis_l2'"):
        load_statistics(tmp_path, {CONFIG_KEY: {**entry, "score": "energy"}})
    (tmp_path / OOD_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(OODError, match="cannot read the OOD statistics"):
        load_statistics(tmp_path, {CONFIG_KEY: entry})
