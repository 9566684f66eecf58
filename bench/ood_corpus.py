"""Images that are not chest radiographs, from files installed packages ship and from seeded generators.

`corpus()` returns every item once (re-encodings of one picture, e.g. a DICOM stored with eight transfer
syntaxes, are collapsed to one by `distinct`). Each item is either a file path or the bytes of a file a user
could upload (PNG, JPEG, TIFF, DICOM), and is read through `trainer.io.load_xray` like an upload.

Part of the corpus is held out: it was never looked at while choosing the OOD score, its threshold rule or
the image-level checks, and bench/ood.py reports it separately. The split is by source, fixed here:

- tuning: pydicom's own test files; pydicom-data's MR2 (shoulder MR) and RG3 (extremity radiograph), named in
  issue 11; gradio's and matplotlib's sample pictures; synthetic noise, flat, gradient, text and degenerate
  images;
- held out: pydicom-data's other files; scikit-learn's photographs; Streamlit, SymPy, NetworkX and
  Playwright images; synthetic screenshots and geometric patterns; gray copies of the held-out photographs.
"""

from __future__ import annotations

import io
import sysconfig
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

SITE = Path(sysconfig.get_paths()["purelib"])
# Chest radiographs among the packaged DICOMs: not part of a non-chest corpus.
CHEST_DICOMS = ("RG1_",)
PROSE = (
    "the patient was seen in clinic today with a history of cough and fever for three days chest "
    "examination revealed reduced air entry on the right side results of the blood tests are attached "
    "please review the report and sign the form before the next appointment"
)
WORDS = PROSE.split()


@dataclass(frozen=True)
class Item:
    """One corpus image: where it comes from, its kind, whether it is held out, and its content."""

    name: str
    group: str
    held_out: bool
    path: Path | None = None
    data: bytes | None = None

    @property
    def source(self) -> Path | bytes:
        """What `load_xray` reads."""
        if self.path is not None:
            return self.path
        assert self.data is not None
        return self.data


def corpus(seed: int = 0) -> list[Item]:
    """The whole corpus: packaged files, then synthetic pictures (deterministic for `seed`)."""
    return [*packaged_files(), *synthetic(seed)]


# ------------------------------------------------------------------------------------------ packaged


MODALITY_GROUPS = {"CT": "CT", "MR": "MR", "US": "ultrasound", "NM": "nuclear medicine", "CR": "radiograph"}


