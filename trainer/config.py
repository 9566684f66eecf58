"""Run configuration: dataclass defaults, overridden by a YAML file, then by `key.path=value` CLI overrides.

The resolved configuration is written next to every run's outputs (`config.yaml`), so a run folder always
says exactly how it was produced, and `--resume` reads it back.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hub_cards import CardInfo
from trainer.labels import TASKS
from trainer.modeling import HeadConfig
from trainer.transforms import AugmentConfig

LABEL_FORMATS = ("csv", "folder", "nih")


class ConfigError(ValueError):
    """A configuration file or override that does not fit the schema."""


@dataclass
class DataConfig:
    """Where the images and labels are, and how to split them."""

    format: str = "csv"  # csv | folder | nih
    root: str = ""  # every image path must resolve under this folder
    labels: str | None = None  # the CSV (csv, nih); relative paths are relative to `root`
    path_column: str = "path"
    patient_column: str | None = "patient_id"
    label_column: str | None = None  # single-label CSV (multiclass, or binary with `positive`)
    label_columns: list[str] | None = None  # multilabel 0/1 columns; None = every other column
    task: str = "multiclass"  # binary | multiclass | multilabel
    positive: str | None = None  # binary from a single label column: the positive value
    normal_label: str | None = None  # binary derived from multilabel: the "normal" column (e.g. No_Finding)
    positive_name: str = "abnormal"
    negative_name: str = "normal"
    findings: list[str] | None = None  # multilabel: keep only these findings
    min_positives: int = 0  # multilabel: drop findings with fewer positives than this
    train_val_list: str | None = None  # NIH official lists
    test_list: str | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 0
    split_file: str | None = None  # reuse an existing split.csv instead of drawing a new split
    check_decode: bool = True  # decode every image once before training, to report bad files up front
    num_workers: int = 2
    cache_dir: str | None = None  # on-disk cache of preprocessed images; None = no cache
    name: str | None = None  # dataset name for the model card (defaults to the root folder name)
    subgroup_columns: list[str] | None = None  # `evaluate` reports metrics per group, e.g. [sex, age, view]
    metadata: str | None = None  # CSV holding those columns, keyed by path (relative to root); None = labels


@dataclass
class ModelConfig:
    """The network: any timm architecture, a head, and where its initial weights come from."""

    arch: str = "tf_efficientnet_lite0"
    init: str | None = None  # None | timm[:tag] | file:PATH.safetensors | hf-hub:org/name | local-dir:PATH
    head: HeadConfig = field(default_factory=HeadConfig)
    new_head: bool = False  # with a chexlab init whose labels differ from this run's: train a fresh head
    drop_rate: float = 0.2
    input_size: int | None = None  # None = the architecture's own pretrained_cfg size


@dataclass
class PhaseConfig:
    """One phase of the schedule (e.g. backbone frozen at a high lr, then everything at a low one)."""

    epochs: int = 10
    lr: float = 3e-4
    freeze_backbone: bool = False


@dataclass
class TrainConfig:
    """Optimisation."""

    phases: list[PhaseConfig] = field(default_factory=lambda: [PhaseConfig()])
    batch_size: int = 32
    optimizer: str = "adamw"  # adamw | adam | sgd
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    schedule: str = "cosine"  # cosine | plateau | constant (within each phase)
    warmup_epochs: float = 0.0
    grad_accum: int = 1
    mixed_precision: str = "auto"  # auto | no | fp16 | bf16
    class_weights: bool = False  # multiclass: weight classes by inverse frequency
    pos_weight: bool = False  # binary / multilabel: weight positives by negatives / positives
    max_grad_norm: float | None = 1.0
    monitor: str = "auc"  # validation metric that picks the best epoch: auc | loss | accuracy
    early_stopping_patience: int | None = None  # epochs without improvement before a phase ends
    max_steps_per_epoch: int | None = None  # cap for smoke runs
    seed: int = 0


@dataclass
class EvalConfig:
    """How the trained model is judged."""

    threshold: str = "youden"  # youden | sensitivity  (chosen on the validation split)
    target_sensitivity: float = 0.9
    n_bootstrap: int = 1000
    tta: bool = False  # average predictions over small scale jitters of each image


@dataclass
class RunConfig:
    """Everything a `fit` run needs."""

    name: str = "run"
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    preprocess: list[Any] = field(default_factory=list)  # the Pipeline's JSON list form
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    card: CardInfo = field(default_factory=CardInfo)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def _did_you_mean(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _build(cls: type, values: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys with a suggestion."""
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise ConfigError(f"{where.rstrip('.') or 'config'} must be a mapping, got {type(values).__name__}")
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in types_:
            raise ConfigError(
                f"unknown config key '{where}{key}'{_did_you_mean(key, list(types_))}; "
                f"valid keys here: {', '.join(types_)}"
            )
        kwargs[key] = _coerce(types_[key], value, f"{where}{key}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where + ".")
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(inner[0], value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        item_types = typing.get_args(tp)
        if len(item_types) != len(value):
            raise ConfigError(f"{where} must have {len(item_types)} items, got {value!r}")
        return tuple(
            _coerce(t, v, f"{where}[{i}]") for i, (t, v) in enumerate(zip(item_types, value, strict=True))
        )
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (item_type,) = typing.get_args(tp) or (Any,)
        return [_coerce(item_type, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is float and isinstance(value, int | str) and not isinstance(value, bool):
        try:
            return float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
        except ValueError:
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if tp is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where} must be of type {tp.__name__}, got {value!r}")
    return value


def _validate(cfg: RunConfig) -> None:
    if cfg.data.task not in TASKS:
        raise ConfigError(f"data.task must be one of {', '.join(TASKS)}, got '{cfg.data.task}'")
    if cfg.data.format not in LABEL_FORMATS:
        raise ConfigError(f"data.format must be one of {', '.join(LABEL_FORMATS)}, got '{cfg.data.format}'")
    if not cfg.train.phases:
        raise ConfigError("train.phases must list at least one phase")
    choices = {
        "train.optimizer": (cfg.train.optimizer, ("adamw", "adam", "sgd")),
        "train.schedule": (cfg.train.schedule, ("cosine", "plateau", "constant")),
        "train.mixed_precision": (cfg.train.mixed_precision, ("auto", "no", "fp16", "bf16")),
        "train.monitor": (cfg.train.monitor, ("auc", "loss", "accuracy")),
        "eval.threshold": (cfg.eval.threshold, ("youden", "sensitivity")),
    }
    for key, (value, valid) in choices.items():
        if value not in valid:
            raise ConfigError(
                f"{key} must be one of {', '.join(valid)}, got '{value}'{_did_you_mean(value, valid)}"
            )
    from trainer.preprocess import Pipeline  # validates op names and parameters with their own messages

    Pipeline.from_list(cfg.preprocess)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `train.batch_size=16` into (["train", "batch_size"], 16); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{text}' is not of the form key.path=value (e.g. train.batch_size=16)")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def _set_path(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set '{'.'.join(path)}': '{part}' is not a section")
    node[path[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then the YAML file at `path`, then `key.path=value` overrides; validated.

    Raises:
        ConfigError: an unknown key (with a "did you mean"), a wrong type or an invalid choice.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    for text in overrides or []:
        _set_path(tree, *parse_override(text))
    cfg = _build(RunConfig, tree, "")
    _validate(cfg)
    return cfg


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config as plain data (what `config.yaml` holds)."""
    return _plain(dataclasses.asdict(cfg))


def save_config(cfg: RunConfig, path: Path) -> None:
    """Write the resolved config as YAML."""
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
