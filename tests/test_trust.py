"""Issue 11's trainer side on a really trained tiny model: the folder carries its calibration and OOD
statistics, `predict` flags what is not a radiograph and passes the model's own images, every inference path
applies the stored temperature, old folders predict as before, and `calibrate` writes a better new folder."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import sklearn.datasets
import yaml
from PIL import Image
from scipy.special import expit, logit

from tests.synthetic import write_binary_dataset
from trainer import engine
from trainer.calibration import NO_CALIBRATION_NOTE, calibration_metrics
from trainer.cli import main
from trainer.config import load_config
from trainer.evaluate import evaluate_source, predict_table
from trainer.export import load_model
from trainer.inference import InputTransform, judge
from trainer.io import load_xray
from trainer.labels import LabelTable
from trainer.ood import NO_STATISTICS_NOTE, OOD_FILE, features_and_logits
from trainer.predict import predict_to_csv
from trainer.run_data import load_table

DATA = [
    "data.labels=labels.csv",
    "data.label_column=label",
    "data.task=binary",
    "data.positive=abnormal",
    "data.negative_name=normal",
]
TINY = ["model.arch=chexlab_simple_cnn", "model.input_size=64", "data.num_workers=0", "eval.n_bootstrap=50"]
CHINA = Path(sklearn.datasets.__file__).parent / "images" / "china.jpg"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A binary run of the simple CNN on 60 synthetic patients (120 images)."""
    root = tmp_path_factory.mktemp("trust")
    labels = write_binary_dataset(root / "data", n_patients=60)
    paths = [line.split(",")[0] for line in labels.read_text().splitlines()[1:]]
    sexes = "\n".join(f"{path},{'MF'[i % 2]}" for i, path in enumerate(paths))
    (root / "data" / "meta.csv").write_text(f"path,sex\n{sexes}\n")
    cfg = load_config(
        None,
        [
            f"output_dir={root / 'runs'}",
            "name=run",
            *TINY,
            f"data.root={root / 'data'}",
            *DATA,
            "train.phases=[{epochs: 4, lr: 3.0e-3}]",
            "train.batch_size=16",
            "data.subgroup_columns=[sex]",
            "data.metadata=meta.csv",
        ],
    )
    return engine.fit(cfg, progress=False)


@pytest.fixture(autouse=True)
def _onnx_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHEXLAB_CACHE", str(tmp_path / "cache"))


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def with_calibration(folder: Path, out: Path, calibration: dict | None, *, keep_ood: bool = True) -> Path:
    """A copy of a model folder with another (or no) stored calibration, and optionally no OOD statistics."""
    shutil.copytree(folder, out)
    config = json.loads((out / "config.json").read_text())
    config["chexlab"].pop("calibration", None)
    if calibration is not None:
        config["chexlab"]["calibration"] = calibration
    if not keep_ood:
        config["chexlab"].pop("ood", None)
        (out / OOD_FILE).unlink()
    (out / "config.json").write_text(json.dumps(config))
    return out


def data_config(tmp_path: Path, root: Path) -> Path:
    path = tmp_path / "site.yaml"
    values = {key.split("=")[0].split(".")[1]: key.split("=")[1] for key in DATA}
    path.write_text(yaml.safe_dump({"data": {"root": str(root), **values}}))
    return path


def folder_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_the_run_folder_carries_calibration_and_ood_statistics(run: Path) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"val", "test", "calibration", "ood", "subgroups"} <= set(metrics)
    sexes = metrics["subgroups"]["columns"]["sex"]
    assert [row["group"] for row in sexes] == ["F", "M"]
    assert sum(row["n_images"] for row in sexes) == metrics["test"]["n_images"]
    config = json.loads((run / "model" / "config.json").read_text())["chexlab"]
    assert config["calibration"]["temperatures"] == metrics["calibration"]["temperatures"]
    assert config["ood"]["threshold"] == metrics["ood"]["threshold"]
    assert (run / "model" / OOD_FILE).is_file() and (run / "plots" / "reliability.png").is_file()
    _, info = load_model(run / "model")
    assert info.calibration.calibrated and info.ood is not None and info.notes == ()
    card = (run / "model" / "README.md").read_text()
    assert "### Calibration" in card and "### Out-of-distribution gate" in card and "#### Sex" in card


def test_predict_flags_noise_and_a_photograph_and_passes_the_training_images(
    run: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (256, 256), dtype=np.uint8)).save(tmp_path / "noise.png")
    shutil.copyfile(CHINA, tmp_path / "china.jpg")
    split = read_rows(run / "split.csv")
    root = Path(load_config(run / "config.yaml").data.root)
    train = [root / row["path"] for row in split if row["split"] == "train"]
    summary = predict_to_csv(
        str(run), [tmp_path / "noise.png", tmp_path / "china.jpg", *train], tmp_path / "p.csv"
    )
    rows = read_rows(tmp_path / "p.csv")

    noise, photo, own = rows[0], rows[1], rows[2:]
    assert (
        noise["ood"] == "1"
        and noise["decision"] == ""
        and "unlike the chest radiographs" in noise["warnings"]
    )
    assert photo["ood"] == "1" and photo["decision"] == "" and "colour" in photo["warnings"]
    passed = [row for row in own if row["ood"] == "0"]
    assert len(passed) >= 0.95 * len(
        own
    )  # the threshold passes 99 % of validation; training images score lower
    assert all(row["decision"] in ("abnormal", "normal") and row["ood_score"] for row in passed)
    assert summary.flagged == len(rows) - len(passed) and f"{summary.flagged} flagged" in summary.line()


