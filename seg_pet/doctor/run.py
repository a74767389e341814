"""`run_doctor`: every check on the configured data, model and loss, and the report."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from seg_pet.config import label_spec
from seg_pet.config.numbers import plan_batches
from seg_pet.data.loaders import ShardSampler, count_pixels, make_loader, resolve_num_workers
from seg_pet.data.sources import build_datasets
from seg_pet.doctor.checks import (
    FAIL,
    OVERFIT_IMAGES,
    OVERFIT_SIZE,
    OVERFIT_STEPS,
    PASS,
    WARN,
    CheckResult,
    check_baseline,
    check_class_balance,
    check_images,
    check_masks,
    format_result,
    majority_baseline,
)
from seg_pet.doctor.model_checks import check_initial_loss, check_loss_floor, check_output, check_overfit, overfit_batch, smoothing_floor
from seg_pet.losses import build_loss, compute_class_weights, needs_class_weights
from seg_pet.models import build_model
from seg_pet.runtime.device import resolve_device
from seg_pet.runtime.distributed import all_reduce_sum, gathered, is_distributed, is_main, join_process_group, rank, world_size
from seg_pet.runtime.seeding import epoch_seed
from seg_pet.viz import plot_class_balance


def _guarded(name: str, fn: Callable[[], CheckResult]) -> CheckResult:
    """Run one check; a crash is that check's FAIL (with the error), not the end of the report."""
    try:
        return fn()
    except Exception as exc:  # the report must go on: a crash is itself the diagnosis
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return CheckResult(name, FAIL, f"crashed: {type(exc).__name__}: {first}", "fix the error above; the remaining checks still ran")


def run_doctor(cfg: Any, *, out: Optional[Path] = None, log: Callable[[str], None] = print) -> int:
    """Run every check on the configured data, model and loss; print the report. Returns 1 if any check FAILs, else 0.

    Writes nothing unless `out` is given (then only a class-balance bar chart there). Under torchrun every
    process joins the process group for one more check (`processes`); rank 0 then runs the others and
    prints the report, the other processes return at once (the caller leaves the process group).
    """
    device = resolve_device(cfg.train.device)
    join_process_group(device, cfg.train.dist_timeout)
    log = log if is_main() else (lambda line: None)
    threads = torch.get_num_threads()
    # The doctor's tensors are small: on CPU one intra-op thread is fast enough and, on a machine whose
    # cores are shared, avoids OpenMP threads fighting for them (docs/performance.md, CPU figures).
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        return _doctor(cfg, device, out, log)
    finally:
        torch.set_num_threads(threads)


