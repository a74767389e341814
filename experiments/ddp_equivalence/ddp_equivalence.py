"""Why 2 processes x batch 4 differ from 1 process x batch 8 in the last digits, and only there.

Run under torchrun with 2 CPU processes (gloo):

    OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 experiments/ddp_equivalence/ddp_equivalence.py --data-root /tmp/ddp_eq

Four SGD steps of the U-Net (resnet18, random init, 32 px) on the same 8 synthetic images per step,
with the training code's own pieces (build_model, data_parallel, global_batch_norm, make_loader),
in float32 and float64. For each step it prints the loss difference to one process with batch 8 of

    ddp+sync_bn   2 processes x 4 images, DDP, batch norm over the global batch (train.sync_bn: true)
    reordered     1 process, the same 8 images in another order (only the order of float sums changes)
    ddp           2 processes x 4 images, DDP, batch norm over each process's 4 images (train.sync_bn: false)

Measured (CPU, torch 2.15): in float64 ddp+sync_bn agrees to 5e-15 at every step, as does
`reordered`: the mathematics is the same. In float32 it agrees at step 1 (0 here) and then drifts,
9e-5 at step 2 and 1e-2 to 2e-2 by steps 3-4: rounding (the global batch-norm sums are added in
another order and way than BatchNorm2d's own kernel), amplified by training itself (batch norm over
8 values per channel at 1 x 1 px in the deepest layer; `reordered` drifts the same way, from 2e-5 at
step 3). `ddp` differs by 3e-3 already at step 1, in both precisions: its batch-norm statistics are
those of 4 images.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.distributed as dist
from torch import nn

from seg_pet.config import load_config
from seg_pet.data.loaders import make_loader
from seg_pet.data.sources import build_datasets
from seg_pet.models import build_model
from seg_pet.runtime.device import Runtime
from seg_pet.runtime.seeding import epoch_seed
from seg_pet.training.parallel import data_parallel, global_batch_norm

STEPS = 4


def losses(model: nn.Module, batches, rows, dtype: torch.dtype) -> list[float]:
    """Per-step losses (averaged over processes when `rows` picks this process's share of each batch)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    result = []
    for images, targets in batches:
        loss = nn.functional.cross_entropy(model(images[rows].to(dtype)), targets[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        value = loss.detach().clone()
        if len(images[rows]) < len(images):
            dist.all_reduce(value)
            value /= dist.get_world_size()
        result.append(value.item())
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True, help="where the 35-image synthetic dataset is made (or reused)")
    args = p.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.use_deterministic_algorithms(True, warn_only=True)
    cfg = load_config(
        None,
        [
            "data.source=synthetic",
            f"data.root={args.data_root}",
            "data.synthetic_images=35",
            "data.val_fraction=0.2",
            "data.augment=false",
            "data.image_size=32",
            "model.encoder=resnet18",
            "model.encoder_weights=null",
        ],
    )
    train = build_datasets(cfg)["train"]
    batches = [
        next(iter(make_loader(train, world * 4, shuffle=True, num_workers=0, seed=epoch_seed(0, e), drop_last=True)))
        for e in range(1, STEPS + 1)
    ]
    runtime = Runtime(torch.device("cpu"))
    mine, everything = slice(rank, None, world), slice(None)

    def fresh(dtype: torch.dtype) -> nn.Module:
        torch.manual_seed(0)
        return build_model(cfg.model, 3).to(dtype)

    for dtype in (torch.float32, torch.float64):
        one = losses(fresh(dtype), batches, everything, dtype)
        rows = {
            "ddp+sync_bn": losses(data_parallel(global_batch_norm(fresh(dtype), runtime), runtime), batches, mine, dtype),
            "reordered": losses(
                fresh(dtype), [(x[torch.arange(len(x)).roll(1)], y[torch.arange(len(y)).roll(1)]) for x, y in batches], everything, dtype
            ),
            "ddp": losses(data_parallel(fresh(dtype), runtime), batches, mine, dtype),
        }
        if rank == 0:
            print(f"{str(dtype).replace('torch.', '')}: loss difference to 1 process x batch {world * 4}, steps 1..{STEPS}")
            for name, values in rows.items():
                print(f"  {name:<12}" + "  ".join(f"{v - o:+.1e}" for v, o in zip(values, one)))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
