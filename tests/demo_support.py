"""Shared by the demo tests: tiny saved models, synthetic input files, and the app served on loopback."""

from __future__ import annotations

import contextlib
import io
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from unittest import mock

import gradio as gr
import numpy as np
import torch
from PIL import Image

from tests.synthetic import radiograph
from tests.test_io import dicom_bytes
from trainer.export import save_pretrained
from trainer.modeling import create_classifier
from trainer.task import Task

CHROMIUM = Path("/usr/bin/chromium")  # Debian's; Playwright's own browser download does not work offline
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"  # screenshots to look at (git-ignored)

SIZE = 64  # model input side: tiny models, fast CAMs
LABELS = {
    Task.BINARY: ["abnormal"],
    Task.MULTICLASS: ["normal", "bacterial", "viral"],
    Task.MULTILABEL: ["opacity", "effusion"],
}
THRESHOLDS = {Task.BINARY: [0.5], Task.MULTICLASS: [], Task.MULTILABEL: [0.3, 0.6]}


def save_tiny_model(
    folder: Path,
    *,
    arch: str = "test_efficientnet",
    task: Task | str = Task.BINARY,
    pipeline: Sequence[dict | str] = (),
    thresholds: Sequence[float] | None = None,
    seed: int = 0,
) -> Path:
    """A random-weight chexlab model folder (config.json + model.safetensors) at a SIZE-pixel input."""
    task = Task.parse(task)
    torch.manual_seed(seed)
    labels = LABELS[task]
    model = create_classifier(arch, task.num_outputs(len(labels)))
    return save_pretrained(
        model.eval(),
        folder,
        task=task,
        label_names=labels,
        negative_name="normal" if task.single_logit else None,
        pipeline=list(pipeline),
        thresholds=list(THRESHOLDS[task] if thresholds is None else thresholds),
        input_size=SIZE,
    )


def synthetic_pixels(side: int = 192, seed: int = 0, opacity: bool = True) -> np.ndarray:
    """A uint8 (side, side) synthetic chest radiograph (a body, two lungs, an opacity)."""
    return radiograph(np.random.default_rng(seed), size=side, opacity=opacity)


def write_inputs(folder: Path) -> dict[str, Path]:
    """Good inputs (8-bit PNG, 16-bit PNG, DICOM) and bad ones, by name."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = synthetic_pixels()
    files = {
        "png8": folder / "chest.png",
        "png16": folder / "chest16.png",
        "dicom": folder / "chest.dcm",
        "text": folder / "notes.png",
        "empty": folder / "empty.png",
        "truncated": folder / "truncated.png",
        "fake_dicom": folder / "renamed.dcm",
        "huge": folder / "huge.png",
        "photo": folder / "colour-noise.png",
    }
    Image.fromarray(pixels).save(files["png8"])
    # 16-bit with detail below 8-bit resolution: the reader must keep it.
    wide = (
        pixels.astype(np.uint16) * 257 + np.arange(pixels.size, dtype=np.uint16).reshape(pixels.shape) % 200
    )
    Image.fromarray(wide).save(files["png16"])
    files["dicom"].write_bytes(dicom_bytes(pixels.astype(np.uint16) * 16, bits_stored=12))
    files["text"].write_text("this is not an image\n" * 20)
    files["empty"].write_bytes(b"")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    files["truncated"].write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    files["fake_dicom"].write_bytes(b"\x00" * 64 + b"plain bytes that only pretend to be DICOM" * 8)
    Image.new("L", (4000, 3000)).save(files["huge"])  # 12 MP, a few kB: over the tests' pixel limit
    # Not a radiograph: seeded colour noise, which the OOD gate's image checks flag as a colour picture.
    colour = np.random.default_rng(0).integers(0, 256, (160, 200, 3), dtype=np.uint8)
    Image.fromarray(colour).save(files["photo"])
    return files


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(build: Callable[[], gr.Blocks], cache_dir: Path) -> Iterator[str]:
    """Build a Gradio app and serve it on 127.0.0.1 (a free port) from this process; yields its URL.

    Cached examples go to `cache_dir`, not to .gradio/ in the checkout; the app is closed afterwards.
    """
    import httpx

    from demo.gradio_ui import launch_options

    previous = os.environ.get("GRADIO_EXAMPLES_CACHE")
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(cache_dir)  # read when the examples are built
    demo = None
    try:
        demo = build()
        options = {**launch_options(), "server_name": "127.0.0.1", "server_port": free_port()}
        # Gradio's launch checks that the server answers a HEAD request within 3 seconds, which a busy
        # machine can miss: wait for the answer instead, so that no test depends on the machine's speed.
        with mock.patch("gradio.networking.url_ok", lambda url: httpx.head(url, timeout=None).is_success):
            _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **options)
        yield url
    finally:
        if demo is not None:
            demo.close()
        if previous is None:
            os.environ.pop("GRADIO_EXAMPLES_CACHE", None)
        else:
            os.environ["GRADIO_EXAMPLES_CACHE"] = previous


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """Headless Debian chromium driven by Playwright; skips the test when either is missing."""
    import pytest

    if not CHROMIUM.exists():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
