"""hub_cards: the model card rendered from a run folder, parsed back as the Hub parses it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from hub_cards import CardError, CardInfo, render_card, write_card
from hub_cards.render import HEADLINE_METRICS
from tests.conftest import REPO_ROOT
from tests.fake_run import CARD, make_run_folder
from trainer.task import Task

HUB_SPLITS = {"test": "test", "val": "validation"}


@pytest.fixture(params=list(Task))
def run_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return make_run_folder(tmp_path / f"run-{request.param}", task=request.param)


def test_card_parses_back_with_hub_metadata(run_dir: Path) -> None:
    card = render_card(run_dir, repo_id="chexlab/kermany-test")
    assert isinstance(card, ModelCard)
    data = card.data
    assert data.license == CARD["license"]
    assert data.library_name == "timm"
    assert data.pipeline_tag == "image-classification"
    task = json.loads((run_dir / "metrics.json").read_text())["test"]["task"]
    assert {"chest-x-ray", "medical-imaging", "radiology", "chexlab", task, *CARD["tags"]} <= set(data.tags)
    assert data.model_name == "kermany-test"
    assert card.text.lstrip().startswith("# kermany-test")


def test_model_index_holds_every_headline_metric_of_both_splits(run_dir: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    results = render_card(run_dir).data.eval_results
    found = {(r.dataset_split, r.metric_type): r for r in results}

    expected = {
        (HUB_SPLITS[split], metric_type): metrics[split]["headline"][key]["value"]
        for split in ("val", "test")
        for key, metric_type, _ in HEADLINE_METRICS
        if metrics[split]["headline"][key]["value"] is not None
    }
    assert len(expected) >= 12  # the fabricated runs define (almost) every metric
    assert set(found) == set(expected)
    for key, value in expected.items():
        assert found[key].metric_value == pytest.approx(value, abs=5e-5)
        assert found[key].dataset_name == CARD["dataset_name"]
        assert found[key].task_type == "image-classification"


def test_body_sections_and_numbers(run_dir: Path) -> None:
    text = render_card(run_dir).content
    assert "not a medical device" in text
    assert "not for diagnosis" in text
    for heading in (
        "## Intended use",
        "### Out of scope",
        "## Training data",
        "## Preprocessing",
        "## Training recipe",
        "## Results",
        "### Operating point",
        "## Limitations",
        "## How to use",
        "## Citation",
    ):
        assert re.search(f"^{re.escape(heading)}$", text, re.MULTILINE), heading
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    auc = test["headline"]["auc"]
    # 3 decimals, with the 95 % interval
    assert f"{auc['value']:.3f} ({auc['ci'][0]:.3f}–{auc['ci'][1]:.3f})" in text
    assert f"{test['n_images']} images from {test['n_patients']} patients" in text
    assert "patient" in text and "bootstrap" in text
    for extra in CARD["limitations"]:
        assert f"- {extra}" in text
    assert CARD["data_citation"] in text
    assert CARD["data_license"] in text


def test_operating_point_and_per_class(tmp_path: Path) -> None:
    binary = render_card(make_run_folder(tmp_path / "b", task="binary")).content
    threshold = json.loads((tmp_path / "b" / "metrics.json").read_text())["test"]["thresholds"][0]
    assert f"at least **{threshold:.3f}**" in binary
    assert "Youden" in binary

    multilabel = render_card(make_run_folder(tmp_path / "m", task="multilabel")).content
    # Hernia has no positive label: its AUC is "n/a" with the reason, and the averages leave it out.
    hernia = next(line for line in multilabel.splitlines() if line.startswith("| Hernia |"))
    assert "| n/a |" in hernia
    assert "no positive labels" in hernia

    multiclass = render_card(make_run_folder(tmp_path / "c", task="multiclass")).content
    assert "argmax" in multiclass
    assert "| truth \\ predicted | normal | bacterial_pneumonia | viral_pneumonia |" in multiclass


def test_null_headline_metric_is_na_and_left_out_of_model_index(tmp_path: Path) -> None:
    run_dir = make_run_folder(tmp_path / "run", task="binary")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["val"]["headline"]["ppv"] = {"value": None, "ci": None}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))

    text = render_card(run_dir).content
    row = next(line for line in text.splitlines() if line.startswith("| PPV (precision) |"))
    assert row.endswith("| n/a |")
    assert '"n/a": undefined on that split' in text
    splits = {(r.dataset_split, r.metric_type) for r in ModelCard(text).data.eval_results}
    assert ("validation", "precision") not in splits
    assert ("test", "precision") in splits


def test_how_to_use_depends_on_the_head(tmp_path: Path) -> None:
    linear = render_card(make_run_folder(tmp_path / "linear"), repo_id="org/linear").content
    assert 'timm.create_model("hf-hub:org/linear", pretrained=True)' in linear
    assert 'load_model("hf-hub:org/linear")' in linear
    assert "python -m trainer predict hf-hub:org/linear" in linear

    mlp = render_card(
        make_run_folder(tmp_path / "mlp", head={"type": "mlp", "widths": [64, 16]}), repo_id="org/mlp"
    ).content
    assert "timm.create_model(" not in mlp
    assert "cannot rebuild" in mlp
    assert "64 → 16" in mlp

    local = render_card(tmp_path / "linear").content
    assert "local-dir:" in local and "hf-hub:" not in local.split("## How to use")[1]


def test_write_card_copies_plots_for_relative_links(tmp_path: Path) -> None:
    run_dir = make_run_folder(tmp_path / "run")
    model_dir = tmp_path / "run" / "model"
    readme = write_card(run_dir, model_dir, repo_id="org/name")

    text = readme.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == ["plots/confusion.png", "plots/roc.png", "plots/training_curves.png"]
    for link in links:
        assert (model_dir / link).read_bytes() == (run_dir / link).read_bytes()
    assert ModelCard.load(readme).data.library_name == "timm"


def test_rendering_is_deterministic(tmp_path: Path) -> None:
    run_dir = make_run_folder(tmp_path / "run", task="multiclass")
    assert render_card(run_dir, repo_id="a/b").content == render_card(run_dir, repo_id="a/b").content


def test_no_token_in_card(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = "hf_" + "T0kenT0kenT0kenT0kenT0kenT0ken12"
    monkeypatch.setenv("HF_TOKEN", fake)
    text = render_card(make_run_folder(tmp_path / "run"), repo_id="org/name").content
    assert fake not in text
    assert not re.search(r"hf_[A-Za-z0-9]{20,}", text)

    leaky = dict(CARD, citation=f"pushed with {fake}")
    with pytest.raises(CardError, match="token"):
        render_card(make_run_folder(tmp_path / "leaky", card=leaky))


def test_card_info_from_config_yaml(tmp_path: Path) -> None:
    run_dir = make_run_folder(tmp_path / "run")
    section = yaml.safe_load((run_dir / "config.yaml").read_text())["card"]
    assert CardInfo.from_dict(section) == CardInfo.from_dict(CARD)
    with pytest.raises(CardError, match="licence.*valid: .*license"):
        CardInfo.from_dict({"licence": "mit"})


def test_missing_license_is_said_plainly(tmp_path: Path) -> None:
    card = dict(CARD, license=None, data_license="")
    text = render_card(make_run_folder(tmp_path / "run", card=card)).content
    assert ModelCard(text).data.license is None
    assert "Model licence: not stated" in text
    assert "Data licence:** not stated" in text


def test_missing_run_files(tmp_path: Path) -> None:
    run_dir = make_run_folder(tmp_path / "run")
    (run_dir / "metrics.json").unlink()
    with pytest.raises(CardError, match=r"metrics\.json is missing"):
        render_card(run_dir)


def test_hub_cards_imports_neither_torch_nor_the_trainer_beyond_its_task_type() -> None:
    code = (
        "import sys, hub_cards; "
        "extra = sorted(m for m in sys.modules if m == 'torch' or m.startswith('trainer.')); "
        "print(extra); sys.exit(extra != ['trainer.errors', 'trainer.task'])"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("task", list(Task))
def test_calibration_ood_and_subgroup_sections(tmp_path: Path, task: Task) -> None:
    run_dir = make_run_folder(tmp_path / "run", task=task, trust=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    card = render_card(run_dir)
    text = card.content

    assert re.search(r"^### Calibration$", text, re.MULTILINE)
    calibration = metrics["calibration"]
    for split, display in (("val", "Validation"), ("test", "Test")):
        entry = calibration["metrics"][split]
        row = next(line for line in text.splitlines() if line.startswith(f"| {display} | "))
        cells = [cell.strip().strip("*") for cell in row.strip("|").split("|")]
        assert cells[1] == str(entry["after"]["n"])
        assert cells[2:9] == [
            f"{entry['before']['ece']:.3f}",
            f"{entry['after']['ece']:.3f}",
            f"{entry['ece_chance_95']:.3f}",
            f"{entry['before']['brier']:.3f}",
            f"{entry['after']['brier']:.3f}",
            f"{entry['before']['nll']:.3f}",
            f"{entry['after']['nll']:.3f}",
        ]
    assert f"{calibration['temperatures'][0]:.3f}" in text
    if task.multi_label:
        assert "Temperatures per finding" in text
    assert "![Reliability diagram before and after calibration](plots/reliability.png)" in text
    index = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    calibrated_test = calibration["metrics"]["test"]["after"]
    assert index[("test", "ece")] == pytest.approx(calibrated_test["ece"], abs=5e-5)
    assert index[("test", "brier")] == pytest.approx(calibrated_test["brier"], abs=5e-5)

    assert re.search(r"^### Out-of-distribution gate$", text, re.MULTILINE)
    assert "**1.23**" in text and "passes 99 % of the 80 validation images" in text
    assert "flags **2.2 %** of the 90 images" in text

    assert re.search(r"^### Subgroups \(test split\)$", text, re.MULTILINE)
    assert "#### Sex" in text and "#### Age band (years)" in text
    for column, groups in metrics["subgroups"]["columns"].items():
        for group in groups:
            row = next(line for line in text.splitlines() if line.startswith(f"| {group['group']} | "))
            expected = "n/a" if group["auc"] is None else f"{group['auc']['value']:.3f}"
            assert f"| {expected}" in row, (column, row)


def test_runs_without_trust_sections_render_as_before(run_dir: Path) -> None:
    text = render_card(run_dir).content
    for heading in ("### Calibration", "### Out-of-distribution gate", "### Subgroups"):
        assert heading not in text
    assert all(r.metric_type not in ("ece", "brier") for r in render_card(run_dir).data.eval_results)
