"""trainer.batch_inference (what `python -m trainer predict` runs): rows in input order that match an
independent eager reference written here (load_xray -> InputTransform -> the model -> calibration -> the OOD
gate -> the decision), whatever the backend and the number of worker processes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.demo_support import synthetic_pixels, write_inputs
from trainer.batch_inference import BatchSummary, header, predict_rows, write_predictions
from trainer.export import ModelInfo, load_model
from trainer.inference import InputTransform
from trainer.io import XRayReadError, load_xray
from trainer.ood import assess, features_and_logits
from trainer.predict import collect_inputs, predict_to_csv
from trainer.runtime import ForwardRunner

MODELS = Path(__file__).resolve().parent.parent / "demo" / "models"


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("inputs")
    files = write_inputs(folder)
    files.pop("huge").unlink()  # decodes fine, only slowly
    rgb = np.repeat(synthetic_pixels(seed=3)[..., None], 3, axis=-1)
    rgb[..., 0] = np.clip(rgb[..., 0].astype(int) + 40, 0, 255)  # a colour image: read with a warning
    Image.fromarray(rgb).save(folder / "colour.png")
    for seed in range(4):
        Image.fromarray(synthetic_pixels(seed=10 + seed)).save(folder / f"more{seed}.png")
    return collect_inputs([folder])


def eager_rows(model: torch.nn.Module, info: ModelInfo, paths: list[Path]) -> list[list[str]]:
    """The rows `predict` should write, one image at a time in eager PyTorch."""
    transform = InputTransform.for_model(info)
    names = info.task.output_names(info.label_names, info.negative_name)
    rows = []
    for path in paths:
        try:
            xray = load_xray(path)
        except XRayReadError as err:
            rows.append([str(path), *([""] * len(names)), "", "", "", "", str(err)])
            continue
        prepared = transform(xray.pixels)
        features, logits = features_and_logits(model, prepared.tensor[None])
        raw = info.task.probabilities(logits).numpy()
        probs = info.calibration.apply(raw, info.task)[0]  # the model folder's own temperature(s)
        verdict = assess(xray, features[0], info.ood)
        decision = [] if verdict.flagged else info.task.decide(probs, info.label_names, info.thresholds,
                                                                info.negative_name)  # fmt: skip
        by_name = info.task.class_probabilities(probs, info.label_names, info.negative_name)
        rows.append([
            str(path),
            *(f"{by_name[n]:.6f}" for n in names),
            "|".join(decision),
            "" if verdict.score is None else f"{verdict.score:.3f}",
            str(int(verdict.flagged)),
            " / ".join((*xray.warnings, *prepared.warnings, *verdict.reasons)),
            "",
        ])  # fmt: skip
    return rows


def assert_same_rows(rows: list[list[str]], expected: list[list[str]], prob_columns: int, tol: float) -> None:
    """Equal rows; probabilities (6 decimals) and OOD scores within `tol` (another runtime rounds the last
    digits); the OOD reason quotes the score, so it is compared up to its numbers."""
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected, strict=True):
        assert len(row) == len(want)
        assert row[0] == want[0]
        assert row[1 + prob_columns] == want[1 + prob_columns]  # decision
        assert row[3 + prob_columns] == want[3 + prob_columns]  # ood flag
        assert row[-1] == want[-1]
        numbers = [*range(1, 1 + prob_columns), 2 + prob_columns]  # probabilities, ood_score
        for column in numbers:
            got, value = row[column], want[column]
            assert (got == "") == (value == "")
            if value:
                assert abs(float(got) - float(value)) <= tol * max(1.0, abs(float(value))), (
                    row[0],
                    got,
                    value,
                )
        strip = lambda text: "".join(c for c in text if not c.isdigit())  # noqa: E731
        assert strip(row[-2]) == strip(want[-2])


@pytest.mark.parametrize(
    ("name", "backend", "workers"),
    [("nih-findings", "onnxruntime", 2), ("nih-binary", "pytorch", 0), ("pediatric-pneumonia", "auto", 1)],
)
def test_rows_match_an_eager_reference(
    name: str, backend: str, workers: int, inputs: list[Path], tmp_path: Path
) -> None:
    model, info = load_model(MODELS / name)
    expected = eager_rows(model, info, inputs)
    size = info.data_config["input_size"]
    runner = ForwardRunner.for_model(model, size, backend=backend, cache_dir=tmp_path)
    out = tmp_path / "parallel.csv"
    summary = write_predictions(model, info, inputs, out, batch_size=3, workers=workers, runner=runner)
    rows = read_csv(out)
    assert rows[0] == header(info.task, info.label_names, info.negative_name)
    assert rows[0][-5:] == ["decision", "ood_score", "ood", "warnings", "error"]
    prob_columns = len(rows[0]) - 6
    assert [row[0] for row in rows[1:]] == [str(path) for path in inputs]
    # The runner's outputs are within 1e-4 of eager PyTorch's: probabilities within 0.25 * 1e-4 + rounding.
    assert_same_rows(rows[1:], expected, prob_columns, tol=3e-5 if backend == "pytorch" else 1e-4)
    errors = [row for row in rows[1:] if row[-1]]
    flagged = [row for row in rows[1:] if row[-3] == "1"]
    assert len(errors) == 4  # text, empty, truncated, fake DICOM
    assert any(row[0].endswith("colour.png") for row in flagged)  # the colour picture: decision withheld
    assert all(row[1 + prob_columns] == "" and row[-2] for row in flagged)
    assert (summary.predicted, summary.unreadable, summary.flagged) == (
        len(rows) - 1 - len(errors),
        len(errors),
        len(flagged),
    )
    assert summary.backend == runner.backend
    counts = f"{summary.predicted} predicted, {len(errors)} unreadable, {len(flagged)} flagged"
    assert counts in summary.line()


def test_predict_to_csv_is_the_batch_path(
    inputs: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHEXLAB_CACHE", str(tmp_path / "cache"))
    model, info = load_model(MODELS / "nih-binary")
    summary = predict_to_csv(
        str(MODELS / "nih-binary"), list(inputs), tmp_path / "p.csv", batch_size=3, workers=0
    )
    assert summary.out == tmp_path / "p.csv" and summary.backend in ("onnxruntime", "pytorch")
    assert summary.notes == info.notes
    rows = read_csv(tmp_path / "p.csv")
    assert_same_rows(rows[1:], eager_rows(model, info, inputs), len(rows[0]) - 6, tol=1e-4)


def test_rows_stream_in_input_order_with_a_filled_summary(inputs: list[Path], tmp_path: Path) -> None:
    model, info = load_model(MODELS / "nih-binary")
    summary = BatchSummary()
    runner = ForwardRunner.for_model(model, backend="pytorch")
    rows = list(predict_rows(model, info, inputs, batch_size=4, workers=2, runner=runner, summary=summary))
    assert [row[0] for row in rows] == [str(path) for path in inputs]
    assert summary.predicted + summary.unreadable == len(inputs) and summary.backend == "pytorch"
