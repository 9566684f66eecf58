"""Run configuration: dataclass defaults, overridden by a YAML file, then by `key.path=value` CLI overrides.

The configuration is parsed once, into frozen dataclasses of typed values (`Literal` choices, a `Task`, a
`Pipeline`), so nothing downstream re-parses it or writes into it. It is checked completely before it is
rejected: one `ConfigError` lists every problem, each with the line of the YAML file or the CLI override it
comes from. The resolved configuration is written next to every run's outputs (`config.yaml`), so a run folder
always says exactly how it was produced, and `--resume` reads it back.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from hub_cards import CardInfo
from trainer.errors import ChexlabError
from trainer.modeling import HeadConfig
from trainer.preprocess import Pipeline, PreprocessError, Step
from trainer.task import Task
from trainer.transforms import AugmentConfig

LabelFormat = Literal["csv", "folder", "nih", "hf", "tfrecord"]
Optimizer = Literal["adamw", "adam", "sgd"]
Schedule = Literal["cosine", "plateau", "constant"]
MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
Monitor = Literal["auc", "loss", "accuracy"]
ThresholdMethod = Literal["youden", "sensitivity"]

NON_EMPTY = "non-empty"  # `Annotated` marker: a list that must hold at least one item

# A place in the config tree: keys of mappings and indices of lists, e.g. ("train", "phases", 1, "lr").
TreePath = tuple[str | int, ...]


class ConfigError(ChexlabError, ValueError):
    """A configuration file or override that does not fit the schema; the message lists every problem."""


@dataclass(frozen=True)
class DataConfig:
    """Where the images and labels are, and how to split them."""

    format: LabelFormat = "csv"
    root: str = ""  # the images must lie under this folder; hf: the dataset folder, or hf-hub:org/name
    labels: str | None = None  # the CSV (csv, nih); tfrecord: a glob of record files; relative to `root`
    path_column: str = "path"
    image_column: str = "image"  # hf: the image column; tfrecord: the encoded-image feature
    patient_column: str | None = "patient_id"
    patient_pattern: str | None = None  # a regex whose group `patient` (or first group) is the patient id
    dataset_splits: list[str] | None = None  # hf: the splits to read (default all; "test" = official test)
    label_column: str | None = None  # single-label CSV (multiclass, or binary with `positive`)
    label_columns: list[str] | None = None  # multilabel 0/1 columns; None = every other column
    task: Task = Task.MULTICLASS
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
    check_decode: bool = False  # false: header check of every image; true: decode each (cached across runs)
    num_workers: int = 2
    cache_dir: str | None = None  # on-disk cache of preprocessed images; None = no cache
    name: str | None = None  # dataset name for the model card (defaults to the root folder name)
    subgroup_columns: list[str] | None = None  # fit (test split), evaluate: metrics per group, e.g. [sex]
    metadata: str | None = None  # CSV holding those columns, keyed by path (relative to root); None = labels


@dataclass(frozen=True)
class ModelConfig:
    """The network: any timm architecture, a head, and where its initial weights come from."""

    arch: str = "tf_efficientnet_lite0"
    init: str | None = None  # None | timm[:tag] | file:PATH.safetensors | hf-hub:org/name | local-dir:PATH
    head: HeadConfig = field(default_factory=HeadConfig)
    new_head: bool = False  # with a chexlab init whose labels differ from this run's: train a fresh head
    drop_rate: float = 0.2
    input_size: int | None = None  # None = the architecture's own pretrained_cfg size


@dataclass(frozen=True)
class PhaseConfig:
    """One phase of the schedule (e.g. backbone frozen at a high lr, then everything at a low one)."""

    epochs: int = 10
    lr: float = 3e-4
    freeze_backbone: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation."""

    phases: Annotated[list[PhaseConfig], NON_EMPTY] = field(default_factory=lambda: [PhaseConfig()])
    batch_size: int = 32
    optimizer: Optimizer = "adamw"
    weight_decay: float = 1e-4
    decay_bias_and_norm: bool = True  # False: timm's grouping, no weight decay on biases and norm weights
    momentum: float = 0.9  # sgd only
    schedule: Schedule = "cosine"  # within each phase
    warmup_epochs: float = 0.0
    grad_accum: int = 1
    mixed_precision: MixedPrecision = "auto"
    class_weights: bool = False  # multiclass: weight classes by inverse frequency
    pos_weight: bool = False  # binary / multilabel: weight positives by negatives / positives
    max_grad_norm: float | None = 1.0
    monitor: Monitor = "auc"  # validation metric that picks the best epoch
    early_stopping_patience: int | None = None  # epochs without improvement before a phase ends
    max_steps_per_epoch: int | None = None  # cap for smoke runs
    seed: int = 0


@dataclass(frozen=True)
class EvalConfig:
    """How the trained model is judged."""

    threshold: ThresholdMethod = "youden"  # chosen on the validation split
    target_sensitivity: float = 0.9
    n_bootstrap: int = 1000
    tta: bool = False  # average predictions over small scale jitters of each image