def _doctor(cfg: Any, device: torch.device, out: Optional[Path], log: Callable[[str], None]) -> int:
    started = time.perf_counter()
    spec = label_spec(cfg.data)
    names = list(spec.names)
    num_classes = len(names)
    datasets = build_datasets(cfg, log=log)  # a missing dataset is a one-line DataError (exit 2), not a check
    train_set, val_set = datasets["train"], datasets["val"]
    log(
        f"seg_pet doctor: {len(train_set)} train / {len(val_set)} val images from {cfg.data.root} ({cfg.data.source}), "
        f"classes {names}, {cfg.model.arch}/{cfg.model.encoder}, loss {cfg.loss.name}, image_size {cfg.data.image_size}, "
        f"device {device}{' (1 thread)' if device.type == 'cpu' else ''}"
    )
    results: list[CheckResult] = []

    def record(result: CheckResult) -> None:
        results.append(result)
        log(format_result(result))

    if is_distributed():
        processes = check_processes(len(train_set), cfg.run.seed)
        if not is_main():
            return 1 if processes.status == FAIL else 0
        record(processes)

    # A batch exactly as `train` builds it: same loader, same epoch-1 seed, same transforms.
    workers = resolve_num_workers(cfg.data.num_workers)
    batch_size = plan_batches(cfg, len(train_set)).batch_size  # one line, not a BatchNorm traceback, for a batch it cannot take
    loader = make_loader(train_set, batch_size, shuffle=True, num_workers=workers, seed=epoch_seed(cfg.run.seed, 1), drop_last=True)
    images, targets = next(iter(loader))
    record(_guarded("masks", lambda: check_masks(targets, num_classes, spec=spec)))
    record(_guarded("images", lambda: check_images(images)))

    pixel_counts = count_pixels(train_set, num_classes)
    record(_guarded("class balance", lambda: check_class_balance(pixel_counts, names)))
    if out is not None:
        plot_class_balance(
            pixel_counts, names, Path(out) / "class_balance.png", title="training split pixel shares", palette=spec.palette_array()
        )
        log(f"{'':20}bar chart: {Path(out) / 'class_balance.png'}")

    # The majority class comes from the training split: choosing it on val would peek.
    majority = max(range(num_classes), key=lambda i: pixel_counts[i])
    # data.val_fraction: 0 trains on all of trainval: the floor is then measured on the training images.
    floor_set, floor_name = (val_set, "val") if len(val_set) else (train_set, "train, no validation split")
    val_loader = make_loader(floor_set, batch_size, shuffle=False, num_workers=workers)
    where = f"{floor_name} ({len(floor_set)} images at {cfg.data.image_size} px)"
    record(
        _guarded("baseline", lambda: check_baseline(majority_baseline((t for _, t in val_loader), majority, names), names[majority], where))
    )

    weights = None
    if needs_class_weights(cfg.loss) and sum(pixel_counts) > 0:
        weights = compute_class_weights(cfg.loss.get("class_weights"), pixel_counts)
    loss_fn = build_loss(cfg.loss, names, weights, background=spec.background).to(
        device
    )  # class weights live in a buffer: move them with the loss
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg.model, num_classes).to(device)
    with torch.no_grad():
        model.train()  # as in the first training step
        logits = model(images.to(device)).float().cpu()
    record(_guarded("model output", lambda: check_output(logits, num_classes, tuple(images.shape[-2:]))))
    record(_guarded("initial loss", lambda: check_initial_loss(logits, targets, num_classes)))
    smoothing = float(cfg.loss.get("label_smoothing", 0.0))
    record(_guarded("loss floor", lambda: check_loss_floor(loss_fn, targets.to(device), num_classes, smoothing)))

    size = min(OVERFIT_SIZE, cfg.data.image_size)
    x, y = overfit_batch(train_set, size, OVERFIT_IMAGES)
    note = f", on {len(x)} train images at {size}x{size} px (the doctor's own size, for speed)"
    floor = smoothing_floor(smoothing, num_classes) if cfg.loss.name in ("ce", "wce", "ce_dice") else 0.0
    record(
        _guarded(
            "overfit batch",
            lambda: check_overfit(model, x.to(device), y.to(device), loss_fn, num_classes, steps=OVERFIT_STEPS, floor=floor, note=note),
        )
    )

    counts = {s: sum(r.status == s for r in results) for s in (PASS, WARN, FAIL)}
    log(f"\n{counts[PASS]} PASS, {counts[WARN]} WARN, {counts[FAIL]} FAIL in {time.perf_counter() - started:.1f} s")
    return 1 if counts[FAIL] else 0


def check_processes(train_size: int, seed: int) -> CheckResult:
    """Under torchrun: every process answers a collective, and their epoch-1 training shares are disjoint and equal."""
    world = world_size()
    answered = int(all_reduce_sum(torch.ones(1)).item())
    order = ShardSampler(train_size, rank(), world, generator=torch.Generator().manual_seed(epoch_seed(seed, 1)), equal=True)
    shares = gathered(list(order))
    seen = [i for share in shares for i in share]
    name = "processes"
    if answered != world:
        return CheckResult(
            name, FAIL, f"an all_reduce over {world} processes summed to {answered}", "check the torchrun flags and the network"
        )
    if len(set(seen)) != len(seen) or len({len(share) for share in shares}) != 1:
        return CheckResult(name, FAIL, "the processes' training shares overlap or differ in size", "report this: it is a seg_pet bug")
    return CheckResult(
        name,
        PASS,
        f"{world} processes ({dist.get_backend()}) answer; epoch 1 gives each {len(shares[0])} of {train_size} training images, disjoint",
    )
