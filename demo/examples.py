"""Example radiographs for the demo: the built-in DICOM, then images from the CHEXLAB_EXAMPLES folders.

Examples are the operator's choice: visitors can pick one of them, never name a file of their own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from trainer.label_readers import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

__all__ = ["EXAMPLES_ENV", "builtin_example", "example_files", "example_label"]

EXAMPLES_ENV = "CHEXLAB_EXAMPLES"


def builtin_example() -> Path | None:
    """The real chest radiograph shipped by the MIT-licensed `pydicom-data` package (a MONOCHROME1 CR).

    None when the package is not installed (nothing is downloaded).
    """
    try:
        from pydicom.data import get_testdata_file

        found = get_testdata_file("RG1_UNCR.dcm", download=False)
    except (ImportError, OSError, ValueError):
        return None
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def example_files(
    environ: Mapping[str, str] | None = None, *, per_folder: int = 4, limit: int = 9
) -> list[Path]:
    """Example radiographs: the built-in DICOM, then images from the CHEXLAB_EXAMPLES folders or files.

    Args:
        environ: where to read CHEXLAB_EXAMPLES (default: os.environ); entries are separated by os.pathsep.
        per_folder: images taken from each folder (sorted by name; a folder without images at its top level
            is searched one level down, one image per subfolder first).
        limit: examples in all.
    """
    env = os.environ if environ is None else environ
    found = [path for path in [builtin_example()] if path is not None]
    for entry in (part.strip() for part in env.get(EXAMPLES_ENV, "").split(os.pathsep)):
        if entry:
            found.extend(_images_in(Path(entry).expanduser(), per_folder))
    return list(dict.fromkeys(found))[:limit]


def _images_in(path: Path, count: int) -> Iterable[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        log.warning("%s=%s: no such file or folder", EXAMPLES_ENV, path)
        return []
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if images:
        return images[:count]
    # A folder of datasets (dataset/images/*.png): spread the picks across datasets.
    nested = [
        sorted(p for p in sub.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        for sub in sorted(path.iterdir())
    ]
    picks = [
        image for rank in range(count) for images in nested if rank < len(images) for image in [images[rank]]
    ]
    return picks[:count]


def example_label(path: Path) -> str:
    """What an example is called on the page: the built-in DICOM by its origin, others by folder and name."""
    if path == builtin_example():
        return "Built-in: CR chest PA, DICOM (pydicom-data)"
    parent = path.parent.parent.name if path.parent.name == "images" else path.parent.name
    return f"{parent}: {path.name}" if parent else path.name
