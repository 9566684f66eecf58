"""Tests for trainer.file_check: the header check, and the cache of images that passed before."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.tiny_datasets import write_csv
from trainer.file_check import check_files, default_cache_dir, header_problem
from trainer.image_sources import FileImages
from trainer.label_readers import read_csv_labels
from trainer.labels import DataError


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40), dtype=np.uint8)).save(
        buffer, format=fmt
    )
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF"])
def test_header_check_accepts_images_and_catches_truncation(fmt: str) -> None:
    data = _encoded(fmt)
    assert header_problem(data[:4096], data[-64:], len(data)) is None
    cut = data[: len(data) // 2]
    problem = header_problem(cut[:4096], cut[-64:], len(cut))
    if fmt == "TIFF":  # no end marker to look for: decoding finds it
        assert problem is None
    else:
        assert problem is not None and problem.startswith(f"truncated {fmt}")


def test_header_check_other_content() -> None:
    assert header_problem(b"", b"", 0) == "empty (0 bytes)"
    assert "not an image" in header_problem(b"hello", b"hello", 5)
    dicom = b"\0" * 128 + b"DICM" + b"\0" * 100
    assert header_problem(dicom, dicom[-64:], len(dicom)) is None
    assert header_problem(b"\x08\x00\x05\x00", b"", 4, "scan.dcm") is None  # no preamble, a .dcm name
    png = _encoded("PNG")
    broken = png[:12] + b"XXXX" + png[16:]
    assert (
        header_problem(broken, broken[-64:], len(broken)) == "corrupt PNG: the IHDR chunk does not come first"
    )


def test_results_are_cached_by_path_size_and_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    root.mkdir()
    for i in range(4):
        (root / f"{i}.png").write_bytes(_encoded("PNG"))
    table = read_csv_labels(
        write_csv(
            root / "labels.csv", ["path", "patient_id", "label"], [[f"{i}.png", i, i % 2] for i in range(4)]
        )
    )
    check_files(table, cache_dir=tmp_path / "cache")
    read: list[str] = []
    real_ends = FileImages.ends
    monkeypatch.setattr(FileImages, "ends", lambda self, ref: read.append(ref) or real_ends(self, ref))
    check_files(table, cache_dir=tmp_path / "cache")
    assert read == []  # every image known good
    (root / "2.png").write_bytes(_encoded("PNG")[:-20])  # truncated: size and mtime change
    os.utime(root / "1.png", ns=(1, 1))  # only touched
    with pytest.raises(DataError, match=r"line 4: 2.png: truncated PNG"):
        check_files(table, cache_dir=tmp_path / "cache")
    assert sorted(read) == ["1.png", "2.png"]
    read.clear()
    (root / "2.png").write_bytes(_encoded("PNG"))
    check_files(table, cache_dir=tmp_path / "cache")
    assert read == ["2.png"]  # 1.png passed again last time, 2.png failed and is checked again
    # A decode check is cached on its own: decoding catches more than the header check.
    check_files(table, decode=True, cache_dir=tmp_path / "cache")
    read.clear()
    check_files(table, decode=True, cache_dir=tmp_path / "cache")
    assert read == []


def test_quick_identities_agree_with_problem_and_identity(tmp_path: Path) -> None:
    root, away = tmp_path / "data", tmp_path / "away"
    (root / "sub").mkdir(parents=True)
    away.mkdir()
    for file in (root / "plain.png", root / "sub" / "inner.png", away / "x.png"):
        file.write_bytes(_encoded("PNG"))
    (root / "dir.png").mkdir()
    os.symlink(root / "plain.png", root / "link.png")  # a file symlink: left to problem()
    os.symlink(root / "sub", root / "alias")  # a folder symlink that stays inside the root
    os.symlink(away, root / "out")  # one that leads outside
    images = FileImages(root)
    refs = ["plain.png", "sub/inner.png", "alias/inner.png", "link.png", "out/x.png", "dir.png", "gone.png"]
    quick = images.quick_identities(refs)
    assert [q is not None for q in quick] == [True, True, True, False, False, False, False]
    for ref, identity in zip(refs, quick, strict=True):
        if identity is not None:
            assert images.problem(ref) is None and identity == images.identity(ref)
    assert (
        images.problem("out/x.png") == f"outside the data root {root} (through a symlink to {away / 'x.png'})"
    )
    # Cached passes never hide a problem the quick look leaves to problem().
    table = read_csv_labels(
        write_csv(
            root / "labels.csv", ["path", "patient_id", "label"], [[r, i, i % 2] for i, r in enumerate(refs)]
        )
    )
    for _ in range(2):
        with pytest.raises(DataError) as error:
            check_files(table, cache_dir=tmp_path / "cache")
        message = str(error.value)
        assert "3 of 7 images" in message and "line 6: out/x.png: outside the data root" in message
        assert "line 7: dir.png: not a file" in message and "line 8: gone.png: file not found" in message


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CHEXLAB_CACHE", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("CHEXLAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "chexlab"
