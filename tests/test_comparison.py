"""demo.comparison: grid, agreement, labels and metrics, preprocessing variants, CSV/PNG exports, failures."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from demo.catalog import MODELS_DIR
from demo.comparison import (
    MODEL_OWN,
    VARIANTS,
    Comparison,
    ImageItem,
    class_options,
    compare_models,
    compare_preprocessing,
    grid_png,
    images_from_folder,
    images_from_paths,
    to_csv,
)
from demo.examples import builtin_example
from demo.predictor import Predictor
from tests.conftest import shared_path
from tests.demo_support import save_tiny_model, synthetic_pixels, write_inputs

MAX_PIXELS = 5_000_000


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("comparison")
    save_tiny_model(root / "binary")
    save_tiny_model(root / "multiclass", task="multiclass", seed=1)
    save_tiny_model(root / "multilabel", task="multilabel", pipeline=["clahe"], seed=2)
    # Thresholds that fix the decision whatever the image: 0 = always positive, 1 = never (sigmoid < 1).
    save_tiny_model(root / "always", thresholds=[0.0], seed=3)
    save_tiny_model(root / "never", thresholds=[1.0], seed=4)
    save_tiny_model(root / "always_ml", task="multilabel", thresholds=[0.0, 0.0], seed=5)
    save_tiny_model(root / "own_crop", pipeline=[{"op": "crop_body"}], seed=6)
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def predictor(workdir: Path) -> Predictor:
    models = {name: workdir / name for name in ("binary", "multiclass", "multilabel", "always", "never")}
    return Predictor(models, max_pixels=MAX_PIXELS, max_models=3)


def _items(files: dict[str, Path], *kinds: str) -> list[ImageItem]:
    return [ImageItem(files[kind].name, files[kind]) for kind in kinds]


def _progress_log() -> tuple[list[float], object]:
    seen: list[float] = []
    return seen, lambda fraction, message: seen.append(fraction)


def test_grid_has_a_cell_per_image_and_model(predictor: Predictor, files: dict[str, Path]) -> None:
    seen, progress = _progress_log()
    items = _items(files, "png8", "dicom") + [ImageItem("upload.png", files["png16"].read_bytes())]
    result = compare_models(predictor, ["binary", "multiclass", "multilabel"], items, progress=progress)
    assert [c.name for c in result.columns] == ["binary", "multiclass", "multilabel"]
    assert [c.preprocessing for c in result.columns] == ["none", "none", "clahe (clip 2)"]
    rules = [
        "threshold: abnormal 0.50",
        "decides: the most likely class",
        "thresholds: opacity 0.30, effusion 0.60",
    ]
    assert [c.rule for c in result.columns] == rules
    assert sorted(row.image.name for row in result.rows) == sorted(item.name for item in items)
    for row in result.rows:
        assert row.error is None and row.thumbnail is not None and row.thumbnail.shape == (256, 256)
        for column, cell in zip(result.columns, row.cells, strict=True):
            pred = cell.prediction
            assert cell.error is None and pred is not None and pred.model == column.name
            assert pred.overlay.dtype == np.uint8 and pred.overlay.shape == (256, 256, 3)  # kept small
            assert cell.decision == (", ".join(pred.decided) or "no finding")
        binary, multiclass, _ = row.cells
        assert sum(binary.prediction.probabilities.values()) == pytest.approx(1.0)
        assert sum(multiclass.prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)
    assert [s.analysed for s in result.summaries] == [3, 3, 3]


def test_agreement_compares_the_abnormal_call_across_class_sets(
    predictor: Predictor, files: dict[str, Path], workdir: Path
) -> None:
    items = _items(files, "text", "png8", "dicom")  # the unreadable one first in the input
    result = compare_models(predictor, ["always", "never"], items)
    assert result.agreement_by == "decision"  # the same classes: decisions are compared as they are
    assert [row.disagree for row in result.rows] == [True, True, False]  # disagreements first
    assert result.rows[-1].image.name == files["text"].name and result.disagreements == 2
    assert result.headline() == (
        "The models disagree on the decision for 2 of 2 images (shown first) (1 of 3 images could not be "
        "compared)."
    )
    assert [s.abnormal_rate for s in result.summaries] == [1.0, 0.0]

    mixed = compare_models(predictor, ["always", str(workdir / "always_ml")], items[1:])
    assert mixed.agreement_by == "abnormal"  # different classes: only the normal/abnormal call compares
    assert mixed.disagreements == 0 and "agree" in mixed.headline()
    assert all(cell.abnormal for row in mixed.rows for cell in row.cells)


def test_a_bad_image_or_model_fails_only_its_row_or_column(
    predictor: Predictor, files: dict[str, Path], workdir: Path
) -> None:
    broken = workdir / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "config.json").write_text("{not json")
    items = _items(files, "png8", "text", "fake_dicom", "huge")
    result = compare_models(predictor, ["binary", str(workdir / "missing"), str(broken)], items)
    good, missing, bad_config = result.columns
    assert good.error is None and missing.error and bad_config.error
    assert "missing" in missing.error
    by_name = {row.image.name: row for row in result.rows}
    assert by_name["chest.png"].cells[0].prediction is not None
    for name, words in (("notes.png", "not an image"), ("renamed.dcm", "DICM"), ("huge.png", "pixels")):
        row = by_name[name]
        assert row.thumbnail is None and words in row.error
        assert row.cells[0].prediction is None and row.cells[0].error == row.error
    for row in result.rows:  # the unloadable models' cells say so, whatever the image
        assert all(cell.error.startswith("Model not loaded") for cell in row.cells[1:])
    assert [(s.analysed, s.failed) for s in result.summaries] == [(1, 3), (0, 4), (0, 4)]
    # Only one model answered: nothing was compared, and the headline says so instead of "agree".
    assert result.headline().startswith("Nothing to compare: only 1 of 3 models gave results (not loaded: ")

    partly = compare_models(predictor, ["always", "never", str(workdir / "missing")], _items(files, "png8"))
    assert "agree for all" not in partly.headline() and partly.headline().startswith(
        "Only 2 of the 3 models ran"
    )
    assert partly.headline().endswith(f"(not loaded: {partly.columns[2].name}).")


@pytest.mark.parametrize(
    ("models", "images", "message"),
    [
        (["binary"], 1, "pick 2 to 4"),
        (["binary", "binary"], 1, "pick 2 to 4"),  # the same model twice is one model
        (["binary", "multiclass", "multilabel", "always", "never"], 1, "pick 2 to 4"),
        (["binary", "multiclass"], 0, "no images"),
    ],
)
def test_bad_requests_are_refused(
    predictor: Predictor, files: dict[str, Path], models: list[str], images: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        compare_models(predictor, models, _items(files, "png8")[:images])


def test_labels_give_accuracy_and_auc(predictor: Predictor, files: dict[str, Path]) -> None:
    png = files["png8"]
    labels = ["abnormal", "normal", "No_Finding", "Pneumonia", "viral", "opacity|effusion", None]
    items = [ImageItem(f"img{i}", png, label) for i, label in enumerate(labels)]
    result = compare_models(predictor, ["always", "multiclass", "multilabel"], items)
    always, multiclass, multilabel = result.summaries
    # Binary "abnormal": every label maps (normal names to 0, any finding to 1); 4 of the 6 are abnormal.
    assert always.labelled == 6 and always.accuracy == pytest.approx(4 / 6)
    assert always.auc == pytest.approx(0.5)  # one image, one score for all: no ranking at all
    # Multi-class normal/bacterial/viral: "normal", "No_Finding" and "viral" map; findings it lacks do not.
    assert multiclass.labelled == 3 and multiclass.accuracy is not None
    # Multi-label opacity/effusion: the normal labels (all absent) and the one naming both findings.
    assert multilabel.labelled == 3
    rows = {row.image.name: row for row in result.rows}
    assert rows["img0"].cells[0].correct is True and rows["img1"].cells[0].correct is False
    assert rows["img3"].cells[1].correct is None and rows["img6"].cells[0].correct is None
    table = result.summary_rows()
    assert {"labelled", "accuracy", "AUC"} <= set(table[0]) and table[0]["accuracy"] == "67%"

    unlabelled = compare_models(predictor, ["always", "never"], _items(files, "png8"))
    assert not unlabelled.labelled and "accuracy" not in unlabelled.summary_rows()[0]


def test_chosen_class_is_explained_where_a_model_has_it(predictor: Predictor, files: dict[str, Path]) -> None:
    result = compare_models(predictor, ["binary", "multilabel"], _items(files, "png8"), target="effusion")
    binary, multilabel = result.rows[0].cells
    assert multilabel.prediction.target == "effusion" and multilabel.note is None
    assert binary.prediction.target in ("abnormal", "normal") and "no class 'effusion'" in binary.note
    loaded = [predictor.load("binary"), predictor.load("multilabel")]
    assert class_options(loaded) == ["abnormal", "normal", "opacity", "effusion"]


def test_preprocessing_variants(workdir: Path, files: dict[str, Path]) -> None:
    predictor = Predictor({"own_crop": workdir / "own_crop"}, max_pixels=MAX_PIXELS)
    items = _items(files, "png8")
    result = compare_preprocessing(predictor, "own_crop", items, target="abnormal")
    assert result.mode == "preprocessing" and result.agreement_by == "decision"
    assert [c.name for c in result.columns] == list(VARIANTS)
    described = {c.name: c.preprocessing for c in result.columns}
    assert described == {
        "Raw": "none",
        "CLAHE": "clahe (clip 2)",
        "White balance": "white_balance",
        "Lung crop": "crop_lungs",
        MODEL_OWN: "crop_body",
    }
    raw, clahe, balanced, lungs, own = result.rows[0].cells
    assert all(cell.prediction.target == "abnormal" for cell in result.rows[0].cells)
    for other in (clahe, balanced, lungs, own):  # each variant changes what the model sees
        assert not np.allclose(raw.prediction.after, other.prediction.after, atol=1e-3)
    assert own.prediction.pipeline == own.prediction.model_pipeline
    assert not any("trained with the preprocessing" in w for w in own.prediction.warnings)
    assert any("trained with the preprocessing" in w for w in clahe.prediction.warnings)

    two = compare_preprocessing(predictor, "own_crop", items, variants=["Raw", MODEL_OWN])
    assert [c.name for c in two.columns] == ["Raw", MODEL_OWN]
    with pytest.raises(ValueError, match="unknown preprocessing variants"):
        compare_preprocessing(predictor, "own_crop", items, variants=["Sharpen"])
    missing = compare_preprocessing(predictor, str(workdir / "nowhere"), items, variants=["Raw"])
    assert missing.columns[0].error and missing.rows[0].cells[0].error.startswith("Model not loaded")


def test_csv_export(predictor: Predictor, files: dict[str, Path]) -> None:
    items = [ImageItem("a.png", files["png8"], "abnormal"), ImageItem("bad.png", files["empty"])]
    result = compare_models(predictor, ["binary", "multiclass"], items)
    lines = list(csv.DictReader(io.StringIO(to_csv(result))))
    assert len(lines) == 4 and [line["column"] for line in lines] == ["binary", "multiclass"] * 2
    header = set(lines[0])
    assert {"p_abnormal", "p_normal", "p_bacterial", "p_viral", "decision", "notes"} <= header
    ok = next(line for line in lines if line["image"] == "a.png" and line["column"] == "binary")
    pred = next(row for row in result.rows if row.image.name == "a.png").cells[0].prediction
    assert float(ok["p_abnormal"]) == pytest.approx(pred.probabilities["abnormal"], abs=1e-4)
    assert ok["p_viral"] == "" and ok["status"] == "ok" and ok["label"] == "abnormal"
    assert ok["correct"] in ("yes", "no") and ok["decision"] == pred.decided[0]
    bad = [line for line in lines if line["image"] == "bad.png"]
    assert all(line["status"] == "error" and "empty" in line["notes"] for line in bad)


def test_png_export(predictor: Predictor, files: dict[str, Path], workdir: Path) -> None:
    items = _items(files, "png8", "text")
    two = Image.open(io.BytesIO(grid_png(compare_models(predictor, ["always", "never"], items))))
    three = compare_models(predictor, ["always", "never", str(workdir / "missing")], items)
    wide = Image.open(io.BytesIO(grid_png(three, side=128)))
    assert two.format == "PNG" and two.mode == "RGB"
    assert wide.width > Image.open(io.BytesIO(grid_png(three, side=96))).width
    pixels = np.asarray(wide)
    colours = {tuple(c) for c in pixels.reshape(-1, 3)[::7].tolist()}
    assert (0xFF, 0xF4, 0xD6) in colours  # the shaded disagreement row
    assert (0xFD, 0xEC, 0xEA) in colours  # the error cells
    prep = compare_preprocessing(predictor, "always", items[:1], variants=["Raw", "CLAHE"])
    paired = Image.open(io.BytesIO(grid_png(prep, side=128)))
    single = compare_models(predictor, ["always", "never"], items[:1])
    assert paired.width > Image.open(io.BytesIO(grid_png(single, side=128))).width  # image + map per cell


def test_opacity_reblends_without_running(predictor: Predictor, files: dict[str, Path]) -> None:
    result = compare_models(predictor, ["always", "never"], _items(files, "png8"), opacity=0.5)
    plain = result.with_opacity(0.0)
    assert isinstance(plain, Comparison) and plain.rows[0].cells[0].prediction.opacity == 0.0
    cell = plain.rows[0].cells[0].prediction
    gray = np.clip(cell.after, 0, 1) * 255
    assert np.abs(cell.overlay[..., 0] - gray).max() <= 1  # the plain image: no heatmap colour left
    assert result.rows[0].cells[0].prediction.opacity == 0.5  # the original is unchanged


def _save_png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(synthetic_pixels(64, seed=seed)).save(path)
    return path


@pytest.mark.filterwarnings("ignore:.*no patient ids")  # the label readers' note for training
def test_images_from_folders_with_and_without_labels(tmp_path: Path) -> None:
    classes = tmp_path / "classes"
    for i, name in enumerate(["NORMAL", "PNEUMONIA", "NORMAL", "PNEUMONIA"]):
        _save_png(classes / name / f"{i}.png", i)
    assert [(i.name, i.label) for i in images_from_folder(classes)] == [
        ("NORMAL/0.png", "NORMAL"), ("NORMAL/2.png", "NORMAL"),
        ("PNEUMONIA/1.png", "PNEUMONIA"), ("PNEUMONIA/3.png", "PNEUMONIA"),
    ]  # fmt: skip

    multi = tmp_path / "datasets" / "nih"
    for i in range(3):
        _save_png(multi / "images" / f"{i}.png", i)
    (multi / "labels.csv").write_text(
        "path,patient_id,Effusion,Pneumonia\nimages/0.png,p0,1,1\nimages/1.png,p1,0,0\nimages/2.png,p2,,0\n"
    )
    single = tmp_path / "datasets" / "kids"
    _save_png(single / "images" / "k.png")
    _save_png(single / "images" / "n.png")
    (single / "labels.csv").write_text("path,label\nimages/k.png,viral\nimages/n.png,normal\n")
    found = {i.name: i.label for i in images_from_folder(tmp_path / "datasets")}
    assert found == {"kids/images/k.png": "viral", "kids/images/n.png": "normal",
                     "nih/images/0.png": "Effusion|Pneumonia", "nih/images/1.png": "normal",
                     "nih/images/2.png": None}  # fmt: skip
    assert [i.label for i in images_from_paths([multi / "images" / "0.png"])] == ["Effusion|Pneumonia"]

    flat = tmp_path / "flat"
    for i in range(10):
        _save_png(flat / f"{i:02d}.png", i)
    (flat / "notes.txt").write_text("not an image")
    picked = images_from_folder(flat, limit=4)
    assert [i.name for i in picked] == ["00.png", "03.png", "06.png", "09.png"]  # spread, not the first 4
    assert all(i.label is None for i in picked)

    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        images_from_folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        images_from_folder(tmp_path / "nowhere")


@pytest.mark.filterwarnings("ignore:MONOCHROME1 image inverted")  # the reader's note on RG1_UNCR.dcm
def test_real_dicom_and_shared_images(predictor: Predictor) -> None:
    dicom = builtin_example() or shared_path("data", "dicom", "RG1_UNCR.dcm")
    folder = shared_path("data", "kermany_pediatric_pneumonia")
    items = images_from_paths([dicom]) + images_from_folder(folder, limit=3)
    assert all(item.label in ("normal", "bacterial_pneumonia", "viral_pneumonia") for item in items[1:])
    result = compare_models(predictor, ["binary", "multiclass"], items)
    assert all(cell.prediction is not None for row in result.rows for cell in row.cells)
    assert result.summaries[0].labelled == 3  # binary abnormal/normal: every pneumonia label maps


@pytest.mark.slow
def test_embedded_models_on_shared_images() -> None:
    names = ["nih-binary", "nih-findings", "pediatric-pneumonia"]
    missing = [name for name in names if not (MODELS_DIR / name / "config.json").is_file()]
    if missing:
        pytest.skip(f"needs the embedded models in {MODELS_DIR}: {', '.join(missing)} not there yet")
    folder = shared_path("data")
    predictor = Predictor({name: MODELS_DIR / name for name in names})
    result = compare_models(predictor, names, images_from_folder(folder, limit=6))
    assert all(cell.prediction is not None for row in result.rows for cell in row.cells)
    assert result.agreement_by == "abnormal" and all(s.labelled > 0 for s in result.summaries)
    assert Image.open(io.BytesIO(grid_png(result))).width > 0
