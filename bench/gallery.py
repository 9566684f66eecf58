"""Build demo/examples/ (the sample gallery) from ../shared: real radiographs the embedded models never saw.

    python bench/gallery.py           # copy the chosen images and write demo/examples/examples.csv
    python bench/gallery.py --check   # only check that every chosen image is in its models' test splits

Not a benchmark: it lives in bench/ because, like the benchmarks, it reads ../shared. Every image is taken
from the test part of the split that `fit` draws from the embedded models' configs (configs/defaults/*.yaml,
chexlab's patient-wise split): NIH images from the test parts of both NIH models, Kermany images from the
pediatric model's. The images are copied byte for byte (they are already 8-bit PNGs of at most 512 px); the
DICOM example is referenced in the installed pydicom-data package rather than copied (7 MB).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.quality import draw_split, task_config  # noqa: E402
from demo.gallery import COLUMNS, EXAMPLES_CSV, EXAMPLES_DIR, PYDICOM_DATA  # noqa: E402

MAX_SIDE = 512

NIH = "nih_cxr14_subset"
KERMANY = "kermany_pediatric_pneumonia"
NIH_MODELS = ("nih-binary", "nih-findings")
KERMANY_MODELS = ("pediatric-pneumonia",)

# Chosen by eye among the test-split images (readable, nothing that looks mislabelled), spreading sex, age
# and view for NIH and two patients per class for Kermany.
NIH_IMAGES = (
    "00001823_000.png",  # No Finding, 52 F PA
    "00002819_000.png",  # No Finding, 54 M PA
    "00002679_000.png",  # No Finding, 24 M AP
    "00003771_003.png",  # No Finding, 37 F AP
    "00005638_000.png",  # Pneumonia, 64 M PA
    "00009524_000.png",  # Atelectasis|Pneumonia, 71 F PA
    "00010478_006.png",  # Edema|Pneumonia, 55 F AP
    "00005653_003.png",  # Atelectasis|Effusion|Infiltration|Pneumonia, 50 M PA
    "00004533_020.png",  # Edema|Effusion|Infiltration|Pneumonia, 34 M AP
    "00002980_000.png",  # Infiltration|Pneumonia, 64 M PA
    "00008715_000.png",  # Nodule|Pneumonia, 70 M PA
)
KERMANY_IMAGES = (
    "test__IM-0019-0001.png",
    "test__NORMAL2-IM-0111-0001.png",
    "test__person111_bacteria_533.png",
    "test__person112_bacteria_538.png",
    "test__person1643_virus_2843.png",
    "test__person1659_virus_2867.png",
)

NIH_LICENCE = "NIH Clinical Center: released for unrestricted use"
NIH_ATTRIBUTION = (
    "NIH Clinical Center ChestX-ray14 (https://nihcc.app.box.com/v/ChestXray-NIHCC); Wang et al., "
    "ChestX-ray8, CVPR 2017"
)
KERMANY_LICENCE = "CC BY 4.0"
KERMANY_ATTRIBUTION = (
    "Kermany, Zhang, Goldbaum 2018, Labeled Optical Coherence Tomography (OCT) and Chest X-Ray Images for "
    "Classification, Mendeley Data v2, doi:10.17632/rscbjbr9sj.2 (224x224 copy from "
    "waliatushar/ai-pneumonia-detection)"
)
DICOM_ROW = {
    "file": f"{PYDICOM_DATA}RG1_UNCR.dcm",
    "labels": "",
    "caption": "DICOM (adult CR, MONOCHROME1, 15-bit): no label",
    "patient_id": "",
    "sex": "",
    "age": "",
    "view": "PA",
    "source": "pydicom-data 1.0.0 (installed package; from the NEMA WG04 compression test set)",
    "licence": "MIT",
    "attribution": "pydicom-data (https://github.com/pydicom/pydicom-data), NEMA WG04 test image RG1",
}


@dataclass(frozen=True)
class Pick:
    """One chosen image: where it comes from and which models' test splits must hold it."""

    dataset: str
    name: str
    models: tuple[str, ...]

    @property
    def source(self) -> Path:
        return REPO.parent / "shared" / "data" / self.dataset / "images" / self.name

    @property
    def file(self) -> str:
        prefix = "nih" if self.dataset == NIH else "kermany"
        return f"{prefix}_{self.name.removeprefix('test__').removeprefix('train__')}"


