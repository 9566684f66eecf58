"""Speed against bare baselines (issue 16): every figure is a ratio to a bare script measured in the same run.

    python bench/speed.py                    # every part, the default sizes; writes docs/benchmarks.md
    python bench/speed.py --quick            # a smoke run at small scale (numbers not worth keeping)
    python bench/speed.py --parts model-step batch-predict --images 745
    python bench/speed.py --parts http responses   # starts `python app.py` on a free loopback port

Parts (each a row of the table, with its goal):
    model-step      the demo's model step (forward + Grad-CAM map, `demo.cam.explain`) vs the bare eager
                    forward alone; also pytorch-grad-cam's GradCAM (the previous implementation)
    server-predict  `Predictor.predict`'s first stage, the answer (read, preprocess, forward, map, display
                    images), and the complete prediction (+ the map's checks and histograms) vs a bare
                    script doing the same read, CLAHE, letterbox and forward without any map
    http            a /predict round trip as the page makes it (bench/http_client.py) vs the handler's own
                    time in the server for the same request (prediction + the returned images encoded and
                    written), each run on a new image; also through gradio_client, for comparison
    responses       the images a /predict response shows (overlay, before, after): bytes and encoding time
                    in the demo's display format (demo/encoding.py) vs Pillow's default PNG (before)
    batch-predict   `trainer.batch_inference` (workers + ForwardRunner) and the CLI's `predict_to_csv` vs a
                    bare eager loop doing the same decode, preprocessing and forward
    training        `trainer.engine.train_one_epoch` (chexlab's model defaults, Accelerate) vs a bare loop
                    over the same in-memory batches (unfrozen backbone)
    cold-start      `python app.py` to the first HTTP 200, vs a bare Gradio app (the models load after:
                    `models-ready` is the time until the default model is loaded)
    idle-rss        the idle app's resident memory, vs the bare Gradio app's

Equality checks (results whatever the machine): the fast Grad-CAM against pytorch-grad-cam and the ONNX
Runtime copies against PyTorch, on the embedded models. Timings are medians of interleaved runs; run on a
quiet machine.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import DOC, replace_section  # noqa: E402
from trainer.allocator import tune_allocator  # noqa: E402

if TYPE_CHECKING:
    from torch import nn

    from trainer.inference import InputTransform
    from trainer.task import Task

SECTION = "speed"
MODEL = ROOT / "demo" / "models" / "nih-binary"
NIH_IMAGES = ROOT.parent / "shared" / "data" / "nih_cxr14_subset" / "images"
PARTS = (
    "model-step",
    "server-predict",
    "http",
    "responses",
    "batch-predict",
    "training",
    "cold-start",
    "idle-rss",
)
GOALS = {
    "model-step": "<= 1.2x (moonshot 1.05x)",
    "server-predict": "<= 1.3x (moonshot 1.1x)",
    "http": "<= 1.5x",
    "http-transport": "context (no goal)",
    "http-gradio-client": "context (no goal)",
    "responses": "lighter (< 1)",
    "batch-predict": ">= 2x faster",
    "training": ">= 1.0x as fast",
    "cold-start": "<= 4 s",
    "models-ready": "context (no goal)",
    "idle-rss": "<= 850 MB",
}


def interleaved(runs: int, **candidates: Callable[[], object]) -> dict[str, float]:
    """Median seconds of each candidate, run in turns (one warm-up each) so that all see the same load."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for round_ in range(runs + 1):
        for name, run in candidates.items():
            started = time.perf_counter()
            run()
            if round_:
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def test_image(folder: Path) -> Path:
    """A 1024x1024 16-bit PNG radiograph (an NIH image scaled up when ../shared is there, else synthetic)."""
    import cv2

    sources = sorted(NIH_IMAGES.glob("*.png"))[:1]
    read = cv2.imread(str(sources[0]), cv2.IMREAD_GRAYSCALE) if sources else None
    if read is not None:
        pixels = read.astype(np.float32) / 255
    else:
        y, x = np.mgrid[0:512, 0:512] / 512
        pixels = (0.2 + 0.6 * np.exp(-((x - 0.5) ** 2 + (y - 0.5) ** 2) * 8)).astype(np.float32)
    pixels = cv2.resize(pixels, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    path = folder / "chest16.png"
    cv2.imwrite(str(path), np.clip(pixels * 65535, 0, 65535).astype(np.uint16))
    return path


# ----------------------------------------------------------------------------------------------- parts


def model_step(runs: int, image: Path) -> list[tuple[str, str, float, str]]:
    from pytorch_grad_cam import GradCAM

    from demo.cam import explain, prepare_for_cam, target_layer
    from trainer.export import load_model
    from trainer.inference import InputTransform
    from trainer.io import load_xray

    model, info = load_model(MODEL)
    prepared = prepare_for_cam(copy.deepcopy(model))  # the bare forward runs the model as loaded
    x = InputTransform.for_model(info)(load_xray(image).pixels)
    batch = x.tensor.unsqueeze(0)

    def bare() -> None:
        with torch.inference_mode():
            model(batch)

    def library() -> None:
        with GradCAM(model=prepared, target_layers=[target_layer(prepared)]) as cam:
            cam(batch.clone().requires_grad_(True), targets=None)

    t = interleaved(runs, bare=bare, fast=lambda: explain(prepared, batch, task=info.task), library=library)
    return [
        (
            "model-step",
            "explain (Grad-CAM) / bare forward",
            t["fast"] / t["bare"],
            f"bare {t['bare'] * 1e3:.1f} ms",
        ),
        ("model-step", "pytorch-grad-cam GradCAM / bare forward (before)", t["library"] / t["bare"], ""),
    ]


def server_predict(runs: int, image: Path) -> list[tuple[str, str, float, str]]:
    from demo.predictor import Predictor
    from trainer.export import load_model
    from trainer.inference import InputTransform
    from trainer.io import load_xray

    predictor = Predictor({"nih-binary": f"local-dir:{MODEL}"}, cache_size=0)
    predictor.load("nih-binary")
    model, info = load_model(MODEL)
    transform = InputTransform.for_model(info)

    def bare() -> (
        None
    ):  # read, CLAHE (the model's pipeline), letterbox, normalise, forward: no map, no images
        tensor = transform(load_xray(image).pixels).tensor
        with torch.inference_mode():
            model(tensor.unsqueeze(0))

    t = interleaved(
        runs,
        bare=bare,
        answer=lambda: next(predictor.predict_in_stages(image)),
        complete=lambda: predictor.predict(image),
    )
    return [
        (
            "server-predict",
            "Predictor.predict, the answer (first update) / bare read+CLAHE+letterbox+forward",
            t["answer"] / t["bare"],
            f"bare {t['bare'] * 1e3:.0f} ms, answer {t['answer'] * 1e3:.0f} ms",
        ),
        (
            "server-predict",
            "Predictor.predict with the map's checks and histograms (second update) / bare",
            t["complete"] / t["bare"],
            f"complete {t['complete'] * 1e3:.0f} ms",
        ),
    ]


def variants(image: Path, count: int) -> list[Path]:
    """`count` copies of `image` that differ in one pixel: distinct files, so that no cache answers a run."""
    import cv2

    pixels = cv2.imread(str(image), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise FileNotFoundError(f"cannot read {image}")
    paths = []
    for i in range(count):
        copy = pixels.copy()
        copy.flat[i] = copy.flat[i] ^ 1
        paths.append(image.with_name(f"{image.stem}-{i}.png"))
        cv2.imwrite(str(paths[-1]), copy)
    return paths


def http(runs: int, image: Path, url: str | None) -> list[tuple[str, str, float, str]]:
    """A /predict round trip, made as the page makes it (bench/http_client.py), vs the handler's own time in
    the server for the same request (what Gradio reports), each run on an image no cache holds; what is left
    of the round trip once the handler's time is taken out vs the same round trip against a bare Gradio app
    that does nothing but return files like ours (the transport's own cost: upload, queue, events and a
    download per file); and the round trip through gradio_client, whose polling adds its own wait."""
    from gradio_client import Client, handle_file

    from bench.http_client import GradioHttpClient
    from demo import gradio_handlers as handlers

    files = iter(variants(image, 3 * (runs + 1) + 1))
    server: list[float] = []

    def round_trip() -> None:
        server.append(client.predict(next(files)).server_seconds)

    with tempfile.TemporaryDirectory() as downloads, _running_app(url) as address:
        client = GradioHttpClient(address)
        answer = dict(zip(handlers.API_OUTPUTS, client.predict(next(files)).outputs, strict=True))
        shown = [answer["overlay"], *answer["before_after"]]
        returned = [str(client.save(part, Path(downloads))) for part in shown]
        gradio_client = Client(address, verbose=False, download_files=downloads)

        def through_gradio_client() -> None:
            gradio_client.predict(handle_file(str(next(files))), api_name="/predict")

        with _server([sys.executable, "-c", BARE_FILES, *returned]) as served:
            bare = GradioHttpClient(served.address)
            t = interleaved(
                runs,
                http=round_trip,
                bare=lambda: bare.predict(next(files)),
                gradio_client=through_gradio_client,
            )
    handler = statistics.median(server[1:])  # the first call is interleaved's warm-up
    note = f"server {handler * 1e3:.0f} ms, round trip {t['http'] * 1e3:.0f} ms"
    left = t["http"] - handler
    return [
        ("http", "/predict round trip / the handler's time in the server", t["http"] / handler, note),
        (
            "http-transport",
            "round trip less the handler / bare Gradio round trip returning the same files",
            left / t["bare"],
            f"{left * 1e3:.0f} ms vs bare {t['bare'] * 1e3:.0f} ms ({len(returned)} image files)",
        ),
        (
            "http-gradio-client",
            "the same round trip through gradio_client / the handler's time in the server",
            t["gradio_client"] / handler,
            f"{t['gradio_client'] * 1e3:.0f} ms; its 50 ms polling adds the difference",
        ),
    ]


def responses(runs: int, image: Path) -> list[tuple[str, str, float, str]]:
    """What a /predict response shows, in the display format vs Pillow's default PNG (the format before)."""
    import io

    from PIL import Image

    from demo.encoding import DISPLAY_FORMAT, as_uint8, display_bytes
    from demo.predictor import Predictor

    result = Predictor({"nih-binary": f"local-dir:{MODEL}"}).predict(image)
    shown = [result.overlay, as_uint8(result.before), as_uint8(result.after)]

    def png() -> list[bytes]:
        encoded = []
        for pixels in shown:
            data = io.BytesIO()
            Image.fromarray(pixels).save(data, format="PNG")
            encoded.append(data.getvalue())
        return encoded

    def display() -> list[bytes]:
        return [display_bytes(pixels) for pixels in shown]

    t = interleaved(runs, png=png, display=display)
    png_size, display_size = sum(map(len, png())), sum(map(len, display()))
    what = f"{DISPLAY_FORMAT.upper()} / PNG"
    return [
        ("responses", f"shown bytes, {what}", display_size / png_size,
         f"{display_size / 1024:.0f} KiB vs {png_size / 1024:.0f} KiB (overlay, before, after)"),
        ("responses", f"encoding time, {what}", t["display"] / t["png"],
         f"{t['display'] * 1e3:.1f} ms vs {t['png'] * 1e3:.1f} ms"),
    ]  # fmt: skip


def batch_predict(runs: int, count: int) -> list[tuple[str, str, float, str]]:
    from trainer.batch_inference import write_predictions
    from trainer.export import load_model
    from trainer.inference import InputTransform
    from trainer.predict import predict_to_csv
    from trainer.runtime import ForwardRunner

    paths = sorted(NIH_IMAGES.glob("*.png"))[:count]
    if not paths:
        return [("batch-predict", "batch predict", float("nan"), f"needs the NIH images at {NIH_IMAGES}")]
    model, info = load_model(MODEL)
    transform, task = InputTransform.for_model(info), info.task
    work = Path(tempfile.mkdtemp(prefix="chexlab-speed-"))
    started = time.perf_counter()
    runner = ForwardRunner.for_model(model, info.data_config["input_size"], cache_dir=work / "cache")
    export_seconds = time.perf_counter() - started

    with _plain_process_loop(paths) as plain_loop:
        t = interleaved(
            runs,
            bare=lambda: bare_batch_loop(model, transform, task, paths),  # with this process's allocator
            plain=plain_loop,
            cli=lambda: predict_to_csv(str(MODEL), list(paths), work / "cli.csv"),
            parallel=lambda: write_predictions(model, info, paths, work / "parallel.csv", runner=runner),
        )
    plain = t["plain"]
    note = f"{len(paths)} images, bare {len(paths) / t['bare']:.1f} img/s; {runner.backend}"
    note += f" (export {export_seconds:.1f} s, once per weights)"
    return [
        (
            "batch-predict",
            "bare eager loop in a plain process (glibc's allocator defaults) / batch_inference",
            plain / t["parallel"],
            f"bare {len(paths) / plain:.1f} img/s: the loop as a user's own script runs it",
        ),
        (
            "batch-predict",
            "bare eager loop with chexlab's allocator profile / batch_inference",
            t["bare"] / t["parallel"],
            note,
        ),
        (
            "batch-predict",
            "bare eager loop / predict_to_csv, the CLI (model load included)",
            t["bare"] / t["cli"],
            "",
        ),
    ]


def bare_batch_loop(
    model: nn.Module, transform: InputTransform, task: Task, paths: Sequence[str | Path]
) -> None:
    """The naive batch loop chexlab's batch predict is measured against: decode, preprocess, eager forward,
    16 images at a time, in one process."""
    from trainer.io import load_xray

    for start in range(0, len(paths), 16):
        tensors = [transform(load_xray(p).pixels).tensor for p in paths[start : start + 16]]
        with torch.inference_mode():
            task.probabilities(model(torch.stack(tensors)))


# `bare_batch_loop` in a process of its own, as a user's script runs: without the allocator profile
# (trainer/allocator.py) that this benchmark's process sets for itself, the CLI and the app. One loop per
# line read from stdin, "done" after each, so that it takes its turns with the other candidates.
BARE_BATCH = """import sys
from pathlib import Path
from bench.speed import bare_batch_loop
from trainer.export import load_model
from trainer.inference import InputTransform
model_dir, *paths = sys.argv[1:]
model, info = load_model(Path(model_dir))
for _ in sys.stdin:
    bare_batch_loop(model, InputTransform.for_model(info), info.task, paths)
    print("done", flush=True)
"""


@contextlib.contextmanager
def _plain_process_loop(paths: list[Path]) -> Iterator[Callable[[], None]]:
    """A function that runs BARE_BATCH's loop over `paths` once, in a process that keeps glibc's defaults."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")}
    command = [sys.executable, "-c", BARE_BATCH, str(MODEL), *map(str, paths)]
    with subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as process:  # fmt: skip
        assert process.stdin is not None and process.stdout is not None
        commands, answers = process.stdin, process.stdout

        def loop() -> None:
            commands.write("\n")
            commands.flush()
            if answers.readline().strip() != "done":
                raise RuntimeError(f"the plain-process loop failed (exit code {process.poll()})")

        try:
            yield loop
        finally:
            commands.close()


def training(runs: int, batches: int) -> list[tuple[str, str, float, str]]:
    import timm
    from accelerate import Accelerator
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from trainer.config import TrainConfig
    from trainer.engine import make_scheduler, train_one_epoch
    from trainer.losses import BinaryLoss
    from trainer.modeling import channels_last, create_classifier
    from trainer.task import Task

    torch.manual_seed(0)
    images = torch.randn(batches * 16, 3, 224, 224)
    data = TensorDataset(images, torch.randint(0, 2, (len(images),)).float(), torch.arange(len(images)))
    loss_fn = nn.BCEWithLogitsLoss()
    bare_model = timm.create_model("tf_efficientnet_lite0", num_classes=1).train()
    bare_opt = torch.optim.AdamW(bare_model.parameters(), 1e-4)
    bare_loader = DataLoader(data, batch_size=16)

    def bare() -> None:
        for x, y, _ in bare_loader:
            loss = loss_fn(bare_model(x)[:, 0], y)
            loss.backward()
            bare_opt.step()
            bare_opt.zero_grad(set_to_none=True)

    accelerator = Accelerator(cpu=True, mixed_precision="no")
    # chexlab's default head dropout, in the layout `trainer.engine.train` gives the model
    model = channels_last(create_classifier("tf_efficientnet_lite0", 1, drop_rate=0.2))
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
    model, optimizer, loader = accelerator.prepare(model, optimizer, DataLoader(data, batch_size=16))
    scheduler = make_scheduler(optimizer, TrainConfig(schedule="constant", warmup_epochs=0.0), batches, 1)

    def chexlab() -> None:
        train_one_epoch(
            model, loader, BinaryLoss(), optimizer, scheduler, accelerator, task=Task.BINARY, epoch=0,
            updates=0, max_steps=None, max_grad_norm=1.0, progress=False, describe_batch=str,
        )  # fmt: skip

    t = interleaved(runs, bare=bare, chexlab=chexlab)
    note = f"{batches} batches of 16 at 224 px in memory; bare {batches * 16 / t['bare']:.1f} img/s"
    return [
        ("training", "bare loop / train_one_epoch (speed, >= 1 is as fast)", t["bare"] / t["chexlab"], note)
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Served:
    """A server started for a measurement, while it runs."""

    address: str
    first_200: float  # seconds from the start to the first HTTP 200
    ready: float  # seconds from the start to its models being ready (= first_200 for a bare app)
    pid: int


@contextlib.contextmanager
def _server(
    command: list[str], *, ready_line: str | None = None, deadline: float = 300.0
) -> Iterator[Served]:
    """A server started by `command`, once it answers HTTP 200 and (given `ready_line`) has logged it."""
    port = _free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    address = f"http://127.0.0.1:{port}/"
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    logged = threading.Event()
    logged_at: list[float] = []

    def read_log() -> None:  # drains stderr (a full pipe would stall the server) and spots `ready_line`
        assert process.stderr is not None
        for line in process.stderr:
            if ready_line is not None and ready_line in line and not logged.is_set():
                logged_at.append(time.perf_counter() - started)
                logged.set()

    threading.Thread(target=read_log, daemon=True).start()
    try:
        while True:
            if process.poll() is not None or time.perf_counter() - started > deadline:
                raise RuntimeError(f"{command} did not serve {address}")
            try:
                with urllib.request.urlopen(address, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
        first_200 = time.perf_counter() - started
        if ready_line is not None and not logged.wait(deadline):
            raise RuntimeError(f"{command} never logged {ready_line!r}")
        yield Served(address, first_200, logged_at[0] if ready_line else first_200, process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)


def _app_server() -> contextlib.AbstractContextManager[Served]:
    """`python app.py`, once its page serves and its models are ready."""
    from demo.startup import READY

    return _server([sys.executable, "app.py"], ready_line=READY)


@contextlib.contextmanager
def _running_app(url: str | None) -> Iterator[str]:
    """The app at `url`, or `python app.py` started for the measurement."""
    if url:
        yield url
        return
    with _app_server() as served:
        yield served.address


def _serve(server: contextlib.AbstractContextManager[Served]) -> tuple[Served, int]:
    """The server, and its idle RSS bytes 3 s after it is ready."""
    with server as served:
        time.sleep(3)
        rss = int(Path(f"/proc/{served.pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return served, rss


# A Gradio app whose /predict answers at once with the given image files, in /predict's kinds of output.
BARE_FILES = """import sys, gradio as gr
overlay, before, after = sys.argv[1:4]
def predict(file):
    return {"a": 0.5, "b": 0.5}, "**A**", "", overlay, "note", (before, after), "", "", "", {"a": 0.5}
with gr.Blocks() as demo:
    file = gr.File(type="filepath")
    outputs = [gr.Label(), gr.Markdown(), gr.Markdown(), gr.Image(type="filepath"), gr.Markdown(),
               gr.ImageSlider(type="filepath"), gr.Markdown(), gr.Markdown(), gr.Markdown(), gr.JSON()]
    gr.Button().click(predict, file, outputs, api_name="predict")
demo.launch()
"""
BARE_GRADIO = "import gradio as gr\nwith gr.Blocks() as demo:\n    gr.Markdown('bare')\ndemo.launch()\n"


def start_up(runs: int) -> list[tuple[str, str, float, str]]:
    app, bare = [], []
    for _ in range(runs):
        app.append(_serve(_app_server()))
        bare.append(_serve(_server([sys.executable, "-c", BARE_GRADIO])))
    app_s, bare_s = (
        statistics.median(a.first_200 for a, _ in app),
        statistics.median(b.first_200 for b, _ in bare),
    )
    ready_s = statistics.median(a.ready for a, _ in app)
    app_rss, bare_rss = statistics.median(rss for _, rss in app), statistics.median(rss for _, rss in bare)
    return [
        ("cold-start", "python app.py to HTTP 200 / bare Gradio app", app_s / bare_s, f"app {app_s:.1f} s"),
        (
            "models-ready",
            "python app.py to its default model loaded / bare Gradio app to HTTP 200",
            ready_s / bare_s,
            f"app {ready_s:.1f} s",
        ),
        (
            "idle-rss",
            "idle app RSS / bare Gradio app RSS",
            app_rss / bare_rss,
            f"app {app_rss / 2**20:.0f} MB",
        ),
    ]


def equality() -> list[str]:
    """The fast Grad-CAM vs pytorch-grad-cam and ONNX Runtime vs PyTorch on the embedded models."""
    from pytorch_grad_cam import GradCAM

    from demo.cam import explain, prepare_for_cam, target_layer
    from trainer.export import load_model
    from trainer.runtime import ForwardRunner
    from trainer.task import Task

    lines = [
        "| model | fast Grad-CAM vs pytorch-grad-cam (max abs) | ONNX Runtime vs PyTorch logits (max abs) |",
        "|---|---|---|",
    ]
    for folder in sorted((ROOT / "demo" / "models").iterdir()):
        model, info = load_model(folder)
        prepare_for_cam(model)
        task = Task.parse(info.task)
        x = torch.randn(1, 3, *info.data_config["input_size"][1:], generator=torch.Generator().manual_seed(0))
        index = explain(model, x, task=task).target_index
        with GradCAM(model=model, target_layers=[target_layer(model)]) as cam:
            score = functools.partial(
                lambda out, task, index: task.class_score(out, index), task=task, index=index
            )
            expected = cam(x.clone().requires_grad_(True), targets=[score])[0]
        cam_gap = np.abs(explain(model, x, task=task, target_index=index).heatmap - expected).max()
        with tempfile.TemporaryDirectory() as cache:
            runner = ForwardRunner.for_model(model, info.data_config["input_size"], cache_dir=cache)
            batch = torch.randn(
                4, *info.data_config["input_size"], generator=torch.Generator().manual_seed(1)
            )
            with torch.inference_mode():
                onnx_gap = (runner(batch) - model(batch)).abs().max().item()
        lines.append(f"| {folder.name} | {cam_gap:.1e} | {onnx_gap:.1e} ({runner.backend}) |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--runs", type=int, default=15, help="timed runs per candidate (after one warm-up)")
    parser.add_argument("--images", type=int, default=745, help="NIH images for batch-predict")
    parser.add_argument("--batches", type=int, default=8, help="training batches of 16 per epoch")
    parser.add_argument("--http-url", help="a running app for the http part (default: start python app.py)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 runs, 24 images, 2 batches")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.images, args.batches = 2, 24, 2
    tune_allocator()  # as the CLI and the app do
    rows: list[tuple[str, str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        image = test_image(Path(tmp))
        parts: dict[str, Callable[[], list[tuple[str, str, float, str]]]] = {
            "model-step": lambda: model_step(args.runs, image),
            "server-predict": lambda: server_predict(args.runs, image),
            "http": lambda: http(args.runs, image, args.http_url),
            "responses": lambda: responses(args.runs, image),
            "batch-predict": lambda: batch_predict(max(3, args.runs // 5), args.images),  # one run is noise
            "training": lambda: training(max(3, args.runs // 5), args.batches),
            # Start-up times vary by a second or more from run to run here: five at least.
            "cold-start": lambda: start_up(1 if args.quick else max(5, args.runs // 5)),
        }
        wanted = ["cold-start" if part == "idle-rss" else part for part in args.parts]
        for part in dict.fromkeys(wanted):
            print(f"measuring {part} ...", file=sys.stderr, flush=True)
            measured = parts[part]()
            for row in measured:
                print("  ", *row, sep=" | ", file=sys.stderr, flush=True)
            rows.extend(measured)
    table = ["| part | measure | ratio | goal | note |", "|---|---|---|---|---|"]
    for part, what, ratio, note in rows:
        table.append(f"| {part} | {what} | {ratio:.2f} | {GOALS[part]} | {note} |")
    cpu = platform.processor() or platform.machine()
    body = "\n".join(
        [
            "## Speed against bare baselines (issue 16)",
            "",
            "**Smoke run (--quick): these timings are not results.**\n" if args.quick else "",
            f"`python bench/speed.py{' --quick' if args.quick else ''}` on {os.cpu_count()} cores ({cpu}, "
            f"load average {os.getloadavg()[0]:.1f} at the end), torch {torch.__version__}, {args.runs} "
            "interleaved runs (medians). Each ratio compares chexlab "
            "with a bare script measured in the same run; the goals are issue 16's.",
            "",
            *table,
            "",
            "Equality (independent of the machine):",
            "",
            *equality(),
        ]
    )
    print(body)
    if not args.no_write:
        replace_section(SECTION, body, DOC)
        print(f"wrote the {SECTION!r} section of {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