@dataclass(frozen=True)
class RunConfig:
    """Everything a `fit` run needs."""

    name: str = "run"
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    preprocess: Pipeline = field(default_factory=Pipeline)  # YAML: the Pipeline's JSON list form
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    card: CardInfo = field(default_factory=CardInfo)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


# ------------------------------------------------------------------------------------- where values come from


@dataclass
class _Origins:
    """Where each part of the config tree was given: a line of the YAML file, or a CLI override."""

    file: str | None = None
    lines: dict[TreePath, int] = field(default_factory=dict)
    overrides: dict[TreePath, tuple[int, str]] = field(default_factory=dict)  # (position, KEY=VALUE)

    def set_override(self, path: TreePath, position: int, text: str) -> None:
        """Override number `position` replaced the subtree at `path`; the file's lines below it are void."""
        for origins in (self.lines, self.overrides):
            for known in [p for p in origins if p[: len(path)] == path]:
                del origins[known]
        self.overrides[path] = (position, text)

    def locate(self, path: TreePath) -> tuple[str, tuple[int, int]]:
        """Where the innermost given part of `path` comes from, and a key that sorts file lines first.

        The place is 'FILE line N', "override 'KEY=VALUE'" or '' (a default).
        """
        for end in range(len(path), -1, -1):
            prefix = path[:end]
            if prefix in self.overrides:
                position, text = self.overrides[prefix]
                return f"override '{text}'", (1, position)
            if prefix in self.lines:
                return f"{self.file} line {self.lines[prefix]}", (0, self.lines[prefix])
        return "", (2, 0)


def _node_lines(node: yaml.Node, path: TreePath, lines: dict[TreePath, int]) -> None:
    """Record the 1-based line of every key and list item below `node` (PyYAML's marks are 0-based)."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*path, key.value if isinstance(key, yaml.ScalarNode) else str(key.value))
            lines[child] = key.start_mark.line + 1
            _node_lines(value, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            _node_lines(item, (*path, index), lines)


def _read_yaml(path: str | Path, origins: _Origins) -> Any:
    """The YAML document at `path`, recording the line of each of its keys and items in `origins`."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        tree = loader.construct_document(node) if node is not None else {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    finally:
        loader.dispose()
    origins.file = str(path)
    if node is not None:
        origins.lines[()] = node.start_mark.line + 1
        _node_lines(node, (), origins.lines)
    return tree


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `train.batch_size=16` into (["train", "batch_size"], 16); the value is parsed as YAML.

    Raises:
        ConfigError: not of the form key.path=value, or a value that is not valid YAML.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{text}' is not of the form key.path=value (e.g. train.batch_size=16)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': the value is not valid YAML ({err})") from None
    return key.strip().split("."), value


def _apply_override(tree: dict[str, Any], position: int, text: str, origins: _Origins) -> str | None:
    """Set override number `position`, `key.path=value`, in `tree`; returns what is wrong with it, or None."""
    try:
        path, value = parse_override(text)
    except ConfigError as err:
        return str(err)
    node = tree
    for depth, part in enumerate(path[:-1]):
        if part not in node:  # a section this override brings in is its doing
            origins.overrides[tuple(path[: depth + 1])] = (position, text)
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            section = ".".join(path[: depth + 1])
            return f"override '{text}': cannot set '{'.'.join(path)}', '{section}' is not a section"
    node[path[-1]] = value
    origins.set_override(tuple(path), position, text)
    return None


# ------------------------------------------------------------------------------------------------ checking


class _Invalid:
    """A value that did not fit its type; its problem has been recorded."""


INVALID = _Invalid()


