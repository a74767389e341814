"""Train the same model with every loss on the real slice and tabulate val mIoU and border IoU.

    python experiments/compare_losses/compare_losses.py                      # defaults: ../shared/data, 64 px, 15 epochs
    python experiments/compare_losses/compare_losses.py --epochs 30 --image-size 128 --losses ce wce dice

Each loss gets its own run folder under --out (default outputs/loss_comparison/) trained by
`seg_pet.training.train.train` with identical settings and seed; the table reports the best epoch's
validation mIoU and per-class IoU (model selection on validation, as `train` does). Writes
results.csv and results.md into --out and prints the markdown table.
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import sys
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from seg_pet.config import LOSSES, config_to_dict, load_config  # noqa: E402
from seg_pet.training.train import train  # noqa: E402

LOSS_NAMES = tuple(LOSSES)

EXTRA = {"wce": ["loss.class_weights=median"], "ce_dice": ["loss.dice_weight=1.0"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "loss_comparison")
    parser.add_argument("--losses", nargs="+", default=list(LOSS_NAMES), choices=LOSS_NAMES)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-reuse", dest="reuse", action="store_false", help="retrain losses whose run with identical settings already finished"
    )
    args = parser.parse_args()

    rows = []
    for name in args.losses:
        overrides = [
            f"run.output_dir={args.out}",
            f"run.name={name}",
            f"run.seed={args.seed}",
            "data.source=oxford",
            f"data.root={args.data_root}",
            f"data.image_size={args.image_size}",
            "data.batch_size=8",
            "data.num_workers=1",
            f"model.encoder={args.encoder}",
            "model.encoder_weights=null",
            f"loss.name={name}",
            *EXTRA.get(name, []),
            f"optim.epochs={args.epochs}",
            f"optim.lr={args.lr}",
            f"train.device={args.device}",
            "train.overlays=2",
        ]
        cfg = load_config(None, overrides)
        finished = (cfg.run_dir / "test_metrics.json").is_file()
        if finished and args.reuse and yaml.safe_load((cfg.run_dir / "config.yaml").read_text()) == config_to_dict(cfg):
            print(f"{name:>11}: reusing the finished run in {cfg.run_dir}", flush=True)
        else:
            train(cfg, overwrite=True, log=lambda *a: None)
        history = torch.load(cfg.run_dir / "checkpoints" / "last.pt", weights_only=True)["history"]
        best = max(history, key=lambda r: -math.inf if r["val_miou"] is None or math.isnan(r["val_miou"]) else r["val_miou"])
        rows.append(
            {
                "loss": name,
                "best_epoch": best["epoch"],
                "val_miou": best["val_miou"],
                **{f"iou_{c}": v for c, v in best["val_iou"].items()},
                "last_val_miou": history[-1]["val_miou"],
                "minutes": sum(r["seconds"] for r in history) / 60,
            }
        )
        print(
            f"{name:>11}: best val mIoU {best['val_miou']:.3f} (epoch {best['epoch']}), border IoU {best['val_iou'].get('border', float('nan')):.3f}",
            flush=True,
        )

    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available() and args.device != "cpu"
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    lines = [
        f"Real slice (2 breeds, 180 train / 20 val images), {args.image_size} px, U-Net {args.encoder} from random init, "
        f"{args.epochs} epochs, AdamW lr {args.lr}, seed {args.seed}, {device}, torch {torch.__version__}.",
        "",
        "| loss | best val mIoU | pet IoU | background IoU | border IoU | best epoch | minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['loss']}` | {r['val_miou']:.3f} | {r['iou_pet']:.3f} | {r['iou_background']:.3f} | {r.get('iou_border', float('nan')):.3f} | {r['best_epoch']} | {r['minutes']:.1f} |"
        )
    table = "\n".join(lines)
    (args.out / "results.md").write_text(table + "\n")
    print("\n" + table)


if __name__ == "__main__":
    main()
