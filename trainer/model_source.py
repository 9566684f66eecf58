"""Where weights come from (`ModelSource`, the one parser of source strings), and reading a model folder.

A source string names its kind by a prefix, as in timm's `parse_model_name`: `hf-hub:org/name[@revision]`,
`local-dir:PATH`, and, as initial weights for training, `file:PATH.safetensors` and `timm[:tag]`. A string
without a prefix is never guessed from its shape: each caller says what a bare string means (a folder on the
command line, nothing in `model.init`), and the demo has its own rule for what a visitor types.

A model folder (timm's Hub layout) holds `config.json` (timm's: `architecture`, `num_classes`, `label_names`,
`pretrained_cfg`, `model_args`, plus chexlab's own `chexlab` block) and `model.safetensors`. Weights are read
from safetensors only: a pickle-based checkpoint (`pytorch_model.bin`, `*.pth`, ...) is refused, because
unpickling a file can run arbitrary code.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import HFValidationError, validate_repo_id

from trainer.errors import ChexlabError

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pth.tar", ".pkl")
ANONYMOUS_CACHE_SUFFIX = "-anonymous"
# A Hub revision is a branch, tag or commit: git ref characters only, no ".." (never a path outside refs/).
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")
_QUOTE_LIMIT = 120  # characters of a rejected input quoted back in a message


class ModelSourceError(ChexlabError, ValueError):
    """Initial weights or a saved model that cannot be used: missing, offline, pickle-only or mismatched."""


class ModelLoadError(ModelSourceError):
    """A model that cannot be loaded: not found, offline without a cache, pickle-only, not a chexlab model."""


class SourceKind(StrEnum):
    """Where weights come from; the value is the prefix that selects it (`hf-hub:org/name`, ...)."""

    HUB = "hf-hub"  # a repository on the Hugging Face Hub: org/name[@revision]
    LOCAL = "local-dir"  # a model folder on this machine
    FILE = "file"  # a safetensors file of timm weights (initial weights for training)
    TIMM = "timm"  # timm's own pretrained weights, optionally a tag (initial weights for training)


MODEL_KINDS = frozenset({SourceKind.HUB, SourceKind.LOCAL})  # what holds a saved chexlab model
INIT_KINDS = frozenset(SourceKind)  # what `model.init` accepts


@dataclass(frozen=True)
class ModelSource:
    """One parsed source of weights, in the spirit of timm's `parse_model_name`: the prefix decides.

    Attributes:
        kind: what the location is.
        location: the Hub repository id, the folder or file path, or timm's pretrained tag ("" = default).
        revision: a Hub branch, tag or commit (Hub only).
        anonymous: fetch from the Hub without this machine's token, into a cache of its own: for ids a
            visitor of a public demo typed, so that the server's credentials and whatever they fetched
            are never used on a visitor's behalf.
    """

    kind: SourceKind
    location: str
    revision: str | None = None
    anonymous: bool = False

    @classmethod
    def parse(
        cls,
        text: str | os.PathLike[str],
        *,
        bare: SourceKind | None = None,
        kinds: frozenset[SourceKind] = MODEL_KINDS,
    ) -> ModelSource:
        """The source a string names: `hf-hub:org/name[@rev]`, `local-dir:PATH`, `file:PATH.safetensors`,
        `timm` or `timm:tag` (only the prefixes in `kinds` are recognised).

        Args:
            text: the string, or a path (always a `bare` location).
            bare: the kind of a string without a recognised prefix (e.g. LOCAL for a command line that takes
                folders); None makes such a string an error. A kind is never guessed from a string's shape.
            kinds: the prefixes recognised here.

        Raises:
            ModelSourceError: no recognised prefix and no `bare` kind, nothing after the prefix, an invalid
                Hub id or revision, or a `file:` that is not a safetensors file.
        """
        if isinstance(text, os.PathLike):
            text = os.fspath(text)
            kind, location = bare, text
        else:
            text = text.strip()
            prefix, sep, rest = text.partition(":")
            kind = _KINDS_BY_PREFIX.get(prefix)
            if kind in kinds and (sep or kind is SourceKind.TIMM):  # "timm" alone is timm's default tag
                location = rest
            else:
                kind, location = bare, text
        valid = ", ".join(_FORMS[k] for k in SourceKind if k in kinds)
        if kind is None:
            hint = "; a weights file is file:PATH.safetensors" if text.endswith(".safetensors") else ""
            raise ModelSourceError(f"model source '{quote(text)}' has no prefix; valid: {valid}{hint}")
        if not location and kind is not SourceKind.TIMM:
            raise ModelSourceError(f"model source '{text}' is not of the form {_FORMS[kind]}: it is empty")
        if kind is SourceKind.HUB:
            return cls.hub(location)
        if kind is SourceKind.FILE and is_pickle_name(location):
            raise pickle_refusal(f"init file {location}")
        if kind is SourceKind.FILE and not location.lower().endswith(".safetensors"):
            raise ModelSourceError(f"file:{location} is not a .safetensors file of timm weights")
        return cls(kind, location)

    @classmethod
    def hub(cls, repo_id: str, revision: str | None = None, *, anonymous: bool = False) -> ModelSource:
        """A Hub repository, `org/name` (optionally `org/name@revision`), validated before any request.

        Raises:
            ModelSourceError: not a valid Hub repository id or revision.
        """
        repo_id, _, at_revision = repo_id.strip().partition("@")
        revision = revision or at_revision or None
        try:
            validate_repo_id(repo_id)
        except HFValidationError:
            raise ModelSourceError(
                f"'{quote(repo_id)}' is not a Hugging Face Hub model id (org/name: letters, digits, '-', '_' "
                "and '.', at most 96 characters)"
            ) from None
        if revision is not None and (not _REVISION.fullmatch(revision) or ".." in revision):
            raise ModelSourceError(f"'{quote(revision)}' is not a Hub revision: give a branch, tag or commit")
        return cls(SourceKind.HUB, repo_id, revision, anonymous)

    def __str__(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        if self.kind is SourceKind.TIMM:
            return f"timm:{self.location}" if self.location else "timm"
        return f"{self.kind.value}:{self.location}{at}"

    @property
    def name(self) -> str:
        """The short name people know it by: the Hub id (with @revision), or the folder or file name."""
        if self.kind is SourceKind.HUB:
            return self.location + (f"@{self.revision}" if self.revision else "")
        if self.kind is SourceKind.TIMM:
            return str(self)
        return Path(self.location).name or self.location

    @property
    def path(self) -> Path:
        """The folder or file of a local source."""
        if self.kind not in (SourceKind.LOCAL, SourceKind.FILE):
            raise ModelSourceError(f"{self} is not on this machine")
        return Path(self.location).expanduser()

    def with_revision(self, revision: str | None) -> ModelSource:
        """The same Hub repository at another revision (None keeps this one).

        Raises:
            ModelSourceError: not a Hub source, or an invalid revision.
        """
        if revision is None:
            return self
        if self.kind is not SourceKind.HUB:
            raise ModelSourceError(
                f"revision '{quote(revision)}' applies to hf-hub sources; {self} is not one"
            )
        return ModelSource.hub(self.location, revision, anonymous=self.anonymous)


_KINDS_BY_PREFIX = {kind.value: kind for kind in SourceKind}
_FORMS = {
    SourceKind.HUB: "hf-hub:org/name[@revision]",
    SourceKind.LOCAL: "local-dir:PATH",
    SourceKind.FILE: "file:PATH.safetensors",
    SourceKind.TIMM: "timm[:tag]",
}


def quote(text: str) -> str:
    """`text` as quoted back in a message: at most a few dozen characters, so that a huge input stays out."""
    return text if len(text) <= _QUOTE_LIMIT else text[: _QUOTE_LIMIT - 1] + "…"


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


def anonymous_cache_dir() -> Path:
    """The Hub cache for anonymous fetches, beside the normal one: the token's downloads are never reused."""
    cache = Path(hf_constants.HF_HUB_CACHE)
    return cache.with_name(cache.name + ANONYMOUS_CACHE_SUFFIX)