def _did_you_mean(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _name(path: TreePath) -> str:
    """("train", "phases", 1, "lr") -> "train.phases[1].lr"."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


class _Checker:
    """Builds typed config values from plain YAML data, recording every problem instead of stopping."""

    def __init__(self, origins: _Origins) -> None:
        self.origins = origins
        self._problems: list[tuple[tuple[int, int], str]] = []

    def problem(self, path: TreePath, message: str) -> _Invalid:
        """Record what is wrong at `path`, with where that part of the config was given."""
        where, order = self.origins.locate(path)
        self.add(order, f"{where}: {message}" if where else message)
        return INVALID

    def add(self, order: tuple[int, int], text: str) -> None:
        """Record a problem that already says where it is; `order` sorts it among the others."""
        self._problems.append((order, text))

    @property
    def problems(self) -> list[str]:
        """Every problem: the file's in line order, then the overrides' in the order given."""
        return [text for _, text in sorted(self._problems, key=lambda item: item[0])]

    def build(self, cls: type, values: Any, path: TreePath) -> Any:
        """Dataclass `cls` from a mapping; unknown keys are problems (with a suggestion)."""
        if values is None:
            values = {}
        if not isinstance(values, dict):
            return self.problem(
                path, f"{_name(path) or 'the config'} must be a mapping, got {type(values).__name__}"
            )
        types_ = _field_types(cls)
        kwargs, valid = {}, True
        for key, value in values.items():
            child = (*path, key)
            if key not in types_:
                self.problem(
                    child,
                    f"unknown config key '{_name(child)}'{_did_you_mean(str(key), list(types_))}; "
                    f"valid keys here: {', '.join(types_)}",
                )
                valid = False
                continue
            kwargs[key] = self.coerce(types_[key], value, child)
            valid = valid and kwargs[key] is not INVALID
        if not valid:
            return INVALID
        try:
            return cls(**kwargs)
        except ValueError as err:  # the section's own checks (e.g. augment ranges, the head type)
            # Their messages name the field ("augment.rotation must be ..."): point at its line.
            named = [(*path, key) for key in kwargs if f"{_name((*path, key))} " in f"{err} "]
            return self.problem(named[0] if len(named) == 1 else path, str(err))

    def coerce(self, tp: Any, value: Any, path: TreePath) -> Any:
        """`value` as type `tp`, or INVALID (with its problem recorded)."""
        origin, args, name = typing.get_origin(tp), typing.get_args(tp), _name(path)
        if origin is Annotated:
            inner = self.coerce(args[0], value, path)
            if NON_EMPTY in args[1:] and inner is not INVALID and not inner:
                return self.problem(path, f"{name} must list at least one item")
            return inner
        if tp is Pipeline:
            return self.pipeline(value, path)
        if dataclasses.is_dataclass(tp):
            return self.build(typing.cast(type, tp), value, path)
        if origin in (types.UnionType, typing.Union):
            if value is None and type(None) in args:
                return None
            return self.coerce(next(a for a in args if a is not type(None)), value, path)
        if origin is Literal or (isinstance(tp, type) and issubclass(tp, Enum)):
            choices = [str(a) for a in args] if origin is Literal else [member.value for member in tp]
            if isinstance(value, str) and value in choices:
                return tp(value) if origin is not Literal else value
            hint = _did_you_mean(value, choices) if isinstance(value, str) else ""
            return self.problem(path, f"{name} must be one of {', '.join(choices)}, got {value!r}{hint}")
        if origin in (tuple, list):
            if not isinstance(value, list | tuple):
                return self.problem(path, f"{name} must be a list, got {value!r}")
            if origin is tuple and len(args) != len(value):
                return self.problem(path, f"{name} must have {len(args)} items, got {value!r}")
            item_types = args if origin is tuple else [args[0] if args else Any] * len(value)
            items = [
                self.coerce(t, v, (*path, i)) for i, (t, v) in enumerate(zip(item_types, value, strict=True))
            ]
            if any(item is INVALID for item in items):
                return INVALID
            return origin(items)
        return self.scalar(tp, value, path)

    def scalar(self, tp: Any, value: Any, path: TreePath) -> Any:
        name = _name(path)
        if tp is Any:
            return value
        if tp is float and isinstance(value, int | str) and not isinstance(value, bool):
            try:
                return float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
            except ValueError:
                return self.problem(path, f"{name} must be a number, got {value!r}")
        if tp is str and isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            return self.problem(path, f"{name} must be of type {tp.__name__}, got {value!r}")
        return value

    def pipeline(self, value: Any, path: TreePath) -> Pipeline | _Invalid:
        """A Pipeline from its JSON list form; every bad step is its own problem."""
        if value is None:
            return Pipeline()
        if not isinstance(value, list):
            return self.problem(path, f"{_name(path)} must be a list of preprocessing steps, got {value!r}")
        steps: list[Step | _Invalid] = []
        for index, spec in enumerate(value):
            try:
                steps.append(Step.from_spec(spec))
            except PreprocessError as err:
                steps.append(self.problem((*path, index), f"{_name((*path, index))}: {err}"))
        if any(isinstance(step, _Invalid) for step in steps):
            return INVALID
        return Pipeline(tuple(typing.cast(list[Step], steps)))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then the YAML file at `path`, then `key.path=value` overrides; checked completely.

    Raises:
        ConfigError: a missing or unparsable file, or every unknown key (with a "did you mean"), wrong type,
            invalid choice and bad preprocessing step at once, each with its file line or override.
    """
    origins = _Origins()
    tree = _read_yaml(path, origins) if path is not None else {}
    checker = _Checker(origins)
    if isinstance(tree, dict):
        for position, text in enumerate(overrides or []):
            trouble = _apply_override(tree, position, text, origins)
            if trouble is not None:
                checker.add((1, position), trouble)
    cfg = checker.build(RunConfig, tree, ())
    if checker.problems:
        count = len(checker.problems)
        if count == 1:
            raise ConfigError(checker.problems[0])
        raise ConfigError(
            f"{count} problems in the configuration:\n" + "\n".join(f"  - {p}" for p in checker.problems)
        )
    return cfg


# ------------------------------------------------------------------------------------------------ writing


def _plain(value: Any) -> Any:
    if isinstance(value, Pipeline):
        return value.to_list()
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config as plain data (what `config.yaml` holds): the pipeline as its list, the task as its name."""
    return _plain(cfg)


def save_config(cfg: RunConfig, path: Path) -> None:
    """Write the resolved config as YAML."""
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
