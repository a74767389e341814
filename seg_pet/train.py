"""The training workflow: config -> data -> model -> epochs (engine) -> checkpoints -> test once.

Reads top to bottom like torchvision's references/segmentation/train.py. Everything that can
fail on bad input (config, data files, weights, device) is checked before the run folder is
created, so a refused run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from seg_pet.cache import DeviceBatches, DeviceCache, cache_datasets
from seg_pet.checkpoint import load_checkpoint, load_model_weights, rng_state, save_checkpoint, set_rng_state
from seg_pet.config import Config, config_to_dict, dump_config
from seg_pet.data import (
    PetSegmentation,
    build_datasets,
    build_test_dataset,
    class_names,
    count_pixels,
    make_loader,
    resolve_num_workers,
)
from seg_pet.diagnostics import epoch_warnings
from seg_pet.engine import evaluate, train_one_epoch
from seg_pet.errors import CheckpointError, ConfigError, SegPetError, TrainingDiverged, is_input_error
from seg_pet.evaluate import evaluate_split, write_test_outputs
from seg_pet.fileio import atomic_write, remove_partial_files, write_json
from seg_pet.losses import build_loss, compute_class_weights, needs_class_weights
from seg_pet.metrics import compute_metrics, format_table
from seg_pet.models import build_model
from seg_pet.visualisation import plot_curves, save_overlay, save_panel
from seg_pet.transforms import BatchAugment, denormalize


def resume_command(run_dir: Path) -> str:
    return f"python -m seg_pet train --resume {shlex.quote(str(run_dir))}"


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM arrived; progress up to the last finished epoch is in last.pt.

    A BaseException, like KeyboardInterrupt: raised from a signal handler during the test
    evaluation, it must not be swallowed by an `except Exception` in library code.

    `saved_epoch` is the epoch last.pt holds (0: the initial weights); `when` says where the
    signal arrived, e.g. "during epoch 3 (its unfinished steps are discarded)".
    """

    def __init__(self, signum: int, run_dir: Path, saved_epoch: int, when: str):
        self.signum, self.run_dir, self.saved_epoch = signum, run_dir, saved_epoch
        name = signal.Signals(signum).name
        super().__init__(
            f"{name} received {when}; {run_dir / 'checkpoints' / 'last.pt'} holds epoch {saved_epoch}. "
            f"Resume with: {resume_command(run_dir)}"
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 130 for SIGINT, 143 for SIGTERM, as shells report them


# --------------------------------------------------------------------------- setup helpers


def resolve_device(setting: str, key: str = "train.device") -> torch.device:
    """auto | cpu | cuda | cuda:N -> a device that exists here; `key` names the setting in errors."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}: {setting!r} requested but CUDA is not available here (torch {torch.__version__}); use {key}: cpu or auto")
        index = int(setting.split(":")[1]) if ":" in setting else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{key}: {setting!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return torch.device(setting)


def amp_dtype_for(device: torch.device, amp: bool) -> Optional[torch.dtype]:
    """bf16 autocast on CUDA where supported (no loss scaling needed), fp16 otherwise; none on CPU."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "adam":
        return torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int) -> Optional[torch.optim.lr_scheduler.LRScheduler]:
    """Per-iteration schedules: cosine to 0, or poly (power 0.9, as in DeepLab and torchvision's reference)."""
    total = max(total_steps, 1)
    if name == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
    if name == "poly":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (1 - min(step, total) / total) ** 0.9)
    return None


def overlay_indices(num_images: int, count: int) -> list[int]:
    """A fixed, evenly spaced set of validation images drawn every epoch."""
    count = min(count, num_images)
    return sorted({round(i * (num_images - 1) / max(count - 1, 1)) for i in range(count)}) if count else []


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise SegPetError(f"--resume {run_dir}: not a seg_pet run folder (no config.yaml)")
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise SegPetError(
                f"run folder {run_dir} already exists; continue it with --resume {run_dir}, "
                "replace it with --overwrite, or choose another run.name"
            )
        if not (run_dir / "config.yaml").is_file():
            raise SegPetError(f"--overwrite: {run_dir} is not a seg_pet run folder (no config.yaml); refusing to delete it")