def read_model_folder(source: ModelSource | str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read `config.json` and `model.safetensors` of a saved model.

    Args:
        source: a Hub repository or a local folder (a string needs its `hf-hub:` or `local-dir:` prefix). A
            local run folder holding `model/` stands for that model folder. The Hub is reached through
            `huggingface_hub.hf_hub_download`, so a filled cache works offline.

    Returns:
        The parsed config.json and the state dict (CPU tensors).

    Raises:
        ModelSourceError: the folder or repository, its config or its safetensors weights cannot be had, or
            it holds only pickle-based weights.
    """
    if isinstance(source, str):
        source = ModelSource.parse(source)
    if source.kind is SourceKind.LOCAL:
        config_path, weights_path = _local_files(source)
    elif source.kind is SourceKind.HUB:
        config_path, weights_path = _hub_files(source)
    else:
        raise ModelSourceError(f"{source} holds initial weights for training, not a saved chexlab model")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ModelSourceError(f"cannot read {CONFIG_NAME} of {source}: {err.strerror}") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelSourceError(f"cannot read {CONFIG_NAME} of {source}: {err}") from err
    if not isinstance(config, dict) or "architecture" not in config:
        raise ModelSourceError(
            f"{CONFIG_NAME} of {source} has no 'architecture': not a timm/chexlab model folder"
        )
    import safetensors.torch  # imports torch: here, so that the demo's page can name models without it

    try:
        state_dict = safetensors.torch.load_file(str(weights_path), device="cpu")
    except OSError as err:
        raise ModelSourceError(f"cannot read {WEIGHTS_NAME} of {source}: {err.strerror}") from err
    except safetensors.SafetensorError as err:
        raise ModelSourceError(f"cannot read {WEIGHTS_NAME} of {source}: {err}") from err
    log.info("read %s (%s, %d tensors)", source, config["architecture"], len(state_dict))
    return config, state_dict


def optional_model_file(source: ModelSource | str, filename: str) -> Path | None:
    """A file a saved model may carry beside its weights (e.g. `ood.safetensors`), or None when it has none.

    Raises:
        ModelSourceError: the folder or repository cannot be had, or the Hub cannot be reached.
    """
    if isinstance(source, str):
        source = ModelSource.parse(source)
    if source.kind is SourceKind.LOCAL:
        path = _local_files(source)[0].parent / filename
        return path if path.is_file() else None
    try:
        return _hub_download(source, filename)
    except ModelSourceError as err:
        if isinstance(err.__cause__, EntryNotFoundError):
            return None
        raise


def _local_files(source: ModelSource) -> tuple[Path, Path]:
    folder = source.path
    if not folder.is_dir():
        raise ModelSourceError(
            f"{source} not found: {folder} is not a directory; give hf-hub:org/name[@revision], "
            "local-dir:PATH, or an existing model or run folder"
        )
    if not (folder / CONFIG_NAME).is_file() and (folder / "model" / CONFIG_NAME).is_file():
        folder = folder / "model"  # a run folder: its model
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file():
        raise ModelSourceError(
            f"{source} has no {CONFIG_NAME} (nor model/{CONFIG_NAME}): not a model or run folder"
        )
    if not weights_path.is_file():
        _refuse_pickles(str(source), [p.name for p in folder.iterdir()])
        raise ModelSourceError(f"{source} has no {WEIGHTS_NAME}")
    return config_path, weights_path


def _hub_files(source: ModelSource) -> tuple[Path, Path]:
    config_path = _hub_download(source, CONFIG_NAME)
    try:
        weights_path = _hub_download(source, WEIGHTS_NAME)
    except ModelSourceError as err:
        if not isinstance(err.__cause__, EntryNotFoundError):
            raise
        # Offline, the snapshot folder holds what was cached of that commit; online, ask the Hub.
        if hf_constants.is_offline_mode():
            names = [p.name for p in config_path.parent.iterdir()]
        else:
            names = HfApi().list_repo_files(source.location, revision=source.revision, token=_token(source))
        _refuse_pickles(str(source), names)
        raise
    return config_path, weights_path


def _token(source: ModelSource) -> bool | None:
    """huggingface_hub's `token` argument: False sends none; None uses this machine's login, if any."""
    return False if source.anonymous else None


def _hub_download(source: ModelSource, filename: str) -> Path:
    repo_id, revision = source.location, source.revision
    cache_dir = anonymous_cache_dir() if source.anonymous else None
    try:
        return Path(
            hf_hub_download(repo_id, filename, revision=revision, token=_token(source), cache_dir=cache_dir)
        )
    except LocalEntryNotFoundError as err:
        raise ModelSourceError(
            f"{filename} of {source} is not in the local Hugging Face cache and the Hub cannot be reached "
            "(offline, or HF_HUB_OFFLINE=1): download the model once while online "
            f"(`hf download {repo_id}`), or save it to a folder and use local-dir:PATH"
        ) from err
    except RepositoryNotFoundError as err:
        login = "" if source.anonymous else ": log in with `hf auth login`"
        raise ModelSourceError(f"no Hub repository {repo_id} (or it is private or gated{login})") from err
    except RevisionNotFoundError as err:
        raise ModelSourceError(f"{source} has no revision '{revision}'") from err
    except EntryNotFoundError as err:
        raise ModelSourceError(f"{source} has no {filename}") from err
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        raise ModelSourceError(
            f"cannot fetch {filename} of {source}: the Hub answered HTTP {status}"
        ) from err
    except OSError as err:
        raise ModelSourceError(
            f"cannot fetch {filename} of {source}: {err.strerror or type(err).__name__}"
        ) from err


def _refuse_pickles(source: str, names: list[str]) -> None:
    pickles = sorted(name for name in names if is_pickle_name(name))
    if pickles:
        raise pickle_refusal(f"{source} has no {WEIGHTS_NAME}; its weights file {pickles[0]}")
