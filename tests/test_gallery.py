"""The sample gallery in demo/examples: readable, labelled, attributed, small, and from the test splits."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from demo.gallery import COLUMNS, EXAMPLES_CSV, EXAMPLES_DIR, GalleryError, gallery
from tests.conftest import shared_path
from trainer.nih import NIH_FINDINGS

MODELS = Path(__file__).resolve().parent.parent / "demo" / "models"


def _model_labels(name: str) -> list[str]:
    return json.loads((MODELS / name / "config.json").read_text())["label_names"]


def test_every_image_is_listed_readable_and_small() -> None:
    items = gallery()
    listed = {item.path.name for item in items if item.path.parent == EXAMPLES_DIR}
    on_disk = {path.name for path in EXAMPLES_DIR.glob("*.png")}
    assert listed == on_disk and 12 <= len(on_disk) <= 20
    for path in EXAMPLES_DIR.glob("*.png"):
        with Image.open(path) as image:
            image.load()
            assert image.mode == "L" and max(image.size) <= 512, (path.name, image.mode, image.size)
    assert sum(path.stat().st_size for path in EXAMPLES_DIR.iterdir()) < 2 * 1024 * 1024
    for item in items:
        assert item.caption and item.source and item.licence and item.attribution


def test_labels_cover_the_embedded_models_classes() -> None:
    labels = [item.labels for item in gallery() if item.labels]
    parts = {part for label in labels for part in label.split("|")}
    known = set(NIH_FINDINGS) | set(_model_labels("pediatric-pneumonia")) | {"normal"}
    assert parts <= known, parts - known
    assert set(_model_labels("pediatric-pneumonia")) <= parts
    assert len(set(_model_labels("nih-findings")) & parts) >= 4
    kermany = [item for item in gallery() if item.path.name.startswith("kermany_")]
    nih = [item for item in gallery() if item.path.name.startswith("nih_")]
    assert {item.labels for item in kermany} == set(_model_labels("pediatric-pneumonia"))
    assert any(item.labels == "normal" for item in nih) and any(item.labels != "normal" for item in nih)
    assert all(item.licence == "CC BY 4.0" and "Kermany" in item.attribution for item in kermany)
    assert all("NIH Clinical Center" in item.attribution and "Wang" in item.attribution for item in nih)


def test_the_dicom_example_comes_from_pydicom_data_or_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    dicoms = [item for item in gallery() if item.path.suffix == ".dcm"]
    assert len(dicoms) == 1 and dicoms[0].path.name == "RG1_UNCR.dcm" and dicoms[0].labels is None
    monkeypatch.setattr("demo.gallery.pydicom_data_file", lambda name: None)
    assert not [item for item in gallery() if item.path.suffix == ".dcm"]


def _write(tmp_path: Path, rows: list[dict[str, str]], columns: tuple[str, ...] = COLUMNS) -> Path:
    path = tmp_path / "examples.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("file", ["../secret.png", "/etc/passwd", "missing.png"])
def test_a_csv_naming_a_file_outside_its_folder_or_missing_is_refused(tmp_path: Path, file: str) -> None:
    (tmp_path.parent / "secret.png").write_bytes(b"x")
    row = dict.fromkeys(COLUMNS, "x") | {"file": file}
    with pytest.raises(GalleryError, match="is not a file in"):
        gallery(_write(tmp_path, [row]))


def test_a_csv_without_a_column_says_which(tmp_path: Path) -> None:
    with pytest.raises(GalleryError, match="missing columns \\['licence'\\]"):
        gallery(_write(tmp_path, [], tuple(c for c in COLUMNS if c != "licence")))


@pytest.mark.shared
def test_the_gallery_is_what_bench_gallery_builds_from_the_test_splits() -> None:
    shared_path("data", "nih_cxr14_subset")
    shared_path("data", "kermany_pediatric_pneumonia")
    from bench.gallery import PICKS, rows

    expected = rows()  # raises unless every pick is in its models' test splits
    with EXAMPLES_CSV.open(newline="") as handle:
        assert list(csv.DictReader(handle)) == expected
    for pick in PICKS:
        assert (EXAMPLES_DIR / pick.file).read_bytes() == pick.source.read_bytes()
