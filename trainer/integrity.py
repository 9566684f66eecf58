"""Checksums of a finished run's files (RUN_DIR/SHA256SUMS), so damage is found before the files are used.

The file has `sha256sum`'s format, so `sha256sum -c SHA256SUMS` in the run folder checks it too. TensorBoard
event files are left out: they change when a run is resumed and carry their own per-record CRCs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

CHECKSUMS = "SHA256SUMS"
UNLISTED = ("tb",)  # top-level folders not listed


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(run_dir: Path) -> Path:
    """Write RUN_DIR/SHA256SUMS for every file of the run folder (in one step: never half a list)."""
    lines = []
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)
        if (
            path.is_file()
            and relative.parts[0] not in (CHECKSUMS, *UNLISTED)
            and not path.name.startswith(".")
        ):
            lines.append(f"{sha256_file(path)}  {relative.as_posix()}\n")
    out = run_dir / CHECKSUMS
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=f".{CHECKSUMS}.")
    with os.fdopen(fd, "w") as f:
        f.writelines(lines)
    os.replace(tmp, out)
    return out


def damaged_files(run_dir: Path, under: str = "") -> list[str]:
    """What in RUN_DIR/SHA256SUMS (only the files below `under`, if given) is missing or changed.

    A run folder without SHA256SUMS (written before chexlab listed checksums) has nothing to check.
    """
    listing = run_dir / CHECKSUMS
    if not listing.is_file():
        log.info("%s has no %s: its files cannot be checked", run_dir, CHECKSUMS)
        return []
    problems = []
    for line in listing.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if under and not name.startswith(f"{under}/"):
            continue
        path = run_dir / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif sha256_file(path) != digest:
            problems.append(f"{path} does not match the checksum the run recorded in {listing}")
    return problems
