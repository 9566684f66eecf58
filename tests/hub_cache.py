"""A pre-filled Hugging Face Hub cache, laid out exactly as huggingface_hub writes it, for offline tests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import huggingface_hub.constants as hf_constants


def fill_hub_cache(
    repo_id: str, files: dict[str, bytes], commit: str = "a" * 40, *, repo_type: str = "model"
) -> Path:
    """Put ``files`` (path in the repository -> content) into the cache as commit ``commit`` of ``main``.

    The layout: ``<type>s--org--name/blobs/<sha256>``, ``snapshots/<commit>/<path>`` as relative symlinks to
    the blobs, and ``refs/main`` holding the commit. Returns the snapshot folder.
    """
    repo = Path(hf_constants.HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
