"""Where a label table's images come from: one reference string per row, and one reader per source.

Every row of a :class:`~trainer.labels.LabelTable` names its image by a reference string; the table's
:class:`ImageSource` turns a reference into the encoded image (PNG, JPEG, DICOM, ... bytes) that
``load_xray`` reads. References are what ``split.csv``, messages and prediction files show, so they are
stable and human-readable:

* :class:`FileImages` - files under a data root; the reference is the path relative to the root with forward
  slashes (``images/a.png``; it starts with ``..`` for a file outside the root, which ``check_files``
  reports).
* :class:`trainer.hf_datasets.HFImages` - rows of a dataset saved with ``datasets``: ``<split>#<row>``.
* :class:`trainer.tfrecords.TFRecordImages` - records of TFRecord files: ``<file>#<record>``.

``identity(ref)`` is what the preprocessing and file-check caches are keyed by: it changes whenever the
image may have changed (a file's path, size and modification time). A source holds no open file when it is
pickled, so DataLoader workers (fork or spawn) can each read from it.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from stat import S_ISREG

__all__ = ["HEAD_BYTES", "TAIL_BYTES", "FileImages", "ImageSource", "split_ref"]

HEAD_BYTES = 4096
"""Bytes from the start of an image that the header check looks at."""
TAIL_BYTES = 64
"""Bytes from the end of an image that the header check looks at (PNG's IEND chunk, JPEG's EOI marker)."""

Identity = list[str | int]


class ImageSource(ABC):
    """Reads the images of one source by reference.

    Attributes:
        root: the folder the source lives in (data root, dataset folder, records folder), for messages and
            run summaries.
    """

    root: Path

    @abstractmethod
    def read(self, ref: str) -> bytes:
        """The encoded image.

        Raises:
            OSError: it cannot be read (missing, permissions, a corrupt container).
        """

    @abstractmethod
    def identity(self, ref: str) -> Identity:
        """JSON-able values that change whenever the image may have changed (the cache keys).

        Raises:
            OSError: the image is gone.
        """

    @abstractmethod
    def describe(self) -> str:
        """One line naming the source (kind and location), e.g. for the file-check cache's name."""

    def problem(self, ref: str) -> str | None:
        """A problem visible without reading the image (outside the root, missing), else None."""
        return None

    def quick_identities(self, refs: Sequence[str]) -> list[Identity | None]:
        """``identity(ref)`` of each reference that cheaply shows it has no ``problem``; None for the others.

        For the file check of 100k images: a source that can answer for many references at once does so
        here; None means "ask ``problem`` and ``identity``".
        """
        return [None] * len(refs)

    def ends(self, ref: str) -> tuple[bytes, bytes, int]:
        """The first HEAD_BYTES and last TAIL_BYTES of the image, and its size, for the header check."""
        data = self.read(ref)
        return data[:HEAD_BYTES], data[-TAIL_BYTES:], len(data)

    def name(self, ref: str) -> str:
        """A name for the image in messages (a file's suffix tells load_xray about a preamble-less DICOM)."""
        return PurePosixPath(ref).name


def split_ref(ref: str, counts: Mapping[str, int], what: str) -> tuple[str, int]:
    """(container, position) of a ``<container>#<position>`` reference, checked against each container's size.

    Raises:
        OSError: no such container or position in ``what`` (e.g. "dataset /data/x").
    """
    container, sep, position = ref.rpartition("#")
    if not sep or container not in counts or not position.isdigit():
        raise OSError(f"{ref!r} names nothing in {what} (it has {', '.join(counts)})")
    if int(position) >= counts[container]:
        raise OSError(f"{ref!r}: {container} of {what} has {counts[container]} entries")
    return container, int(position)


class FileImages(ImageSource):
    """Image files under a data root; a reference is the path relative to the root."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(os.path.abspath(root))
        # To join references by hand: os.path.join(self.root, ref) costs more than the stat of the file.
        self._prefix = os.path.join(self.root, "")

    def ref(self, path: str | os.PathLike) -> str:
        """The reference of an (absolute or root-relative) path: relative to the root, forward slashes."""
        path = os.fspath(path)
        if os.path.isabs(path):
            path = os.path.relpath(path, self.root)
        return os.path.normpath(path).replace(os.sep, "/")

    def path(self, ref: str) -> Path:
        """The absolute, normalised path of a reference (symlinks not resolved)."""
        return Path(self._file(ref))

    def _file(self, ref: str) -> str:
        """``path(ref)`` as a string, without making a Path (for the check of 100k images)."""
        return os.path.normpath(ref if ref.startswith(os.sep) else self._prefix + ref)

    def read(self, ref: str) -> bytes:
        return self.path(ref).read_bytes()

    def identity(self, ref: str) -> Identity:
        path = self.path(ref)
        stat = path.stat()
        return [str(path), stat.st_mtime_ns, stat.st_size]

    def quick_identities(self, refs: Sequence[str]) -> list[Identity | None]:
        """One ``lstat`` per reference: a regular file (not a symlink) whose folder resolves inside the root
        has no ``problem``; each folder is resolved once. Symlinks, missing files and the like get None."""
        inside = os.path.join(os.path.realpath(self.root), "")
        folder_inside: dict[str, bool] = {}
        out: list[Identity | None] = []
        for ref in refs:
            path = self._file(ref)
            try:
                info = os.lstat(path)
            except OSError:
                out.append(None)
                continue
            folder = path.rpartition(os.sep)[0] or os.sep
            if folder not in folder_inside:
                real = os.path.join(os.path.realpath(folder), "")
                folder_inside[folder] = real.startswith(inside)
            plain = S_ISREG(info.st_mode) and folder_inside[folder]
            out.append([path, info.st_mtime_ns, info.st_size] if plain else None)
        return out

    def describe(self) -> str:
        return f"files under {self.root}"

    def problem(self, ref: str) -> str | None:
        path = self.path(ref)
        root_real = os.path.realpath(self.root)
        real = os.path.realpath(path)
        if os.path.commonpath([root_real, real]) != root_real:
            lexically_inside = os.path.commonpath([self.root, path]) == str(self.root)
            via = f" (through a symlink to {real})" if lexically_inside else ""
            return f"outside the data root {self.root}{via}"
        if not os.path.exists(real):
            return "file not found"
        if not os.path.isfile(real):
            return "not a file"
        return None

    def ends(self, ref: str) -> tuple[bytes, bytes, int]:
        # os-level reads: a buffered file object costs more than the two small reads (first runs of 100k).
        handle = os.open(self._file(ref), os.O_RDONLY)
        try:
            size = os.fstat(handle).st_size
            return (
                os.pread(handle, HEAD_BYTES, 0),
                os.pread(handle, TAIL_BYTES, max(0, size - TAIL_BYTES)),
                size,
            )
        finally:
            os.close(handle)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FileImages) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    def __repr__(self) -> str:
        return f"FileImages({str(self.root)!r})"
