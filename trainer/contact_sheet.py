"""Batch preprocessing of radiograph files, and a contact sheet that shows what each op does to them.

`preprocess_files` writes each input, run through a `Pipeline`, as an 8-bit PNG; `contact_sheet` draws one row
per input and one column per op (or pipeline), so that a user can check the ops on their own images before
training with them (`python -m trainer preprocess ... --grid sheet.png`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from trainer.io import XRayReadError, load_xray
from trainer.preprocess import Pipeline, PreprocessError

logger = logging.getLogger(__name__)

DEFAULT_COLUMNS = ("original", "clahe", "white_balance", "crop_body", "crop_lungs", "all")
"""Contact-sheet columns: "original", "all" (every other column's ops, in order), or Pipeline.parse texts."""

MAX_ROWS = 64
"""At most this many inputs are drawn on one contact sheet (the rest are left out, with a log message)."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")
"""File endings picked up when a directory is given as an input."""

_SHEET_BG = (48, 48, 48)  # mid-dark grey, so an image's own black border stays visible against it
_LABEL_FG = (235, 235, 235)
_LABEL_DIM = (160, 160, 160)
_WARN = (255, 170, 0)
_ERROR = (230, 60, 60)


class UnreadableInputsError(PreprocessError):
    """Some inputs of a batch could not be read or processed; the others were written.

    Attributes:
        written: the output files that were written.
        failures: input path -> reason, for every input that was not.
    """

    def __init__(self, written: list[Path], failures: dict[Path, str]) -> None:
        self.written = written
        self.failures = failures
        lines = "\n".join(f"  {path}: {reason}" for path, reason in failures.items())
        super().__init__(
            f"{len(failures)} of {len(failures) + len(written)} inputs could not be preprocessed"
            f" (the other {len(written)} were written):\n{lines}"
        )


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """The input paths, with each directory replaced by its image files (IMAGE_SUFFIXES), sorted."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = (p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            paths.extend(sorted(found))
        else:
            paths.append(item)
    return paths


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] as 8-bit grey levels (rounded, not truncated)."""
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _output_name(path: Path, taken: set[str]) -> str:
    """`<stem>.png`, made unique within one batch (two inputs may share a stem: a.dcm and a.png, or dirs)."""
    name, n = f"{path.stem}.png", 1
    while name in taken:
        name, n = f"{path.stem}-{n}.png", n + 1
    taken.add(name)
    return name


def preprocess_files(inputs: Sequence[str | Path], pipeline: Pipeline, out_dir: str | Path) -> list[Path]:
    """Read each input with `load_xray`, run `pipeline` on it and write the result as an 8-bit PNG.

    Outputs are named after the inputs (`scan.dcm` -> `out_dir/scan.png`; a clash within the batch gets a
    `-1`, `-2`, ... suffix). Directories among the inputs are expanded (see `expand_inputs`). A failing input
    does not stop the others: every input is tried first, then, if any failed, `UnreadableInputsError` is
    raised listing each one with its reason (its `.written` holds the files that were written). Warnings of
    the pipeline (e.g. a lung-crop fallback) are logged per file.

    Args:
        inputs: image files (DICOM, PNG, JPEG, TIFF, BMP) or directories of them.
        pipeline: the preprocessing to apply.
        out_dir: where to write the PNGs; created if missing.

    Returns:
        The written files, in input order.

    Raises:
        UnreadableInputsError: after the batch, if any input could not be read, processed or written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    failures: dict[Path, str] = {}
    taken: set[str] = set()
    for path in expand_inputs(inputs):
        target = out_dir / _output_name(path, taken)
        try:
            if target.resolve() == path.resolve():
                raise PreprocessError(f"writing {target} would overwrite the input; choose another out_dir")
            result = pipeline.apply(load_xray(path).pixels)
            Image.fromarray(to_uint8(result.image), mode="L").save(target)
        except (XRayReadError, PreprocessError, OSError) as err:
            failures[path] = str(err)
            logger.error("%s: %s", path, err)
            continue
        for message in result.warnings:
            logger.warning("%s: %s", path, message)
        written.append(target)
    if failures:
        raise UnreadableInputsError(written, failures)
    return written


def _column_pipelines(columns: Sequence[str]) -> list[Pipeline]:
    """The pipeline drawn in each column: "original" is the identity, "all" chains every other column."""
    parsed = {c: Pipeline() if c == "original" else Pipeline.parse(c) for c in columns if c != "all"}
    everything = sum((parsed[c] for c in columns if c not in ("all", "original")), Pipeline())
    return [everything if c == "all" else parsed[c] for c in columns]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (AttributeError, TypeError, OSError):  # Pillow built without FreeType: small bitmap font
        return ImageFont.load_default()


