"""`seg_pet predict`: segment image files, folders or glob patterns with a trained run.

Exit codes: 0 every image predicted (or skipped); 1 some images could not be read (each reported on
one line and listed as failed in predictions.csv; the others are predicted); 2 bad run folder,
checkpoint, flag, an --input that matches nothing, or outputs already there (nothing written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seg_pet.cli.common import check_paths, positive_int
from seg_pet.predict import FORMATS, PredictOptions, Predictor, collect_inputs, predict_files
from seg_pet.runtime.signals import Terminated
from seg_pet.tta import TTA_MODES

HELP = "segment image files, folders or glob patterns with a trained run"
PATHS = {"run": ("in", "dir"), "checkpoint": ("in", "file"), "input": ("in", "any"), "out": ("out", "dir")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", type=Path, required=True, metavar="RUN_DIR")
    p.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help="image files, folders (searched recursively) and glob patterns (quote them: 'photos/**/*.jpg')",
    )
    p.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="output folder: masks/, overlays/, probabilities/, predictions.csv"
    )
    p.add_argument("--checkpoint", default="best", help="best | last | path to a checkpoint file (default: best)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--batch-size", type=positive_int, metavar="N", help="images per forward pass (default: the run's data.batch_size)")
    p.add_argument(
        "--tta",
        choices=TTA_MODES,
        default="none",
        help="test-time augmentation, logits averaged: hflip (2 passes), hflip+scales (0.75, 1, 1.25 x image_size; 6 passes)",
    )
    p.add_argument(
        "--format",
        dest="fmt",
        choices=FORMATS,
        default="index",
        help="mask PNG: index = class ids 0..C-1; trimap = Oxford-IIIT Pet trimap codes (Pet runs only); color = the run's palette RGB",
    )
    p.add_argument("--overlay", action="store_true", help="also write overlays/NAME.png: 0.6 x image + 0.4 x class colour")
    p.add_argument("--probabilities", action="store_true", help="also write probabilities/NAME.npz: per-class softmax (C, H, W) float32")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--skip-existing", action="store_true", help="predict only inputs whose outputs are missing in --out")
    existing.add_argument("--overwrite", action="store_true", help="replace outputs already in --out")


def run(args: argparse.Namespace) -> int:
    check_paths(args, PATHS)
    predictor = Predictor.from_run(args.run, checkpoint=args.checkpoint, device=args.device, tta=args.tta)
    inputs = collect_inputs(args.input, exclude=args.out)
    existing = "skip" if args.skip_existing else "overwrite" if args.overwrite else "refuse"
    options = PredictOptions(
        fmt=args.fmt, overlay=args.overlay, probabilities=args.probabilities, batch_size=args.batch_size, existing=existing
    )
    try:
        summary = predict_files(predictor, inputs, args.out, options, log=lambda message: print(message, file=sys.stderr))
    except (KeyboardInterrupt, Terminated):  # every finished image is written and listed in predictions.csv
        print(
            f"\nstopped: the images predicted so far are in {args.out} (listed in predictions.csv); "
            "to continue, run the same command with --skip-existing",
            file=sys.stderr,
        )
        raise
    rate = summary.ok / summary.seconds if summary.seconds > 0 else float("nan")
    skipped = f", {summary.skipped} skipped (outputs already there)" if summary.skipped else ""
    print(
        f"{summary.ok} predicted, {summary.failed} failed{skipped} in {summary.seconds:.1f} s ({rate:.1f} images/s); "
        f"masks in {summary.out_dir / 'masks'}, table in {summary.csv_path}"
    )
    if summary.failed:
        print(
            f"error: {summary.failed} of {len(inputs)} images could not be read (listed as failed in {summary.csv_path})", file=sys.stderr
        )
        return 1
    return 0
