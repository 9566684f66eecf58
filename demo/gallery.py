"""The sample gallery: labelled real radiographs shipped in demo/examples/, for one-click examples.

`gallery()` reads demo/examples/examples.csv (see the README there) and returns the images with their
labels in the form the comparison code reads (`demo.comparison.ImageItem.label`): a class name, findings
joined by "|", or "normal"; None where the label is unknown. The DICOM example lives in the installed
pydicom-data package and is listed as `pydicom-data:NAME`; it is left out when the package is missing.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import ChexlabError

log = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
EXAMPLES_CSV = EXAMPLES_DIR / "examples.csv"
PYDICOM_DATA = "pydicom-data:"  # prefix of a file found in the installed pydicom-data package
COLUMNS = (
    "file",
    "labels",
    "caption",
    "patient_id",
    "sex",
    "age",
    "view",
    "source",
    "licence",
    "attribution",
)


class GalleryError(ChexlabError, ValueError):
    """The gallery's examples.csv is malformed or names a file that is not there."""


@dataclass(frozen=True)
class GalleryItem:
    """One example radiograph.

    Attributes:
        path: the image file (PNG or DICOM).
        labels: a class name, findings joined by "|", or "normal"; None = unknown.
        caption: a short line for the UI, e.g. "NIH adult, PA: Edema, Pneumonia".
        patient_id: the dataset's patient id ("" when unknown); images of one patient resample together.
        sex, age, view: subgroup values as written in the dataset ("" when unknown).
        source, licence, attribution: where the image comes from and how to credit it.
    """

    path: Path
    labels: str | None
    caption: str
    patient_id: str
    sex: str
    age: str
    view: str
    source: str
    licence: str
    attribution: str


def pydicom_data_file(name: str) -> Path | None:
    """A file of the installed pydicom-data package, or None when it is not installed (nothing downloads)."""
    try:
        from pydicom.data import get_testdata_file

        found = get_testdata_file(name, download=False)
    except (ImportError, OSError, ValueError):
        return None
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def gallery(csv_path: Path = EXAMPLES_CSV) -> list[GalleryItem]:
    """The gallery's images in examples.csv order.

    Raises:
        GalleryError: the CSV lacks a column, or names a file that is not beside it.
    """
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise GalleryError(f"{csv_path}: missing columns {missing}; expected {list(COLUMNS)}")
        rows = list(reader)
    items = []
    for row in rows:
        path = _resolve(row["file"], csv_path.parent)
        if path is None:
            continue
        fields = {column: row[column].strip() for column in COLUMNS if column not in ("file", "labels")}
        items.append(GalleryItem(path=path, labels=row["labels"].strip() or None, **fields))
    return items


def _resolve(file: str, folder: Path) -> Path | None:
    if file.startswith(PYDICOM_DATA):
        found = pydicom_data_file(file.removeprefix(PYDICOM_DATA))
        if found is None:
            log.info("gallery: %s left out (pydicom-data is not installed)", file)
        return found
    path = folder / file
    # Only plain names: the CSV may not point outside its folder.
    if Path(file).name != file or not path.is_file():
        raise GalleryError(f"{folder / 'examples.csv'}: {file!r} is not a file in {folder}")
    return path