PICKS = tuple(Pick(NIH, name, NIH_MODELS) for name in NIH_IMAGES) + tuple(
    Pick(KERMANY, name, KERMANY_MODELS) for name in KERMANY_IMAGES
)


@cache
def test_images(model: str) -> frozenset[str]:
    """Image file names in the test part of the split `fit` draws for an embedded model's config."""
    table, split = draw_split(task_config(model, []))
    return frozenset(path.name for path, part in zip(table.paths, split, strict=True) if part == "test")


def check_picks() -> None:
    """Raise if a chosen image is missing, too large, not 8-bit, or outside one of its models' test splits."""
    problems = []
    for pick in PICKS:
        if not pick.source.is_file():
            problems.append(f"{pick.source}: not found")
            continue
        outside = [model for model in pick.models if pick.name not in test_images(model)]
        if outside:
            problems.append(f"{pick.name}: not in the test split of {', '.join(outside)}")
        with Image.open(pick.source) as image:
            if image.mode != "L" or max(image.size) > MAX_SIDE:
                problems.append(f"{pick.name}: {image.mode} {image.size}, expected 8-bit L <= {MAX_SIDE} px")
    if problems:
        raise SystemExit("gallery picks do not hold:\n  " + "\n  ".join(problems))


def _row(pick: Pick, labels: pd.DataFrame, meta: pd.DataFrame) -> dict[str, str]:
    key = f"images/{pick.name}"
    if pick.dataset == NIH:
        info = meta.loc[key]
        findings = str(info["finding_labels"])
        text = "normal" if findings == "No Finding" else findings.replace(" ", "_")
        shown = "No Finding" if text == "normal" else findings.replace("|", ", ").replace("_", " ")
        return {
            "file": pick.file,
            "labels": text,
            "caption": f"NIH adult, {info['view']}: {shown}",
            "patient_id": str(labels.loc[key, "patient_id"]),
            "sex": str(info["sex"]),
            "age": str(info["age"]),
            "view": str(info["view"]),
            "source": f"NIH ChestX-ray14 image {pick.name} ({info['orig_w']} px original, stored at 512 px)",
            "licence": NIH_LICENCE,
            "attribution": NIH_ATTRIBUTION,
        }
    label = str(labels.loc[key, "label"])
    original = str(meta.loc[key, "source_path"]).removeprefix("dataset/")
    return {
        "file": pick.file,
        "labels": label,
        "caption": f"Kermany child: {label.replace('_', ' ')}",
        "patient_id": str(labels.loc[key, "patient_id"]),
        "sex": "",
        "age": "",  # children aged 1-5; no per-image age in the release
        "view": "",
        "source": f"Kermany et al. 2018 {original} (mirror's 224x224 copy)",
        "licence": KERMANY_LICENCE,
        "attribution": KERMANY_ATTRIBUTION,
    }


def rows() -> list[dict[str, str]]:
    """The rows of examples.csv for the picks (after checking them), the DICOM row last."""
    check_picks()
    tables = {
        dataset: (
            pd.read_csv(REPO.parent / "shared" / "data" / dataset / "labels.csv").set_index("path"),
            pd.read_csv(REPO.parent / "shared" / "data" / dataset / "metadata.csv").set_index("path"),
        )
        for dataset in (NIH, KERMANY)
    }
    return [_row(pick, *tables[pick.dataset]) for pick in PICKS] + [DICOM_ROW]


def build() -> None:
    """Copy the chosen images into demo/examples/ and write examples.csv."""
    table = rows()
    EXAMPLES_DIR.mkdir(parents=True, exist_ok=True)
    for pick in PICKS:
        shutil.copyfile(pick.source, EXAMPLES_DIR / pick.file)
    with EXAMPLES_CSV.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
    size = sum(path.stat().st_size for path in EXAMPLES_DIR.iterdir() if path.is_file())
    print(f"wrote {len(table)} examples to {EXAMPLES_DIR} ({size / 1024:.0f} KiB)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only check the picks against the test splits")
    args = parser.parse_args()
    if args.check:
        check_picks()
        print(f"all {len(PICKS)} picks are in their models' test splits")
    else:
        build()


if __name__ == "__main__":
    main()
