"""demo.comparison_stats and the comparison's labels: "is the difference real?", flagged images, failed
columns, tiny and one-class label sets, subgroups, and the sample gallery as the default images."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from scipy import stats

from demo.comparison import (
    ComparisonError,
    ImageItem,
    abnormal_score,
    compare_models,
    compare_preprocessing,
    label_abnormal,
    sample_images,
    with_labels_file,
)
from demo.comparison_stats import MIN_IMAGES, difference_report, split_subgroups, subgroup_rows
from demo.gallery import gallery
from demo.predictor import Predictor
from tests.demo_support import save_tiny_model, synthetic_pixels

MAX_PIXELS = 5_000_000
LABELS = ["abnormal", "abnormal", "abnormal", "abnormal", "normal", "normal"]
GROUPS = [(("sex", "F"),), (("sex", "M"),)] * 3


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("comparison_stats")
    # Thresholds that fix the decision whatever the image: 0 = always abnormal, 1 = never (sigmoid < 1).
    save_tiny_model(root / "always", thresholds=[0.0], seed=3)
    save_tiny_model(root / "never", thresholds=[1.0], seed=4)
    save_tiny_model(root / "plain", seed=5)
    save_tiny_model(root / "classes", task="multiclass", seed=1)
    images = root / "images"
    images.mkdir()
    for k in range(len(LABELS)):
        Image.fromarray(synthetic_pixels(seed=10 + k, opacity=k < 4)).save(images / f"chest{k}.png")
    Image.new("L", (192, 192), 128).save(images / "flat.png")  # near-constant: the image gate flags it
    return root


@pytest.fixture(scope="module")
def predictor(workdir: Path) -> Predictor:
    models = {name: workdir / name for name in ("always", "never", "plain", "classes")}
    return Predictor(models, max_pixels=MAX_PIXELS, max_models=4)


def _labelled(workdir: Path, labels: list[str] = LABELS) -> list[ImageItem]:
    return [
        ImageItem(f"chest{k}.png", workdir / "images" / f"chest{k}.png", label, f"p{k}", GROUPS[k])
        for k, label in enumerate(labels)
    ]


def test_known_answer_mcnemar_between_always_and_never(predictor: Predictor, workdir: Path) -> None:
    """ "Always abnormal" is right on the 4 abnormal images, "never" on the 2 normal ones: McNemar's exact
    p-value is the two-sided binomial of 4 of 6, and the AUCs are each model's own on the same images."""
    result = compare_models(predictor, ["always", "never"], _labelled(workdir))
    report = difference_report(result, n_bootstrap=200)
    assert report is not None and report.n_images == 6
    assert report.question == "Compared on 6 labelled images, by the columns' own classes."
    (pair,) = report.pairs
    test = pair.mcnemar
    assert test is not None and (test.only_a, test.only_b, test.both, test.neither) == (4, 2, 0, 0)
    assert test.p_value == pytest.approx(stats.binomtest(4, 6, 0.5).pvalue)  # 0.6875
    assert "never is right on 2 images where always is wrong, and always on 4" in pair.sentence
    assert "69 % of cases" in pair.sentence
    aucs = {model.name: model.auc for model in report.models}
    assert set(aucs) == {"always", "never"} and all(a is None or 0.0 <= a <= 1.0 for a in aucs.values())
    assert [row["column"] for row in report.auc_rows()] == ["always", "never"]
    assert any("bootstrap resamples of the 6 patients" in note for note in report.notes)


def test_identical_variants_have_the_same_auc(predictor: Predictor, workdir: Path) -> None:
    """A model without preprocessing: "Raw" and "Model's own" run the same pipeline, so the paired
    difference is exactly 0 and the decisions agree image by image."""
    result = compare_preprocessing(predictor, "plain", _labelled(workdir), variants=["Raw", "Model's own"])
    report = difference_report(result, n_bootstrap=200)
    assert report is not None
    (pair,) = report.pairs
    assert pair.difference == 0.0 and pair.ci == (0.0, 0.0)
    assert "have the same AUC" in pair.sentence and "right and wrong on the same images" in pair.sentence


def test_different_classes_compare_the_abnormal_call(predictor: Predictor, workdir: Path) -> None:
    result = compare_models(predictor, ["plain", "classes"], _labelled(workdir))
    report = difference_report(result, n_bootstrap=100)
    assert report is not None and "is the image abnormal?" in report.question
    assert "classes" in report.markdown() and "plain" in report.markdown()
    # The score is 0.5 exactly at the model's own call, so McNemar compares the decisions of the grid.
    for row in result.rows:
        for column, cell in zip(result.columns, row.cells, strict=True):
            assert column.info is not None and cell.prediction is not None and cell.abnormal is not None
            score = abnormal_score(column.info, cell.prediction.probabilities)
            assert score is not None and (score >= 0.5) == cell.abnormal