def test_an_old_folder_predicts_as_before_with_notes(run: Path, tmp_path: Path) -> None:
    old = with_calibration(run / "model", tmp_path / "old", None, keep_ood=False)
    model, info = load_model(old)
    assert not info.calibration.calibrated and info.ood is None
    assert set(info.notes) == {NO_CALIBRATION_NOTE, NO_STATISTICS_NOTE}
    image = sorted((Path(load_config(run / "config.yaml").data.root) / "images").glob("*.png"))[0]
    summary = predict_to_csv(str(old), [image], tmp_path / "p.csv", workers=0)
    assert summary.notes == info.notes
    (row,) = read_rows(tmp_path / "p.csv")
    raw = model_probability(model, info, image)
    assert float(row["prob_abnormal"]) == pytest.approx(raw, abs=2e-6)  # temperature 1: the raw output
    assert row["ood_score"] == "" and row["ood"] == "0" and row["decision"]


def model_probability(model, info, image: Path) -> float:  # noqa: ANN001
    tensor = InputTransform.for_model(info)(load_xray(image).pixels).tensor[None]
    return float(info.task.probabilities(features_and_logits(model, tensor)[1])[0])


def test_every_inference_path_applies_the_stored_temperature(run: Path, tmp_path: Path) -> None:
    known = {"method": "temperature", "temperatures": [2.5], "offsets": [0.0], "fitted_on": "test"}
    folder = with_calibration(run / "model", tmp_path / "t", known)
    model, info = load_model(folder)
    assert info.calibration.temperatures == (2.5,)
    root = Path(load_config(run / "config.yaml").data.root)
    images = sorted((root / "images").glob("*.png"))[:6]
    raw = np.array([model_probability(model, info, image) for image in images])
    expected = expit(logit(raw) / 2.5)

    predict_to_csv(str(folder), images, tmp_path / "p.csv", workers=0)
    got = [float(row["prob_abnormal"]) for row in read_rows(tmp_path / "p.csv")]
    np.testing.assert_allclose(got, expected, atol=2e-5)

    xray = load_xray(images[0])
    features, _ = features_and_logits(model, InputTransform.for_model(info)(xray.pixels).tensor[None])
    judged = judge(info, np.asarray(raw[0]), xray, features[0])
    assert float(judged.probabilities) == pytest.approx(expected[0], abs=1e-9)

    # evaluate scores the calibrated probabilities: its "after" Brier is the temperature-scaled one
    table = load_table(load_config(run / "config.yaml").data)
    report = json.loads(
        evaluate_source(
            str(folder), data=str(data_config(tmp_path, root)), out_dir=str(tmp_path / "ev"), n_bootstrap=20
        ).read_text()  # fmt: skip
    )
    all_raw = predict_table(model, info, table)
    after = calibration_metrics(expit(logit(all_raw) / 2.5), table.targets, info.task)
    assert report["calibration"]["metrics"]["all"]["after"]["brier"] == pytest.approx(
        after["brier"], abs=1e-6
    )
    assert report["all"]["thresholds"] == info.thresholds
    assert 0 <= report["ood"]["flagged"] <= 1 and report["ood"]["n_scored"] == len(table)
    assert (tmp_path / "ev" / "reliability.png").is_file()


def test_calibrate_writes_a_better_new_folder_and_leaves_the_input_alone(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An over-confident model (temperature 0.2: logits x5) that a site recalibrates on its own images
    bad = {"method": "temperature", "temperatures": [0.2], "offsets": [0.0], "fitted_on": "test"}
    folder = with_calibration(run / "model", tmp_path / "bad", bad)
    site = tmp_path / "site"
    write_binary_dataset(site, n_patients=40, seed=5)
    # a site whose labels disagree with the images for every fourth patient: no model is sure there
    lines = (site / "labels.csv").read_text().splitlines()
    flip = {"normal": "abnormal", "abnormal": "normal"}
    for i, line in enumerate(lines[1:], 1):
        name, patient, label = line.split(",")
        if int(patient.lstrip("P")) % 4 == 0:
            lines[i] = f"{name},{patient},{flip[label]}"
    (site / "labels.csv").write_text("\n".join(lines) + "\n")
    config = data_config(tmp_path, site)
    before = folder_hashes(folder)

    assert main(["calibrate", str(folder), "--data", str(config), "--out", str(tmp_path / "new")]) == 0
    printed = capsys.readouterr().out
    assert "ECE" in printed and "Brier" in printed and "NLL" in printed and str(tmp_path / "new") in printed
    assert folder_hashes(folder) == before  # the input folder is untouched

    model, old_info = load_model(folder)
    _, new_info = load_model(tmp_path / "new")
    table: LabelTable = load_table(load_config(config).data)
    raw = predict_table(model, old_info, table)
    old_ece = calibration_metrics(old_info.calibrated(raw), table.targets, "binary")["ece"]
    new_ece = calibration_metrics(new_info.calibrated(raw), table.targets, "binary")["ece"]
    assert new_ece < old_ece
    stored = new_info.calibration.metrics["all"]
    assert stored["before"]["ece"] == pytest.approx(old_ece) and stored["after"]["ece"] == pytest.approx(
        new_ece
    )
    assert new_info.ood is not None and new_info.ood.threshold == old_info.ood.threshold  # OOD kept
    assert (tmp_path / "new" / OOD_FILE).is_file() and (
        tmp_path / "new" / "plots" / "reliability.png"
    ).is_file()
    assert new_info.thresholds != old_info.thresholds  # re-chosen on the recalibrated probabilities

    assert (
        main(["calibrate", str(folder), "--data", str(config), "--out", str(folder)]) == 2
    )  # never in place
    assert folder_hashes(folder) == before
