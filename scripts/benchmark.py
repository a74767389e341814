"""Where does a training step's time go? Throughput of each part of the pipeline, in one process.

Images per second for
    ceiling          the model step alone on one device-resident batch: forward + backward + AdamW
    engine_resident  training.loop.train_one_epoch on device-resident batches: the ceiling plus what
                     the loop adds per step (finite-loss check, gradient norm, scheduler)
    data_<cache>     the training DataLoader exactly as `train` builds it (data.loaders.epoch_train_loader:
                     a fresh, seeded loader per epoch), batches drawn and dropped; for --cache device the
                     device-resident batches with their augmentation (data.cache.DeviceBatches),
                     synchronised per batch
    train_<cache>    train_one_epoch over that loader: the step as `train` runs it
    eval_<cache>     evaluation.evaluate_batches over the validation loader (forward only: may exceed 1.0)
    naive_fp32       with --naive-baseline: torchvision's OxfordIIITPet with per-image v2 transforms in
                     --naive-workers DataLoader workers (decoded every epoch), feeding a plain fp32 step
                     (no autocast, no channels_last, cudnn.benchmark off) on a fresh model
each also as a ratio to the ceiling measured in the same run, for the cache `none` and the
one asked for (--cache), plus the per-epoch loader start cost (workers are not persistent,
see seg_pet.data.loaders.make_loader), peak GPU memory (CUDA) or peak RSS (CPU), and the settings.
--ceiling-only measures the first two phases alone (no dataset is read).

Loader phases are timed in steady state: the intervals between consecutive batches after
the warm-up, leaving out each epoch's first batch (its start is reported separately as
`epoch_start_s`). Defaults follow the device: on CUDA 256 px, batch 32, U-Net resnet34,
bf16 autocast, channels_last, cudnn.benchmark (seg_pet.runtime.device.Runtime, as `train`);
on CPU 128 px, batch 8, resnet18, fp32.

    python scripts/benchmark.py --data-root /work/shared/data --out outputs/benchmark/cpu.json
    python scripts/benchmark.py --device cuda --data-root data --cache memory --naive-baseline --out outputs/benchmark/h100.json
    python scripts/benchmark.py --device cuda --data-root data --cache device --out outputs/benchmark/h100_device.json
    python scripts/benchmark.py --device cuda --data-root data --ceiling-only --compile --out outputs/benchmark/h100_compile.json

--nproc N measures data-parallel scaling instead, through torchrun (scripts/benchmark_ddp.py):

    python scripts/benchmark.py --nproc 8 --device cuda --data-root data --cache memory --out outputs/benchmark/ddp8.json
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Optional

import segmentation_models_pytorch as smp
import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from seg_pet.config import label_spec, load_config
from seg_pet.data.cache import DeviceCache, attach_cache
from seg_pet.data.loaders import epoch_train_loader, move_caches_to_device, resolve_num_workers, usable_cpus, val_loader_for
from seg_pet.data.sources import build_datasets
from seg_pet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from seg_pet.evaluation import evaluate_batches
from seg_pet.losses import build_loss
from seg_pet.models import build_model
from seg_pet.runtime.device import Runtime
from seg_pet.runtime.errors import SegPetError
from seg_pet.runtime.fileio import write_json
from seg_pet.training.loop import train_one_epoch
from seg_pet.training.optim import build_optimizer

GPU_DEFAULTS = {"image_size": 256, "batch_size": 32, "encoder": "resnet34", "steps": 30, "warmup": 10}
CPU_DEFAULTS = {"image_size": 128, "batch_size": 8, "encoder": "resnet18", "steps": 8, "warmup": 2}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--image-size", type=int, help="default 256 on CUDA, 128 on CPU")
    p.add_argument("--batch-size", type=int, help="default 32 on CUDA, 8 on CPU")
    p.add_argument("--encoder", help="default resnet34 on CUDA, resnet18 on CPU (random init: speed does not depend on weights)")
    p.add_argument("--arch", default="unet")
    p.add_argument("--workers", default="auto", help="DataLoader workers: auto (data.loaders.resolve_num_workers) or a number")
    p.add_argument("--steps", type=int, help="timed steps per phase (default 30 CUDA, 8 CPU)")
    p.add_argument("--warmup", type=int, help="untimed steps per phase first (default 10 CUDA, 2 CPU)")
    p.add_argument("--data-root", default="data", help="the folder holding oxford-iiit-pet/ (data.root)")
    p.add_argument("--synthetic", type=int, metavar="N", help="generate an N-image synthetic dataset into --data-root instead")
    p.add_argument("--cache", choices=("none", "memory", "disk", "device"), default="memory", help="cache measured beside `none`")
    p.add_argument("--run-dir", default="outputs/benchmark", help="holds a disk cache when data.root is read-only")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast (CUDA only, as in train)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="default: on for CUDA, as in train")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="more config keys, e.g. model.encoder_depth=4 (repeatable)"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model (warm-up absorbs compilation)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads for the main process (default: torch's own choice)")
    p.add_argument("--ceiling-only", action="store_true", help="only the ceiling and engine_resident phases (no data is read)")
    p.add_argument("--naive-baseline", action="store_true", help="also time the naive fp32 baseline (naive_fp32) in this run")
    p.add_argument("--naive-workers", type=int, default=8, help="DataLoader workers of the naive baseline (default 8)")
    p.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="instead: data-parallel scaling through torchrun, 1 vs N processes "
        "(scripts/benchmark_ddp.py): images/s per process and scaling efficiency",
    )
    p.add_argument("--sync-bn", action="store_true", help="with --nproc: train.sync_bn (global batch norm)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- timing helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clocked:
    """Batches from successive per-epoch loaders, `total` in all, with the time each one was handed out.

    Passed to the engine in place of a DataLoader, so what is timed is exactly engine code over
    loaders built the way `train` builds them.
    """

    def __init__(self, make_loader_for_epoch: Callable[[int], Iterable], total: int):
        self.make_loader_for_epoch = make_loader_for_epoch
        self.total = total
        self.stamps: list[tuple[float, int, bool]] = []  # (time, images in batch, first batch of its epoch)
        self.epoch_starts: list[float] = []  # seconds from loader creation to its first batch

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[Any]:
        handed, epoch = 0, 1
        while handed < self.total:
            created = time.perf_counter()
            first = True
            for batch in self.make_loader_for_epoch(epoch):
                now = time.perf_counter()
                if first:
                    self.epoch_starts.append(now - created)
                self.stamps.append((now, len(batch[0]), first))
                first = False
                handed += 1
                yield batch
                if handed >= self.total:
                    return
            epoch += 1

    def rate(self, warmup: int, count: str, loader: bool = True) -> dict[str, Any]:
        """Steady images/s from batch intervals after `warmup`, skipping intervals that end at an epoch's first batch.

        count="arriving": the interval produced the batch at its end (loader alone);
        count="processed": the interval processed the batch at its start (engine over a loader).
        When every epoch is a single batch (a tiny validation split), epoch starts are counted in.
        """
        steady = [k for k in range(max(warmup, 1), len(self.stamps)) if not self.stamps[k][2]]
        with_starts = not steady
        keep = steady or list(range(max(warmup, 1), len(self.stamps)))
        seconds = sum(self.stamps[k][0] - self.stamps[k - 1][0] for k in keep)
        images = sum(self.stamps[k][1] if count == "arriving" else self.stamps[k - 1][1] for k in keep)
        rate = images / seconds if seconds > 0 else math.nan
        per_batch = seconds / len(keep) if keep else math.nan
        result: dict[str, Any] = {"images_per_s": rate, "ms_per_batch": 1000 * per_batch, "timed_batches": len(keep)}
        if loader:
            starts = self.epoch_starts[1:] or self.epoch_starts  # the first loader also pays one-off costs
            start = sum(starts) / len(starts) if starts else math.nan
            result["epoch_start_s"] = start
            if count == "arriving":
                # Loader alone: a fresh loader's first batch costs one steady batch anyway; the rest is the worker start.
                result["epoch_start_overhead_s"] = start - per_batch if not with_starts else math.nan
            else:
                # Engine over a loader: in steady state prefetching hides loading, so the step idles for the whole wait.
                result["epoch_start_overhead_s"] = start
            result["includes_epoch_starts"] = with_starts
        return result


class Resident:
    """The same device-resident batch, `total` times: engine code with no data pipeline at all."""

    def __init__(self, batch: tuple[torch.Tensor, torch.Tensor], total: int):
        self.batch, self.total = batch, total

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.total):
            yield self.batch


def peak_gpu_mib(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --------------------------------------------------------------------------- phases


def time_ceiling(model, loss_fn, optimizer, batch, runtime: Runtime, warmup: int, steps: int) -> dict[str, float]:
    """forward + backward + AdamW on a device-resident batch, no host sync inside the timed loop."""
    images, targets = batch
    scaler = runtime.grad_scaler()

    def step() -> None:
        with runtime.autocast():
            logits = model(images)
            loss = loss_fn(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    model.train()
    for _ in range(warmup):
        step()
    sync(runtime.device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync(runtime.device)
    seconds = time.perf_counter() - started
    return {"images_per_s": steps * images.shape[0] / seconds, "ms_per_batch": 1000 * seconds / steps, "timed_batches": steps}


class NaiveTransform:
    """The tutorial pipeline's per-image transform: PIL image and trimap -> v2 crop, flip, float, normalise.

    A module-level class (not a lambda) so that DataLoader workers can receive it under any start method.
    """

    def __init__(self, size: int):
        self.pipeline = v2.Compose(
            [
                v2.RandomResizedCrop((size, size), antialias=True),
                v2.RandomHorizontalFlip(),
                v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
                v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )

    def __call__(self, image, trimap):
        image = tv_tensors.Image(TF.pil_to_tensor(image))
        mask = tv_tensors.Mask(TF.pil_to_tensor(trimap)[0].long() - 1)  # trimap 1..3 -> classes 0..2
        return self.pipeline(image, mask)


def time_naive(
    root: str, names: list[str], cfg, size: int, batch_size: int, workers: int, device: torch.device, warmup: int, steps: int
) -> dict[str, Any]:
    """A naive baseline in the same process: torchvision's OxfordIIITPet (decoded every epoch) with per-image v2
    transforms in `workers` DataLoader workers, feeding a plain fp32 step (no autocast, no channels_last,
    cudnn.benchmark off as by default, loss.item() every step) on a fresh model."""
    dataset = torchvision.datasets.OxfordIIITPet(
        root, split="trainval", target_types="segmentation", transforms=NaiveTransform(size), download=False
    )
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True, generator=torch.Generator().manual_seed(0)
    )
    model = build_model(cfg.model, len(names)).to(device)
    loss_fn = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    benchmark_flag = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        clocked = Clocked(lambda _: loader, warmup + steps + 1)
        model.train()
        for images, targets in clocked:
            images, targets = images.to(device), targets.to(device)
            loss = loss_fn(model(images), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()
        sync(device)
        return clocked.rate(warmup, "processed")
    finally:
        torch.backends.cudnn.benchmark = benchmark_flag


def run_benchmark(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    runtime = Runtime.create(args.device, amp=args.amp, channels_last=args.channels_last, key="--device")
    device = runtime.device
    if args.threads:
        torch.set_num_threads(args.threads)
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    size = args.image_size or defaults["image_size"]
    batch_size = args.batch_size or defaults["batch_size"]
    encoder = args.encoder or defaults["encoder"]
    steps = args.steps or defaults["steps"]
    warmup = defaults["warmup"] if args.warmup is None else args.warmup
    amp_dtype, channels_last = runtime.amp_dtype, runtime.channels_last
    workers = resolve_num_workers(args.workers if args.workers == "auto" else int(args.workers))
    load_avg_start = os.getloadavg()

    overrides = [
        f"data.root={args.data_root}",
        f"data.image_size={size}",
        f"data.batch_size={batch_size}",
        f"data.num_workers={workers}",
        f"model.arch={args.arch}",
        f"model.encoder={encoder}",
        "model.encoder_weights=null",
        f"train.device={args.device}",
    ]
    if args.synthetic:
        overrides += ["data.source=synthetic", f"data.synthetic_images={args.synthetic}"]
    cfg = load_config(None, overrides + args.set)
    names = list(label_spec(cfg.data).names)
    runtime.apply_backend_flags()  # cudnn.benchmark on CUDA, as train sets it
    torch.manual_seed(0)

    train_set = val_set = None
    if not args.ceiling_only:
        datasets = build_datasets(cfg)
        train_set, val_set = datasets["train"], datasets["val"]
        if len(train_set) < batch_size:
            raise SystemExit(f"the training split has {len(train_set)} images, fewer than one batch of {batch_size}")
    model = runtime.place(build_model(cfg.model, len(names)))
    loss_fn = build_loss(cfg.loss, names, None).to(device)
    o = cfg.optim
    optimizer = build_optimizer(o.name, model.parameters(), lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum)
    scaler = runtime.grad_scaler()
    step_model = torch.compile(model) if args.compile else model

    on_device: dict[str, DeviceCache] = {}  # filled for --cache device, as train does

    def train_loader(epoch: int):  # exactly as train builds each epoch's loader
        return epoch_train_loader(cfg, train_set, on_device or None, batch_size, workers, epoch, runtime)

    def val_loader(_: int):
        return val_loader_for(val_set, on_device or None, batch_size, workers, runtime)

    def synced(loader_for_epoch: Callable[[int], Iterable]) -> Callable[[int], Iterator]:
        """Batches handed out only once the device has made them (device batches are queued asynchronously)."""

        def epoch_batches(epoch: int) -> Iterator:
            for batch in loader_for_epoch(epoch):
                sync(device)
                yield batch

        return epoch_batches

    results: dict[str, dict[str, Any]] = {}
    peak_gpu: dict[str, Optional[float]] = {}
    total = warmup + steps + 1

    def record(name: str, result: dict[str, Any]) -> None:
        results[name] = result
        peak_gpu[name] = peak_gpu_mib(device)
        reset_peak(device)  # each phase's peak on its own
        log(f"  {name:<16} {result['images_per_s']:8.1f} img/s")

    log(
        f"benchmark on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu_model()}): "
        f"{args.arch}/{encoder} {size} px, batch {batch_size}, {workers} workers, "
        f"amp {str(amp_dtype).replace('torch.', '') if amp_dtype else 'off'}, channels_last {channels_last}, compile {args.compile}"
    )

    # 1. The ceiling and the training loop on resident data.
    images = torch.randn(batch_size, 3, size, size, device=device).contiguous(memory_format=runtime.memory_format)
    targets = torch.randint(0, len(names), (batch_size, size, size), device=device)
    reset_peak(device)
    record("ceiling", time_ceiling(step_model, loss_fn, optimizer, (images, targets), runtime, warmup, steps))
    resident = Clocked(lambda _, batch=(images, targets): Resident(batch, total), total)
    train_one_epoch(step_model, resident, loss_fn, optimizer, None, runtime, scaler=scaler, desc="engine")
    sync(device)
    record("engine_resident", resident.rate(warmup, "processed", loader=False))
    del images, targets, resident  # the resident batch leaves the device before the loader phases

    # 2. Data alone, training step and evaluation, for each cache setting.
    caches = [] if args.ceiling_only else ["none"] if args.cache == "none" else ["none", args.cache]
    cache_info: dict[str, Any] = {}
    for cache in caches:
        if cache != "none":
            started = time.perf_counter()
            path = None
            for split, ds in (("train", train_set), ("val", val_set)):
                path = (
                    attach_cache(ds, cache, data_root=cfg.data.root, run_dir=args.run_dir, num_workers=workers, log=log, name=split) or path
                )
            entries = train_set.cache + val_set.cache
            size_mib = sum(t.numel() * t.element_size() for pair in entries for t in pair) / 2**20
            if cache == "device":
                on_device.update(move_caches_to_device({"train": train_set, "val": val_set}, device, log))
                size_mib = sum(c.nbytes() for c in on_device.values()) / 2**20
            cache_info = {
                "mode": cache,
                "build_s": time.perf_counter() - started,
                "size_mib": size_mib,
                "disk_folder": str(path.parent) if path is not None else None,
            }
        data = Clocked(synced(train_loader), total)
        for _ in data:
            pass
        record(f"data_{cache}", data.rate(warmup, "arriving"))
        clocked = Clocked(train_loader, total)
        train_one_epoch(step_model, clocked, loss_fn, optimizer, None, runtime, scaler=scaler, desc=f"train {cache}")
        sync(device)
        record(f"train_{cache}", clocked.rate(warmup, "processed"))
        clocked = Clocked(val_loader, total)
        evaluate_batches(step_model, clocked, names, runtime, loss_fn=loss_fn, desc=f"eval {cache}")
        sync(device)
        record(f"eval_{cache}", clocked.rate(warmup, "processed"))

    # 3. The naive baseline, last (its own fresh fp32 model), in this same process.
    naive_workers = None
    if args.naive_baseline:
        naive_workers = int(args.naive_workers)
        record("naive_fp32", time_naive(cfg.data.root, names, cfg, size, batch_size, naive_workers, device, warmup, steps))

    ceiling = results["ceiling"]["images_per_s"]
    for result in results.values():
        result["ratio_to_ceiling"] = result["images_per_s"] / ceiling
    derived = {}
    for cache in caches:
        # > 1: the loader alone outruns the step it feeds (on CPU both share the same cores, so
        # the end-to-end ratio train/engine_resident is the one that shows the real cost).
        derived[f"data_over_train_step_{cache}"] = results[f"data_{cache}"]["images_per_s"] / results[f"train_{cache}"]["images_per_s"]
        derived[f"data_over_ceiling_{cache}"] = results[f"data_{cache}"]["images_per_s"] / ceiling
        derived[f"train_over_engine_resident_{cache}"] = (
            results[f"train_{cache}"]["images_per_s"] / results["engine_resident"]["images_per_s"]
        )
        derived[f"eval_over_train_{cache}"] = results[f"eval_{cache}"]["images_per_s"] / results[f"train_{cache}"]["images_per_s"]
        if "naive_fp32" in results:
            derived[f"train_over_naive_{cache}"] = results[f"train_{cache}"]["images_per_s"] / results["naive_fp32"]["images_per_s"]

    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    memory = {"peak_rss_mib": usage, "peak_rss_workers_mib": children}
    if device.type == "cuda":
        memory["peak_gpu_mib"] = peak_gpu
    settings = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "smp": smp.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "python": platform.python_version(),
        "usable_cpus": usable_cpus(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": list(load_avg_start),
        "load_average_end": list(os.getloadavg()),
        "data_root": str(cfg.data.root),
        "data_source": cfg.data.source,
        "train_images": len(train_set) if train_set is not None else None,
        "val_images": len(val_set) if val_set is not None else None,
        "arch": args.arch,
        "encoder": encoder,
        "encoder_depth": cfg.model.encoder_depth,
        "decoder_channels": cfg.model.decoder_channels,
        "image_size": size,
        "batch_size": batch_size,
        "workers": workers,
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else None,
        "channels_last": channels_last,
        "compile": args.compile,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "warmup_steps": warmup,
        "timed_steps": steps,
        "cache": args.cache,
        "ceiling_only": args.ceiling_only,
        "naive_baseline": {
            "workers": naive_workers,
            "amp": None,
            "channels_last": False,
            "cudnn_benchmark": False,
            "dataset": "torchvision OxfordIIITPet trainval, decoded every epoch",
        }
        if args.naive_baseline
        else None,
        "command": "python scripts/benchmark.py " + " ".join(args.argv),
    }
    return {"settings": settings, "results": results, "derived": derived, "cache": cache_info, "memory": memory}


def format_table(report: dict[str, Any]) -> str:
    rows = [f"{'phase':<18}{'img/s':>9}{'x ceiling':>11}{'ms/batch':>10}{'epoch start s':>15}"]
    for name, r in report["results"].items():
        start = r.get("epoch_start_s")
        start_text = f"{start:.2f}" if start is not None and not math.isnan(start) else "-"
        rows.append(f"{name:<18}{r['images_per_s']:>9.1f}{r['ratio_to_ceiling']:>11.2f}{r['ms_per_batch']:>10.1f}{start_text:>15}")
    for key, value in report["derived"].items():
        rows.append(f"{key}: {value:.2f}")
    if report["cache"]:
        c = report["cache"]
        rows.append(f"cache {c['mode']}: built in {c['build_s']:.1f}s, {c['size_mib']:.0f} MiB")
    mem = report["memory"]
    rows.append(f"peak RSS {mem['peak_rss_mib']:.0f} MiB (largest worker {mem['peak_rss_workers_mib']:.0f} MiB)")
    if "peak_gpu_mib" in mem:
        rows.append("peak GPU MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in mem["peak_gpu_mib"].items()))
    return "\n".join(rows)


def scaling_settings(args: argparse.Namespace) -> dict[str, Any]:
    """--nproc: the settings every torchrun process uses, with this script's device-dependent defaults."""
    device = Runtime.create(args.device, amp=args.amp, key="--device").device
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    return {
        "device": device.type if args.device == "auto" else args.device,
        "amp": args.amp,
        "threads": args.threads,
        "data_root": args.data_root,
        "synthetic": args.synthetic,
        "image_size": args.image_size or defaults["image_size"],
        "batch_size": args.batch_size or defaults["batch_size"],
        "arch": args.arch,
        "encoder": args.encoder or defaults["encoder"],
        "steps": args.steps or defaults["steps"],
        "warmup": defaults["warmup"] if args.warmup is None else args.warmup,
        "workers": args.workers if args.workers == "auto" else int(args.workers),
        "cache": args.cache,
        "run_dir": args.run_dir,
        "sync_bn": args.sync_bn,
        "compile": args.compile,
        "command": "python scripts/benchmark.py " + " ".join(args.argv),
    }


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if args.nproc:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            import benchmark_ddp  # beside this script

            report = benchmark_ddp.run_scaling(args, scaling_settings(args))
            print(benchmark_ddp.format_scaling(report))
        else:
            report = run_benchmark(args)
            print(format_table(report))
    except SegPetError as exc:  # a bad --device, --data-root or setting: one line, as the seg_pet commands
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out is not None:
        write_json(args.out, report)
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
