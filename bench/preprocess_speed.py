"""Time reading and preprocessing a 2048x2048 16-bit DICOM with every op (a docs/benchmarks.md section).

    python bench/preprocess_speed.py [--repeats 7]

The DICOM is synthetic (a chest-like phantom written with pydicom, MONOCHROME1, 16 bits stored) so the
benchmark runs anywhere; the reading path is the same as for a real CR.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import replace_section  # noqa: E402
from trainer.io import load_xray  # noqa: E402
from trainer.preprocess import OPS, Pipeline  # noqa: E402

ALL_OPS = "crop_body,crop_lungs,white_balance,clahe,equalize,gamma,median,invert,resize:size=512"


def phantom_dicom(size: int = 2048) -> bytes:
    """A MONOCHROME1 16-bit DICOM of a body ellipse with two lungs and noise."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    y, x = np.mgrid[0:size, 0:size] / size
    image = np.full((size, size), 0.05)
    image[((x - 0.5) / 0.42) ** 2 + ((y - 0.55) / 0.48) ** 2 < 1] = 0.7
    for cx in (0.32, 0.68):
        image[((x - cx) / 0.13) ** 2 + ((y - 0.5) / 0.28) ** 2 < 1] = 0.25
    image += np.random.default_rng(0).normal(0, 0.02, image.shape)
    pixels = ((1 - np.clip(image, 0, 1)) * 65535).astype(np.uint16)  # MONOCHROME1: air is bright in the data

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
        "CR",
    )
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    data = phantom_dicom()
    pipeline = Pipeline.parse(ALL_OPS)
    timings: dict[str, list[float]] = {"load_xray (DICOM)": [], "all ops": [], "load + all ops": []}
    per_op: dict[str, list[float]] = {name: [] for name in OPS}
    for _ in range(args.repeats):
        start = time.perf_counter()
        pixels = load_xray(data).pixels
        loaded = time.perf_counter()
        pipeline.apply(pixels)
        done = time.perf_counter()
        timings["load_xray (DICOM)"].append(loaded - start)
        timings["all ops"].append(done - loaded)
        timings["load + all ops"].append(done - start)
        for name in OPS:
            start = time.perf_counter()
            Pipeline.parse(name).apply(pixels)
            per_op[name].append(time.perf_counter() - start)
    rows = [
        f"| {name} | {1000 * statistics.median(t):.0f} | {1000 * max(t):.0f} |"
        for name, t in [*timings.items(), *per_op.items()]
    ]
    body = "\n".join(
        [
            "## Preprocessing speed",
            "",
            f"`python bench/preprocess_speed.py` — a synthetic 2048x2048 16-bit MONOCHROME1 DICOM, "
            f"{args.repeats} runs "
            f"on this machine's CPU; 'all ops' is `{ALL_OPS}`.",
            "",
            "| step | median ms | max ms |",
            "|---|---:|---:|",
            *rows,
        ]
    )
    print(body)
    replace_section("preprocess-speed", body)


if __name__ == "__main__":
    main()
