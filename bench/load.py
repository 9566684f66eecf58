"""Load: N concurrent clients against the demo on loopback; failures, latency and server memory.

    python bench/load.py                                   # 20 clients x 10 requests, two rounds
    python bench/load.py --clients 4 --requests 3 --rounds 1 --no-write
    python bench/load.py --placeholder                     # write the section's heading only

The server is `python app.py` in a child process (the operator's settings: CHEXLAB_DEFAULT_MODEL, or --model),
in public mode as on a Space. After 20 sequential warm-up requests, each round runs `--clients` clients in
parallel, each sending `--requests` /predict calls (bounded loops) the way the page does
(bench/http_client.py; gradio_client's polling would add ~170 ms to every call), cycling through a 16-bit
PNG, the built-in DICOM and, every `--huge-every`-th request, a 7700x7700 PNG. The server's RSS is read from
/proc before the first request, after the warm-up, after each round and, sampled every 0.2 s, at its peak.
Goals (issue 12): 0 failures, peak RSS <= 1.6 GB, RSS at the end within 15 % of RSS after the warm-up.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.http_client import GradioHttpClient  # noqa: E402
from bench.report import DOC, replace_section  # noqa: E402
from demo.startup import READY  # noqa: E402

SECTION = "load"
WARMUP = 20
HUGE_SIDE = 7700
GOAL_PEAK_GB = 1.6
GOAL_GROWTH = 0.15
COMMAND = "python bench/load.py"
# `python app.py`, except that Gradio's launch check (can the server reach itself? one HEAD request with a
# 3-second limit) waits for the answer: on a busy machine the first page takes longer and launch gives up.
SERVE = (
    "import gradio.networking, httpx, runpy; "
    "gradio.networking.url_ok = lambda url: httpx.head(url, timeout=None).status_code < 400; "
    "runpy.run_path('app.py', run_name='__main__')"
)


@dataclass
class Run:
    """What one load run measured (seconds and bytes)."""

    clients: int
    requests: int
    rounds: int
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    rss: dict[str, int] = field(default_factory=dict)  # "start", "after warm-up", "after round k", "peak"

    @property
    def total(self) -> int:
        return len(self.latencies) + len(self.failures)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@contextmanager
def server(port: int, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """The demo (`SERVE`) on 127.0.0.1:`port`; yields (the process, its URL) once it says it is serving and
    its models are ready.

    Its output is kept (the last lines) and printed if anything fails meanwhile.
    """
    env = {**env, "GRADIO_SERVER_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", SERVE],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert child.stdout is not None
    seen: collections.deque[str] = collections.deque(maxlen=60)
    try:
        waiting = {"Running on local URL", READY}  # it listens, then its models are ready (demo/startup.py)
        for line in child.stdout:
            seen.append(line)
            waiting = {said for said in waiting if said not in line}
            if not waiting:
                break
        else:
            raise SystemExit("the demo exited before serving with its models ready:\n" + "".join(seen))
        threading.Thread(target=lambda: seen.extend(child.stdout or []), daemon=True).start()
        yield child, f"http://127.0.0.1:{port}/"
    except BaseException:
        print("the demo's last output:\n" + "".join(seen), file=sys.stderr)
        raise
    finally:
        child.terminate()
        child.wait()


class PeakSampler(threading.Thread):
    """Reads a process's RSS every `interval` seconds and keeps the largest value."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self._done.wait(self.interval)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return max(self.peak, rss_bytes(self.pid))


def make_images(folder: Path) -> dict[str, Path]:
    """The inputs: a 1024x1024 16-bit PNG and a 7700x7700 8-bit PNG from the built-in radiograph, and it."""
    from demo.examples import builtin_example
    from trainer.io import load_xray

    dicom = builtin_example()
    if dicom is None:
        raise SystemExit("needs the built-in radiograph: pip install pydicom-data")
    pixels = load_xray(dicom).pixels
    image = Image.fromarray(np.rint(pixels * 65535).astype(np.uint16))
    png16, huge = folder / "chest16.png", folder / "huge.png"
    image.resize((1024, 1024), Image.Resampling.BILINEAR).save(png16)
    small = Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).resize((770, 770))
    small.resize((HUGE_SIDE, HUGE_SIDE), Image.Resampling.NEAREST).save(huge)
    return {"png16": png16, "dicom": dicom, "huge": huge}


def client_loop(url: str, images: dict[str, Path], first: int, count: int, huge_every: int, run: Run) -> None:
    """One client: `count` /predict calls in a row (request numbers first .. first + count - 1), made as the
    page makes them (bench/http_client.py)."""
    with GradioHttpClient(url) as client:
        for number in range(first, first + count):
            name = (
                "huge"
                if huge_every and number % huge_every == huge_every - 1
                else ("png16", "dicom")[number % 2]
            )
            started = time.perf_counter()
            try:
                client.predict(images[name])
            except Exception as err:  # a benchmark records failures, whatever they are
                run.failures.append(f"{name}: {type(err).__name__}: {str(err)[:200]}")
            else:
                run.latencies.append(time.perf_counter() - started)


