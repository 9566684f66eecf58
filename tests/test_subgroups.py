"""trainer.subgroups on synthetic data whose subgroup answers are known, the metadata reader, and the
`evaluate` command writing a subgroups section (a real tiny model on real PNG files)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.tiny_datasets import write_csv, write_png
from trainer.evaluate import evaluate_source
from trainer.export import save_pretrained
from trainer.label_readers import read_csv_labels
from trainer.labels import DataError
from trainer.metrics import evaluate_predictions
from trainer.modeling import create_classifier
from trainer.preprocess import Pipeline
from trainer.subgroups import (
    MIN_GROUP_IMAGES,
    age_band,
    group_values,
    read_subgroup_columns,
    subgroup_metrics,
)


@pytest.mark.parametrize(
    ("age", "band"),
    [
        (0, "<18"),
        (17.9, "<18"),
        (18, "18-39"),
        (39, "18-39"),
        (40, "40-59"),
        (59, "40-59"),
        (60, "60+"),
        (412, "60+"),
        ("055Y", "40-59"),
        (" 71 ", "60+"),
        ("", "unknown"),
        ("n/a", "unknown"),
        (None, "unknown"),
        (float("nan"), "unknown"),
    ],
)
def test_age_bands(age, band):
    assert age_band(age) == band


def test_group_values_bands_only_age_columns():
    assert group_values("Patient Age", ["30", "65"]) == ["18-39", "60+"]
    assert group_values("view", ["PA", "", None, " AP"]) == ["PA", "unknown", "unknown", "AP"]
    assert group_values("stage", ["65", "30"]) == ["65", "30"]  # not an age: categories


def binary_by_sex(n_per_sex: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Women: probabilities that rank perfectly; men: noise. Two images per patient."""
    rng = np.random.default_rng(seed)
    y = np.tile([0.0, 1.0], n_per_sex)
    women = np.where(y[:n_per_sex] == 1, 0.6 + 0.3 * rng.random(n_per_sex), 0.4 * rng.random(n_per_sex))
    men = rng.random(n_per_sex)
    probs = np.concatenate([women, men])
    sex = ["F"] * n_per_sex + ["M"] * n_per_sex
    patients = [f"p{i // 2}" for i in range(2 * n_per_sex)]
    return y, probs, sex, patients


def test_a_model_that_fails_one_group_is_caught():
    y, probs, sex, patients = binary_by_sex()
    result = subgroup_metrics(
        "binary", ["abnormal"], y, probs, patients, [0.5], {"sex": sex}, n_bootstrap=300
    )
    women, men = result["columns"]["sex"]
    assert (women["group"], men["group"]) == ("F", "M")
    assert women["auc"]["value"] == 1.0 and women["sensitivity"]["value"] == 1.0
    assert women["specificity"]["value"] == 1.0
    assert men["auc"]["value"] < 0.75 and men["auc"]["ci"][0] < 0.5 < men["auc"]["ci"][1]
    assert women["n_images"] == 60 and women["n_patients"] == 30
    assert women["label_counts"] == {"abnormal": 30, "normal": 30}
    # Each group's numbers are those of evaluate_predictions on the group alone.
    expected = evaluate_predictions(
        "binary", ["abnormal"], y[60:], probs[60:], patients[60:], [0.5], n_bootstrap=300
    )["headline"]
    assert {k: men[k] for k in ("auc", "sensitivity", "specificity")} == {
        k: expected[k] for k in ("auc", "sensitivity", "specificity")
    }


