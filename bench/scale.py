"""`fit` at the scale of the full NIH ChestX-ray14 release: start-up time, memory, training throughput.

    python bench/scale.py [--sizes 1000 10000 50000] [--workers 2] [--cpus 2] [--arch chexlab_simple_cnn]

For each size, a synthetic copy of the official layout (``images_001/images/00000001_000.png``, ...,
``Data_Entry_2017.csv`` with NIH's label frequencies and ~3.6 images per patient) is written once under
``runs/bench/scale/``: a pool of 64 distinct small PNGs hard-linked under every name, so 50k images take
the disk of 64. Then ``python -m trainer fit`` (``data.format: nih``, every finding) runs twice as a
subprocess per size - first with an empty chexlab cache (the file check looks at every image), then with the
cache that run left - and is stopped once its log says the first training step is done. Measured: the wall
time from launch to that first step, the phases in between (from the time each log line arrived), and the peak
resident memory of the main process (RSS) and of all its processes together (PSS: DataLoader workers
included, the pages they share with the main process counted once). A line through the sizes extrapolates
both to 112,120 images.

Throughput, on the smallest tree: a two-epoch `fit` with a preprocessing cache (epoch 1 decodes and fills
it, epoch 2 reads it; `images_per_s` of metrics.csv), against a bare timm loop in the same run: a DataLoader
with the same workers doing the same decode (Pillow) and resize to the same size, the same model, batch,
loss and optimiser, two epochs. Speeds are ratios between the two, measured minutes apart on the same
machine; the absolute numbers depend on the machine and its load.

Writes the "scale" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import replace_section  # noqa: E402
from trainer.nih import NIH_FINDINGS  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "runs" / "bench" / "scale"
FULL_NIH = 112_120
POOL = 64
# Fraction of NIH ChestX-ray14 images with each finding (Data_Entry_2017.csv).
PREVALENCE = {
    "Atelectasis": 0.103, "Cardiomegaly": 0.025, "Consolidation": 0.042, "Edema": 0.021, "Effusion": 0.119,
    "Emphysema": 0.022, "Fibrosis": 0.015, "Hernia": 0.002, "Infiltration": 0.177, "Mass": 0.052,
    "Nodule": 0.056, "Pleural_Thickening": 0.030, "Pneumonia": 0.013, "Pneumothorax": 0.047,
}  # fmt: skip
PHASES = {  # log line -> phase that ends with it
    "NIH images of": "labels read",
    "checked ": "files checked",
    "data: ": "split",
    "first training step done": "first step",
}


def write_tree(root: Path, n_images: int, image_size: int, seed: int = 0) -> Path:
    """The official layout with `n_images` hard links to a pool of PNGs, and its Data_Entry_2017.csv."""
    from PIL import Image

    entry = root / "Data_Entry_2017.csv"
    if entry.is_file():
        return root
    rng = np.random.default_rng(seed)
    pool = root / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:image_size, 0:image_size] / image_size
    body = ((x - 0.5) / 0.42) ** 2 + ((y - 0.55) / 0.48) ** 2 < 1
    lungs = (((x - 0.32) / 0.13) ** 2 + ((y - 0.5) / 0.28) ** 2 < 1) | (
        ((x - 0.68) / 0.13) ** 2 + ((y - 0.5) / 0.28) ** 2 < 1
    )
    for k in range(POOL):
        image = np.where(body, 0.7, 0.08) - 0.45 * lungs + rng.normal(0, 0.04, body.shape)
        Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(pool / f"{k}.png")
    rows, patient, follow_up = [], 1, 0
    for i in range(n_images):
        folder = root / f"images_{i // 10_000 + 1:03d}" / "images"
        if i % 10_000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        name = f"{patient:08d}_{follow_up:03d}.png"
        os.link(pool / f"{i % POOL}.png", folder / name)
        findings = [f for f in NIH_FINDINGS if rng.random() < PREVALENCE[f]]
        rows.append([name, "|".join(findings) or "No Finding", follow_up, patient, 50, "M", "PA"])
        follow_up += 1
        if rng.random() < 1 / 3.64:  # 112,120 images of 30,805 patients
            patient, follow_up = patient + 1, 0
    with (root / ".entry.tmp").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
                         "Patient Gender", "View Position"])  # fmt: skip
        writer.writerows(rows)
    os.replace(root / ".entry.tmp", entry)
    return root


def _config(root: Path, out: Path, args: argparse.Namespace, name: str, extra: list[str]) -> list[str]:
    return [
        f"name={name}",
        f"output_dir={out}",
        "data.format=nih",
        f"data.root={root}",
        "data.labels=Data_Entry_2017.csv",
        "data.task=multilabel",
        f"data.num_workers={args.workers}",
        f"model.arch={args.arch}",
        f"model.input_size={args.input_size}",
        "model.drop_rate=0.0",
        "augment.enabled=false",
        f"train.batch_size={args.batch_size}",
        "train.mixed_precision='no'",
        *extra,
    ]


@dataclass
class Launch:
    """One `fit` subprocess: when each phase ended (s after launch) and the peak memory (MB).

    The main process's resident set (RSS), and the proportional set (PSS) of all its processes together:
    forked DataLoader workers share most pages with the main process, which PSS counts once.
    """

    phases: dict[str, float] = field(default_factory=dict)
    peak_main_mb: float = 0.0
    peak_all_mb: float = 0.0
    returncode: int | None = None
    log_tail: list[str] = field(default_factory=list)


def run_fit(
    overrides: list[str], env: dict[str, str], stop_after_first_step: bool, sample_memory: bool = True
) -> Launch:
    """Run `python -m trainer fit` and watch its log (and memory, if asked); stop it after the first step if
    asked. Sampling costs CPU: reading one process's PSS takes ~30 ms (the kernel walks its page tables)."""
    import psutil

    from trainer.config import load_config, save_config

    cfg = load_config(None, overrides)
    config = cfg.run_dir.parent / f"{cfg.name}.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    save_config(cfg, config)
    result = Launch()
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "trainer", "fit", "--no-progress", "--config", str(config)],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    done = threading.Event()

    def read_log() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            result.log_tail = [*result.log_tail[-30:], line.rstrip()]
            for marker, phase in PHASES.items():
                if marker in line and phase not in result.phases:
                    result.phases[phase] = time.perf_counter() - started
                    if phase == "first step" and stop_after_first_step:
                        done.set()
        done.set()

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    main = psutil.Process(process.pid)
    # Twice a second: at 20 samples/s the PSS reads of fit and its workers took more than a core of 2.
    while not done.wait(0.5):
        if not sample_memory:
            continue
        try:
            tree = [main, *main.children(recursive=True)]
            rss = main.memory_info().rss
            pss = sum(p.memory_full_info().pss for p in tree)
        except psutil.Error:
            continue
        result.peak_main_mb = max(result.peak_main_mb, rss / 2**20)
        result.peak_all_mb = max(result.peak_all_mb, pss / 2**20)
    if process.poll() is None:
        os.killpg(process.pid, 15)
    result.returncode = process.wait()
    reader.join(timeout=10)
    return result