def _dicom_group(path: Path) -> str:
    """The corpus group of a DICOM file, from its Modality and BodyPartExamined."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():  # pydicom's notes on the odd test files it ships
            warnings.simplefilter("ignore")
            header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except (InvalidDicomError, OSError, ValueError, AttributeError, EOFError):
        return "other DICOM"
    group = MODALITY_GROUPS.get(str(header.get("Modality", "")), "other DICOM")
    if group == "radiograph":
        return f"{str(header.get('BodyPartExamined', 'other')).lower()} radiograph"
    return group


def packaged_files() -> list[Item]:
    """DICOMs of pydicom and pydicom-data, and the pictures gradio, matplotlib, scikit-learn, ... ship."""
    items = []
    for folder, held in (
        (SITE / "pydicom" / "data" / "test_files", False),
        (SITE / "data_store" / "data", True),
    ):
        # Uncompressed encodings first: of a picture's re-encodings, `distinct` keeps the first.
        for path in sorted(folder.glob("*.dcm"), key=lambda p: ("UNC" not in p.name, p.name)):
            if path.name.startswith(CHEST_DICOMS):
                continue
            issue_named = path.name.startswith(("MR2_", "RG3_"))
            group = _dicom_group(path)
            items.append(Item(f"dicom/{path.name}", group, held and not issue_named, path=path))
    pictures = [
        ("gradio/media_assets/images", "*.jp*g", "photo", False),
        ("matplotlib/mpl-data/sample_data", "*.jpg", "photo", False),
        ("matplotlib/mpl-data/sample_data", "*.png", "graphic", False),
        ("gradio/media_assets/images", "*.png", "graphic", False),
        ("gradio/test_data", "*.jpg", "photo", False),
        ("sklearn/datasets/images", "*.jpg", "photo", True),
        ("streamlit/static/static/media", "*.png", "graphic", True),
        ("sympy/plotting/tests", "*.png", "graphic", True),
        ("networkx/drawing/tests/baseline", "*.png", "graphic", True),
        ("playwright/driver/package/lib/server/chromium", "*.png", "graphic", True),
    ]
    for where, pattern, group, held in pictures:
        package = where.split("/")[0]
        for path in sorted((SITE / where).glob(pattern)):
            items.append(Item(f"{package}/{path.name}", group, held, path=path))
            if group == "photo":  # a black-and-white print of the same photograph: no colour to give it away
                gray = np.asarray(Image.open(path).convert("L"))
                items.append(Item(f"{package}/{path.stem}-gray.png", "photo (gray)", held, data=_png(gray)))
    gif = SITE / "gradio" / "media_assets" / "images" / "screenshot.gif"
    if gif.is_file():  # GIF is not a format chexlab reads: the user would convert it
        items.append(
            Item(
                "gradio/screenshot.png",
                "screenshot",
                False,
                data=_png(np.asarray(Image.open(gif).convert("RGB"))),
            )
        )
    return [item for item in items if (item.path is None or item.path.is_file())]


# ------------------------------------------------------------------------------------------ synthetic


def synthetic(seed: int = 0) -> list[Item]:
    """Seeded synthetic pictures: noise, flat, gradients, text, screenshots, patterns, degenerate files."""
    rng = np.random.default_rng(seed)
    items = []
    for group, held, makers in (
        ("noise", False, _noise),
        ("flat", False, _flat),
        ("gradient", False, _gradients),
        ("text", False, _text),
        ("degenerate", False, _degenerate),
        ("screenshot", True, _screenshots),
        ("pattern", True, _patterns),
    ):
        for name, data in makers(rng):
            items.append(Item(f"synthetic/{name}", group, held, data=data))
    return items


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _u8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values * 255), 0, 255).astype(np.uint8)


def _size(rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(256, 1024)), int(rng.integers(256, 1024))


def _noise(rng: np.random.Generator) -> Iterator[tuple[str, bytes]]:
    for k in range(3):
        h, w = _size(rng)
        yield f"uniform-{k}.png", _png(_u8(rng.random((h, w))))
        yield f"gaussian-{k}.png", _png(_u8(0.5 + 0.15 * rng.standard_normal((h, w))))
        yield f"colour-{k}.png", _png(_u8(rng.random((h, w, 3))))
        sparse = np.where(rng.random((h, w)) < 0.05, 1.0, 0.0)
        yield f"salt-{k}.png", _png(_u8(sparse))
        # Blurred noise: cloud-like large-scale texture, closer to a radiograph's than white noise is.
        cloud = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 8 + 8 * k)
        cloud = (cloud - cloud.min()) / max(float(cloud.max() - cloud.min()), 1e-6)
        yield f"cloud-{k}.jpg", _jpeg(_u8(cloud))


def _flat(rng: np.random.Generator) -> Iterator[tuple[str, bytes]]:
    for level in (0, 0.5, 1.0):
        yield f"flat-{level}.png", _png(_u8(np.full((512, 512), level)))
    yield "black-16bit.png", _png(np.zeros((512, 512), dtype=np.uint16))
    yield "flat-colour.png", _png(np.full((300, 400, 3), (40, 120, 200), dtype=np.uint8))
    faint = 0.5 + 0.004 * rng.standard_normal((512, 512))
    yield "flat-faint-noise.png", _png(_u8(faint))


def _gradients(rng: np.random.Generator) -> Iterator[tuple[str, bytes]]:
    h, w = _size(rng)
    y, x = np.mgrid[0:h, 0:w]
    yield "horizontal.png", _png(_u8(x / w))
    yield "vertical.png", _png(_u8(1 - y / h))
    r = np.hypot(x - w / 2, y - h / 2) / (0.5 * np.hypot(h, w))
    yield "radial.png", _png(_u8(1 - r))
    yield "diagonal-colour.png", _png(np.stack([_u8(x / w), _u8(y / h), _u8(1 - x / w)], axis=-1))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _page(rng: np.random.Generator, h: int, w: int, size: int, ink: int, paper: int) -> np.ndarray:
    image = Image.new("L", (w, h), paper)
    draw = ImageDraw.Draw(image)
    font = _font(size)
    y = size
    while y < h - 2 * size:
        line = " ".join(rng.choice(WORDS, size=int(rng.integers(6, 14))))
        draw.text((size, y), line, fill=ink, font=font)
        y += int(1.6 * size)
    return np.asarray(image)


def _text(rng: np.random.Generator) -> Iterator[tuple[str, bytes]]:
    yield "page.png", _png(_page(rng, 1100, 850, 18, 20, 245))
    yield "page-small-type.jpg", _jpeg(_page(rng, 1000, 800, 11, 0, 255))
    yield "terminal.png", _png(_page(rng, 600, 900, 14, 230, 15))
    yield "page-large-type.png", _png(_page(rng, 700, 700, 40, 30, 250))


def _screenshots(rng: np.random.Generator) -> Iterator[tuple[str, bytes]]:
    for k in range(4):
        h, w = (768, 1366) if k % 2 else (900, 1440)
        colour = k < 2
        image = Image.new("RGB", (w, h), (245, 246, 248))
        draw = ImageDraw.Draw(image)
        accent = tuple(int(c) for c in rng.integers(40, 220, 3)) if colour else (90, 90, 90)
        draw.rectangle((0, 0, w, 48), fill=accent)
        draw.rectangle((0, 48, 220, h), fill=(230, 231, 235))
        font = _font(14)
        for row in range(12):
            draw.text((20, 70 + 40 * row), " ".join(rng.choice(WORDS, size=2)), fill=(30, 30, 30), font=font)
        for _ in range(int(rng.integers(2, 5))):
            x0, y0 = int(rng.integers(260, w - 400)), int(rng.integers(80, h - 300))
            draw.rectangle((x0, y0, x0 + 360, y0 + 240), outline=(180, 180, 180), fill=(255, 255, 255))
            draw.rectangle((x0 + 20, y0 + 180, x0 + 140, y0 + 215), fill=accent)
            draw.text((x0 + 20, y0 + 20), " ".join(rng.choice(WORDS, size=4)), fill=(20, 20, 20), font=font)
        array = np.asarray(image)
        yield f"app-{k}.png", _png(array if colour else array[..., 0].copy())


def _patterns(rng: np.random.Generator) -> Iterator[tuple[str, bytes]]:
    y, x = np.mgrid[0:512, 0:512]
    yield "checkerboard.png", _png(_u8(((x // 32 + y // 32) % 2).astype(float)))
    yield "stripes.png", _png(_u8(0.5 + 0.5 * np.sin(x / 6.0)))
    yield "rings.png", _png(_u8(0.5 + 0.5 * np.cos(np.hypot(x - 256, y - 256) / 9.0)))
    for k in range(3):
        canvas = np.full((512, 640), 0.1 + 0.8 * rng.random())
        for _ in range(int(rng.integers(5, 15))):
            cy, cx, r = rng.integers(0, 512), rng.integers(0, 640), rng.integers(15, 120)
            canvas[(y[:, :1] - cy) ** 2 + (np.arange(640)[None, :] - cx) ** 2 < r**2] = rng.random()
        yield f"shapes-{k}.png", _png(_u8(canvas))


def _degenerate(rng: np.random.Generator) -> Iterator[tuple[str, bytes]]:
    yield "one-pixel.png", _png(np.array([[128]], dtype=np.uint8))
    yield "two-by-two.png", _png(_u8(rng.random((2, 2))))
    yield "strip-3x500.png", _png(_u8(rng.random((3, 500))))
    yield "banner-60x1000.png", _png(_u8(rng.random((60, 1000))))
    for name, values in (
        ("nan.tiff", np.full((256, 256), np.nan, dtype=np.float32)),
        (
            "half-nan.tiff",
            np.where(np.arange(256)[None, :] < 128, np.nan, 0.5).astype(np.float32)
            * np.ones((256, 1), np.float32),
        ),
    ):
        buffer = io.BytesIO()
        Image.fromarray(values, mode="F").save(buffer, format="TIFF")
        yield name, buffer.getvalue()


# ------------------------------------------------------------------------------------------ dedup


def distinct(items: list[Item], pixels: Callable[[Item], np.ndarray | None]) -> list[Item]:
    """Items whose pictures differ: of the DICOM files that hold one picture re-encoded, one is kept.

    Args:
        items: the corpus.
        pixels: an item's pixels (H, W) in [0, 1], or None if it cannot be read (then kept as it is).
    """
    kept: list[tuple[Item, float, np.ndarray | None]] = []
    for item in items:
        image = pixels(item) if item.name.startswith("dicom/") else None
        if image is None or image.size < 16:
            kept.append((item, 0.0, None))
            continue
        thumb = cv2.resize(np.nan_to_num(image).astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
        # Standardised, so that one picture under two intensity windows still matches itself.
        thumb = (thumb - thumb.mean()) / max(float(thumb.std()), 1e-6)
        aspect = image.shape[0] / image.shape[1]
        if any(
            other is not None and abs(ratio - aspect) < 0.01 and float((other * thumb).mean()) > 0.95
            for _, ratio, other in kept
        ):
            continue
        kept.append((item, aspect, thumb))
    return [item for item, _, _ in kept]