def test_small_and_unknown_groups():
    y, probs, sex, patients = binary_by_sex()
    ages = ["25"] * 50 + ["70"] * 50 + ["15"] * 5 + [""] * 15
    result = subgroup_metrics(
        "binary", ["abnormal"], y, probs, patients, [0.5], {"age": ages}, n_bootstrap=50
    )
    groups = {row["group"]: row for row in result["columns"]["age"]}
    assert list(groups) == [
        "<18",
        "18-39",
        "60+",
        "unknown",
    ]  # band order, unknown last, empty bands left out
    assert groups["<18"]["n_images"] == 5 and groups["<18"]["auc"] is None
    assert groups["<18"]["note"] == f"only 5 images (fewer than {MIN_GROUP_IMAGES}): not evaluated"
    assert groups["unknown"]["auc"] is None and groups["18-39"]["auc"]["value"] is not None
    assert result["min_images"] == MIN_GROUP_IMAGES and result["age_bands"] == [18, 40, 60]


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_other_tasks_report_their_headline(task):
    rng = np.random.default_rng(1)
    n = 80
    if task == "multiclass":
        y = np.arange(n) % 3
        probs = np.eye(3)[y] * 0.6 + 0.4 * rng.dirichlet(np.ones(3), n)
        names, cuts = ["a", "b", "c"], None
    else:
        y = np.stack([np.arange(n) % 2, (np.arange(n) // 2) % 2], axis=1).astype(float)
        y[0, 1] = np.nan
        probs = np.clip(y + rng.normal(0, 0.3, y.shape), 0, 1)
        probs = np.nan_to_num(probs, nan=0.5)
        names, cuts = ["f1", "f2"], [0.5, 0.5]
    view = ["PA", "AP"] * (n // 2)
    result = subgroup_metrics(task, names, y, probs, None, cuts, {"view": view}, n_bootstrap=50)
    rows = result["columns"]["view"]
    assert [r["group"] for r in rows] == ["AP", "PA"]
    assert all(r["auc"]["value"] > 0.8 and r["sensitivity"]["ci"] is not None for r in rows)
    assert sum(r["label_counts"][names[0]] for r in rows) == int(
        np.nansum(y == 0 if task == "multiclass" else y[:, 0])
    )


def test_a_column_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="has 2 values for 3 images"):
        subgroup_metrics("binary", ["x"], [0, 1, 1], [0.1, 0.8, 0.9], None, [0.5], {"sex": ["F", "M"]})


def _dataset(root: Path) -> Path:
    """root/labels.csv (binary) with 8 images of 4 patients, and root/meta/metadata.csv with sex and age."""
    rows, meta = [], []
    for i in range(8):
        write_png(root / "images" / f"img{i}.png", seed=i)
        rows.append([f"images/img{i}.png", f"p{i // 2}", "pneumonia" if i % 2 else "normal"])
        if i < 7:  # img7 has no metadata
            meta.append([f"images/img{i}.png" if i % 3 else f"img{i}.png", "FM"[i % 2], 30 + 10 * i])
    write_csv(root / "meta" / "metadata.csv", ["path", "sex", "Patient Age"], meta)
    return write_csv(root / "labels.csv", ["path", "patient_id", "label"], rows)


def test_metadata_is_matched_by_path_or_by_file_name(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    table = read_csv_labels(_dataset(tmp_path), task="binary", negative="normal")
    with caplog.at_level(logging.WARNING):
        values = read_subgroup_columns(table, tmp_path / "meta" / "metadata.csv", ["sex", "Patient Age"])
    order = [Path(p).name for p in table.paths]
    by_image = dict(zip(order, zip(values["sex"], values["Patient Age"], strict=True), strict=True))
    assert by_image["img0.png"] == ("F", "30")  # a bare file name
    assert by_image["img1.png"] == ("M", "40")  # a path relative to the data root
    assert by_image["img7.png"] == (None, None)
    assert "no metadata for 1 of 8 images" in caplog.text
    with pytest.raises(DataError, match="no subgroup column 'gender'"):
        read_subgroup_columns(table, tmp_path / "meta" / "metadata.csv", ["gender"])


def test_evaluate_writes_a_subgroups_section(tmp_path: Path):
    _dataset(tmp_path / "data")
    torch.manual_seed(0)
    model = create_classifier("chexlab_simple_cnn", 1)
    folder = save_pretrained(
        model.eval(),
        tmp_path / "model",
        task="binary",
        label_names=["pneumonia"],
        negative_name="normal",
        pipeline=Pipeline.from_list([]),
        thresholds=[0.5],
        input_size=64,
    )
    config = {
        "data": {
            "format": "csv",
            "root": str(tmp_path / "data"),
            "labels": "labels.csv",
            "label_column": "label",
            "task": "binary",
            "positive": "pneumonia",
            "negative_name": "normal",
            "subgroup_columns": ["sex", "Patient Age"],
            "metadata": "meta/metadata.csv",
        }
    }
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(config))
    out = evaluate_source(
        str(folder),
        data=str(tmp_path / "data.yaml"),
        split="all",
        out_dir=str(tmp_path / "eval"),
        n_bootstrap=20,
    )
    report = json.loads(out.read_text())
    section = report["subgroups"]
    assert section["metadata"].endswith("meta/metadata.csv")
    assert [row["group"] for row in section["columns"]["sex"]] == ["F", "M", "unknown"]
    assert [row["group"] for row in section["columns"]["Patient Age"]] == ["18-39", "40-59", "60+", "unknown"]
    assert sum(row["n_images"] for row in section["columns"]["sex"]) == report["all"]["n_images"] == 8
    assert all(row["auc"] is None for row in section["columns"]["sex"])  # 8 images: every group too small