def _line_height(font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    return int(font.getbbox("Ag")[3]) + 4


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    """`text` shortened with a middle ellipsis until it fits in `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    keep = len(text)
    while keep > 4:
        keep -= 1
        short = text[: keep // 2] + "…" + text[len(text) - (keep - keep // 2) :]
        if draw.textlength(short, font=font) <= width:
            return short
    return text[:4]


def _tile(image: np.ndarray, tile: int) -> Image.Image:
    """The image letterboxed on a tile-sized grey square (aspect kept, so a crop shows as a crop)."""
    rgb = Image.fromarray(to_uint8(image), mode="L").convert("RGB")
    return ImageOps.pad(rgb, (tile, tile), method=Image.Resampling.LANCZOS, color=_SHEET_BG)


def _mark(
    tile_img: Image.Image, lines: Sequence[str], colour: tuple[int, int, int], font: ImageFont.ImageFont
) -> None:
    """Frame a tile in `colour` and write `lines` on a dark band at its bottom."""
    draw = ImageDraw.Draw(tile_img)
    size = tile_img.width
    draw.rectangle([0, 0, size - 1, size - 1], outline=colour, width=3)
    line_h = _line_height(font)
    top = size - 6 - line_h * len(lines)
    draw.rectangle([3, top, size - 4, size - 4], fill=(0, 0, 0))
    for i, line in enumerate(lines):
        draw.text((8, top + 2 + i * line_h), _fit_text(draw, line, font, size - 16), fill=colour, font=font)


def _short_warning(message: str) -> str:
    if "fell back to the body crop" in message:
        return "lungs not found: body crop"
    if "could not find the body" in message:
        return "body not found: full image"
    return message


def contact_sheet(
    inputs: Sequence[str | Path],
    out_png: str | Path,
    columns: Sequence[str] = DEFAULT_COLUMNS,
    tile: int = 256,
) -> Path:
    """Draw a grid of each input (rows) under each op or pipeline (columns) and save it as a PNG.

    Crops are shown letterboxed on a grey background, so what was cut off is visible. Tiles whose ops warned
    (e.g. crop_lungs falling back to the body crop) get an orange frame and a note; inputs that cannot be read
    get a row with the reason instead of stopping the sheet. At most MAX_ROWS inputs are drawn.

    Args:
        inputs: image files or directories of them (see `expand_inputs`).
        out_png: the PNG to write (parent directories are created).
        columns: "original", "all" (the other columns' ops chained in order), or pipeline texts as accepted
            by `Pipeline.parse`, e.g. "clahe:clip_limit=3" or "crop_lungs,clahe".
        tile: side of each square tile in pixels.

    Returns:
        The path of the written PNG.

    Raises:
        PreprocessError: a column is not a valid pipeline text, or there is nothing to draw.
    """
    paths = expand_inputs(inputs)
    if not paths:
        raise PreprocessError("no inputs to draw on the contact sheet")
    if not columns:
        raise PreprocessError("a contact sheet needs at least one column, e.g. ('original', 'clahe')")
    if len(paths) > MAX_ROWS:
        logger.warning("contact sheet shows the first %d of %d inputs", MAX_ROWS, len(paths))
        paths = paths[:MAX_ROWS]
    pipelines = _column_pipelines(columns)
    tile = max(64, int(tile))
    font = _font(max(11, tile // 16))
    small_font = _font(max(10, tile // 20))
    label_w, header_h, gap = max(120, tile * 3 // 4), _line_height(font) + 12, 4

    sheet = Image.new(
        "RGB",
        (label_w + len(columns) * (tile + gap), header_h + len(paths) * (tile + gap)),
        _SHEET_BG,
    )
    draw = ImageDraw.Draw(sheet)
    for j, name in enumerate(columns):
        x = label_w + j * (tile + gap)
        draw.text((x + 6, 6), _fit_text(draw, name, font, tile - 12), fill=_LABEL_FG, font=font)
    for i, path in enumerate(paths):
        y = header_h + i * (tile + gap)
        _draw_row_label(draw, path, (4, y), label_w - 8, small_font)
        try:
            pixels = load_xray(path).pixels
        except (XRayReadError, OSError) as err:
            logger.error("%s: %s", path, err)
            cell = Image.new("RGB", (tile, tile), (20, 20, 20))
            _mark(cell, ["unreadable:", str(err)], _ERROR, small_font)
            sheet.paste(cell, (label_w, y))
            continue
        for j, pipeline in enumerate(pipelines):
            try:
                result = pipeline.apply(pixels)
            except PreprocessError as err:
                cell = Image.new("RGB", (tile, tile), (20, 20, 20))
                _mark(cell, ["error:", str(err)], _ERROR, small_font)
            else:
                cell = _tile(result.image, tile)
                if result.warnings:
                    _mark(cell, [_short_warning(w) for w in result.warnings], _WARN, small_font)
            sheet.paste(cell, (label_w + j * (tile + gap), y))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)
    return out_png


def _draw_row_label(
    draw: ImageDraw.ImageDraw, path: Path, xy: tuple[int, int], width: int, font: ImageFont.ImageFont
) -> None:
    """The file name (wrapped over up to four lines) and its folders, left of a row."""
    name, x, y = path.name, xy[0], xy[1] + 4
    line_h = _line_height(font)
    lines: list[str] = []
    while name and len(lines) < 4:
        cut = len(name)
        while cut > 1 and draw.textlength(name[:cut], font=font) > width:
            cut -= 1
        lines.append(name[:cut])
        name = name[cut:]
    if name:
        lines[-1] = _fit_text(draw, lines[-1] + name, font, width)
    folders = _fit_text(draw, f"({path.parent.parent.name}/{path.parent.name})", font, width)
    for k, line in enumerate(lines):
        draw.text((x, y + k * line_h), line, fill=_LABEL_FG, font=font)
    draw.text((x, y + len(lines) * line_h), folders, fill=_LABEL_DIM, font=font)
