"""`seg_pet export`: a trained run as an ONNX model (+ JSON sidecar), verified against torch before it is written.

Exit codes: 0 exported and verified; 1 onnxruntime and torch disagree beyond the tolerances (nothing
written); 2 bad run folder, checkpoint or flag, output already there, or onnx / onnxruntime missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seg_pet.cli.common import check_paths, positive_int
from seg_pet.export import ATOL, MAX_MISMATCH, ONNX_OPSET, VERIFY_IMAGES, VerificationFailed, export_onnx

HELP = "export a trained run to ONNX (+ a JSON sidecar), verified with onnxruntime"
PATHS = {"run": ("in", "dir"), "checkpoint": ("in", "file"), "out": ("out", "file"), "images": ("in", "file")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", type=Path, required=True, metavar="RUN_DIR")
    p.add_argument("--format", choices=("onnx",), default="onnx")
    p.add_argument(
        "--out", type=Path, required=True, metavar="MODEL.onnx", help="the model file; the sidecar is written beside it as MODEL.json"
    )
    p.add_argument("--checkpoint", default="best", help="best | last | path to a checkpoint file (default: best)")
    p.add_argument("--opset", type=positive_int, default=ONNX_OPSET, help=f"ONNX opset (default {ONNX_OPSET})")
    p.add_argument(
        "--atol",
        type=float,
        default=ATOL,
        help=f"largest allowed |logit difference| onnxruntime vs torch, times max(1, largest |logit|) (default {ATOL:g})",
    )
    p.add_argument(
        "--max-mismatch",
        type=float,
        default=MAX_MISMATCH,
        help=f"largest allowed share of pixels whose argmax differs (default {MAX_MISMATCH:g})",
    )
    p.add_argument(
        "--images",
        nargs="+",
        default=[],
        metavar="PATH",
        help=f"verification images (default: the first {VERIFY_IMAGES} validation images of the run's data)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing model file and sidecar")


def run(args: argparse.Namespace) -> int:
    check_paths(args, PATHS)
    try:
        export_onnx(
            args.run,
            args.out,
            checkpoint=args.checkpoint,
            opset=args.opset,
            atol=args.atol,
            max_mismatch=args.max_mismatch,
            images=args.images,
            overwrite=args.overwrite,
        )
    except VerificationFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
