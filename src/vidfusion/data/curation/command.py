"""`vidfusion curate INPUT... -o OUT_DIR [--config FILE] [--ray auto|ADDRESS] [--workers N]`: argument parsing and
printing only; the work is in `runner.curate`."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    cur = subparsers.add_parser(
        "curate", help="turn raw videos into scored, filtered, bucketed training clips (resumable)",
        description="Probe, detect shots, cut clips, score motion and quality, caption, filter and bucket. Rerunning "
                    "the same command resumes: finished work is kept.")
    cur.add_argument("inputs", nargs="+", metavar="INPUT", help="video files or folders (searched recursively)")
    cur.add_argument("-o", "--output", required=True, metavar="OUT_DIR",
                     help="folder for the stage tables, manifest.parquet and report/")
    cur.add_argument("--config", default=None, help="TOML file, e.g. configs/curate_default.toml (default: defaults)")
    cur.add_argument("--ray", default=None, metavar="auto|ADDRESS",
                     help="run the stages on Ray: 'auto' (a running local cluster, else a new one) or an address")
    cur.add_argument("--workers", type=int, default=None,
                     help="local worker processes (default: the CPU count; ignored with --ray)")
    cur.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    cur.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from vidfusion.data.curation.config import load_config
    from vidfusion.data.curation.runner import curate

    start = time.perf_counter()
    cfg = load_config(args.config)
    workers = args.workers if args.workers is not None else max(1, len(os.sched_getaffinity(0)))
    summary = curate(args.inputs, args.output, cfg, workers=workers, ray=args.ray, progress=not args.quiet)
    out = Path(args.output)
    skipped = len(summary["skipped_inputs"])
    print(f"curated {summary['inputs']} inputs ({skipped} skipped) into {summary['clips']} clips, kept "
          f"{summary['kept']} ({summary['kept_seconds']:.1f} s) in {time.perf_counter() - start:.1f} s")
    print(f"wrote {out / 'manifest.parquet'} and {out / 'report' / 'report.md'}")
    if summary["captions"] == "empty":
        print("captions are empty: set captions.model to a local vision-language model folder to fill them")
