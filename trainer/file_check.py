"""The check of every image before training: cheap enough for 100k images, remembered between runs.

:func:`check_files` finds every unusable image of a table up front and reports them all in one
:class:`~trainer.labels.DataError`, each with its CSV line. Per image it checks, in order:

1. what the source can tell without reading (a file outside the data root, missing, not a file);
2. the header and trailer: a known signature (PNG, JPEG, TIFF, BMP, DICOM) and, where the format ends with
   a marker, that marker (PNG's IEND chunk, JPEG's end-of-image, BMP's declared size) - which catches
   empty, renamed and truncated files from reading a few kilobytes;
3. with ``decode=True``, a full decode with ``load_xray`` (catches corrupt pixel data too).

Images that passed are remembered in a small file under ``<cache_dir>/file-checks/``, keyed by the source's
identity of each image (a file's path, size and modification time), so a later run re-checks only what
changed. :func:`default_cache_dir` is where it goes when the config names no cache folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from trainer.checkpoint import atomic_write
from trainer.image_sources import ImageSource
from trainer.io import XRayReadError, load_xray
from trainer.io.xray import DICOM_SUFFIXES
from trainer.labels import DataError, LabelTable, problem_report

__all__ = ["CheckCache", "check_files", "default_cache_dir", "header_problem", "write_npy_atomic"]

logger = logging.getLogger(__name__)

# Bump when what a check verifies changes, so that earlier passes are not trusted.
CHECK_VERSION = 1
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def default_cache_dir() -> Path:
    """``$CHEXLAB_CACHE``, else ``$XDG_CACHE_HOME/chexlab``, else ``~/.cache/chexlab``."""
    if os.environ.get("CHEXLAB_CACHE"):
        return Path(os.environ["CHEXLAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "chexlab"


def header_problem(head: bytes, tail: bytes, size: int, name: str = "") -> str | None:
    """What is wrong with an image judged by its first and last bytes and its size, or None.

    Args:
        head: the first bytes (a few kilobytes).
        tail: the last bytes (at least 12 for a PNG's IEND chunk).
        size: the image's size in bytes.
        name: its file name; a ``.dcm`` name makes a DICOM without the standard preamble acceptable.
    """
    if size == 0:
        return "empty (0 bytes)"
    if head.startswith(_PNG_SIGNATURE):
        if head[12:16] != b"IHDR":
            return "corrupt PNG: the IHDR chunk does not come first"
        return None if _PNG_IEND in tail else "truncated PNG: no IEND chunk at the end"
    if head.startswith(b"\xff\xd8\xff"):
        return None if b"\xff\xd9" in tail else "truncated JPEG: no end-of-image marker at the end"
    if head[:4] in _TIFF_SIGNATURES:
        return None
    if head[:2] == b"BM" and len(head) >= 6:
        declared = int.from_bytes(head[2:6], "little")
        return f"truncated BMP: {size} of {declared} bytes" if declared > size else None
    if head[128:132] == b"DICM" or name.lower().endswith(DICOM_SUFFIXES):
        return None
    return "not an image: its content matches none of PNG, JPEG, TIFF, BMP, DICOM"


class CheckCache:
    """The images of one source that passed a check before, as 64-bit hashes of their identities."""

    def __init__(self, folder: str | os.PathLike | None, source: ImageSource, level: str) -> None:
        self.level = level
        digest = hashlib.sha256(f"{CHECK_VERSION}|{level}|{source.describe()}".encode()).hexdigest()[:20]
        self.file = Path(folder) / "file-checks" / f"{digest}.npy" if folder is not None else None
        self.known: set[int] = set()
        if self.file is not None and self.file.is_file():
            try:
                self.known = set(np.load(self.file, allow_pickle=False).tolist())
            except (ValueError, OSError, EOFError) as exc:
                logger.warning("ignoring the unreadable file-check cache %s (%s)", self.file, exc)

    def key(self, identity: list[str | int]) -> int:
        """The 64-bit key of one image's identity."""
        digest = hashlib.blake2b(json.dumps(identity).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little")

    def save(self, passed: Iterable[int]) -> None:
        """Remember ``passed`` (the keys of this run's good images) in place of what was there."""
        if self.file is None:
            return
        keys = np.array(sorted(passed), dtype=np.uint64)
        try:
            write_npy_atomic(self.file, keys)
        except OSError as exc:
            logger.warning(
                "cannot write the file-check cache %s (%s); the next run checks all", self.file, exc
            )


def write_npy_atomic(path: Path, array: np.ndarray) -> None:
    """``np.save`` to ``path`` in one step (readers see the old file or the new one, never half of one)."""

    def write(tmp: Path) -> None:
        # Through a handle: np.save given a path not ending in .npy (the temporary) appends .npy.
        with tmp.open("wb") as handle:
            np.save(handle, array)

    atomic_write(path, write)


def check_files(
    table: LabelTable,
    *,
    decode: bool = False,
    workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> None:
    """Check every image before training (see the module docstring); all problems are raised together.

    Args:
        table: the labels to check.
        decode: also decode each image with ``load_xray`` (slower; catches corrupt pixel data).
        workers: threads to use (reading and decoding release the GIL); default ``min(16, 2 * cpu_count)``.
        cache_dir: remember the images that passed under ``<cache_dir>/file-checks/``; None checks all.

    Raises:
        DataError: listing each unusable image with its line.
    """
    started = time.perf_counter()
    images = table.images
    cache = CheckCache(cache_dir, images, "decode" if decode else "header")
    quick = images.quick_identities(table.refs)

    def check(index: int) -> tuple[str | None, int | None]:
        ref = table.refs[index]
        identity = quick[index]
        if identity is None:
            problem = images.problem(ref)
            if problem is not None:
                return problem, None
        try:
            key = cache.key(images.identity(ref) if identity is None else identity)
            if key in cache.known:
                return None, key
            head, tail, size = images.ends(ref)
            problem = header_problem(head, tail, size, images.name(ref))
            if problem is None and decode:
                source = io.BytesIO(images.read(ref))
                source.name = images.name(ref)
                load_xray(source)
        except XRayReadError as exc:
            problem = f"unreadable: {exc}"
        except OSError as exc:
            problem = f"unreadable: {exc.strerror or exc}"
        return problem, key if problem is None else None

    # Images known good from a quick look pass here, in this thread; threads would only contend for the GIL.
    results: list[tuple[str | None, int | None]] = [
        (None, None if identity is None else cache.key(identity)) for identity in quick
    ]
    todo = [i for i, (_, key) in enumerate(results) if key not in cache.known]
    workers = workers or min(16, 2 * (os.cpu_count() or 1))
    # Chunks of rows, not one task per row: a future per image costs more than checking a cached one.
    chunks = [todo[start : start + 512] for start in range(0, len(todo), 512)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for rows, part in zip(chunks, pool.map(lambda rows: [check(i) for i in rows], chunks), strict=True):
            for index, result in zip(rows, part, strict=True):
                results[index] = result
    cached = sum(key in cache.known for _, key in results if key is not None)
    cache.save(key for _, key in results if key is not None)
    problems = [f"{table.where(i)}: {msg}" for i, (msg, _) in enumerate(results) if msg is not None]
    if problems:
        raise DataError(
            problem_report(
                f"{len(problems)} of {len(table)} images in {table.source} cannot be used", problems
            )
        )
    logger.info(
        "checked %d images (%s; %d known good from earlier runs) in %.1f s",
        len(table),
        "decoded" if decode else "headers",
        cached,
        time.perf_counter() - started,
    )
