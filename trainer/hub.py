"""Publishing a model folder to the Hugging Face Hub: a thin step over a local folder.

`push_folder` renders the card for the target repo (given a run folder) into a staging copy of the model
folder, checks that it loads and gives finite outputs, lists exactly what will be sent, and only then creates
the repository and uploads the copy in one commit. The local folder is never changed, whether the push
succeeds, fails or is a dry run, so a failed or interrupted push can simply be run again. The access token
comes from `HF_TOKEN` or `hf auth login` and goes only to huggingface_hub: it is never logged, printed or
written anywhere.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2  # huggingface_hub's HTTP client: its transport errors (refused, reset, timeout) are not wrapped
import torch
from huggingface_hub import CommitInfo, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from hub_cards import write_card
from trainer import __version__
from trainer.errors import ChexlabError
from trainer.export import load_model
from trainer.integrity import damaged_files
from trainer.model_source import CONFIG_NAME, WEIGHTS_NAME, ModelLoadError, is_pickle_name

log = logging.getLogger(__name__)

# Run folder files that mark a folder as a run (its model folder is RUN_DIR/model).
RUN_MARKERS = ("config.yaml", "run.json", "metrics.json")


class PushError(ChexlabError, RuntimeError):
    """A push that was refused before sending anything, or that failed on the way (safe to run again)."""


@dataclass(frozen=True)
class PushResult:
    """What a push sent (or, for a dry run, would send)."""

    repo_id: str
    folder: Path  # the local model folder (what is sent is a staging copy of it, with the rendered card)
    files: tuple[tuple[str, int], ...]  # (path relative to the folder, size in bytes), sorted
    private: bool
    create_pr: bool
    revision: str | None
    dry_run: bool
    url: str | None = None  # the commit or pull request, after a real push

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def __str__(self) -> str:
        target = f"https://huggingface.co/{self.repo_id}"
        settings = [
            "private" if self.private else "public (if the repo is new)",
            f"branch {self.revision}" if self.revision else "branch main",
        ]
        if self.create_pr:
            settings.append("as a pull request")
        verb = "dry run: would upload" if self.dry_run else "uploaded"
        what = f"{len(self.files)} files ({_size(self.total_bytes)}) from {self.folder} to {target}"
        lines = [f"{verb} {what} ({', '.join(settings)})"]
        lines += [f"  {size:>12,d}  {name}" for name, size in self.files]
        if self.url:
            lines.append(f"commit: {self.url}")
        return "\n".join(lines)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def model_folder(folder: Path) -> tuple[Path, Path | None]:
    """(model folder, run folder or None) for a run folder or a model folder.

    Raises:
        PushError: neither.
    """
    if all((folder / name).is_file() for name in RUN_MARKERS):
        if not (folder / "model" / CONFIG_NAME).is_file():
            raise PushError(
                f"run folder {folder} has no model/{CONFIG_NAME}: the run did not finish; nothing to push"
            )
        return folder / "model", folder
    if (folder / CONFIG_NAME).is_file():
        return folder, None
    raise PushError(
        f"{folder} is neither a run folder (config.yaml, run.json, metrics.json, model/) nor a model folder"
    )


def list_upload(folder: Path) -> tuple[tuple[str, int], ...]:
    """The files a push sends: every regular file under `folder` except hidden ones and caches.

    Raises:
        PushError: the folder lacks a card or weights, or holds pickle-based weights.
    """
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if (
            any(part.startswith(".") or part == "__pycache__" for part in relative.parts)
            or not path.is_file()
        ):
            continue
        if is_pickle_name(path.name):
            raise PushError(
                f"{path} is a pickle-based checkpoint; chexlab publishes safetensors only (loading a pickle "
                "can run arbitrary code): remove it from the folder"
            )
        files.append((relative.as_posix(), path.stat().st_size))
    names = {name for name, _ in files}
    missing = [name for name in ("README.md", CONFIG_NAME, WEIGHTS_NAME) if name not in names]
    if missing:
        hint = " (push the run folder, so that the card is rendered)" if "README.md" in missing else ""
        raise PushError(f"{folder} has no {', '.join(missing)}{hint}")
    return tuple(files)


@torch.no_grad()
def check_reload(folder: Path) -> None:
    """Load the folder as a user would, and run it once on a dummy input.

    Raises:
        PushError: it does not load, or its outputs have the wrong shape or are not finite.
    """
    try:
        model, info = load_model(f"local-dir:{folder}")
    except ModelLoadError as err:
        raise PushError(f"the model folder does not load, so it was not pushed: {err}") from err
    logits = model(torch.zeros(2, *info.data_config["input_size"]))
    outputs = info.task.num_outputs(len(info.label_names))
    if tuple(logits.shape) != (2, outputs):
        raise PushError(f"the reloaded model gives logits of shape {tuple(logits.shape)}, not (2, {outputs})")
    if not torch.isfinite(logits).all():
        raise PushError("the reloaded model gives non-finite logits on a dummy input; not pushed")


@contextmanager
def staged(model_dir: Path, run_dir: Path | None, repo_id: str) -> Iterator[Path]:
    """The folder to upload: `model_dir` itself, or for a run a temporary copy with the card rendered for
    `repo_id` (README.md and plots/); the copy is removed afterwards and `model_dir` is never written.

    Large files are hard-linked into the copy where the file system allows it (nothing writes to them);
    README.md and plots/, which the card rewrites, are real copies.
    """
    if run_dir is None:
        yield model_dir
        return
    with tempfile.TemporaryDirectory(prefix="chexlab-push-") as tmp:
        staging = Path(tmp) / model_dir.name
        for path in sorted(model_dir.rglob("*")):
            relative = path.relative_to(model_dir)
            target = staging / relative
            if path.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if relative.parts[0] in ("README.md", "plots"):
                shutil.copy2(path, target)
            else:
                try:
                    os.link(path, target)
                except OSError:  # another file system, or no hard links: copy
                    shutil.copy2(path, target)
        write_card(run_dir, staging, repo_id=repo_id)
        yield staging


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    create_pr: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    token: str | None = None,
) -> PushResult:
    """Publish a run's model folder (or a model folder) to the Hugging Face Hub as one commit.

    Args:
        folder: a run folder (its card is re-rendered for `repo_id` first) or a model folder with a README.md.
        repo_id: "org/name" on the Hub; created if it does not exist.
        private: create the repository private (an existing repository keeps its visibility).
        create_pr: open a pull request instead of committing directly.
        revision: the branch to commit to (created from main if missing) or, with `create_pr`, the PR's base.
        dry_run: check and list what would be sent; no network, no token needed.
        token: a Hugging Face token; default `HF_TOKEN` or the `hf auth login` token.

    Returns:
        What was (or would be) sent; its `str()` is a human-readable summary.

    Raises:
        PushError: the folder is incomplete or does not reload, no token is available, or the Hub call failed
            (the local folder is left as it was; run the push again).
    """
    folder = Path(folder)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise PushError(f"invalid repo id '{repo_id}': {err}") from None
    if "/" not in repo_id:
        raise PushError(f"repo id '{repo_id}' needs a namespace: org/name or user/name")
    model_dir, run_dir = model_folder(folder)
    damage = damaged_files(run_dir, under=model_dir.name) if run_dir is not None else []
    if damage:
        raise PushError(
            "the model folder changed or was damaged after the run finished, so it was not pushed:\n"
            + "\n".join(f"  - {problem}" for problem in damage)
            + "\nrestore those files from a backup, or train the run again"
        )
    with staged(model_dir, run_dir, repo_id) as upload_dir:
        check_reload(upload_dir)
        files = list_upload(upload_dir)
        result = PushResult(repo_id, model_dir, files, private, create_pr, revision, dry_run)
        if dry_run:
            log.info("dry run: %d files would go to %s", len(files), repo_id)
            return result
        token = token or get_token()
        if not token:
            raise PushError(
                "no Hugging Face token: run `hf auth login` or set HF_TOKEN (a token with write access)"
            )
        commit = _upload(upload_dir, result, token)
    url = commit.pr_url if create_pr else commit.commit_url
    log.info("pushed %s to %s: %s", model_dir, repo_id, url)
    return PushResult(repo_id, model_dir, files, private, create_pr, revision, dry_run, url=url)


def _upload(upload_dir: Path, push: PushResult, token: str) -> CommitInfo:
    """Create the repository (and branch) and upload exactly `push.files` from `upload_dir` in one commit.

    Raises:
        PushError: a Hub or network error (nothing local was changed; safe to run again).
    """
    repo_id, private, create_pr, revision = push.repo_id, push.private, push.create_pr, push.revision
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=upload_dir,
            repo_type="model",
            revision=revision,
            create_pr=create_pr,
            commit_message=f"Upload chexlab model ({__version__})",
            # Exactly the listed files (escaped: a file name may hold glob characters).
            allow_patterns=[glob.escape(name) for name, _ in push.files],
        )
    except (HfHubHTTPError, httpx2.HTTPError, OSError) as err:
        raise PushError(
            f"push to {repo_id} failed: {err}. The local folder {push.folder} is unchanged; "
            "run the same command again (a repeated upload only sends what is missing)"
        ) from err
