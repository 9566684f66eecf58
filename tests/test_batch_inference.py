"""trainer.batch_inference: the parallel core writes the rows `python -m trainer predict` writes today, in
input order (today's writes each batch's unreadable files before its readable ones)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.demo_support import synthetic_pixels, write_inputs
from trainer.batch_inference import BatchSummary, header, predict_rows, write_predictions
from trainer.export import load_model
from trainer.predict import collect_inputs, predict_to_csv
from trainer.runtime import ForwardRunner

MODELS = Path(__file__).resolve().parent.parent / "demo" / "models"


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def assert_same_rows(rows: list[list[str]], expected: list[list[str]], prob_columns: int, tol: float) -> None:
    """Equal rows; probabilities (6 decimals) within `tol`, since another runtime rounds the last digit."""
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected, strict=True):
        assert len(row) == len(want)
        assert row[0] == want[0] and row[1 + prob_columns :] == want[1 + prob_columns :]
        for got, value in zip(row[1 : 1 + prob_columns], want[1 : 1 + prob_columns], strict=True):
            assert (got == "") == (value == "")
            if value:
                assert abs(float(got) - float(value)) <= tol, (row[0], got, value)


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


@pytest.mark.parametrize(
    ("name", "backend", "workers"),
    [("nih-findings", "onnxruntime", 2), ("nih-binary", "pytorch", 0), ("pediatric-pneumonia", "auto", 1)],
)
def test_rows_equal_todays_predict_csv(
    name: str, backend: str, workers: int, inputs: list[Path], tmp_path: Path
) -> None:
    today = read_csv(
        predict_to_csv(str(MODELS / name), list(inputs), tmp_path / "today.csv", batch_size=3).out
    )
    model, info = load_model(MODELS / name)
    size = info.data_config["input_size"]
    runner = ForwardRunner.for_model(model, size, backend=backend, cache_dir=tmp_path)
    out = tmp_path / "parallel.csv"
    summary = write_predictions(model, info, inputs, out, batch_size=3, workers=workers, runner=runner)
    rows = read_csv(out)
    assert rows[0] == today[0] == header(info.task, info.label_names, info.negative_name)
    prob_columns = len(today[0]) - 4
    assert [row[0] for row in rows[1:]] == [str(path) for path in inputs]
    # The runner's logits are within 1e-4 of eager PyTorch's: probabilities within 0.25 * 1e-4 + rounding.
    assert_same_rows(sorted(rows[1:]), sorted(today[1:]), prob_columns, tol=3e-5)
    errors = [row for row in rows[1:] if row[-1]]
    flagged = [row for row in rows[1:] if not row[-1] and row[-2]]
    assert len(errors) == 4 and flagged  # text, empty, truncated, fake DICOM; the colour image is flagged
    assert (summary.predicted, summary.unreadable, summary.flagged) == (
        len(rows) - 1 - len(errors),
        len(errors),
        len(flagged),
    )
    assert summary.backend == runner.backend
    counts = f"{summary.predicted} predicted, {len(errors)} unreadable, {len(flagged)} flagged"
    assert counts in summary.line()


def test_rows_stream_in_input_order_with_a_filled_summary(inputs: list[Path], tmp_path: Path) -> None:
    model, info = load_model(MODELS / "nih-binary")
    summary = BatchSummary()
    runner = ForwardRunner.for_model(model, backend="pytorch")
    rows = list(predict_rows(model, info, inputs, batch_size=4, workers=2, runner=runner, summary=summary))
    assert [row[0] for row in rows] == [str(path) for path in inputs]
    assert summary.predicted + summary.unreadable == len(inputs) and summary.backend == "pytorch"
