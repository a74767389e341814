"""Data-parallel scaling: images/s per process and scaling efficiency, measured through torchrun.

`python scripts/benchmark.py --nproc N ...` calls `run_scaling` here, which starts this script under
torchrun twice, with 1 process and with N, and compares the two:

    ddp_resident   train_one_epoch on one device-resident batch per process, the model wrapped in
                   DistributedDataParallel as `train` wraps it: compute plus gradient all_reduce,
                   no data pipeline
    ddp_train      train_one_epoch over each process's share of the training images, loaders built as
                   `train` builds them (data.loaders.epoch_train_loader), with --cache (none by default)

Batches are per process (data.batch_size, torchrun's convention), so N processes do N times the
work per step (weak scaling). For each phase the report gives images/s of every process, their sum
(the job's throughput), and

    scaling efficiency = throughput with N processes / (N x throughput with 1 process)

Target on one node: >= 0.90 from 1 to 8 GPUs (NCCL, bf16, 256 px, batch 32 per GPU, U-Net resnet34,
data.cache: memory or device). Not measured yet: no multi-GPU machine was available. On a CPU the
processes share the same cores and memory bandwidth, so the efficiency there says nothing about GPUs;
a CPU run only checks that the measurement works.

    python scripts/benchmark.py --nproc 8 --device cuda --data-root data --cache memory --out outputs/benchmark/ddp8.json
    python scripts/benchmark.py --nproc 2 --device cpu --synthetic 32 --data-root /tmp/bench --image-size 32 --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch

from seg_pet.config import label_spec, load_config
from seg_pet.data.cache import attach_cache
from seg_pet.data.loaders import epoch_train_loader, move_caches_to_device, resolve_num_workers
from seg_pet.data.sources import build_datasets
from seg_pet.losses import build_loss
from seg_pet.models import build_model
from seg_pet.runtime.device import Runtime
from seg_pet.runtime.distributed import gathered, is_main, join_process_group, leave_process_group, world_size
from seg_pet.training.loop import train_one_epoch
from seg_pet.training.optim import build_optimizer
from seg_pet.training.parallel import data_parallel, global_batch_norm

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parents[1]
PHASES = ("ddp_resident", "ddp_train")


def run_scaling(args: argparse.Namespace, settings: dict[str, Any], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Both torchrun launches (1 and --nproc processes) and the comparison. `settings` are benchmark.py's resolved ones."""
    runs = {}
    for nproc in sorted({1, args.nproc}):
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "ranks.json"
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                str(nproc),
                str(SCRIPT),
                "--out",
                str(out),
                "--settings",
                json.dumps(settings),
            ]
            log(f"torchrun, {nproc} process(es): {' '.join(command[3:7])} ...")
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
            started = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"torchrun with {nproc} process(es) failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
            runs[nproc] = {"ranks": json.loads(out.read_text()), "wall_s": time.perf_counter() - started}
    report: dict[str, Any] = {"settings": {**settings, "nproc": args.nproc}, "runs": {}, "scaling": {}}
    for nproc, run in runs.items():
        report["runs"][str(nproc)] = {phase: summarise(run["ranks"], phase) for phase in PHASES} | {"wall_s": run["wall_s"]}
    one, many = report["runs"]["1"], report["runs"][str(args.nproc)]
    for phase in PHASES:
        report["scaling"][phase] = many[phase]["images_per_s"] / (args.nproc * one[phase]["images_per_s"])
    return report


def summarise(ranks: list[dict[str, Any]], phase: str) -> dict[str, Any]:
    per_process = [rank[phase]["images_per_s"] for rank in ranks]
    return {
        "images_per_s": sum(per_process),
        "images_per_s_per_process": per_process,
        "ms_per_step": max(rank[phase]["ms_per_step"] for rank in ranks),
    }


def format_scaling(report: dict[str, Any]) -> str:
    nproc = report["settings"]["nproc"]
    lines = [f"{'phase':<14}{'processes':>10}{'img/s (job)':>13}{'img/s per process':>30}{'efficiency':>12}"]
    for phase in PHASES:
        for n, run in report["runs"].items():
            per = ", ".join(f"{x:.1f}" for x in run[phase]["images_per_s_per_process"])
            eff = f"{report['scaling'][phase]:.2f}" if n == str(nproc) and nproc > 1 else "-"
            lines.append(f"{phase:<14}{n:>10}{run[phase]['images_per_s']:>13.1f}{per:>30}{eff:>12}")
    if report["settings"]["device"] == "cpu":
        lines.append("CPU: the processes share the same cores; these figures check the measurement, not GPU scaling")
    return "\n".join(lines)


