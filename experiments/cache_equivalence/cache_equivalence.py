"""Does the decoded-image cache change results? The same short run with data.cache none and memory.

Trains the same config (same seeds) with each cache and compares validation and test mIoU and the
epoch times. With memory (and disk) every batch is bit-identical to no cache (tests/integration/test_cache.py),
so those runs must agree exactly. With device the training batches come from BatchAugment (float
arithmetic, a different draw order), so runs differ sample by sample and should agree within the
seed-to-seed spread.

    python experiments/cache_equivalence/cache_equivalence.py --data-root ../shared/data --caches memory device --out outputs/benchmark/cache_equivalence.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from seg_pet.config import load_config
from seg_pet.runtime.fileio import write_json
from seg_pet.training.train import train


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="data")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--caches", nargs="+", choices=("none", "memory", "disk", "device"), default=["none", "memory"])
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--workers", default="auto")
    p.add_argument("--device", default="cpu", help="train.device: cpu | cuda | auto")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own choice)")
    p.add_argument("--output-dir", default="outputs/cache_equivalence")
    p.add_argument("--out", type=Path)
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        for cache in args.caches:
            name = f"cache_{cache}_seed{seed}"
            cfg = load_config(
                None,
                [
                    f"run.output_dir={args.output_dir}",
                    f"run.name={name}",
                    f"run.seed={seed}",
                    f"data.root={args.data_root}",
                    f"data.image_size={args.image_size}",
                    "data.batch_size=8",
                    f"data.num_workers={args.workers}",
                    f"data.cache={cache}",
                    f"model.encoder={args.encoder}",
                    "model.encoder_weights=null",
                    f"optim.epochs={args.epochs}",
                    "optim.lr=0.003",
                    f"train.device={args.device}",
                    "train.overlays=0",
                ],
            )
            test = train(cfg, overwrite=True, log=lambda line, name=name: print(f"[{name}] {line}", flush=True))
            rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
            runs.append(
                {
                    "seed": seed,
                    "cache": cache,
                    "best_val_miou": max(r["val_miou"] for r in rows),
                    "last_val_miou": rows[-1]["val_miou"],
                    "test_miou": test.get("miou"),
                    "mean_epoch_s": statistics.mean(r["seconds"] for r in rows),
                    "first_epoch_s": rows[0]["seconds"],
                    "val_miou_per_epoch": [r["val_miou"] for r in rows],
                }
            )
    print(f"\n{'seed':>4} {'cache':>7} {'best val mIoU':>14} {'last val mIoU':>14} {'test mIoU':>10} {'s/epoch':>8}")
    for r in runs:
        print(
            f"{r['seed']:>4} {r['cache']:>7} {r['best_val_miou']:>14.4f} {r['last_val_miou']:>14.4f} {r['test_miou']:>10.4f} {r['mean_epoch_s']:>8.1f}"
        )
    summary = {}
    for cache in args.caches:
        chosen = [r for r in runs if r["cache"] == cache]
        summary[cache] = {
            key: statistics.mean(r[key] for r in chosen) for key in ("best_val_miou", "last_val_miou", "test_miou", "mean_epoch_s")
        }
        if len(chosen) > 1:  # the seed-to-seed spread, against which a difference between caches is judged
            summary[cache] |= {f"{key}_std": statistics.stdev(r[key] for r in chosen) for key in ("best_val_miou", "test_miou")}
    print("means: " + "; ".join(f"{c}: " + ", ".join(f"{k} {v:.4f}" for k, v in s.items()) for c, s in summary.items()))
    if args.out is not None:
        write_json(args.out, {"settings": vars(args) | {"out": str(args.out)}, "runs": runs, "summary": summary})
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
