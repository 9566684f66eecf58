"""Classifiers on timm: any architecture by name, a choice of heads, and where the first weights come from.

Every model is a plain timm model with `in_chans=3` (grayscale radiographs are replicated to three channels
upstream, so every RGB pipeline on the Hub works) and `num_classes` outputs (binary = one logit). With the
default linear head, `timm.create_model(arch, num_classes=...)` loads its weights unchanged. The "mlp" and
"dense_bn" heads replace the module named by `model.pretrained_cfg["classifier"]`, after timm's own pooling
and dropout; `model.get_classifier()` then returns that head, and timm's `model.reset_classifier(n)` puts a
fresh linear classifier back in its place (timm's meaning of "reset").

Weight sources (`init`):
    None                      random initialisation
    "timm" / "timm:<tag>"     timm's pretrained weights from the Hugging Face Hub (needs a connection or a
                              filled cache)
    "file:<path>.safetensors" a local safetensors file holding a timm state dict for `arch`
    "hf-hub:org/name[@rev]" / "local-dir:<path>"
                              a saved chexlab model (CXR-to-CXR transfer): its backbone, and its head too when
                              the label set and head are the same
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import timm
import torch
from timm.data import resolve_model_data_config
from torch import Tensor, nn

from trainer import simple_cnn  # noqa: F401  (registers chexlab_simple_cnn with timm)
from trainer.errors import ChexlabError
from trainer.model_source import INIT_KINDS, ModelSource, ModelSourceError, SourceKind, read_model_folder

log = logging.getLogger(__name__)

HEAD_TYPES = ("linear", "mlp", "dense_bn")


class ArchitectureError(ChexlabError, ValueError):
    """An architecture chexlab cannot build or adapt: unknown to timm, or a classifier it cannot replace."""


# pretrained_cfg keys that describe the input a saved model was trained on; a transferred backbone keeps them
DATA_CFG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


@dataclass
class HeadConfig:
    """The layers between timm's pooled features and the outputs.

    Attributes:
        type: "linear" (timm's own classifier), "mlp" or "dense_bn".
            mlp: one block per entry of `widths`: Linear -> ReLU -> BatchNorm1d (if `batch_norm`) ->
            Dropout (if `dropout`), then Linear -> outputs. The BatchNorm follows the activation as in the
            Keras recipes this mirrors (`Dense(n, activation="relu")` then `BatchNormalization()`).
            inceptionv3-nih15 is `widths: [512, 128, 32]`, `batch_norm_last: false`
            (Dense 512 -> BN -> Dense 128 -> BN -> Dense 32 -> Dense out).
            dense_bn: efficientnet-nih14 (Kufel et al. 2023) has "GlobalAveragePooling, Dense,
            BatchNormalization" after the backbone; read literally: Linear -> num_classes, then BatchNorm1d
            over those outputs (the sigmoid is applied by the loss). A hidden Dense + BN before a separate
            output layer is `type: mlp, widths: [n]`. Being a BatchNorm, it needs training batches of two or
            more images.
        widths: mlp hidden widths, e.g. [512, 128, 32].
        batch_norm: mlp: BatchNorm1d after each hidden layer.
        batch_norm_last: mlp: with `batch_norm`, also after the last hidden layer (the one feeding the
            outputs).
        dropout: mlp: dropout after each hidden layer. (Dropout before the head is `drop_rate`, timm's.)
    """

    type: str = "linear"
    widths: list[int] = field(default_factory=list)
    batch_norm: bool = True
    batch_norm_last: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.type not in HEAD_TYPES:
            raise ValueError(f"unknown head type '{self.type}'; valid: {', '.join(HEAD_TYPES)}")
        if self.type == "mlp" and (not self.widths or any(int(w) < 1 for w in self.widths)):
            raise ValueError(
                f"an mlp head needs positive hidden widths, e.g. widths: [512, 128]; got {self.widths}"
            )
        if self.type != "mlp" and self.widths:
            raise ValueError(f"head widths apply to type mlp only; a {self.type} head has no hidden layers")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"head dropout must be in [0, 1), got {self.dropout}")
        if self.type != "mlp" and self.dropout:
            raise ValueError(
                f"head dropout applies to type mlp only; for a {self.type} head use drop_rate "
                "(dropout before the head)"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> HeadConfig:
        """Build from a config.json/YAML mapping.

        Raises:
            ValueError: an unknown key or an invalid value.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown head config keys {unknown}; valid: {', '.join(names)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for config.json."""
        return dataclasses.asdict(self)


class DenseHead(nn.Sequential):
    """An "mlp" or "dense_bn" head (see HeadConfig), in place of timm's linear classifier.

    Like `nn.Linear`, it has `in_features` and `out_features`; `config` is the HeadConfig it was built from.
    """

    def __init__(self, in_features: int, num_classes: int, config: HeadConfig) -> None:
        if config.type == "dense_bn":
            layers: list[nn.Module] = [nn.Linear(in_features, num_classes), nn.BatchNorm1d(num_classes)]
        elif config.type == "mlp":
            layers, width_in = [], in_features
            for index, width in enumerate(config.widths):
                layers += [nn.Linear(width_in, width), nn.ReLU()]
                last = index == len(config.widths) - 1
                if config.batch_norm and (config.batch_norm_last or not last):
                    layers.append(nn.BatchNorm1d(width))
                if config.dropout:
                    layers.append(nn.Dropout(config.dropout))
                width_in = width
            layers.append(nn.Linear(width_in, num_classes))
        else:
            raise ValueError(f"DenseHead builds mlp and dense_bn heads, not '{config.type}'")
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = num_classes
        self.config = config


def create_classifier(
    arch: str,
    num_classes: int,
    *,
    head: HeadConfig | None = None,
    init: str | None = None,
    drop_rate: float = 0.0,
    label_names: Sequence[str] | None = None,
    new_head: bool = False,
    **timm_kwargs: Any,
) -> nn.Module:
    """A timm classifier with `num_classes` outputs, the given head, initialised from `init`.

    Args:
        arch: any timm architecture name (`timm.list_models()`), or "chexlab_simple_cnn".
        num_classes: outputs (binary: 1; multiclass and multilabel: one per class or finding).
        head: the head; None = linear, or for a chexlab `init` the saved model's own head.
        init: where the weights come from; see the module docstring.
        drop_rate: dropout before the head (timm's `drop_rate`).
        label_names: the output names, in order. With a chexlab `init`, its head is kept only when these equal
            its saved `label_names` (and the head config is the same); otherwise the head is re-initialised.
        new_head: with a chexlab `init` whose labels differ from `label_names`, train a fresh head on the
            transferred backbone; without it such a disagreement is an error, since it is usually a mistake.
        **timm_kwargs: passed to `timm.create_model` (e.g. drop_path_rate, global_pool).

    Raises:
        ValueError: an invalid argument or head.
        ModelSourceError: `init` cannot be used (missing, offline, pickle-based, another architecture, ...).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1 (binary = 1 logit), got {num_classes}")
    if timm_kwargs.get("in_chans", 3) != 3:
        raise ValueError(
            "chexlab models take 3-channel input (grayscale replicated) so that every RGB pipeline on the "
            f"Hub works; got in_chans={timm_kwargs['in_chans']}"
        )
    kind, location = _parse_init(init)
    timm_kwargs["drop_rate"] = drop_rate
    if kind == "chexlab":
        return _transfer_from_chexlab(arch, num_classes, location, head, label_names, new_head, timm_kwargs)
    head = head or HeadConfig()
    if kind == "timm":
        model = _timm_pretrained(arch, location, num_classes, timm_kwargs)
    elif kind == "file":
        model = _from_file(arch, Path(location), num_classes, timm_kwargs)
    else:
        model = _create(arch, num_classes, timm_kwargs)
    _install_head(model, head)
    return model


def _create(arch: str, num_classes: int, timm_kwargs: dict[str, Any]) -> nn.Module:
    """timm.create_model with random weights; an unknown name is the user's to fix, not a crash."""
    try:
        return timm.create_model(arch, num_classes=num_classes, **timm_kwargs)
    except RuntimeError:
        if timm.is_model(arch):
            raise
        raise ArchitectureError(_unknown_architecture(arch)) from None


def _unknown_architecture(arch: str) -> str:
    return f"unknown timm architecture '{arch}'; see timm.list_models()"


def channels_last(model: nn.Module) -> nn.Module:
    """`model` with its 4-D weights stored channels-last (in place), the layout PyTorch's CPU convolutions run
    fastest in.

    Measured on 2 cores with EfficientNet-Lite0 at 224 px (issue 16): the eager forward 1.35x faster, one
    Grad-CAM 29.8 -> 27.1 ms, a training step at batch 16 1.40 -> 0.77 s (with `channels_last_batch` inputs).
    Outputs are unchanged up to float rounding; saved weights are made contiguous again (trainer.export,
    trainer.checkpoint), so files do not depend on it.
    """
    return model.to(memory_format=torch.channels_last)


def channels_last_batch(images: Tensor) -> Tensor:
    """A (N, C, H, W) batch in the layout of a `channels_last` model (other shapes as they are)."""
    return images.contiguous(memory_format=torch.channels_last) if images.dim() == 4 else images


def model_from_folder(config: Mapping[str, Any], state_dict: Mapping[str, Tensor]) -> nn.Module:
    """Rebuild a saved chexlab model (the pair `read_model_folder` returns) with all its weights.

    Raises:
        ModelSourceError: the weights do not fit the architecture and head that config.json describes.
    """
    model = _build_like(config, config["architecture"], int(config["num_classes"]), saved_head(config), {})
    labels = saved_label_names(config)
    if labels is not None:
        model.pretrained_cfg["label_names"] = labels
    _load_weights(model, state_dict, with_head=True, source="the saved model")
    return model


def saved_head(config: Mapping[str, Any]) -> HeadConfig:
    """The head a saved model's config.json describes (linear when it has no chexlab block)."""
    return HeadConfig.from_dict((config.get("chexlab") or {}).get("head") or {})


def saved_label_names(config: Mapping[str, Any]) -> list[str] | None:
    """A saved model's label names in output order (timm allows a list or an {index: name} mapping)."""
    names = config.get("label_names", config.get("pretrained_cfg", {}).get("label_names"))
    if isinstance(names, Mapping):
        return [names[key] for key in sorted(names, key=int)]
    return list(names) if names is not None else None


def head_config(model: nn.Module) -> HeadConfig:
    """The HeadConfig of a model made by `create_classifier` (what export writes to config.json)."""
    classifier = model.get_classifier()
    return classifier.config if isinstance(classifier, DenseHead) else HeadConfig()


def classifier_name(model: nn.Module) -> str:
    """The dotted name of the model's classifier module (timm's `pretrained_cfg["classifier"]`)."""
    name = model.pretrained_cfg.get("classifier")
    if isinstance(name, list | tuple):
        if len(name) != 1:
            raise ArchitectureError(
                f"{type(model).__name__} has several classifiers {name}; chexlab supports one"
            )
        name = name[0]
    if not name:
        raise ArchitectureError(f"{type(model).__name__} has no classifier in its pretrained_cfg")
    return name


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the classifier/head."""
    return list(model.get_submodule(classifier_name(model)).parameters())


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter that is not in the classifier/head."""
    head_ids = {id(p) for p in head_parameters(model)}
    return [p for p in model.parameters() if id(p) not in head_ids]


def freeze_backbone(model: nn.Module, frozen: bool = True) -> None:
    """Freeze (or unfreeze) everything but the classifier/head.

    While frozen, the backbone's BatchNorm layers also stay in eval mode, even across `model.train()`: in
    train mode they would still normalise with each batch's statistics and update their running averages, so
    the "frozen" features would drift under the head being trained, and small CXR batches make those
    statistics noisy. (This is also what Keras does for layers with `trainable = False`, as in the recipes.)
    """
    for param in backbone_parameters(model):
        param.requires_grad_(not frozen)
    for param in head_parameters(model):
        param.requires_grad_(True)
    for module in _backbone_batch_norms(model):
        has_hook = any(hook is _keep_eval for hook in module._forward_pre_hooks.values())
        if frozen:
            if not has_hook:
                module.register_forward_pre_hook(_keep_eval)
            module.eval()
        else:
            # The hook is found in the module itself, not through a handle kept elsewhere, so that a deep
            # copy of a frozen model can be unfrozen too.
            for key, hook in list(module._forward_pre_hooks.items()):
                if hook is _keep_eval:
                    del module._forward_pre_hooks[key]
            module.train(model.training)


def cam_target_layer(model: nn.Module) -> nn.Module:
    """The module whose activations Grad-CAM should use: timm's last `feature_info` entry.

    Models without a usable `feature_info` get the module that completes the last 4-D (N, C, H, W)
    activation larger than 1x1, found with one forward pass on a zero image.
    """
    info = getattr(model, "feature_info", None)
    if info:
        name = info[-1].get("module") if isinstance(info[-1], Mapping) else None
        if name:
            try:
                return model.get_submodule(name)
            except AttributeError:
                log.debug("feature_info module %s not found in %s", name, type(model).__name__)
    return _last_spatial_module(model)


def model_data_config(model: nn.Module) -> dict[str, Any]:
    """timm's data config for the model: input_size, interpolation, mean, std, crop_pct, crop_mode."""
    return dict(resolve_model_data_config(model))


def _parse_init(init: str | None) -> tuple[str, str]:
    """(kind, location): "none", "timm" (location: tag or ""), "file" (a path) or "chexlab" (a source)."""
    if init is None or init == "":
        return "none", ""
    source = ModelSource.parse(init, kinds=INIT_KINDS)  # every init names its kind by a prefix
    if source.kind is SourceKind.TIMM:
        return "timm", source.location
    if source.kind is SourceKind.FILE:
        return "file", source.location
    return "chexlab", str(source)


def _timm_pretrained(arch: str, tag: str, num_classes: int, timm_kwargs: dict[str, Any]) -> nn.Module:
    name = f"{arch}.{tag}" if tag else arch
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, **timm_kwargs)
    except OSError as err:  # huggingface_hub's offline / not-cached / HTTP errors are all OSErrors
        raise ModelSourceError(
            f"could not fetch timm's pretrained weights for '{name}': {err}. Use a local weights file "
            "(init: file:/path/to/weights.safetensors) or run once while online so that the Hugging Face "
            "cache holds them"
        ) from err
    except RuntimeError as err:  # unknown tag, or an architecture without released weights
        raise ModelSourceError(
            f"timm has no pretrained weights '{name}' ({err}); see timm.list_pretrained('{arch}*')"
        ) from err


def _from_file(arch: str, path: Path, num_classes: int, timm_kwargs: dict[str, Any]) -> nn.Module:
    """Load a timm state dict from a safetensors file through timm's own pretrained-file path.

    timm loads non-strictly whenever it has to drop a classifier of another size, which would hide a file
    that does not fit `arch` at all. So the model is first built with the file's own number of classes (a
    strict load of every tensor), and gets a fresh classifier afterwards.
    """
    if not path.is_file():
        raise ModelSourceError(f"init weights file {path} does not exist")
    if not timm.is_model(arch):
        raise ArchitectureError(_unknown_architecture(arch))
    default_cfg = timm.models.get_pretrained_cfg(arch)
    classifier = default_cfg.classifier if default_cfg is not None else None
    classifier = classifier[0] if isinstance(classifier, list | tuple) else classifier
    try:
        with safetensors.safe_open(str(path), framework="pt") as weights:
            key = f"{classifier}.weight"
            names = set(weights.keys())
            file_classes = weights.get_slice(key).get_shape()[0] if key in names else 0
    except (OSError, safetensors.SafetensorError) as err:
        raise ModelSourceError(f"cannot read the safetensors file {path}: {err}") from err
    try:
        model = timm.create_model(
            arch,
            pretrained=True,
            pretrained_cfg_overlay=dict(file=str(path), num_classes=file_classes),
            num_classes=file_classes,
            **timm_kwargs,
        )
    except RuntimeError as err:
        raise ModelSourceError(f"weights file {path} does not fit architecture '{arch}': {err}") from err
    if file_classes != num_classes:
        pool = {"global_pool": timm_kwargs["global_pool"]} if "global_pool" in timm_kwargs else {}
        model.reset_classifier(num_classes, **pool)
    log.info("initialised %s from %s", arch, path)
    return model


def _transfer_from_chexlab(
    arch: str,
    num_classes: int,
    source: str,
    head: HeadConfig | None,
    label_names: Sequence[str] | None,
    new_head: bool,
    timm_kwargs: dict[str, Any],
) -> nn.Module:
    config, state_dict = read_model_folder(source)
    if config["architecture"] != arch:
        raise ModelSourceError(
            f"init {source} is a '{config['architecture']}' model but the architecture asked for is "
            f"'{arch}'; set the architecture to '{config['architecture']}' or pick another init"
        )
    old_head, old_labels = saved_head(config), saved_label_names(config)
    head = head or old_head
    model = _build_like(config, arch, num_classes, head, timm_kwargs)
    if label_names is None:
        reason = "no label names given to compare with the saved ones"
    elif list(label_names) != old_labels:
        if not new_head:
            raise ModelSourceError(
                f"init {source} predicts {old_labels} but this run's labels are {list(label_names)}; "
                "set model.new_head: true to train a new head on its backbone, or fix the labels"
            )
        reason = f"labels {list(label_names)} differ from the saved {old_labels}"
    elif head != old_head or num_classes != int(config["num_classes"]):
        reason = f"head {head} differs from the saved {old_head}"
    else:
        reason = ""
    keep_head = not reason
    if keep_head:
        log.info("transfer from %s: backbone and head loaded (same labels)", source)
    else:
        log.info("transfer from %s: backbone loaded, head re-initialised (%s)", source, reason)
    _load_weights(model, state_dict, with_head=keep_head, source=source)
    return model


def _build_like(
    config: Mapping[str, Any], arch: str, num_classes: int, head: HeadConfig, timm_kwargs: dict[str, Any]
) -> nn.Module:
    """A randomly initialised model with a saved model's construction arguments and input config."""
    saved_args = {k: v for k, v in config.get("model_args", {}).items() if k != "num_classes"}
    saved_cfg = config.get("pretrained_cfg", {})
    overlay = {k: tuple(v) if isinstance(v, list) else v for k, v in saved_cfg.items() if k in DATA_CFG_KEYS}
    model = timm.create_model(
        arch, num_classes=num_classes, pretrained_cfg_overlay=overlay, **{**saved_args, **timm_kwargs}
    )
    _install_head(model, head)
    return model


def _load_weights(
    model: nn.Module, state_dict: Mapping[str, Tensor], *, with_head: bool, source: str
) -> None:
    """Load every backbone tensor (strictly) and, if `with_head`, the head's too."""
    prefix = classifier_name(model) + "."
    if not with_head:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ModelSourceError(f"the weights of {source} do not fit this model: {err}") from err
    missing = [k for k in result.missing_keys if with_head or not k.startswith(prefix)]
    if missing or result.unexpected_keys:
        raise ModelSourceError(
            f"the weights of {source} do not fit this model: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]} (of {len(missing)} and {len(result.unexpected_keys)})"
        )


def _install_head(model: nn.Module, head: HeadConfig) -> None:
    """Put a DenseHead in place of timm's linear classifier (nothing to do for a linear head)."""
    if head.type == "linear":
        return
    name = classifier_name(model)
    linear = model.get_submodule(name)
    if not isinstance(linear, nn.Linear):
        raise ArchitectureError(
            f"{type(model).__name__}'s classifier '{name}' is a {type(linear).__name__}, not a Linear layer; "
            f"a {head.type} head cannot replace it: use head type linear"
        )
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, DenseHead(linear.in_features, linear.out_features, head))


def _backbone_batch_norms(model: nn.Module) -> Iterator[nn.Module]:
    prefix = classifier_name(model) + "."
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not name.startswith(prefix):
            yield module


def _keep_eval(module: nn.Module, args: tuple[Any, ...]) -> None:
    module.train(False)


def _last_spatial_module(model: nn.Module) -> nn.Module:
    """The module (outermost, if nested) that completes the last spatial map of a forward pass."""
    completed: list[nn.Module] = []

    def record(module: nn.Module, args: Any, output: Any) -> None:
        # a 1x1 map (e.g. after global pooling) has nothing left to localise
        if isinstance(output, Tensor) and output.dim() == 4 and output.shape[-2] * output.shape[-1] > 1:
            completed.append(module)

    handles = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    channels, height, width = model_data_config(model)["input_size"]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, channels, min(height, 224), min(width, 224)))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    if not completed:
        raise ArchitectureError(f"{type(model).__name__} produces no spatial activation map for Grad-CAM")
    return completed[-1]