def create_run_dir(run_dir: Path, write_initial) -> None:
    """Make the run folder appear complete or not at all.

    `write_initial(folder)` fills a hidden staging folder beside `run_dir` (config.yaml, the
    epoch-0 last.pt, ...), which is then renamed into place; an existing run (--overwrite,
    checked by check_run_dir) is swapped out first and deleted after. A process killed at any
    instant leaves either no run folder, the old one, or a new one that --resume accepts.
    """
    parent = run_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f".{run_dir.name}.staging-*"):  # left by a process killed during setup
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{run_dir.name}.staging-"))
    try:
        write_initial(staging)
        if run_dir.exists():
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{run_dir.name}.staging-old-"))
            os.replace(run_dir, old)  # onto the empty folder just made
            os.replace(staging, run_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def repair_best_checkpoint(run_dir: Path, last_state: dict[str, Any]) -> bool:
    """last.pt is written before best.pt, so a kill between the two leaves best.pt one improvement behind.

    When last.pt says its own epoch is the best one, best.pt must hold that epoch: rewrite it from
    last.pt if it does not. Returns True when it was rewritten.
    """
    epoch = last_state["epoch"]
    if epoch < 1 or last_state.get("best_epoch") != epoch:
        return False
    best_path = run_dir / "checkpoints" / "best.pt"
    try:
        if load_checkpoint(best_path)["epoch"] == epoch:
            return False
    except CheckpointError:
        pass
    save_checkpoint(best_path, last_state)
    return True


@contextlib.contextmanager
def signals_raise(exc_type, *args):
    """While inside, SIGINT / SIGTERM raise `exc_type(signum, *args)` at once (for short phases with nothing to save)."""

    def handler(signum, frame):
        raise exc_type(signum, *args)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------- outputs


def write_history(run_dir: Path, rows: list[dict[str, Any]], names: list[str]) -> None:
    """metrics.jsonl (one JSON object per epoch) and metrics.csv (flat columns), rewritten atomically."""
    import csv
    import json

    from seg_pet.fileio import to_jsonable

    with atomic_write(run_dir / "metrics.jsonl") as f:
        for row in rows:
            f.write(json.dumps(to_jsonable(row), allow_nan=False) + "\n")
    flat_keys = ["epoch", "train_loss", "val_loss", "val_miou", "val_pixel_acc"]
    flat_keys += [f"val_iou_{n}" for n in names] + [f"pred_share_{n}" for n in names]
    flat_keys += ["grad_norm_mean", "grad_norm_max", "lr", "seconds", "warnings"]
    with atomic_write(run_dir / "metrics.csv", "w") as f:
        writer = csv.DictWriter(f, fieldnames=flat_keys, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            flat = {k: row.get(k) for k in flat_keys}
            for n in names:
                flat[f"val_iou_{n}"] = row["val_iou"].get(n)
                flat[f"pred_share_{n}"] = row.get("pred_share", {}).get(n)
            flat["warnings"] = " | ".join(row.get("warnings", []))
            writer.writerow(flat)


@torch.inference_mode()
def save_epoch_overlays(model, dataset: PetSegmentation, indices: list[int], folder: Path, device, amp_dtype, names: list[str]) -> None:
    from seg_pet.engine import autocast

    model.eval()
    for idx in indices:
        image, target = dataset[idx]
        if target.shape != image.shape[-2:]:  # native-resolution masks: the panel shows them at the model's size
            target = F.resize(tv_tensors.Mask(target), list(image.shape[-2:])).as_subclass(torch.Tensor)
        with autocast(device, amp_dtype):
            logits = model(image.unsqueeze(0).to(device))
        pred = logits.float().argmax(1)[0].cpu().numpy()
        rgb = denormalize(image)
        stem = dataset.name(idx)
        save_overlay(folder / f"{stem}_overlay.png", rgb, pred)
        save_panel(folder / f"{stem}_panel.png", rgb, target.numpy(), pred, names, title=f"{stem} ({folder.name})")


def move_caches_to_device(datasets: dict[str, PetSegmentation], device: torch.device, log) -> dict[str, DeviceCache]:
    """data.cache: device: the train and val memory caches moved to the training device (seg_pet.cache.DeviceCache)."""
    try:
        moved = {split: DeviceCache(datasets[split], device) for split in ("train", "val")}
    except torch.OutOfMemoryError:
        raise ConfigError(f"data.cache: device: the decoded train and val images do not fit in the memory of {device} "
                          "next to the model; use data.cache: memory") from None
    log(f"cache: train and val moved to {device}, {sum(c.nbytes() for c in moved.values()) / 2**20:.0f} MiB; "
        "training batches are augmented there (transforms.BatchAugment)")
    return moved


def epoch_train_loader(cfg: Config, dataset: PetSegmentation, on_device: Optional[dict[str, DeviceCache]], batch_size: int,
                       workers: int, epoch: int, device: torch.device) -> Iterable:
    """One epoch's training batches: a fresh DataLoader, or DeviceBatches with data.cache: device.

    Reseeding torch's global RNG and the order from (seed, epoch) first makes a resumed run replay
    the same shuffles and augmentations."""
    seed = epoch_seed(cfg.run.seed, epoch)
    torch.manual_seed(seed)
    if on_device is not None:
        return DeviceBatches(on_device["train"], batch_size, shuffle=True, drop_last=True, augment=BatchAugment(cfg.data.image_size), seed=seed)
    return make_loader(dataset, batch_size, shuffle=True, num_workers=workers, seed=seed, pin_memory=device.type == "cuda", drop_last=True)


def val_loader_for(dataset: PetSegmentation, on_device: Optional[dict[str, DeviceCache]], batch_size: int, workers: int,
                   device: torch.device) -> Iterable:
    """The validation batches: a DataLoader, or slices of the device cache with data.cache: device."""
    if on_device is not None:
        return DeviceBatches(on_device["val"], batch_size, shuffle=False)
    return make_loader(dataset, batch_size, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda")


def console_line(row: dict[str, Any], epochs: int) -> str:
    ious = " ".join(f"{n} {v:.3f}" if v is not None and not math.isnan(v) else f"{n} n/a" for n, v in row["val_iou"].items())
    return (
        f"epoch {row['epoch']:>3}/{epochs}  train_loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
        f"val_mIoU {row['val_miou']:.4f} [{ious}]  acc {row['val_pixel_acc']:.3f}  lr {row['lr']:.2e}  {row['seconds']:.1f}s"
    )


# --------------------------------------------------------------------------- the workflow


def train(cfg: Config, *, resume: bool = False, overwrite: bool = False, stop_after_epoch: Optional[int] = None,
          log=print) -> dict[str, Any]:
    """Train, validate every epoch, keep best/last checkpoints, then evaluate best.pt on test once.

    `stop_after_epoch` ends the process cleanly once that epoch is saved (no test evaluation);
    `--resume` continues exactly where it stopped, with the schedule of the full `optim.epochs`.
    Returns the test metrics ({} when stopped early). Raises SegPetError (bad input),
    TrainingDiverged, Interrupted.
    """
    run_dir = cfg.run_dir
    check_run_dir(run_dir, resume, overwrite)
    device = resolve_device(cfg.train.device)
    amp_dtype = amp_dtype_for(device, cfg.train.amp)
    seed_everything(cfg.run.seed)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not cfg.train.deterministic

    # Everything that reads user input happens before the run folder is touched.
    resume_state = None
    if resume:
        last = run_dir / "checkpoints" / "last.pt"
        if not last.is_file():
            raise CheckpointError(f"--resume {run_dir}: no checkpoints/last.pt to resume from")
        resume_state = load_checkpoint(last)
        if stop_after_epoch is not None and stop_after_epoch <= resume_state["epoch"]:
            raise SegPetError(f"--stop-after-epoch {stop_after_epoch}: {run_dir} has already finished epoch {resume_state['epoch']}")
        saved_optim = resume_state["config"].get("optim", {}).get("name")
        if saved_optim != cfg.optim.name:
            raise CheckpointError(f"{last} holds {saved_optim} optimiser state, the config asks for optim.name={cfg.optim.name!r}")
    names = class_names(cfg.data.border)
    datasets = build_datasets(cfg)
    test_set = build_test_dataset(cfg)  # file checks only: no test pixel is read until the end
    pixel_counts = weights = None
    if needs_class_weights(cfg.loss):
        if resume_state is not None and resume_state.get("class_weights") is not None:
            pixel_counts, weights = resume_state["pixel_counts"], resume_state["class_weights"]
        else:
            pixel_counts = count_pixels(datasets["train"], len(names))
            weights = compute_class_weights(cfg.loss.class_weights or "inverse", pixel_counts)
        log("class weights (from training-split pixel counts): " + ", ".join(f"{n} {w:.3f} ({c} px)" for n, w, c in zip(names, weights, pixel_counts)))
    model = build_model(cfg.model, len(names)).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg.loss, names, weights).to(device)  # class weights are buffers: follow the logits
    optimizer = build_optimizer(cfg, model)
    workers = resolve_num_workers(cfg.data.num_workers)
    batch_size = min(cfg.data.batch_size, len(datasets["train"]))
    steps_per_epoch = len(datasets["train"]) // batch_size
    if cfg.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
    scheduler = build_scheduler(cfg.optim.scheduler, optimizer, steps_per_epoch * cfg.optim.epochs)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    step_model = torch.compile(model) if cfg.train.compile else model

    start_epoch, best_miou, best_epoch, rows = 1, -math.inf, 0, []

    def checkpoint_state(epoch: int) -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_state(),
            "config": config_to_dict(cfg),
            "class_names": names,
            "epoch": epoch,
            "best_miou": best_miou,
            "best_epoch": best_epoch,
            "history": rows,
            "metrics": rows[-1] if rows else {},
            "pixel_counts": pixel_counts,
            "class_weights": weights,
        }

    if resume_state is not None:
        last = run_dir / "checkpoints" / "last.pt"
        load_model_weights(model, resume_state, last, names, config_to_dict(cfg)["model"])
        try:
            optimizer.load_state_dict(resume_state["optimizer"])
            if scheduler is not None and resume_state.get("scheduler"):
                scheduler.load_state_dict(resume_state["scheduler"])
            if scaler is not None and resume_state.get("scaler"):
                scaler.load_state_dict(resume_state["scaler"])
        except (ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise CheckpointError(f"{last}: the optimiser/scheduler state does not fit the config ({str(exc).splitlines()[0]}); "
                                  "was an optim.* key changed since the run started?") from None
        set_rng_state(resume_state["rng"])
        start_epoch = resume_state["epoch"] + 1
        best_miou, best_epoch = resume_state["best_miou"], resume_state["best_epoch"]
        rows = list(resume_state["history"])
        # Leftovers of a killed process: temporary files of unfinished writes, a best.pt one step behind.
        remove_partial_files(run_dir)
        if repair_best_checkpoint(run_dir, resume_state):
            log(f"best.pt rewritten from last.pt (epoch {resume_state['epoch']}): the previous process stopped between the two writes")
        if (run_dir / "config.yaml").read_text() != dump_config(cfg):  # --set on resume, or the folder was moved
            with atomic_write(run_dir / "config.yaml") as f:
                f.write(dump_config(cfg))
        log(f"resuming {run_dir} after epoch {resume_state['epoch']} (best val mIoU {best_miou:.4f} at epoch {best_epoch})")
    else:
        def write_initial(folder: Path) -> None:
            with atomic_write(folder / "config.yaml") as f:
                f.write(dump_config(cfg))
            if weights is not None:
                write_json(folder / "class_weights.json", {"scheme": cfg.loss.class_weights or "inverse", "class_names": names, "pixel_counts": pixel_counts, "weights": weights})
            save_checkpoint(folder / "checkpoints" / "last.pt", checkpoint_state(0))  # resumable from the start

        create_run_dir(run_dir, write_initial)

    log(f"run {run_dir}: {len(datasets['train'])} train / {len(datasets['val'])} val images, classes {names}, device {device}"
        + (f", autocast {str(amp_dtype).replace('torch.', '')}" if amp_dtype else ""))
    overlay_idx = overlay_indices(len(datasets["val"]), cfg.train.overlays)

    stop = {"signum": None}
    main_pid = os.getpid()

    def request_stop(signum, frame):
        if os.getpid() != main_pid:  # a DataLoader worker forked with this handler, before worker_signals ran
            return
        if stop["signum"] is not None:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        stop["signum"] = signum
        print(f"\n{signal.Signals(signum).name} received: stopping after this step...", file=sys.stderr)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if cfg.data.cache != "none":  # decoded once here, before any loader worker is forked (seg_pet.cache)
            cache_datasets(cfg, datasets, run_dir, workers, log)
        on_device = move_caches_to_device(datasets, device, log) if cfg.data.cache == "device" else None
        val_loader = val_loader_for(datasets["val"], on_device, batch_size, workers, device)
        for epoch in range(start_epoch, cfg.optim.epochs + 1):
            started = time.perf_counter()
            train_loader = epoch_train_loader(cfg, datasets["train"], on_device, batch_size, workers, epoch, device)
            lr = optimizer.param_groups[0]["lr"]
            try:
                stats = train_one_epoch(step_model, train_loader, loss_fn, optimizer, scheduler, device, amp_dtype=amp_dtype,
                                        scaler=scaler, grad_clip=cfg.optim.grad_clip, max_steps=steps_per_epoch,
                                        desc=f"epoch {epoch}/{cfg.optim.epochs}", should_stop=lambda: stop["signum"] is not None,
                                        channels_last=device.type == "cuda")
            except RuntimeError:
                if stop["signum"] is None:
                    raise
                stats = None  # a DataLoader worker died of the same signal
            if stop["signum"] is not None:
                raise Interrupted(stop["signum"], run_dir, epoch - 1, f"during epoch {epoch} (its unfinished steps are discarded)")
            matrix, val_loss = evaluate(step_model, val_loader, len(names), device, loss_fn=loss_fn, amp_dtype=amp_dtype, desc="val",
                                        channels_last=device.type == "cuda")
            if not math.isfinite(val_loss):  # NaN weights: nothing of this epoch is saved, best.pt and last.pt stay
                raise TrainingDiverged(f"validation loss is {val_loss} after epoch {epoch}")
            metrics = compute_metrics(matrix.mat, names)
            row = {
                "epoch": epoch,
                "train_loss": stats["loss"],
                "val_loss": val_loss,
                "val_miou": metrics["miou"],
                "val_iou": metrics["iou"],
                "val_pixel_acc": metrics["pixel_acc"],
                "pred_share": metrics["pred_share"],
                "grad_norm_mean": stats["grad_norm_mean"],
                "grad_norm_max": stats["grad_norm_max"],
                "lr": lr,
                "seconds": time.perf_counter() - started,
            }
            row["warnings"] = epoch_warnings(row, rows, metrics, names)
            rows.append(row)
            if cfg.train.overlays:
                save_epoch_overlays(model, datasets["val"], overlay_idx, run_dir / "overlays" / f"epoch_{epoch:03d}", device, amp_dtype, names)
            write_history(run_dir, rows, names)
            plot_curves(rows, names, run_dir / "plots" / "curves.png")
            improved = not math.isnan(metrics["miou"]) and metrics["miou"] > best_miou
            if improved:
                best_miou, best_epoch = metrics["miou"], epoch
            # last.pt first: if the process dies before best.pt is written, resume rewrites best.pt from it.
            state = checkpoint_state(epoch)
            save_checkpoint(run_dir / "checkpoints" / "last.pt", state)
            if improved:
                save_checkpoint(run_dir / "checkpoints" / "best.pt", state)
            del state
            log(console_line(row, cfg.optim.epochs) + ("  *best*" if improved else ""))
            for warning in row["warnings"]:
                log(f"  WARNING: {warning}")
            if stop["signum"] is not None:  # arrived during validation or saving: this epoch is complete
                raise Interrupted(stop["signum"], run_dir, epoch, f"after epoch {epoch}")
            if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < cfg.optim.epochs:
                log(f"stopped after epoch {epoch} as asked (--stop-after-epoch {stop_after_epoch}); continue with: {resume_command(run_dir)}")
                return {}
    except TrainingDiverged as exc:
        raise TrainingDiverged(f"{exc}; training stopped. Checkpoints and metrics up to the last finished epoch are kept in {run_dir}. "
                               "Try a lower optim.lr, optim.grad_clip, or train.amp: false") from None
    except (SegPetError, RuntimeError) as exc:
        # Bad input found while reading pixels (a truncated image, a trimap value outside 1..3; a DataLoader
        # worker re-raises it with its type). If no epoch finished in this new run, take the folder away again.
        if resume_state is None and not rows and is_input_error(exc):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

    # The test split is touched once: the best checkpoint, after the last epoch.
    if (run_dir / "test_metrics.json").exists():
        log(f"test_metrics.json already exists in {run_dir}; not evaluating the test split again")
        return {}
    best_path = run_dir / "checkpoints" / "best.pt"
    with signals_raise(Interrupted, run_dir, cfg.optim.epochs, "during the final test evaluation (every epoch is saved; resuming runs only the test evaluation)"):
        best_state = load_checkpoint(best_path)
        load_model_weights(model, best_state, best_path, names)
        test_metrics = evaluate_split(model, test_set, cfg, device, names, desc="test")
        test_metrics = {"split": "test", "checkpoint": "best", "checkpoint_epoch": best_state["epoch"], **test_metrics}
        write_test_outputs(run_dir, test_metrics, names)  # atomic files, test_metrics.json last
    log(f"\ntest split, best checkpoint (epoch {best_state['epoch']}), {test_metrics['num_images']} images:")
    log(format_table(test_metrics, names))
    return test_metrics
