"""Reading a saved chexlab model folder (timm's Hub layout) from a local directory or the Hugging Face Hub.

A model folder holds `config.json` (timm's: `architecture`, `num_classes`, `label_names`, `pretrained_cfg`,
`model_args`, plus chexlab's own `chexlab` block) and `model.safetensors`. Weights are read from safetensors
only: a pickle-based checkpoint (`pytorch_model.bin`, `*.pth`, ...) is refused, because unpickling a file can
run arbitrary code.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import safetensors.torch
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from torch import Tensor

from trainer.errors import ChexlabError

log = logging.getLogger(__name__)

SOURCE_PREFIXES = ("hf-hub", "local-dir")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pth.tar", ".pkl")


class ModelSourceError(ChexlabError, ValueError):
    """Initial weights or a saved model that cannot be used: missing, offline, pickle-only or mismatched."""


def pickle_refusal(what: str) -> ModelSourceError:
    """The error for a pickle-based checkpoint, saying why it is refused and how to convert it."""
    return ModelSourceError(
        f"{what} is a pickle-based PyTorch checkpoint; chexlab loads weights from safetensors only, because "
        "unpickling a file can run arbitrary code. Convert it once, only if you trust its origin: "
        "`sd = torch.load(path, map_location='cpu', weights_only=True)` (take sd['state_dict'] if the "
        "weights are nested), then `safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, "
        "'model.safetensors')`."
    )


def is_pickle_name(name: str) -> bool:
    """Whether a file name has the extension of a pickle-based PyTorch checkpoint."""
    return name.lower().endswith(PICKLE_SUFFIXES)


def parse_source(source: str) -> tuple[str, str]:
    """Split `hf-hub:org/name[@revision]` or `local-dir:path` into (prefix, location).

    Raises:
        ModelSourceError: no known prefix, or nothing after it.
    """
    prefix, sep, location = source.partition(":")
    if not sep or prefix not in SOURCE_PREFIXES or not location:
        raise ModelSourceError(
            f"model source '{source}' is not of the form hf-hub:org/name[@revision] or local-dir:path"
        )
    return prefix, location


def read_model_folder(source: str, revision: str | None = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read `config.json` and `model.safetensors` of a saved model.

    Args:
        source: `local-dir:path` or `hf-hub:org/name` (optionally `org/name@revision`, timm's spelling). The
            Hub is reached through `huggingface_hub.hf_hub_download`, so a filled cache works offline.
        revision: Hub branch, tag or commit; overrides an `@revision` in `source`.

    Returns:
        The parsed config.json and the state dict (CPU tensors).

    Raises:
        ModelSourceError: the folder or repository, its config or its safetensors weights cannot be had, or
            it holds only pickle-based weights.
    """
    prefix, location = parse_source(source)
    if prefix == "local-dir":
        config_path, weights_path = _local_files(Path(location))
    else:
        repo_id, _, at_revision = location.partition("@")
        config_path, weights_path = _hub_files(repo_id, revision or at_revision or None, source)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelSourceError(f"cannot read {CONFIG_NAME} of {source}: {err}") from err
    if not isinstance(config, dict) or "architecture" not in config:
        raise ModelSourceError(
            f"{CONFIG_NAME} of {source} has no 'architecture': not a timm/chexlab model folder"
        )
    try:
        state_dict = safetensors.torch.load_file(str(weights_path), device="cpu")
    except (OSError, safetensors.SafetensorError) as err:
        raise ModelSourceError(f"cannot read {WEIGHTS_NAME} of {source}: {err}") from err
    log.info("read %s (%s, %d tensors)", source, config["architecture"], len(state_dict))
    return config, state_dict


def _local_files(folder: Path) -> tuple[Path, Path]:
    if not folder.is_dir():
        raise ModelSourceError(f"local-dir:{folder} is not a directory")
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file():
        raise ModelSourceError(f"local-dir:{folder} has no {CONFIG_NAME}: not a timm/chexlab model folder")
    if not weights_path.is_file():
        _refuse_pickles(f"local-dir:{folder}", [p.name for p in folder.iterdir()])
        raise ModelSourceError(f"local-dir:{folder} has no {WEIGHTS_NAME}")
    return config_path, weights_path


def _hub_files(repo_id: str, revision: str | None, source: str) -> tuple[Path, Path]:
    config_path = _hub_download(repo_id, CONFIG_NAME, revision, source)
    try:
        weights_path = _hub_download(repo_id, WEIGHTS_NAME, revision, source)
    except ModelSourceError as err:
        if not isinstance(err.__cause__, EntryNotFoundError):
            raise
        # Offline, the snapshot folder holds what was cached of that commit; online, ask the Hub.
        if hf_constants.is_offline_mode():
            names = [p.name for p in config_path.parent.iterdir()]
        else:
            names = HfApi().list_repo_files(repo_id, revision=revision)
        _refuse_pickles(source, names)
        raise
    return config_path, weights_path


def _hub_download(repo_id: str, filename: str, revision: str | None, source: str) -> Path:
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except LocalEntryNotFoundError as err:
        raise ModelSourceError(
            f"{filename} of {source} is not in the local Hugging Face cache and the Hub cannot be reached "
            "(offline, or HF_HUB_OFFLINE=1): download the model once while online "
            f"(`hf download {repo_id}`), or save it to a folder and use local-dir:PATH"
        ) from err
    except RepositoryNotFoundError as err:
        raise ModelSourceError(
            f"no Hub repository {repo_id} (or it is private or gated: log in with `hf auth login`)"
        ) from err
    except RevisionNotFoundError as err:
        raise ModelSourceError(f"{source} has no revision '{revision}'") from err
    except EntryNotFoundError as err:
        raise ModelSourceError(f"{source} has no {filename}") from err
    except (HfHubHTTPError, OSError) as err:
        raise ModelSourceError(f"cannot fetch {filename} of {source}: {err}") from err


def _refuse_pickles(source: str, names: list[str]) -> None:
    pickles = sorted(name for name in names if is_pickle_name(name))
    if pickles:
        raise pickle_refusal(f"{source} has no {WEIGHTS_NAME}; its weights file {pickles[0]}")
