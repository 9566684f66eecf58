"""`python -m trainer fit|evaluate|predict|push|export|preprocess ...`: parsing, printing, exit codes.

Library modules log and raise; this module is the only place that prints, so every user-facing error is
one clear line (no stack trace) and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError, OSError)


def _fit(args: argparse.Namespace) -> int:
    from trainer.config import load_config
    from trainer.engine import fit

    if args.resume:
        run_dir = Path(args.resume)
        cfg = load_config(run_dir / "config.yaml", args.overrides)
        if cfg.run_dir.resolve() != run_dir.resolve():
            # The run folder may have been moved since it was written: resume where it is now.
            cfg.output_dir, cfg.name = str(run_dir.parent), run_dir.name
    else:
        if args.config is None:
            raise ValueError("fit needs --config FILE.yaml (or --resume RUN_DIR)")
        cfg = load_config(args.config, args.overrides)
        if args.output_dir:
            cfg.output_dir = args.output_dir
        if args.name:
            cfg.name = args.name
    run_dir = fit(cfg, resume=bool(args.resume), progress=not args.no_progress)
    print(f"run folder: {run_dir}\nmodel folder: {run_dir / 'model'}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from trainer.evaluate import evaluate_source

    out = evaluate_source(
        args.source, data=args.data, split=args.split, out_dir=args.out, overrides=args.overrides
    )
    print(f"metrics written to {out}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from trainer.predict import predict_to_csv

    out = predict_to_csv(
        args.model, args.inputs, args.out, batch_size=args.batch_size, revision=args.revision
    )
    print(f"predictions written to {out}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from trainer.hub import push_folder

    result = push_folder(
        Path(args.folder),
        args.repo_id,
        private=args.private,
        create_pr=args.create_pr,
        revision=args.revision,
        dry_run=args.dry_run,
    )
    print(result)
    return 0


def _export(args: argparse.Namespace) -> int:
    import torch

    from trainer.export import export_run

    out = export_run(args.run_dir, args.out, dtype=getattr(torch, args.dtype))
    print(f"model folder written to {out}")
    return 0


def _preprocess(args: argparse.Namespace) -> int:
    from trainer.contact_sheet import contact_sheet, preprocess_files
    from trainer.preprocess import Pipeline

    inputs = [Path(p) for p in args.inputs]
    if not (args.out or args.grid):
        raise ValueError("preprocess needs --out DIR and/or --grid FILE.png")
    pipeline = Pipeline.parse(args.ops)
    if args.grid:  # first: the sheet shows unreadable inputs as red rows instead of stopping
        contact_sheet(inputs, Path(args.grid))
        print(f"contact sheet written to {args.grid}")
    if args.out:
        written = preprocess_files(inputs, pipeline, Path(args.out))
        print(f"wrote {len(written)} images to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m trainer`."""
    parser = argparse.ArgumentParser(prog="python -m trainer", description="chexlab: chest X-ray classifiers")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="train, evaluate and export a model from a config file")
    fit.add_argument("--config", help="YAML config (see configs/)")
    fit.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint"
    )
    fit.add_argument(
        "--output-dir", help="parent folder of the run folder (default: the config's output_dir)"
    )
    fit.add_argument("--name", help="run folder name (default: the config's name)")
    fit.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    fit.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.batch_size=16"
    )
    fit.set_defaults(run=_fit)

    ev = sub.add_parser("evaluate", help="re-evaluate a run or a model on a dataset")
    ev.add_argument("source", help="RUN_DIR, a model folder, local-dir:PATH or hf-hub:org/name")
    ev.add_argument(
        "--data", help="a config YAML whose data: section names the dataset (default: the run's own)"
    )
    ev.add_argument(
        "--split", default="test", choices=("train", "val", "test", "all"), help="which split to score"
    )
    ev.add_argument("--out", help="output folder for metrics.json and plots (default: RUN_DIR/eval-<split>)")
    ev.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="data config overrides, e.g. data.root=/x"
    )
    ev.set_defaults(run=_evaluate)

    pr = sub.add_parser("predict", help="batched inference on files, folders or a CSV of paths")
    pr.add_argument("model", help="a model folder, RUN_DIR, local-dir:PATH or hf-hub:org/name")
    pr.add_argument(
        "inputs", nargs="+", help="image files, folders (searched recursively) or a CSV with a path column"
    )
    pr.add_argument("--out", default="predictions.csv", help="output CSV")
    pr.add_argument("--batch-size", type=int, default=16)
    pr.add_argument("--revision", help="Hub revision (branch, tag or commit)")
    pr.set_defaults(run=_predict)

    pu = sub.add_parser("push", help="publish a run's model folder (with its card) to the Hugging Face Hub")
    pu.add_argument("folder", help="RUN_DIR or model folder")
    pu.add_argument("--repo-id", required=True, help="org/name on the Hub")
    pu.add_argument("--private", action="store_true")
    pu.add_argument(
        "--create-pr", action="store_true", help="open a pull request instead of committing to main"
    )
    pu.add_argument("--revision", help="branch to push to")
    pu.add_argument("--dry-run", action="store_true", help="list what would be uploaded; send nothing")
    pu.set_defaults(run=_push)

    ex = sub.add_parser("export", help="copy a run's model folder elsewhere, e.g. in float16 (half the size)")
    ex.add_argument("run_dir", help="a finished run folder")
    ex.add_argument("out", help="the model folder to write")
    ex.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    ex.set_defaults(run=_export)

    pp = sub.add_parser(
        "preprocess", help="apply preprocessing ops to images; write PNGs and/or a contact sheet"
    )
    pp.add_argument("inputs", nargs="+", help="image or DICOM files")
    pp.add_argument(
        "--ops", default="clahe", help="comma-separated ops, e.g. clahe,crop_lungs or clahe:clip_limit=3"
    )
    pp.add_argument("--out", help="folder for the processed PNGs")
    pp.add_argument("--grid", help="write a contact sheet (one row per input, one column per op) to this PNG")
    pp.set_defaults(run=_preprocess)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from trainer.allocator import tune_allocator

    tune_allocator()  # before the first large tensor; see trainer/allocator.py
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if args.verbose:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
