"""Tests for trainer.preprocess (ops, crop boxes, Pipeline) and trainer.contact_sheet."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import shared_path
from trainer import preprocess as pp
from trainer.contact_sheet import UnreadableInputsError, contact_sheet, preprocess_files
from trainer.io import load_xray
from trainer.preprocess import (
    OPS,
    Box,
    Pipeline,
    PreprocessError,
    PreprocessWarning,
    body_box,
    clahe,
    crop_lungs,
    describe_ops,
    invert,
    lung_box,
    resize,
    white_balance,
)

# ----------------------------------------------------------------------------------------- synthetic data


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - cy * h) / (ry * h)) ** 2 + ((xx - cx * w) / (rx * w)) ** 2 < 1


LUNGS = ((0.45, 0.31, 0.24, 0.12), (0.45, 0.69, 0.24, 0.12))  # (cy, cx, ry, rx) as fractions of the body


def synthetic_cxr(size: int = 256, seed: int = 0) -> np.ndarray:
    """A bright body ellipse on black, two dark lung ellipses, a bright mediastinum/spine between them."""
    rng = np.random.default_rng(seed)
    h = w = size
    image = np.zeros((h, w), dtype=np.float32)
    body = _ellipse(h, w, 0.55, 0.5, 0.52, 0.45)
    image[body] = 0.7
    for cy, cx, ry, rx in LUNGS:
        image[_ellipse(h, w, cy, cx, ry, rx)] = 0.3
    yy, xx = np.mgrid[0:h, 0:w]
    image[(np.abs(xx - w / 2) < 0.05 * w) & body] = 0.9
    image += rng.normal(0.0, 0.005, image.shape).astype(np.float32)  # quantum noise left after downscaling
    return np.clip(image, 0.0, 1.0)


def lung_bounds(size: int = 256, offset: tuple[int, int] = (0, 0)) -> Box:
    """The bounding box of the synthetic lungs."""
    mask = np.zeros((size, size), dtype=bool)
    for cy, cx, ry, rx in LUNGS:
        mask |= _ellipse(size, size, cy, cx, ry, rx)
    ys, xs = np.nonzero(mask)
    return Box(ys.min() + offset[0], xs.min() + offset[1], ys.max() + 1 + offset[0], xs.max() + 1 + offset[1])


def framed_cxr(size: int = 256, border: int = 48) -> np.ndarray:
    """synthetic_cxr on a wider black frame, with a burned-in text label in a corner outside the body."""
    inner = synthetic_cxr(size)
    image = np.zeros((size + 2 * border, size + 2 * border), dtype=np.float32)
    image[border : border + size, border : border + size] = inner
    label = image[8:30, 8:70]
    label[:] = 0.15
    label[4:18, 4:58:6] = 1.0  # letter strokes
    return image


def contains(outer: Box, inner: Box) -> bool:
    return (
        outer.top <= inner.top
        and outer.left <= inner.left
        and outer.bottom >= inner.bottom
        and outer.right >= inner.right
    )


def noise_image(size: int = 256, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((size, size), dtype=np.float32)


# ----------------------------------------------------------------------------------------- crop boxes


def test_body_box_contains_body_and_drops_frame_and_label() -> None:
    size, border = 256, 48
    image = framed_cxr(size, border)
    box = body_box(image)
    body = np.zeros((size, size), dtype=bool)
    body |= _ellipse(size, size, 0.55, 0.5, 0.52, 0.45)
    ys, xs = np.nonzero(body)
    expected = Box(
        ys.min() + border, xs.min() + border, ys.max() + 1 + border, min(xs.max() + 1, size) + border
    )
    assert contains(box.expanded(0.02, image.shape), expected)
    # the black frame and the label in the top-left corner are outside the box
    assert box.top >= border - 4 and box.left >= border - 4
    assert box.bottom <= border + size + 4 and box.right <= border + size + 4


def test_lung_box_contains_both_lungs_and_is_much_smaller_than_the_body() -> None:
    image = framed_cxr()
    with warnings.catch_warnings():
        warnings.simplefilter("error", PreprocessWarning)  # a fallback would be a failure here
        lungs = lung_box(image)
    assert contains(lungs, lung_bounds(offset=(48, 48)))
    assert lungs.area < 0.6 * body_box(image).area


def test_lung_box_is_scale_invariant() -> None:
    small, big = synthetic_cxr(256), synthetic_cxr(1024)
    a, b = lung_box(small), lung_box(big)
    for got, want in zip((b.top, b.left, b.bottom, b.right), (a.top, a.left, a.bottom, a.right), strict=True):
        assert abs(got - 4 * want) <= 0.02 * 1024  # the same box within 2 % of the side


@pytest.mark.parametrize(
    "image", [noise_image(), np.full((200, 300), 0.5, dtype=np.float32)], ids=["noise", "flat"]
)
def test_crop_lungs_falls_back_with_a_warning_and_a_sane_crop(image: np.ndarray) -> None:
    with pytest.warns(PreprocessWarning, match="could not find two plausible lungs"):
        out = crop_lungs(image)
    assert out.shape[0] >= 0.5 * image.shape[0] and out.shape[1] >= 0.5 * image.shape[1]
    assert out.dtype == np.float32


def test_box_helpers() -> None:
    box = Box(np.int32(10), 20, 30, 60)
    assert type(box.top) is int and (box.height, box.width, box.area) == (20, 40, 800)
    assert box.scaled(2.0, 2.0, (100, 100)) == Box(20, 40, 60, 100)
    assert box.expanded(0.5, (35, 1000)) == Box(0, 0, 35, 80)
    assert pp.crop(np.zeros((40, 70), np.float32), box).shape == (20, 40)


# ----------------------------------------------------------------------------------------- intensity ops


def test_clahe_raises_local_contrast_in_a_flat_region() -> None:
    yy, xx = np.mgrid[0:256, 0:256]
    image = np.where(xx < 128, 0.2, 0.8).astype(np.float32)
    image[:, :128] += 0.02 * np.sin(yy[:, :128] / 3.0)  # faint texture in the dark half
    out = clahe(image)
    assert out[:, 16:112].std() > 3 * image[:, 16:112].std()


def test_clahe_keeps_16bit_detail() -> None:
    # 1024 grey levels within 1/64 of the range: 8-bit quantisation would merge them into ~4 levels
    image = (0.5 + np.tile(np.arange(1024, dtype=np.float32), (64, 1)) / 65535).astype(np.float32)
    assert len(np.unique(clahe(image))) > 64


def test_white_balance_maps_extreme_percentiles_to_0_and_1() -> None:
    image = (0.3 + 0.4 * noise_image(300, seed=3)).astype(np.float32)
    out = white_balance(image, percent=0.05)
    lo, hi = np.percentile(out, [0.05, 99.95])
    assert lo == pytest.approx(0.0, abs=0.01) and hi == pytest.approx(1.0, abs=0.01)
    order = np.argsort(image.ravel())
    assert np.all(np.diff(out.ravel()[order]) >= 0)  # monotonic


def test_resize_keeps_aspect_and_pads_with_black() -> None:
    image = np.ones((100, 50), dtype=np.float32)
    out = resize(image, size=64)
    assert out.shape == (64, 64)
    assert np.all(out[:, :15] == 0) and np.all(out[:, 49:] == 0)
    assert np.allclose(out[:, 17:47], 1)
    squashed = resize(image, size=64, pad=False)
    assert squashed.shape == (64, 64) and np.allclose(squashed, 1)


def test_invert() -> None:
    image = noise_image(32)
    assert np.allclose(invert(image), 1 - image)
    assert np.allclose(invert(invert(image)), image)


def test_ops_are_pure() -> None:
    image = synthetic_cxr(128)
    before = image.copy()
    for name in OPS:
        Pipeline([name]).apply(image)
    assert np.array_equal(image, before)


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize(
    "image",
    [
        noise_image(8),
        np.zeros((1, 1), np.float32),
        noise_image(40)[:3, :17],
        np.full((64, 64), 0.5, np.float32),
        np.ones((33, 20), np.float32),
    ],
    ids=["8x8", "1x1", "3x17", "constant", "white"],
)
def test_every_op_survives_tiny_and_constant_images(op: str, image: np.ndarray) -> None:
    out = Pipeline([op]).apply(image).image
    assert out.ndim == 2 and out.size > 0 and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("op", list(OPS))
def test_every_op_returns_float32_in_unit_range(op: str) -> None:
    out = Pipeline([op]).apply(synthetic_cxr(200)).image
    assert out.dtype == np.float32 and out.ndim == 2 and out.min() >= 0.0 and out.max() <= 1.0


def test_bad_images_are_rejected_or_clipped() -> None:
    with pytest.raises(PreprocessError, match="2-D grayscale"):
        clahe(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(PreprocessError, match="float pixels"):
        clahe(np.zeros((4, 4), np.uint8))
    with pytest.warns(PreprocessWarning, match="clipped"):
        out = invert(np.array([[-1.0, 2.0], [np.nan, 0.5]], np.float32))
    assert np.allclose(out, [[1.0, 0.0], [1.0, 0.5]])


# ----------------------------------------------------------------------------------------- pipeline


def test_pipeline_json_round_trip_with_defaults_filled() -> None:
    pipeline = Pipeline.parse(
        "crop_lungs:margin=0.1, clahe:clip_limit=3:tile_grid=4,resize:size=128:pad=false"
    )
    assert pipeline.to_list() == [
        {"op": "crop_lungs", "margin": 0.1},
        {"op": "clahe", "clip_limit": 3.0, "tile_grid": 4},
        {"op": "resize", "size": 128, "pad": False},
    ]
    assert Pipeline.from_json(pipeline.to_json()) == pipeline
    assert Pipeline.from_list(json.loads(pipeline.to_json())) == pipeline
    assert Pipeline.parse(str(pipeline)) == pipeline
    assert Pipeline.from_list(["invert", {"op": "gamma", "gamma": 2}]).to_list() == [
        {"op": "invert"},
        {"op": "gamma", "gamma": 2.0},
    ]
    assert Pipeline.parse("clahe") == Pipeline.from_list([{"op": "clahe", "clip_limit": 2.0, "tile_grid": 8}])
    assert len(Pipeline.parse("")) == 0


def test_pipeline_runs_its_steps_in_order() -> None:
    image = synthetic_cxr(128)
    out = Pipeline.parse("invert,resize:size=64")(image)
    assert np.allclose(out, resize(invert(image), size=64))
    assert np.array_equal(Pipeline()(image), image)


def test_unknown_op_lists_valid_ops_and_suggests() -> None:
    with pytest.raises(PreprocessError, match="did you mean 'clahe'") as err:
        Pipeline.parse("clahee")
    for name in OPS:
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ([{"op": "clahe", "clip": 3}], "no parameter 'clip'; valid parameters: clip_limit"),
        ([{"op": "clahe", "clip_limit": -1}], r"out of range \[0.1, 40.0\].*tile_grid"),
        ([{"op": "clahe", "tile_grid": 2.5}], "expected an integer"),
        ([{"op": "resize", "pad": 1}], "expected true or false"),
        ([{"op": "gamma", "gamma": "x"}], "expected float"),
        ([{"op": "gamma", "gamma": True}], "expected a number"),
        ([{"op": "median", "size": 4}], "not one of"),
        ([{"op": "invert", "x": 1}], "valid parameters: none"),
        ([{"clip_limit": 2}], "needs an 'op' key"),
        ([3], "must be an op name or a dict"),
    ],
)
def test_bad_parameters_list_the_valid_ones(spec: list, pattern: str) -> None:
    with pytest.raises(PreprocessError, match=pattern):
        Pipeline.from_list(spec)


@pytest.mark.parametrize("text", ["clahe:clip_limit", "clahe:=3", '{"op": "clahe"}'])
def test_unparseable_texts_are_rejected(text: str) -> None:
    with pytest.raises(PreprocessError):
        Pipeline.parse(text) if not text.startswith("{") else Pipeline.from_json(text)


def test_apply_collects_warnings_instead_of_emitting_them() -> None:
    pipeline = Pipeline.parse("crop_lungs,clahe")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = pipeline.apply(noise_image())
    assert len(result.warnings) == 1 and "fell back to the body crop" in result.warnings[0]
    assert result.image.dtype == np.float32
    assert pipeline.apply(framed_cxr()).warnings == []
    with pytest.warns(PreprocessWarning):  # outside apply() the warning is emitted as usual
        pipeline(noise_image())


def test_describe_ops_covers_the_registry() -> None:
    described = {d["op"]: d for d in describe_ops()}
    assert set(described) == set(OPS)
    assert described["clahe"]["params"][0] == {
        "name": "clip_limit",
        "type": "float",
        "default": 2.0,
        "low": 0.1,
        "high": 40.0,
        "choices": None,
    }
    assert all(d["summary"] for d in described.values())


# ----------------------------------------------------------------------------------------- contact sheet


def _write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(image * 255).astype(np.uint8), mode="L").save(path)
    return path


def test_preprocess_files_writes_pngs_and_reports_unreadable_inputs(tmp_path: Path) -> None:
    good = [
        _write_png(tmp_path / "in" / "a.png", synthetic_cxr(128)),
        _write_png(tmp_path / "other" / "a.png", framed_cxr(128, 16)),
    ]
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"not an image")
    out_dir = tmp_path / "out"
    with pytest.raises(UnreadableInputsError, match="broken.png") as err:
        preprocess_files([*good, broken], Pipeline.parse("crop_lungs,resize:size=64"), out_dir)
    assert err.value.written == [out_dir / "a.png", out_dir / "a-1.png"]
    assert list(err.value.failures) == [broken]
    for path in err.value.written:
        with Image.open(path) as written:
            assert written.mode == "L" and written.size == (64, 64)
    assert preprocess_files([tmp_path / "in" / "a.png"], Pipeline(), tmp_path / "out2") == [
        tmp_path / "out2" / "a.png"
    ]


def test_preprocess_files_refuses_to_overwrite_its_input(tmp_path: Path) -> None:
    source = _write_png(tmp_path / "a.png", synthetic_cxr(64))
    with pytest.raises(UnreadableInputsError, match="overwrite"):
        preprocess_files([source], Pipeline(), tmp_path)


def test_contact_sheet_draws_every_input_and_column(tmp_path: Path) -> None:
    inputs = [_write_png(tmp_path / f"img{i}.png", synthetic_cxr(96, seed=i)) for i in range(2)]
    inputs.append(_write_png(tmp_path / "noise.png", noise_image(96)))
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\0" * 10)
    columns = ("original", "crop_lungs", "clahe:clip_limit=4", "all")
    out = contact_sheet([*inputs, broken], tmp_path / "sheets" / "sheet.png", columns=columns, tile=96)
    with Image.open(out) as sheet:
        assert sheet.mode == "RGB"
        width, height = sheet.size
    assert width >= len(columns) * 96 and height >= 4 * 96
    with pytest.raises(PreprocessError, match="unknown preprocessing op"):
        contact_sheet(inputs, tmp_path / "x.png", columns=("original", "nope"))


# ----------------------------------------------------------------------------------------- real images


def _assert_plausible_lung_box(image: np.ndarray) -> None:
    h, w = image.shape
    with warnings.catch_warnings():
        warnings.simplefilter("error", PreprocessWarning)
        box = lung_box(image)
    assert 0.2 <= box.area / (h * w) <= 0.9, box
    assert 0.3 * w <= (box.left + box.right) / 2 <= 0.7 * w, box
    assert 0.25 * h <= (box.top + box.bottom) / 2 <= 0.7 * h, box


@pytest.mark.shared
@pytest.mark.parametrize(
    "name", ["00000150_002.png", "00000193_019.png", "00000211_013.png", "00000218_000.png"]
)
def test_lung_box_on_real_nih_images(name: str) -> None:
    _assert_plausible_lung_box(load_xray(shared_path("data", "nih_cxr14_subset", "images", name)).pixels)


@pytest.mark.shared
def test_lung_box_on_a_real_16bit_dicom() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # load_xray reports the MONOCHROME1 inversion
        xray = load_xray(shared_path("data", "dicom", "RG1_UNCR.dcm"))
    _assert_plausible_lung_box(xray.pixels)
