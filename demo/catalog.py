"""Which models the demo offers, what a typed model name means, and whether the demo is public.

The operator configures the offered models (`demo/models/*`, `CHEXLAB_MODELS`, `CHEXLAB_DEFAULT_MODEL`);
`ModelCatalog.resolve` turns what a user types or picks into a `ModelSource`, the demo's one rule on top of
`trainer.model_source`:

    offered name                 that model (the operator's source, with the server's Hub login if any)
    hf-hub:org/name[@rev]        that Hub repository
    org/name[@rev]               that Hub repository
    local-dir:PATH, a folder     that folder (local mode only)

In public mode (on a Space, bound to a non-loopback address, or CHEXLAB_PUBLIC=1) nothing a visitor types
is ever looked up on the server's disk: only offered names and Hub ids are accepted, a refused input gets
the same answer whatever exists on disk, and a Hub id that is not offered is fetched anonymously (without
the server's token, into a cache of its own), so a Space's credentials never serve a visitor.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from trainer.model_source import CONFIG_NAME, ModelLoadError, ModelSource, ModelSourceError, SourceKind, quote

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MODEL_ENV",
    "MODELS_DIR",
    "MODELS_ENV",
    "PUBLIC_ENV",
    "ModelCatalog",
    "ModelChoice",
    "is_public",
]

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL_NAME = "nih-binary"
DEFAULT_MODEL_ENV = "CHEXLAB_DEFAULT_MODEL"
MODELS_ENV = "CHEXLAB_MODELS"
PUBLIC_ENV = "CHEXLAB_PUBLIC"
SPACE_ENV = "SPACE_ID"  # set by Hugging Face Spaces
_YES, _NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def is_public(environ: Mapping[str, str] | None = None, *, bind_address: str | None = "127.0.0.1") -> bool:
    """Whether the demo serves the public: CHEXLAB_PUBLIC=1/0 decides; else on a Space or off loopback.

    Args:
        environ: where to read CHEXLAB_PUBLIC and SPACE_ID (default: os.environ).
        bind_address: the address the server listens on; None or "" = every interface (public).

    Raises:
        ValueError: CHEXLAB_PUBLIC is set to something other than 1/0 (true/false, yes/no, on/off).
    """
    env = os.environ if environ is None else environ
    forced = env.get(PUBLIC_ENV, "").strip().lower()
    if forced in _YES:
        return True
    if forced in _NO:
        return False
    if forced:
        raise ValueError(f"{PUBLIC_ENV} must be 1 (public mode) or 0 (local mode), not {forced!r}")
    return bool(env.get(SPACE_ENV)) or not _is_loopback(bind_address)


def _is_loopback(address: str | None) -> bool:
    if not address:
        return False
    if address.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:  # a host name: it may well resolve to a public interface
        return False


@dataclass(frozen=True)
class ModelChoice:
    """A model as a menu shows it: its name, the key that selects it again, and where it comes from."""

    name: str  # what people see ("nih-binary", "org/name", a folder's name)
    key: str  # what `ModelCatalog.resolve` maps back to `source` (a menu's value)
    source: ModelSource


@dataclass(frozen=True)
class ModelCatalog:
    """The offered models (name -> source, the default first) and the rule for anything else typed.

    Attributes:
        offered: the operator's models; their Hub ids use the server's login, if it has one.
        public: refuse everything but offered names and Hub ids, and fetch those anonymously.
    """

    offered: Mapping[str, ModelSource]
    public: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "offered", MappingProxyType(dict(self.offered)))

    @classmethod
    def of(
        cls,
        models: Mapping[str, str | os.PathLike[str] | ModelSource],
        default: str | None = None,
        *,
        public: bool = False,
    ) -> ModelCatalog:
        """A catalog from the operator's entries; `default` (a name or an entry) comes first.

        An entry is a `ModelSource`, a path (a folder), or a string read as `resolve` does in local mode; a
        string that is neither an existing folder nor a Hub id stands for a folder, so that using it says
        which folder is missing.
        """
        offered = {name: _operator_source(entry) for name, entry in models.items()}
        if default is not None and default not in offered:
            source = _operator_source(default)
            name = source.name if source.kind is SourceKind.HUB else Path(source.location).name or default
            offered = {name: source, **{k: v for k, v in offered.items() if k != name}}
        elif default is not None:
            offered = {default: offered[default], **offered}
        return cls(offered, public=public)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        models_dir: Path = MODELS_DIR,
        extra: Iterable[str] = (),
        public: bool | None = None,
    ) -> ModelCatalog:
        """The embedded models, CHEXLAB_MODELS (Hub ids) and CHEXLAB_DEFAULT_MODEL, plus `extra` entries.

        Args:
            environ: where to read the variables (default: os.environ).
            models_dir: the embedded model folders (each with a config.json).
            extra: more operator entries (names, folders or Hub ids), e.g. a page's presets.
            public: the mode; None = `is_public(environ)` with a loopback bind address.
        """
        env = os.environ if environ is None else environ
        models: dict[str, ModelSource] = {}
        if models_dir.is_dir():
            for folder in sorted(models_dir.iterdir()):
                if (folder / CONFIG_NAME).is_file():
                    models[folder.name] = ModelSource(SourceKind.LOCAL, str(folder))
        default = env.get(DEFAULT_MODEL_ENV, "").strip() or DEFAULT_MODEL_NAME
        if default == DEFAULT_MODEL_NAME and default not in models:
            # Still offered, so that using it says which folder is missing instead of "unknown model".
            models[default] = ModelSource(SourceKind.LOCAL, str(models_dir / default))
        for hub_id in (part.strip() for part in env.get(MODELS_ENV, "").split(",")):
            if hub_id:
                source = ModelSource.hub(hub_id)
                models.setdefault(source.name, source)
        catalog = cls.of(models, default)
        for entry in extra:
            choice = catalog.resolve(entry)
            if choice.key not in catalog.offered:
                catalog = cls({**catalog.offered, _free_name(choice, catalog.offered): choice.source})
        return dataclasses.replace(catalog, public=is_public(env) if public is None else public)

    @property
    def default(self) -> str | None:
        """The name selected at start: the first offered one."""
        return next(iter(self.offered), None)

    def names(self) -> list[str]:
        """The offered names, the default first."""
        return list(self.offered)

    def resolve(self, text: str) -> ModelChoice:
        """What a typed or picked model name means (the table in the module docstring).

        Raises:
            ModelLoadError: anything else, with the same message whatever exists on the server's disk.
        """
        text = text.strip()
        if text in self.offered:
            return ModelChoice(text, text, self.offered[text])
        try:
            source = self._parse(text)
        except ModelSourceError as err:
            raise ModelLoadError(f"{err}; or pick one of the offered models ({self._names()})") from None
        if source is None:
            raise ModelLoadError(f"unknown model '{quote(text)}': {self._advice()}")
        for name, offered in self.offered.items():
            if offered == dataclasses.replace(source, anonymous=False):
                return ModelChoice(name, name, offered)  # typed differently, but offered
        key = source.name if source.kind is SourceKind.HUB else str(source)
        return ModelChoice(source.name, key, source)

    def offered_name(self, entry: str) -> str | None:
        """The name an operator entry (a name, a folder or a Hub id, as in `from_env`'s `extra`) is offered
        under; None when it is not offered."""
        try:
            key = dataclasses.replace(self, public=False).resolve(entry).key
        except ModelLoadError:
            return None
        return key if key in self.offered else None

    def _parse(self, text: str) -> ModelSource | None:
        """A Hub id or (locally) a folder; None for text that is neither an offered name nor a source."""
        prefix = text.partition(":")[0]
        if self.public:
            if prefix == SourceKind.HUB.value:
                return dataclasses.replace(ModelSource.parse(text), anonymous=True)
            return ModelSource.hub(text, anonymous=True) if "/" in text and ":" not in text else None
        if prefix in (SourceKind.HUB.value, SourceKind.LOCAL.value):
            return ModelSource.parse(text)
        if text and Path(text).expanduser().exists():  # local use: a model or run folder, as typed
            return ModelSource(SourceKind.LOCAL, text)
        if "/" not in text:
            return None
        try:
            return ModelSource.hub(text)
        except ModelSourceError:
            raise ModelSourceError(f"'{quote(text)}' is neither a folder nor a Hub id (org/name)") from None

    def _advice(self) -> str:
        folder = "" if self.public else ", or give a model folder"
        return (
            f"pick one of the offered models ({self._names()}) or type a Hugging Face Hub id such as "
            f"org/name{folder}"
        )

    def _names(self) -> str:
        return ", ".join(self.offered) or "none"


def _operator_source(entry: str | os.PathLike[str] | ModelSource) -> ModelSource:
    if isinstance(entry, ModelSource):
        return entry
    if isinstance(entry, os.PathLike):
        return ModelSource(SourceKind.LOCAL, os.fspath(entry))
    try:
        return ModelCatalog({}).resolve(entry).source
    except ModelLoadError:
        return ModelSource(SourceKind.LOCAL, entry.strip())


def _free_name(choice: ModelChoice, taken: Mapping[str, ModelSource]) -> str:
    """The choice's short name, or its key when another offered model already has that name."""
    return choice.name if choice.name not in taken else choice.key