def test_tiny_and_one_class_label_sets_get_a_sentence(predictor: Predictor, workdir: Path) -> None:
    few = compare_models(predictor, ["always", "never"], _labelled(workdir)[: MIN_IMAGES - 1])
    report = difference_report(few)
    assert report is not None and not report.pairs
    assert report.sentences()[0].startswith(f"Only {MIN_IMAGES - 1} labelled images can be compared")

    one_class = compare_models(predictor, ["always", "never"], _labelled(workdir, ["abnormal"] * 6))
    report = difference_report(one_class, n_bootstrap=100)
    assert report is not None
    assert any(note.startswith("All the labelled images are of one class") for note in report.notes)
    (pair,) = report.pairs
    assert "cannot be compared" in pair.sentence and pair.mcnemar is not None  # decisions still compared
    assert pair.mcnemar.only_a == 6

    unlabelled = [ImageItem(item.name, item.source) for item in _labelled(workdir)]
    assert difference_report(compare_models(predictor, ["always", "never"], unlabelled)) is None


def test_a_failed_column_is_left_out_and_named(predictor: Predictor, workdir: Path) -> None:
    missing = str(workdir / "gone")
    result = compare_models(predictor, ["always", "never", missing], _labelled(workdir))
    assert result.failed_columns().keys() == {result.columns[2].name}
    headline = result.headline()
    assert headline.startswith("Only 2 of the 3 models ran") and "agree for all" not in headline
    assert headline.endswith(f"(not loaded: {result.columns[2].name}).")
    report = difference_report(result, n_bootstrap=100)
    assert report is not None and len(report.pairs) == 1
    assert any(note.startswith("Left out (no results): ") for note in report.notes)

    alone = compare_models(predictor, ["always", missing], _labelled(workdir))
    assert alone.headline().startswith("Nothing to compare: only 1 of 2 models gave results (not loaded: ")
    report = difference_report(alone)
    assert report is not None and report.sentences()[0] == "Only 1 column can be compared: pairs need two."


def test_flagged_images_are_marked_and_left_out(predictor: Predictor, workdir: Path) -> None:
    items = [*_labelled(workdir), ImageItem("flat.png", workdir / "images" / "flat.png", "normal", "p9")]
    result = compare_models(predictor, ["always", "never"], items)
    flat = next(row for row in result.rows if row.image.name == "flat.png")
    assert all(cell.withheld and cell.decision == "withheld (flagged)" for cell in flat.cells)
    assert all(cell.correct is None and cell.answer(True) is None for cell in flat.cells)
    assert [s.withheld for s in result.summaries] == [1, 1]
    assert [s.labelled for s in result.summaries] == [6, 6]  # accuracy and AUC without the flagged image
    assert "2 decisions withheld for flagged images" in result.headline()
    report = difference_report(result, n_bootstrap=100)
    assert report is not None and report.n_images == 6
    assert any("1 labelled image was flagged" in note for note in report.notes)
    # The heatmap checks under every readable cell (lung share against the lung box, deletion drop).
    for row in result.rows:
        for cell in row.cells:
            assert cell.check is not None and cell.check.deletion.removed == pytest.approx(0.2)
            assert cell.check_text()


def test_subgroups_show_small_groups_as_counts(predictor: Predictor, workdir: Path) -> None:
    result = compare_models(predictor, ["always", "never"], _labelled(workdir))
    rows = subgroup_rows(result)
    assert [(row["by"], row["group"], row["images"]) for row in rows] == [("sex", "F", 3), ("sex", "M", 3)]
    assert all(row["always"] == "counts only" for row in rows)
    assert split_subgroups(rows) == ([], "Counts only (groups of fewer than 8 images): sex F 3, M 3.")
    scored = subgroup_rows(result, min_images=3)
    assert all(str(row["never"]).startswith("AUC ") for row in scored)


def test_sample_images_are_the_labelled_gallery() -> None:
    items = sample_images()
    shipped = gallery()
    assert [item.name for item in items] == [entry.path.name for entry in shipped]
    assert all("/" not in item.name for item in items)  # shown by name, never by server path
    labelled = [item for item in items if item.label]
    assert len(labelled) >= 16 and {label_abnormal(item.label) for item in labelled} == {0.0, 1.0}
    nih = [item for item in items if item.name.startswith("nih_")]
    assert all(item.patient_id and dict(item.groups).keys() == {"sex", "age", "view"} for item in nih)
    assert len(sample_images([shipped[0].path])) == len(items)  # an operator example already shown: once


def test_an_uploaded_labels_file_gives_labels_patients_and_subgroups() -> None:
    items = [ImageItem("a.png", b"x"), ImageItem("b.png", b"y"), ImageItem("c.png", b"z")]
    text = (
        "Image Index,Finding Labels,Patient ID,Patient Gender,Patient Age,View Position\n"
        "some/dir/a.png,No Finding,7,F,52,PA\nb.png,Effusion|Edema,8,M,,AP\n"
    )
    a, b, c = with_labels_file(items, text)
    assert (a.label, a.patient_id, a.groups) == (
        "No Finding",
        "7",
        (("sex", "F"), ("age", "52"), ("view", "PA")),
    )
    assert label_abnormal(a.label) == 0.0 and label_abnormal(b.label) == 1.0
    assert (b.patient_id, b.groups) == ("8", (("sex", "M"), ("view", "AP")))
    assert c == items[2]  # not in the file: unlabelled, unchanged
    with pytest.raises(ComparisonError, match="needs a file and a label column; it has: name, x"):
        with_labels_file(items, "name,x\na.png,1\n")
