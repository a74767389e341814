"""Prediction speed with and without TTA, and what TTA does to validation mIoU over several seeds.

Two measurements (docs/use_your_model.md reports both, with these commands):

throughput   `predict_files` end to end (decode, resize, forward, logits back to full size, argmax,
             PNG write, predictions.csv) on real images, per TTA mode, as images/s; plus the
             forward passes alone (`model_only`, preprocessed batches). The model is the run's
             (--run) or a random-init one built from a config (--config): speed does not depend on
             the weights.

    OMP_NUM_THREADS=2 python scripts/predict_benchmark.py throughput --config configs/pet_slice_cpu.yaml \\
        --set data.image_size=256 --images /work/shared/data/oxford-iiit-pet/images --count 12

tta-quality  trains one run per seed (--config + --set, into --out), then scores each on the
             validation split with eval.tta none / hflip / hflip+scales (seg_pet.evaluation, so
             exactly what `evaluate --set eval.tta=...` reports), and prints a markdown table:
             mIoU per seed, mean and standard deviation per mode, and the gain over none.

    OMP_NUM_THREADS=1 python scripts/predict_benchmark.py tta-quality --config configs/pet_slice_cpu.yaml \\
        --set data.image_size=64 --set optim.epochs=8 --seeds 0 1 2 --out outputs/tta_quality
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

from seg_pet.cli import main as cli_main
from seg_pet.config import label_spec, load_config
from seg_pet.evaluation import evaluate_run
from seg_pet.models import build_model
from seg_pet.predict import InputImage, PredictOptions, Predictor, collect_inputs, load_rgb, predict_files
from seg_pet.runtime.device import Runtime
from seg_pet.runtime.fileio import write_json
from seg_pet.tta import TTA_MODES, tta_passes


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    t = sub.add_parser("throughput", help="images/s of predict, per TTA mode")
    source = t.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="a trained run folder")
    source.add_argument("--config", type=Path, help="a config: random-init model of its arch/encoder at its image_size")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config overrides (with --config)")
    t.add_argument("--images", default="/work/shared/data/oxford-iiit-pet/images", help="a folder of images (or a glob)")
    t.add_argument("--count", type=int, default=12, help="images timed per mode (the first COUNT, sorted)")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--device", default="cpu")
    t.add_argument("--modes", nargs="+", default=list(TTA_MODES), choices=TTA_MODES)
    t.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    t.add_argument("--out", type=Path, help="write the results as JSON here")
    q = sub.add_parser("tta-quality", help="val mIoU with each eval.tta over several seeds")
    q.add_argument("--config", type=Path, required=True)
    q.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    q.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    q.add_argument("--out", type=Path, default=Path("outputs/tta_quality"), help="parent of the runs (reused when already trained)")
    q.add_argument("--native", action=argparse.BooleanOptionalAction, default=True, help="score with eval.native_resolution (default on)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- throughput


def build_predictor(args: argparse.Namespace, tta: str) -> Predictor:
    if args.run is not None:
        return Predictor.from_run(args.run, device=args.device, tta=tta)
    cfg = load_config(args.config, args.overrides)
    names = list(label_spec(cfg.data).names)
    model = build_model(dataclasses.replace(cfg.model, encoder_weights=None), len(names))
    return Predictor(model.eval(), cfg, names, Runtime.create(args.device, amp=cfg.train.amp), tta=tta)


def model_only(predictor: Predictor, images: list[InputImage], batch_size: int) -> float:
    """Images/s of the forward passes (with TTA) on preprocessed batches, logits resize and argmax excluded."""
    tensors = [predictor.preprocess(load_rgb(item.path)) for item in images]
    batches = [torch.stack(tensors[i : i + batch_size]) for i in range(0, len(tensors), batch_size)]
    with torch.inference_mode():
        predictor.logits_of_batch(batches[0][:1], [(32, 32)])  # warm-up
        start = time.perf_counter()
        for batch in batches:
            predictor.logits_of_batch(batch, [(predictor.image_size,) * 2] * len(batch))
        if predictor.runtime.cuda:
            torch.cuda.synchronize()
    return len(tensors) / (time.perf_counter() - start)


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    images = collect_inputs([args.images])[: args.count]
    sizes = [load_rgb(item.path).shape[:2] for item in images]
    results: dict[str, Any] = {
        "images": len(images),
        "mean_image_pixels": round(sum(h * w for h, w in sizes) / len(sizes)),
        "torch_threads": torch.get_num_threads(),
        "device": args.device,
        "batch_size": args.batch_size,
        "modes": {},
    }
    for mode in args.modes:
        predictor = build_predictor(args, mode)
        results["image_size"] = predictor.image_size
        results["model"] = f"{predictor.cfg.model.arch}/{predictor.cfg.model.encoder}"
        with tempfile.TemporaryDirectory() as tmp:
            predict_files(predictor, images[:1], Path(tmp) / "warmup", PredictOptions(batch_size=1), log=lambda *_: None)
            summary = predict_files(predictor, images, Path(tmp) / "out", PredictOptions(batch_size=args.batch_size), log=lambda *_: None)
        forward = model_only(predictor, images, args.batch_size)
        results["modes"][mode] = {
            "passes": tta_passes(mode),
            "end_to_end_images_per_s": round(summary.ok / summary.seconds, 3),
            "model_only_images_per_s": round(forward, 3),
            "failed": summary.failed,
        }
        print(f"{mode:>13}: {summary.ok / summary.seconds:6.2f} images/s end to end, {forward:6.2f} images/s forward only", file=sys.stderr)
    return results


# --------------------------------------------------------------------------- TTA quality


def tta_quality(args: argparse.Namespace) -> dict[str, Any]:
    table: dict[str, dict[int, float]] = {mode: {} for mode in TTA_MODES}
    for seed in args.seeds:
        name = f"seed{seed}"
        run_dir = args.out / name
        if not (run_dir / "test_metrics.json").is_file():
            sets = [*args.overrides, f"run.seed={seed}", f"run.name={name}", f"run.output_dir={args.out}"]
            code = cli_main(["train", "--config", str(args.config), *[a for s in sets for a in ("--set", s)], "--overwrite"])
            if code != 0:
                raise SystemExit(f"training seed {seed} failed with exit code {code}")
        for mode in TTA_MODES:
            overrides = [f"eval.tta={mode}", f"eval.native_resolution={str(args.native).lower()}"]
            metrics = evaluate_run(run_dir, split="val", overrides=overrides, log=lambda *_: None)
            table[mode][seed] = metrics["miou"]
            print(f"seed {seed} {mode:>13}: val mIoU {metrics['miou']:.4f}", file=sys.stderr)
    results: dict[str, Any] = {
        "seeds": args.seeds,
        "config": str(args.config),
        "overrides": args.overrides,
        "native": args.native,
        "modes": {},
    }
    base = table["none"]
    lines = [
        "| eval.tta | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean | sd | mean gain over none |",
        "|---" * (len(args.seeds) + 4) + "|",
    ]
    for mode in TTA_MODES:
        values = [table[mode][s] for s in args.seeds]
        gains = [table[mode][s] - base[s] for s in args.seeds]
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        results["modes"][mode] = {"miou": values, "mean": statistics.fmean(values), "sd": sd, "gain": statistics.fmean(gains)}
        lines.append(
            f"| {mode} | "
            + " | ".join(f"{v:.3f}" for v in values)
            + f" | {statistics.fmean(values):.3f} | {sd:.3f} | {statistics.fmean(gains):+.3f} |"
        )
    results["markdown"] = "\n".join(lines)
    return results


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    results = throughput(args) if args.mode == "throughput" else tta_quality(args)
    if args.mode == "tta-quality":
        print(results["markdown"])
        out_json = args.out / "tta_quality.json"
    else:
        print(json.dumps(results, indent=2))
        out_json = args.out
    if out_json is not None:
        write_json(out_json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
