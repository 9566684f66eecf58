"""Demo latency: server-side time for one prediction with Grad-CAM, against the bare model's forward+backward.

    python bench/latency.py                       # the default model, the built-in radiograph at 1024x1024
    python bench/latency.py --model DIR --runs 30 --threads 2 --image chest.png

One "predict + Grad-CAM" run is what the demo's /predict does on the server for a 1024x1024 upload: read the
file, run the model's preprocessing, letterbox and normalise, one forward pass with the CAM hooks, the
backward pass, the overlay. The reference is the bare model's forward+backward on the same input tensor,
measured in the same process, interleaved with the demo runs so that both see the same machine load. The
markdown table is printed and written to the "Demo latency" section of docs/benchmarks.md (other sections
are kept).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import DOC, replace_section  # noqa: E402
from demo.catalog import DEFAULT_MODEL_ENV, MODELS_DIR  # noqa: E402
from demo.examples import builtin_example  # noqa: E402
from demo.predictor import ModelLoadError, Predictor  # noqa: E402
from demo.switches import describe_pipeline  # noqa: E402
from trainer.io import load_xray  # noqa: E402

SIDE = 1024
SECTION = "demo-latency"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def benchmark_image(source: Path | None, folder: Path) -> Path:
    """A SIDE x SIDE 16-bit PNG made from `source` (default: the built-in radiograph), centre-cropped."""
    source = source or builtin_example()
    if source is None:
        raise SystemExit("no test image: pass --image, or install pydicom-data for the built-in radiograph")
    pixels = load_xray(source).pixels
    height, width = pixels.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(np.rint(pixels[top : top + side, left : left + side] * 65535).astype(np.uint16))
    path = folder / f"radiograph_{SIDE}.png"
    square.resize((SIDE, SIDE), Image.Resampling.BICUBIC).save(path)
    return path


def bare_forward_backward(model: torch.nn.Module, tensor: torch.Tensor) -> None:
    """What any gradient-based CAM needs at least: one forward and one backward pass."""
    x = tensor[None].clone().requires_grad_(True)
    model(x)[0].max().backward()
    model.zero_grad(set_to_none=True)


def measure(model_source: str, image: Path, runs: int, warmup: int, method: str) -> dict[str, object]:
    name = Path(model_source).name
    predictor = Predictor({name: model_source}, cache_size=0)
    loaded = predictor.load(name)
    model_input = loaded.transform(load_xray(image).pixels)
    demo_times, bare_times = [], []
    for run in range(warmup + runs):
        started = time.perf_counter()
        predictor.predict(image, method=method)
        demo = time.perf_counter() - started
        started = time.perf_counter()
        bare_forward_backward(loaded.model, model_input.tensor)
        bare = time.perf_counter() - started
        if run >= warmup:
            demo_times.append(demo)
            bare_times.append(bare)
    return {
        "model": loaded.name,
        "arch": loaded.info.arch,
        "input": loaded.transform.spec.size,
        "pipeline": describe_pipeline(loaded.info.pipeline),
        "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "demo": demo_times,
        "bare": bare_times,
    }


def table(result: dict[str, Any], runs: int, method: str) -> str:
    demo, bare = result["demo"], result["bare"]
    ratio = statistics.median(demo) / statistics.median(bare)
    cpu, threads = os.cpu_count(), torch.get_num_threads()
    return "\n".join(
        [
            f"Model `{result['model']}` ({result['arch']}, {result['input']}x{result['input']} input, "
            f"preprocessing: {result['pipeline']}); a {SIDE}x{SIDE} 16-bit PNG; {method}; {runs} runs after "
            f"warm-up; {platform.processor() or platform.machine()}, {cpu} CPU cores visible, "
            f"{threads} torch thread{'s' if threads != 1 else ''}; torch {torch.__version__}"
            + (
                f"; 1-minute load average {result['load']:.1f} at the end"
                if result["load"] is not None
                else ""
            )
            + ". Gradio's own PNG encoding of the returned images is not included.",
            "",
            "| measurement | median (ms) | p95 (ms) |",
            "|---|---:|---:|",
            f"| demo `/predict` server side: read + preprocess + forward + {method} + overlay "
            f"| {statistics.median(demo) * 1e3:.0f} | {percentile(demo, 95) * 1e3:.0f} |",
            f"| bare model forward + backward, same input "
            f"| {statistics.median(bare) * 1e3:.0f} | {percentile(bare, 95) * 1e3:.0f} |",
            f"| ratio of medians (demo / bare) | {ratio:.2f} | |",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_model = os.environ.get(DEFAULT_MODEL_ENV) or str(MODELS_DIR / "nih-binary")
    parser.add_argument(
        "--model", default=default_model, help="model folder or Hub id (default: %(default)s)"
    )
    parser.add_argument(
        "--image", type=Path, help="radiograph to resize to 1024x1024 (default: the built-in one)"
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--method", default="Grad-CAM")
    parser.add_argument("--threads", type=int, help="torch CPU threads (a 2-vCPU Space: 2)")
    parser.add_argument("--out", type=Path, default=DOC)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        image = benchmark_image(args.image, Path(folder))
        try:
            result = measure(args.model, image, args.runs, args.warmup, args.method)
        except ModelLoadError as err:
            raise SystemExit(f"cannot load the model: {err}") from None
    body = table(result, args.runs, args.method)
    print(body)
    if not args.no_write:
        replace_section(
            SECTION, f"## Demo latency\n\n`python bench/latency.py` (see `--help`). {body}", args.out
        )
        print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