def bare_loop(root: Path, args: argparse.Namespace, epochs: int = 2) -> list[float]:
    """Images per second of the plain timm loop (see the module docstring), one value per epoch."""
    import timm
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    entry = list(csv.DictReader((root / "Data_Entry_2017.csv").open()))
    where = {p.name: p for p in root.glob("images_*/images/*.png")}
    paths = [where[row["Image Index"]] for row in entry]
    targets = np.array(
        [[float(f in row["Finding Labels"].split("|")) for f in NIH_FINDINGS] for row in entry],
        dtype=np.float32,
    )
    train = np.random.default_rng(0).permutation(len(paths))[: int(0.7 * len(paths))]
    size = args.input_size

    class Images(Dataset):
        def __len__(self) -> int:
            return len(train)

        def __getitem__(self, i: int):
            image = Image.open(paths[train[i]]).convert("L").resize((size, size), Image.BILINEAR)
            x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
            return ((x - 0.5) / 0.5).expand(3, size, size), torch.from_numpy(targets[train[i]])

    model = timm.create_model(args.arch, num_classes=len(NIH_FINDINGS), drop_rate=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    loader = DataLoader(Images(), batch_size=args.batch_size, shuffle=True, drop_last=True,
                        num_workers=args.workers, persistent_workers=args.workers > 0)  # fmt: skip
    rates = []
    model.train()
    for _ in range(epochs):
        start, seen = time.perf_counter(), 0
        for x, y in loader:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(x)
        rates.append(seen / (time.perf_counter() - start))
    return rates


def _line(sizes: list[int], values: list[float], at: int) -> float:
    """The least-squares line through (size, value), evaluated at `at`."""
    slope, intercept = np.polyfit(sizes, values, 1)
    return float(slope * at + intercept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 50_000])
    parser.add_argument(
        "--workers", type=int, default=2, help="DataLoader workers, for fit and the bare loop"
    )
    parser.add_argument("--cpus", type=int, help="pin everything to this many cores (default: all)")
    parser.add_argument("--arch", default="chexlab_simple_cnn")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--image-size", type=int, default=256, help="side of the synthetic PNGs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--doc", type=Path, default=None, help="write the section here (default docs/)")
    args = parser.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cpus])  # children inherit it
    cores = len(os.sched_getaffinity(0))

    startup = {}
    for n in sorted(args.sizes):
        root = write_tree(args.work / f"tree-{n}-{args.image_size}px", n, args.image_size)
        cache = args.work / f"cache-{n}"
        subprocess.run(["rm", "-rf", str(cache), str(args.work / "runs")], check=True)
        env = {**os.environ, "CHEXLAB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
        first = run_fit(_config(root, args.work / "runs", args, f"first-{n}", []), env, True)
        again = run_fit(_config(root, args.work / "runs", args, f"again-{n}", []), env, True)
        for launch in (first, again):
            if "first step" not in launch.phases:
                raise SystemExit("fit did not reach its first step:\n" + "\n".join(launch.log_tail))
        startup[n] = (first, again)
        print(
            f"{n} images: first step after {first.phases['first step']:.1f} s (first run), "
            f"{again.phases['first step']:.1f} s (cached); peak PSS {first.peak_all_mb:.0f} MB",
            flush=True,
        )

    smallest = min(args.sizes)
    root = args.work / f"tree-{smallest}-{args.image_size}px"
    preprocessed = args.work / "preprocessed"
    subprocess.run(["rm", "-rf", str(preprocessed)], check=True)
    env = {**os.environ, "CHEXLAB_CACHE": str(args.work / f"cache-{smallest}"), "HF_HUB_OFFLINE": "1"}
    extra = [f"data.cache_dir={preprocessed}", "train.phases=[{epochs: 2, lr: 3.0e-4}]", "eval.n_bootstrap=0"]
    # Unwatched, like the bare loop: sampling the PSS of fit and its workers every 50 ms took ~0.4 of a core.
    throughput = run_fit(_config(root, args.work / "runs", args, "throughput", extra), env, False, False)
    if throughput.returncode != 0:
        raise SystemExit("the throughput run failed:\n" + "\n".join(throughput.log_tail))
    history = list(csv.DictReader((args.work / "runs" / "throughput" / "metrics.csv").open()))
    ours = [float(row["images_per_s"]) for row in history]
    bare = bare_loop(root, args)
    # The same loop once more with the allocator profile fit sets for itself (trainer/allocator.py): how much
    # of fit's lead is that setting. Second, since mallopt cannot be undone for the first.
    from trainer.allocator import Profile, tune_allocator

    tune_allocator(Profile.THROUGHPUT)
    tuned = bare_loop(root, args)
    print(f"throughput: fit {ours}, bare loop {bare}, with the allocator profile {tuned} img/s", flush=True)
    _report(args, cores, startup, ours, bare, tuned)


def verdict(ok: bool) -> str:
    """'met', or 'not met' in bold."""
    return "met" if ok else "**not met**"


def _report(
    args: argparse.Namespace, cores: int, startup: dict[int, tuple[Launch, Launch]], ours: list[float],
    bare: list[float],
    tuned: list[float],
) -> None:  # fmt: skip
    sizes = sorted(startup)
    smoke = max(sizes) < 10_000
    rows = [
        "| images | first step, first run (s) | imports + labels / check / split done after (s) "
        "| first step, cached (s) "
        "| peak memory: RSS main / PSS all processes (MB) |",
        "|---|---|---|---|---|",
    ]
    for n in sizes:
        first, again = startup[n]
        p = first.phases
        labels, check, split = (
            p["labels read"],
            p["files checked"] - p["labels read"],
            p["split"] - p["files checked"],
        )
        rows.append(
            f"| {n:,} | {p['first step']:.1f} | {labels:.1f} / {check:.1f} / {split:.1f} "
            f"| {again.phases['first step']:.1f} | {first.peak_main_mb:.0f} / {first.peak_all_mb:.0f} |"
        )
    bare_mean, tuned_mean = float(np.mean(bare)), float(np.mean(tuned))
    speed = f"training within 10 % of the bare loop - {verdict(ours[0] / bare_mean > 0.9)} (epoch 1: "
    speed += f"{ours[0] / bare_mean:.2f}x; against the bare loop with fit's allocator profile "
    speed += f"{ours[0] / tuned_mean:.2f}x)."
    if len(sizes) > 1:
        first_s = _line(sizes, [startup[n][0].phases["first step"] for n in sizes], FULL_NIH)
        cached_s = _line(sizes, [startup[n][1].phases["first step"] for n in sizes], FULL_NIH)
        memory = _line(sizes, [startup[n][0].peak_all_mb for n in sizes], FULL_NIH)
        rows.append(
            f"| **{FULL_NIH:,}** (extrapolated) | **{first_s:.0f}** | | **{cached_s:.0f}** "
            f"| all: **{memory:.0f}** |"
        )
        goals = (
            f"Goals at {FULL_NIH:,} images on 2 cores: start-up under 120 s on a first run - "
            f"{verdict(first_s < 120)} ({first_s:.0f} s extrapolated); under 20 s with the check cache - "
            f"{verdict(cached_s < 20)} ({cached_s:.0f} s); under 4 GB - {verdict(memory < 4096)} "
            f"({memory:.0f} MB, all processes); {speed}"
        )
    else:
        goals = (
            f"Start-up goals at {FULL_NIH:,} images: not judged (one size, no line to extrapolate); {speed}"
        )

    command = (
        f"python bench/scale.py --sizes {' '.join(map(str, sizes))} --workers {args.workers}"
        + (f" --cpus {args.cpus}" if args.cpus else "")
        + (f" --arch {args.arch}" if args.arch != "chexlab_simple_cnn" else "")
    )
    load = os.getloadavg()[0]
    body = "\n".join(
        [
            "## Start-up and throughput at NIH scale",
            "",
            (
                "**Smoke run at small scale only**; the full-scale timings are for a quiet machine: "
                "`python bench/scale.py --sizes 1000 10000 50000 --workers 2 --cpus 2`.\n"
                if smoke
                else ""
            ),
            f"`{command}` - {cores} cores ({platform.processor() or platform.machine()}), load average "
            f"{load:.1f} when it ended; `{args.arch}` at {args.input_size} px, batch {args.batch_size}, "
            f"{args.workers} DataLoader workers, synthetic {args.image_size}x{args.image_size} 8-bit PNGs in "
            "NIH's layout (`data.format: nih`, 14 findings). Time is wall-clock from launching `python -m "
            'trainer fit` (imports included) to its first training step; "cached" is a second run that finds '
            "the file-check cache of the first.",
            "",
            *rows,
            "",
            "| training | images/s | vs the bare timm loop |",
            "|---|---|---|",
            f"| `fit`, epoch 1 (decode, fill the cache) | {ours[0]:.1f} | {ours[0] / bare_mean:.2f} |",
            f"| `fit`, epoch 2 (from the cache) | {ours[-1]:.1f} | {ours[-1] / bare_mean:.2f} |",
            f"| bare timm DataLoader loop (mean of 2 epochs: {', '.join(f'{b:.1f}' for b in bare)}) "
            f"| {bare_mean:.1f} | 1.00 |",
            f"| the same bare loop with fit's allocator profile (`Profile.THROUGHPUT`; mean of "
            f"{', '.join(f'{b:.1f}' for b in tuned)}) | {tuned_mean:.1f} | {tuned_mean / bare_mean:.2f} |",
            "",
            goals,
        ]
    )
    doc = {"doc": args.doc} if args.doc else {}
    replace_section("scale", body, **doc)
    (args.work / "results.json").write_text(
        json.dumps(
            {
                "startup": {n: {"first": s[0].__dict__, "cached": s[1].__dict__} for n, s in startup.items()},
                "fit_images_per_s": ours,
                "bare_images_per_s": bare,
                "bare_tuned_images_per_s": tuned,
            },
            indent=1,
            default=str,
        )
    )


if __name__ == "__main__":
    main()
