"""Run configuration: YAML + overrides, strict keys with suggestions, the resolved config round trip."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from trainer.config import ConfigError, load_config, parse_override, save_config
from trainer.preprocess import Pipeline
from trainer.task import Task

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


MISTAKES = """\
name: demo
trian:
  epochs: 3
train:
  batch_size: many
  optimizer: adamm
  phases:
    - {epochs: 2, lr: 1.0e-3}
    - epochs: two
      lr: 1.0e-4
preprocess:
  - {op: clahe}
  - {op: clahee}
augment:
  hflip: false
  rotation: 400
"""


def test_every_problem_in_one_message_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "mistakes.yaml"
    path.write_text(MISTAKES)
    with pytest.raises(ConfigError) as err:
        load_config(path, ["eval.threshold=yuoden", "model.drop_rate=0.2", "data.task=regression"])
    lines = str(err.value).splitlines()
    assert lines[0] == "8 problems in the configuration:"
    expected = [
        (f"{path} line 2", "unknown config key 'trian' (did you mean 'train'?)"),
        (f"{path} line 5", "train.batch_size must be of type int, got 'many'"),
        (
            f"{path} line 6",
            "train.optimizer must be one of adamw, adam, sgd, got 'adamm' (did you mean 'adam'?)",
        ),
        (f"{path} line 9", "train.phases[1].epochs must be of type int, got 'two'"),
        (f"{path} line 13", "preprocess[1]: unknown preprocessing op 'clahee' (did you mean 'clahe'?)"),
        (f"{path} line 16", "augment.rotation must be in [0, 180] degrees"),
        ("override 'eval.threshold=yuoden'", "eval.threshold must be one of youden, sensitivity"),
    ]
    assert len(lines) == 1 + len(expected) + 1  # the task override is the eighth
    for line, (where, what) in zip(lines[1:], expected, strict=False):
        assert line.startswith(f"  - {where}: {what}"), line
    assert lines[-1].startswith("  - override 'data.task=regression': data.task must be one of binary")


def test_an_override_replaces_what_the_file_said_below_it(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  phases:\n    - {epochs: x}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["train.phases=[{epochs: 1, lr: many}]"])
    assert str(err.value) == (
        "override 'train.phases=[{epochs: 1, lr: many}]': train.phases[0].lr must be a number, got 'many'"
    )
    with pytest.raises(
        ConfigError, match=r"^override 'train.phases=\[\]': train.phases must list at least one"
    ):
        load_config(path, ["train.phases=[]"])
    with pytest.raises(ConfigError, match=r"^override 'name.x=1': name must be of type str, got \{'x': 1\}"):
        load_config(None, ["name.x=1"])


def test_parsed_once_into_typed_values(tmp_path: Path) -> None:
    cfg = load_config(None, ["data.task=binary", "preprocess=[clahe, {op: gamma, gamma: 1.5}]"])
    assert cfg.data.task is Task.BINARY
    assert isinstance(cfg.preprocess, Pipeline) and [s.op for s in cfg.preprocess] == ["clahe", "gamma"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.batch_size = 3  # type: ignore[misc]
    save_config(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["data"]["task"] == "binary"
    assert saved["preprocess"][1] == {"op": "gamma", "gamma": 1.5}
    assert load_config(tmp_path / "config.yaml") == cfg
