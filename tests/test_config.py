"""Run configuration: YAML + overrides, strict keys with suggestions, the resolved config round trip."""

from pathlib import Path

import pytest

from trainer.config import ConfigError, load_config, parse_override, save_config

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_defaults_then_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ntrain:\n  batch_size: 8\n  phases: [{epochs: 2, lr: 1e-3}]\n")
    cfg = load_config(path, ["train.batch_size=4", "data.root=/data", "model.head={type: mlp, widths: [64]}"])
    assert cfg.name == "x"
    assert cfg.train.batch_size == 4  # the override beats the file
    assert cfg.train.phases[0].lr == pytest.approx(1e-3)  # YAML 1.1 reads 1e-3 as a string; coerced
    assert cfg.data.root == "/data"
    assert cfg.model.head.type == "mlp"
    assert cfg.eval.n_bootstrap == 1000  # untouched default


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("trian:\n  epochs: 3\n", "did you mean 'train'"),
        ("train:\n  batch_szie: 3\n", "did you mean 'batch_size'"),
        ("train:\n  optimizer: adamm\n", "did you mean 'adam"),
        ("train:\n  batch_size: many\n", "train.batch_size must be of type int"),
        ("data:\n  task: regression\n", "data.task must be one of binary, multiclass, multilabel"),
        ("preprocess: [{op: clahee}]\n", "clahe"),
        ("augment:\n  rotation: 400\n", "augment.rotation"),
        ("train: [1, 2]\n", "train must be a mapping"),
    ],
)
def test_bad_config_is_explained(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(path)


def test_override_syntax() -> None:
    assert parse_override("train.phases=[{epochs: 1, lr: 0.1}]") == (
        ["train", "phases"],
        [{"epochs": 1, "lr": 0.1}],
    )
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("train.batch_size")


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/config.yaml")


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS[0], ["augment.scale=[0.8, 1.2]"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_is_valid(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name == path.stem