def measure(args: argparse.Namespace) -> Run:
    """Start the demo, warm it up, run the rounds, and read its memory along the way."""
    env = {**os.environ, "CHEXLAB_PUBLIC": "1", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    if args.model:
        env["CHEXLAB_DEFAULT_MODEL"] = args.model
    run = Run(args.clients, args.requests, args.rounds)
    with tempfile.TemporaryDirectory() as folder, server(args.port, env) as (child, url):
        images = make_images(Path(folder))
        run.rss["start"] = rss_bytes(child.pid)
        sampler = PeakSampler(child.pid)
        sampler.start()
        client_loop(url, images, 0, WARMUP, 0, run)
        run.rss["after warm-up"] = rss_bytes(child.pid)
        run.latencies.clear()  # latency is measured under load only
        for index in range(args.rounds):
            with ThreadPoolExecutor(args.clients) as pool:
                for client in range(args.clients):
                    first = WARMUP + (index * args.clients + client) * args.requests
                    pool.submit(client_loop, url, images, first, args.requests, args.huge_every, run)
            run.rss[f"after round {index + 1}"] = rss_bytes(child.pid)
        run.rss["peak"] = sampler.stop()
    return run


def report(run: Run, args: argparse.Namespace) -> str:
    """The markdown section: settings, the latency and memory table, and the goals met or not."""
    gb = 1024**3
    latencies = sorted(run.latencies)
    end = run.rss[f"after round {run.rounds}"]
    growth = end / run.rss["after warm-up"] - 1.0
    rows = [
        (
            "requests under load",
            f"{run.total} ({run.clients} clients x {run.requests} x {run.rounds} rounds)",
        ),
        ("failures", f"{len(run.failures)}"),
    ]
    if latencies:
        rows += [
            (
                "latency p50 / p95 / max",
                " / ".join(f"{_quantile(latencies, q):.2f} s" for q in (0.5, 0.95, 1.0)),
            ),
        ]
    rows += [(f"server RSS {name}", f"{value / gb:.2f} GB") for name, value in run.rss.items()]
    rows.append((f"RSS growth after the warm-up ({WARMUP} requests) to the end", f"{100 * growth:+.1f} %"))
    goals = [
        f"failures 0: {'met' if not run.failures else 'NOT met'}",
        f"peak RSS <= {GOAL_PEAK_GB} GB: {'met' if run.rss['peak'] <= GOAL_PEAK_GB * gb else 'NOT met'}",
        f"growth within {100 * GOAL_GROWTH:.0f} %: {'met' if abs(growth) <= GOAL_GROWTH else 'NOT met'}",
    ]
    model = args.model or os.environ.get("CHEXLAB_DEFAULT_MODEL") or "nih-binary"
    lines = [
        "## Load",
        "",
        f"`{COMMAND}` (see `--help`): `python app.py` in public mode, default model `{model}`, {WARMUP} "
        f"warm-up requests, then {run.clients} clients in parallel per round (each one page's session, "
        "calling as the page does: bench/http_client.py); inputs cycle "
        f"through a 1024x1024 16-bit PNG and the built-in DICOM, every {args.huge_every}th is a "
        f"{HUGE_SIDE}x{HUGE_SIDE} PNG. "
        f"{os.cpu_count()} CPU cores visible; 1-minute load average {os.getloadavg()[0]:.1f} at the end.",
        "",
        "| measurement | value |",
        "|---|---:|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
        "Goals: " + "; ".join(goals) + ".",
    ]
    if run.failures:
        lines += ["", "First failures:", *(f"- {failure}" for failure in run.failures[:5])]
    return "\n".join(lines)


def _quantile(values: list[float], q: float) -> float:
    return float(np.quantile(np.asarray(values), q)) if len(values) > 1 else values[0]


PLACEHOLDER = (
    "## Load\n\n"
    f"`{COMMAND}` (see `--help`): not measured yet. It needs a quiet machine: run it there to fill in "
    "failures, p50/p95/max latency and the server's RSS before, at peak and after (goals: 20 clients x 10 "
    f"requests with 0 failures, peak RSS <= {GOAL_PEAK_GB} GB, RSS after 400 requests within "
    f"{100 * GOAL_GROWTH:.0f} % of RSS after the first 20)."
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=10, help="per client and round")
    parser.add_argument(
        "--rounds", type=int, default=2, help="2 rounds of 20 x 10: 400 requests after warm-up"
    )
    parser.add_argument(
        "--huge-every", type=int, default=20, help="every n-th request sends the 7700x7700 PNG"
    )
    parser.add_argument("--model", help="the demo's default model (a folder or a Hub id)")
    parser.add_argument("--port", type=int, default=7871)
    parser.add_argument("--out", type=Path, default=DOC)
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--placeholder", action="store_true", help="write the section without measuring")
    args = parser.parse_args(argv)
    body = PLACEHOLDER if args.placeholder else report(measure(args), args)
    print(body)
    if not args.no_write:
        replace_section(SECTION, body, args.out)
        print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
