"""`python -m trainer fit|evaluate|calibrate|predict|push|export|import-weights|preprocess`: parsing, output.

Library modules log and raise; this module is the only place that prints. An error the user can fix (a
`ChexlabError`, or a missing, protected or misplaced file, a full disk) is one clear line and exit code 2;
anything else is a bug (or an exhausted machine, e.g. out of memory): a short note, the traceback in a log
file, and exit code 70 (sysexits' EX_SOFTWARE). `--verbose` shows the traceback of either instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from trainer.errors import ChexlabError

log = logging.getLogger(__name__)

EXIT_USER_ERROR = 2
EXIT_BUG = 70
# OSErrors a user causes and can fix: a path that is wrong, protected or full.
USER_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG}


class UsageError(ChexlabError, ValueError):
    """Command-line arguments that do not go together."""


def is_user_error(err: BaseException) -> bool:
    """Whether `err` is one the user caused and can fix (see the module docstring)."""
    if isinstance(err, (ChexlabError, *USER_OS_ERRORS)):
        return True
    return isinstance(err, OSError) and err.errno in USER_ERRNOS


def _fit(args: argparse.Namespace) -> int:
    from trainer.checkpoint import check_resume
    from trainer.config import load_config
    from trainer.engine import fit

    if args.resume:
        run_dir = Path(args.resume)
        check_resume(run_dir, last_good=args.last_good)  # a damaged config.yaml is named as such, not parsed
        cfg = load_config(run_dir / "config.yaml", args.overrides)
        if cfg.run_dir.resolve() != run_dir.resolve():
            # The run folder may have been moved since it was written: resume where it is now.
            cfg = dataclasses.replace(cfg, output_dir=str(run_dir.parent), name=run_dir.name)
    else:
        if args.config is None:
            raise UsageError("fit needs --config FILE.yaml (or --resume RUN_DIR)")
        if args.last_good:
            raise UsageError("--last-good chooses a checkpoint to resume from: use it with --resume RUN_DIR")
        cfg = load_config(args.config, args.overrides)
        cfg = dataclasses.replace(
            cfg, output_dir=args.output_dir or cfg.output_dir, name=args.name or cfg.name
        )
    run_dir = fit(cfg, resume=bool(args.resume), last_good=args.last_good, progress=not args.no_progress)
    print(f"run folder: {run_dir}\nmodel folder: {run_dir / 'model'}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from trainer.evaluate import evaluate_source
    from trainer.trust import summary_lines

    out = evaluate_source(
        args.source, data=args.data, split=args.split, out_dir=args.out, overrides=args.overrides
    )
    print("\n".join(summary_lines(json.loads(out.read_text()))))
    print(f"metrics written to {out}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from trainer.recalibrate import recalibrate

    result = recalibrate(
        args.source, data=args.data, out_dir=args.out, split=args.split, overrides=args.overrides
    )
    print("\n".join(result.lines()))
    print(f"recalibrated model folder: {result.out}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from trainer.predict import predict_to_csv

    summary = predict_to_csv(
        args.model, args.inputs, args.out, batch_size=args.batch_size, revision=args.revision
    )
    for note in summary.notes:
        print(f"note: {note}")
    print(f"{summary.line()}\npredictions written to {summary.out}")
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


def _import_weights(args: argparse.Namespace) -> int:
    from trainer.import_weights import import_weights

    labels = [name.strip() for name in args.labels.split(",")] if args.labels else None
    out = import_weights(args.src, args.out, args.format, arch=args.arch, labels=labels)
    print(f"model folder written to {out}; start from it with model.init=local-dir:{out}")
    return 0


def _preprocess(args: argparse.Namespace) -> int:
    from trainer.contact_sheet import contact_sheet, preprocess_files
    from trainer.preprocess import Pipeline

    inputs = [Path(p) for p in args.inputs]
    if not (args.out or args.grid):
        raise UsageError("preprocess needs --out DIR and/or --grid FILE.png")
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
        "--last-good",
        action="store_true",
        help="with --resume: if the latest checkpoint is damaged, continue from the previous epoch's",
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

    ca = sub.add_parser(
        "calibrate",
        help="refit a model's calibration and thresholds on your own labelled images; writes a new folder",
    )
    ca.add_argument("source", help="RUN_DIR, a model folder, local-dir:PATH or hf-hub:org/name")
    ca.add_argument(
        "--data", required=True, help="a config YAML whose data: section names the labelled images"
    )
    ca.add_argument(
        "--split",
        default="val",
        choices=("train", "val", "test", "all"),
        help="which split of data.split_file to fit on (all images when the data has no split file)",
    )
    ca.add_argument("--out", required=True, help="the new model folder (the input is never modified)")
    ca.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="data config overrides, e.g. data.root=/x"
    )
    ca.set_defaults(run=_calibrate)

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

    iw = sub.add_parser(
        "import-weights", help="convert a CheXNet, torchxrayvision or timm checkpoint into a model folder"
    )
    iw.add_argument("src", help="the checkpoint (.pth, .pth.tar, .pt, .bin or .safetensors; plain tensors)")
    iw.add_argument("out", help="the model folder to write (then model.init=local-dir:OUT)")
    iw.add_argument("--format", required=True, choices=("chexnet", "torchxrayvision", "timm"))
    iw.add_argument("--arch", help="the timm architecture (--format timm; the others are densenet121)")
    iw.add_argument("--labels", help="comma-separated output names, when not the format's own")
    iw.set_defaults(run=_import_weights)

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
    except Exception as err:
        if args.verbose:
            raise
        if is_user_error(err):
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USER_ERROR
        where = _log_bug(args.command)
        summary = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        print(
            f"internal error: {type(err).__name__}{': ' + summary if summary else ''}\n"
            "This is a bug in chexlab (or the machine ran out of memory or another resource), not a problem "
            f"with your input. The traceback is in {where}; please include it when you report the problem.",
            file=sys.stderr,
        )
        return EXIT_BUG


def _log_bug(command: str) -> str:
    """Log the exception being handled, with its traceback, to a new file; says where it went."""
    try:
        fd, name = tempfile.mkstemp(prefix="chexlab-error-", suffix=".log")
        os.close(fd)
        handler: logging.Handler = logging.FileHandler(name, encoding="utf-8")
    except OSError:  # no writable temporary folder: the traceback goes to the console after all
        name, handler = "the output above", logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # Only this handler: the console keeps the short note.
    previous, log.propagate = log.propagate, False
    log.addHandler(handler)
    try:
        log.exception("unexpected error in `python -m trainer %s`", command)
    finally:
        log.removeHandler(handler)
        log.propagate = previous
        handler.close()
    return name
