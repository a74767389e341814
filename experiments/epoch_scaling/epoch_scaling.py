"""How a CPU training epoch grows with dataset size and image size.

For each image size, the training split is cut into nested subsets (first 25 %, 50 %, 100 %
of a fixed shuffle) and one epoch of training.loop.train_one_epoch is timed over a fresh loader
per epoch, built as `train` builds it (so each epoch pays its worker start), plus one validation
pass (evaluation.evaluate_batches). A linear fit per image size, epoch_s = start + per_image * images,
separates the fixed per-epoch cost from the per-image cost.

    python experiments/epoch_scaling/epoch_scaling.py --data-root /work/shared/data --out outputs/benchmark/epoch_scaling.json
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import Subset

from seg_pet.config import label_spec, load_config
from seg_pet.data.cache import attach_cache
from seg_pet.data.loaders import make_loader, resolve_num_workers
from seg_pet.data.sources import build_datasets
from seg_pet.evaluation import evaluate_batches
from seg_pet.losses import build_loss
from seg_pet.models import build_model
from seg_pet.runtime.device import Runtime
from seg_pet.runtime.fileio import write_json
from seg_pet.runtime.seeding import epoch_seed
from seg_pet.training.loop import train_one_epoch
from seg_pet.training.optim import build_optimizer


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="data")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 192])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--workers", default="auto")
    p.add_argument("--cache", choices=("none", "memory"), default="memory")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own choice)")
    p.add_argument("--out", type=Path)
    return p.parse_args(argv)


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares intercept and slope (by hand: two parameters do not need numpy.polyfit)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - slope * mx, slope


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    workers = resolve_num_workers(args.workers if args.workers == "auto" else int(args.workers))
    runtime = Runtime.create("cpu")
    rows: list[dict[str, Any]] = []
    fits: dict[str, dict[str, float]] = {}
    print(
        f"epoch scaling on CPU: {args.encoder}, batch {args.batch_size}, {workers} workers, cache {args.cache}, torch threads {torch.get_num_threads()}"
    )
    for size in args.sizes:
        cfg = load_config(
            None,
            [
                f"data.root={args.data_root}",
                f"data.image_size={size}",
                f"model.encoder={args.encoder}",
                "model.encoder_weights=null",
                "train.device=cpu",
            ],
        )
        names = list(label_spec(cfg.data).names)
        datasets = build_datasets(cfg)
        train_set, val_set = datasets["train"], datasets["val"]
        for split, ds in (("train", train_set), ("val", val_set)):
            attach_cache(ds, args.cache, data_root=args.data_root, num_workers=workers, name=f"{split} {size}px")
        torch.manual_seed(0)
        model = build_model(cfg.model, len(names))
        o = cfg.optim
        optimizer = build_optimizer(o.name, model.parameters(), lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum)
        loss_fn = build_loss(cfg.loss, names, None)
        order = list(range(len(train_set)))
        random.Random(0).shuffle(order)
        # One untimed step first: allocator and first-call costs belong to no epoch size.
        warm = make_loader(train_set, args.batch_size, shuffle=True, num_workers=0, drop_last=True)
        train_one_epoch(model, warm, loss_fn, optimizer, None, runtime, max_steps=1, desc="warm-up")
        for fraction in args.fractions:
            subset = Subset(train_set, sorted(order[: max(args.batch_size, round(fraction * len(train_set)))]))
            torch.manual_seed(epoch_seed(cfg.run.seed, 1))
            started = time.perf_counter()
            loader = make_loader(
                subset, args.batch_size, shuffle=True, num_workers=workers, seed=epoch_seed(cfg.run.seed, 1), drop_last=True
            )
            stats = train_one_epoch(model, loader, loss_fn, optimizer, None, runtime, desc=f"{size}px {len(subset)}")
            train_s = time.perf_counter() - started
            started = time.perf_counter()
            evaluate_batches(
                model, make_loader(val_set, args.batch_size, shuffle=False, num_workers=workers), names, runtime, loss_fn=loss_fn
            )
            val_s = time.perf_counter() - started
            images = stats["steps"] * args.batch_size
            row = {
                "image_size": size,
                "subset_images": len(subset),
                "trained_images": images,
                "steps": stats["steps"],
                "train_s": train_s,
                "val_s": val_s,
                "val_images": len(val_set),
                "epoch_s": train_s + val_s,
                "s_per_step": train_s / max(stats["steps"], 1),
                "train_images_per_s": images / train_s,
            }
            rows.append(row)
            print(
                f"  {size:>4} px  {images:>4} images  {stats['steps']:>3} steps  train {train_s:7.1f}s  "
                f"val {val_s:5.1f}s  {row['s_per_step']:.2f} s/step  {row['train_images_per_s']:.1f} img/s",
                flush=True,
            )
        sized = [r for r in rows if r["image_size"] == size]
        start, per_image = fit_line([r["trained_images"] for r in sized], [r["train_s"] for r in sized])
        fits[str(size)] = {"fixed_s": start, "s_per_image": per_image}
        print(f"  {size:>4} px  fit: train_s = {start:.2f} + {per_image:.3f} x images", flush=True)
    if len(args.sizes) > 1:
        base = str(args.sizes[0])
        for size in args.sizes[1:]:
            ratio = fits[str(size)]["s_per_image"] / fits[base]["s_per_image"] if fits[base]["s_per_image"] else float("nan")
            print(f"  per-image cost {size} px / {base} px: {ratio:.2f} (pixels ratio {(size / int(base)) ** 2:.2f})")
    report = {
        "settings": {
            "data_root": args.data_root,
            "encoder": args.encoder,
            "batch_size": args.batch_size,
            "workers": workers,
            "cache": args.cache,
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "command": "python experiments/epoch_scaling/epoch_scaling.py " + " ".join(sys.argv[1:] if argv is None else argv),
        },
        "rows": rows,
        "fits": fits,
    }
    if args.out is not None:
        write_json(args.out, report)
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