# --------------------------------------------------------------------------- one torchrun process


class Steps:
    """`total` batches from `make_batches(epoch)` for successive epochs, with the time each one was handed out."""

    def __init__(self, make_batches: Callable[[int], Any], total: int):
        self.make_batches, self.total, self.stamps = make_batches, total, []

    def __len__(self) -> int:
        return self.total

    def __iter__(self):
        epoch = 1
        while len(self.stamps) < self.total:
            for batch in self.make_batches(epoch):
                self.stamps.append((time.perf_counter(), len(batch[0])))
                yield batch
                if len(self.stamps) >= self.total:
                    return
            epoch += 1

    def rate(self, warmup: int) -> dict[str, float]:
        """Steady images/s from the intervals after `warmup` steps (the interval before a batch processed the previous one)."""
        kept = self.stamps[warmup:]
        seconds = kept[-1][0] - kept[0][0]
        images = sum(n for _, n in kept[:-1])
        return {"images_per_s": images / seconds, "ms_per_step": 1000 * seconds / (len(kept) - 1)}


def worker(settings: dict[str, Any], out: Path) -> None:
    """One process of the job: the phases, then every process's rates gathered to rank 0, which writes `out`."""
    s = settings
    runtime = Runtime.create(s["device"], amp=s["amp"])
    join_process_group(runtime.device, 600)
    torch.set_num_threads(s["threads"] or torch.get_num_threads())
    cfg = load_config(
        None,
        [
            f"data.root={s['data_root']}",
            f"data.image_size={s['image_size']}",
            f"data.batch_size={s['batch_size']}",
            f"model.arch={s['arch']}",
            f"model.encoder={s['encoder']}",
            "model.encoder_weights=null",
            *(["data.source=synthetic", f"data.synthetic_images={s['synthetic']}"] if s["synthetic"] else []),
        ],
    )
    names = list(label_spec(cfg.data).names)
    runtime.apply_backend_flags()
    torch.manual_seed(0)
    model = build_model(cfg.model, len(names))
    model = runtime.place(global_batch_norm(model, runtime) if s["sync_bn"] else model)
    step_model = data_parallel(model, runtime)
    step_model = torch.compile(step_model) if s["compile"] else step_model
    loss_fn = build_loss(cfg.loss, names, None).to(runtime.device)
    optimizer = build_optimizer(
        cfg.optim.name, model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, momentum=cfg.optim.momentum
    )
    total, warmup = s["warmup"] + s["steps"] + 1, s["warmup"]
    rates: dict[str, Any] = {}

    size, batch = s["image_size"], s["batch_size"]
    images = torch.randn(batch, 3, size, size, device=runtime.device).contiguous(memory_format=runtime.memory_format)
    targets = torch.randint(0, len(names), (batch, size, size), device=runtime.device)
    steps = Steps(lambda epoch: [(images, targets)] * total, total)
    train_one_epoch(step_model, steps, loss_fn, optimizer, None, runtime, scaler=runtime.grad_scaler(), desc="ddp resident")
    rates["ddp_resident"] = steps.rate(warmup)

    train_set = build_datasets(cfg)["train"]
    workers = resolve_num_workers(s["workers"])
    on_device = None
    if s["cache"] != "none":
        attach_cache(train_set, s["cache"], data_root=cfg.data.root, run_dir=s["run_dir"], num_workers=workers, log=lambda *_: None)
        if s["cache"] == "device":
            val_set = build_datasets(cfg)["val"]
            attach_cache(val_set, "memory", data_root=cfg.data.root, num_workers=workers, log=lambda *_: None)
            on_device = move_caches_to_device({"train": train_set, "val": val_set}, runtime.device, lambda *_: None)
    steps = Steps(lambda epoch: epoch_train_loader(cfg, train_set, on_device, batch, workers, epoch, runtime), total)
    train_one_epoch(step_model, steps, loss_fn, optimizer, None, runtime, scaler=runtime.grad_scaler(), desc="ddp train")
    rates["ddp_train"] = steps.rate(warmup)

    everyone = gathered(rates)
    if is_main():
        out.write_text(json.dumps(everyone))
    print(f"rank done: {world_size()} process(es)", file=sys.stderr)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description="one torchrun process of scripts/benchmark.py --nproc")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--settings", required=True, help="benchmark.py's resolved settings, as JSON")
    args = p.parse_args(argv)
    try:
        worker(json.loads(args.settings), args.out)
    finally:
        leave_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
