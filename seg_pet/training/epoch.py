"""One epoch of a run: its data (`prepare_data`), its steps and validation (`run_epoch`), what it saves (`save_epoch`).

Every process runs these; under torchrun rank 0 alone writes and prints. With train.ema the
averaged weights (`Setup.model`) are what is validated, drawn and saved as "model".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, Optional

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from seg_pet.checkpoint import save_checkpoint
from seg_pet.config import Config, config_to_dict
from seg_pet.data.cache import cache_datasets
from seg_pet.data.loaders import epoch_train_loader, move_caches_to_device, val_loader_for
from seg_pet.data.segmentation import SegmentationDataset
from seg_pet.data.transforms import denormalize
from seg_pet.evaluation import evaluate_batches, split_accumulators
from seg_pet.metrics import compute_metrics
from seg_pet.runtime.device import Runtime
from seg_pet.runtime.distributed import broadcast_from_main, is_main, main_first
from seg_pet.runtime.errors import TrainingDiverged
from seg_pet.runtime.runpaths import RunPaths
from seg_pet.training.guard import RunGuard
from seg_pet.training.loop import train_one_epoch
from seg_pet.training.monitors import epoch_warnings
from seg_pet.training.records import EpochRecord, console_line, write_epoch_outputs
from seg_pet.training.state import Progress, Setup, checkpoint_state
from seg_pet.training.tensorboard import TensorBoardLog
from seg_pet.viz import save_overlay, save_panel


class EpochData(NamedTuple):
    train_set: SegmentationDataset
    val_set: SegmentationDataset
    on_device: Any  # data.cache: device: the decoded images on the training device, else None
    val_loader: Optional[Any]  # None without a validation split (data.val_fraction: 0)
    overlay_indices: list[int]  # the validation images drawn every epoch


def prepare_data(
    cfg: Config, datasets: dict[str, SegmentationDataset], setup: Setup, runtime: Runtime, log: Callable[[str], None]
) -> EpochData:
    """The caches filled (data.cache) before any loader worker is forked, and the validation loader."""
    if cfg.data.cache != "none":
        with main_first(cfg.data.cache == "disk"):  # under torchrun rank 0 writes the disk cache, the others read it
            cache_datasets(cfg, datasets, cfg.run_dir, setup.workers, log)
    on_device = move_caches_to_device(datasets, runtime.device, log) if cfg.data.cache == "device" else None
    val_set = datasets["val"]
    val_loader = val_loader_for(val_set, on_device, setup.batch_size, setup.workers, runtime) if len(val_set) else None
    return EpochData(datasets["train"], val_set, on_device, val_loader, overlay_indices(len(val_set), cfg.train.overlays))


def run_epoch(
    setup: Setup, data: EpochData, runtime: Runtime, cfg: Config, names: list[str], epoch: int, rows: list[dict], guard: RunGuard
) -> EpochRecord:
    """Train one epoch, validate, and return its record (`rows`: the earlier epochs', for the warnings)."""
    started = time.perf_counter()
    loader = epoch_train_loader(cfg, data.train_set, data.on_device, setup.batch_size, setup.workers, epoch, runtime)
    lr = setup.optimizer.param_groups[0]["lr"]
    stats = train_epoch(setup, loader, runtime, cfg, epoch, guard)
    guard.stop_if_asked(epoch, finished=False)
    # Batch-norm statistics moved with each process's own images: evaluate with rank 0's, the ones saved.
    broadcast_from_main(setup.model.buffers())
    metrics, val_loss = validate(setup, data.val_loader, runtime, names, epoch, cfg)
    record = EpochRecord(
        epoch=epoch,
        train_loss=stats["loss"],
        val_loss=val_loss,
        val_miou=metrics["miou"],
        val_iou=metrics["iou"],
        val_pixel_acc=metrics["pixel_acc"],
        pred_share=metrics["pred_share"],
        grad_norm_mean=stats["grad_norm_mean"],
        grad_norm_max=stats["grad_norm_max"],
        lr=lr,
        seconds=time.perf_counter() - started,
        val_boundary_iou=metrics["boundary_iou"],
        val_mboundary_iou=metrics["mboundary_iou"],
    )
    record.warnings = epoch_warnings(record.row(), rows, metrics, names)
    return record


def train_epoch(setup: Setup, loader, runtime: Runtime, cfg: Config, epoch: int, guard: RunGuard) -> Optional[dict[str, float]]:
    """One epoch of steps; None when a stop signal also killed a DataLoader worker mid-epoch."""
    try:
        return train_one_epoch(
            setup.step_model,
            loader,
            setup.loss_fn,
            setup.optimizer,
            setup.scheduler,
            runtime,
            scaler=setup.scaler,
            grad_clip=cfg.optim.grad_clip,
            max_steps=setup.steps_per_epoch,
            desc=f"epoch {epoch}/{cfg.optim.epochs}",
            should_stop=lambda: guard.requested,
            ema=setup.ema,
        )
    except RuntimeError:
        if not guard.requested:
            raise
        return None  # a DataLoader worker died of the same signal


def validate(setup: Setup, val_loader, runtime: Runtime, names: list[str], epoch: int, cfg: Config) -> tuple[dict[str, Any], float]:
    """Validation metrics and loss of this epoch's weights; all NaN when there is no validation split."""
    if val_loader is None:  # data.val_fraction: 0
        empty = compute_metrics(torch.zeros(len(names), len(names), dtype=torch.int64), names)
        return {**empty, "boundary_iou": dict.fromkeys(names, math.nan), "mboundary_iou": math.nan}, math.nan
    accumulators = split_accumulators(names, cfg)
    metrics = evaluate_batches(setup.model, val_loader, names, runtime, accumulators=accumulators, loss_fn=setup.loss_fn, desc="val")
    val_loss = metrics.pop("loss")
    if not math.isfinite(val_loss):  # NaN weights: nothing of this epoch is saved, best.pt and last.pt stay
        raise TrainingDiverged(f"validation loss is {val_loss} after epoch {epoch}")
    return metrics, val_loss


def save_epoch(
    setup: Setup,
    progress: Progress,
    improved: bool,
    data: EpochData,
    runtime: Runtime,
    cfg: Config,
    names: list[str],
    log: Callable[[str], None],
    board: Optional[TensorBoardLog] = None,
) -> None:
    """Overlays, metrics files, checkpoints and TensorBoard events of the epoch just added to `progress`; its console line.

    last.pt first: if the process dies before best.pt is written, resume rewrites best.pt from it."""
    epoch, row = progress.rows[-1]["epoch"], progress.rows[-1]
    state = checkpoint_state(setup, progress, cfg, names, epoch)  # in every process: it gathers their RNG states
    if not is_main():
        return
    paths = RunPaths(cfg.run_dir)
    if cfg.train.overlays:
        save_epoch_overlays(setup.model, data.val_set, data.overlay_indices, paths.epoch_overlays(epoch), runtime, names)
    write_epoch_outputs(paths.root, progress.rows, names, data.val_set.spec.palette_array())
    save_checkpoint(paths.last, state)
    if improved:
        save_checkpoint(paths.best, state)
    if board is not None:
        board.epoch(row, sorted(paths.epoch_overlays(epoch).glob("*_panel.png")))
    log(console_line(row, cfg.optim.epochs) + ("  *best*" if improved and cfg.train.select == "best_val" else ""))
    for warning in row["warnings"]:
        log(f"  WARNING: {warning}")


@contextmanager
def open_board(cfg: Config, progress: Progress) -> Iterator[Optional[TensorBoardLog]]:
    """train.tensorboard: rank 0's event stream in <run>/tensorboard, continued from the first new epoch; None otherwise."""
    board = TensorBoardLog(RunPaths(cfg.run_dir).root, progress.start_epoch) if cfg.train.tensorboard and is_main() else None
    try:
        yield board
    finally:
        if board is not None:
            board.close()


def log_test(board: Optional[TensorBoardLog], metrics: dict[str, Any], cfg: Config, progress: Progress) -> None:
    """The test confusion matrix and the config as hparams with the final metrics, at the last epoch's step."""
    if board is not None and metrics:
        step = progress.rows[-1]["epoch"] if progress.rows else 0
        board.test(metrics, config_to_dict(cfg), RunPaths(cfg.run_dir).test_confusion_plot, progress.best_miou, step)


def overlay_indices(num_images: int, count: int) -> list[int]:
    """A fixed, evenly spaced set of validation images drawn every epoch."""
    count = min(count, num_images)
    return sorted({round(i * (num_images - 1) / max(count - 1, 1)) for i in range(count)}) if count else []


@torch.inference_mode()
def save_epoch_overlays(model, dataset: SegmentationDataset, indices: list[int], folder, runtime: Runtime, names: list[str]) -> None:
    model.eval()
    for idx in indices:
        image, target = dataset[idx]
        if target.shape != image.shape[-2:]:  # native-resolution masks: the panel shows them at the model's size
            target = F.resize(tv_tensors.Mask(target), list(image.shape[-2:])).as_subclass(torch.Tensor)
        with runtime.autocast():
            logits = model(runtime.to_device(image.unsqueeze(0)))
        pred = logits.float().argmax(1)[0].cpu().numpy()
        rgb = denormalize(image)
        stem = dataset.name(idx)
        palette = dataset.spec.palette_array()
        save_overlay(folder / f"{stem}_overlay.png", rgb, pred, len(names), palette)
        save_panel(folder / f"{stem}_panel.png", rgb, target.numpy(), pred, names, title=f"{stem} ({folder.name})", palette=palette)
