"""`train(cfg)`: the training workflow, as a list of named steps (like torchvision's references/segmentation).

    check the run folder -> runtime and seeds -> (resume state) -> datasets -> model, loss, optimiser
    -> create the run folder atomically -> epochs: train, validate, monitor, write, checkpoint
    -> the selected checkpoint (best.pt) on the test split, once

`train.select` picks the epoch that becomes best.pt (`SELECT`): the highest validation mIoU, or the
last epoch (a fixed schedule, the one choice when `data.val_fraction: 0` leaves no validation split).
With `train.ema` the averaged weights are what is validated, saved as "model" and tested.

Everything that can fail on bad input (config, data files, weights, device) is checked before the
run folder is created, so a refused run leaves nothing behind. Files are written only where
`is_main()` holds: the one process, or the rank-0 process under torchrun.

Under torchrun (docs/distributed.md) every process runs `train` on its own device and its share of
the images. The checks of the input run before the processes connect (join_process_group), so all
of them refuse bad input alike; from then on they agree on every decision (a stop signal, a NaN
loss, the best epoch) from all-reduced numbers, and rank 0 alone writes files and prints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from seg_pet.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from seg_pet.config import Config, dump_config
from seg_pet.data.cache import cache_datasets
from seg_pet.data.loaders import epoch_train_loader, move_caches_to_device, val_loader_for
from seg_pet.data.oxford import PetSegmentation
from seg_pet.data.sources import build_datasets, build_test_dataset
from seg_pet.data.transforms import denormalize
from seg_pet.evaluation import evaluate_batches, evaluate_split, format_groups, split_accumulators, write_details, write_test_outputs
from seg_pet.labels import class_names
from seg_pet.metrics import compute_metrics, format_table
from seg_pet.runtime.device import Runtime
from seg_pet.runtime.distributed import (
    agreed_signal,
    broadcast_from_main,
    decided_by_main,
    is_main,
    join_process_group,
    main_first,
    world_size,
)
from seg_pet.runtime.errors import SegPetError, TrainingDiverged, is_input_error
from seg_pet.runtime.fileio import atomic_write, write_json
from seg_pet.runtime.seeding import seed_everything
from seg_pet.runtime.signals import DeferredStop, Interrupted, signals_raise
from seg_pet.testlog import LOG_NAME, earlier_looks, record_test_evaluation
from seg_pet.training.loop import train_one_epoch
from seg_pet.training.monitors import epoch_warnings
from seg_pet.training.records import EpochRecord, console_line, write_epoch_outputs
from seg_pet.training.rundir import NewRunFolder, check_run_dir, create_run_dir, discard_replaced_runs, resume_command
from seg_pet.training.state import Progress, Setup, build_setup, checkpoint_state, load_resume_state, restore, tidy_resumed_run
from seg_pet.viz import save_overlay, save_panel

# train.select -> whether this epoch (its validation mIoU, the best so far) becomes best.pt
SELECT: dict[str, Callable[[float, float], bool]] = {
    "best_val": lambda miou, best: not math.isnan(miou) and miou > best,
    "last": lambda miou, best: True,
}


def train(
    cfg: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_after_epoch: Optional[int] = None,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train, validate every epoch, keep best/last checkpoints, then evaluate best.pt on test once.

    `stop_after_epoch` ends the process cleanly once that epoch is saved (no test evaluation);
    `--resume` continues exactly where it stopped, with the schedule of the full `optim.epochs`.
    Returns the test metrics ({} when stopped early). Raises SegPetError (bad input),
    TrainingDiverged, Interrupted. `dry_run`: every check up to here, then return {} having written nothing.
    """
    run_dir = cfg.run_dir
    check_run_dir(run_dir, resume, overwrite)
    runtime = Runtime.create(cfg.train.device, amp=cfg.train.amp, deterministic=cfg.train.deterministic)
    seed_everything(cfg.run.seed)
    runtime.apply_backend_flags()
    resume_state = load_resume_state(run_dir, cfg, stop_after_epoch) if resume else None
    names = class_names(cfg.data.border)
    datasets = build_datasets(cfg)
    test_set = build_test_dataset(cfg)  # file checks only: no test pixel is read until the end
    join_process_group(runtime.device, cfg.train.dist_timeout)  # under torchrun; nothing otherwise
    master_process = is_main()
    log = log if master_process else quiet
    setup = build_setup(cfg, names, runtime, datasets["train"], resume_state, log)
    if dry_run:
        log(f"dry run: config, paths, run folder, data files, batch plan and model checked; nothing written ({run_dir})")
        return {}
    run_folder: Optional[NewRunFolder] = None
    if resume_state is not None:
        progress = restore(setup, resume_state, cfg, names, run_dir, log)
        if master_process:
            tidy_resumed_run(run_dir, resume_state, cfg, progress, log)
    else:
        progress = Progress()
        initial = checkpoint_state(setup, progress, cfg, names, 0)
        if master_process:
            run_folder = create_run_dir(run_dir, lambda folder: write_initial_files(folder, cfg, setup, initial, names))
    log(
        f"run {run_dir}: {len(datasets['train'])} train / {len(datasets['val'])} val images, classes {names}, {runtime.describe()}"
        + processes_note(setup, cfg)
    )

    with DeferredStop() as stop:
        try:
            if cfg.data.cache != "none":  # decoded once here, before any loader worker is forked
                with main_first(cfg.data.cache == "disk"):  # under torchrun rank 0 writes the disk cache, the others read it
                    cache_datasets(cfg, datasets, run_dir, setup.workers, log)
            on_device = move_caches_to_device(datasets, runtime.device, log) if cfg.data.cache == "device" else None
            val_loader = (
                val_loader_for(datasets["val"], on_device, setup.batch_size, setup.workers, runtime) if len(datasets["val"]) else None
            )
            overlay_idx = overlay_indices(len(datasets["val"]), cfg.train.overlays)
            for epoch in range(progress.start_epoch, cfg.optim.epochs + 1):
                started = time.perf_counter()
                train_loader = epoch_train_loader(cfg, datasets["train"], on_device, setup.batch_size, setup.workers, epoch, runtime)
                lr = setup.optimizer.param_groups[0]["lr"]
                stats = train_epoch(setup, train_loader, runtime, cfg, epoch, stop)
                if signum := agreed_signal(stop.signum):
                    raise Interrupted(
                        signum, f"during epoch {epoch} (its unfinished steps are discarded); {saved_note(run_dir, epoch - 1)}"
                    )
                # Batch-norm statistics moved with each process's own images: evaluate with rank 0's, the ones saved.
                broadcast_from_main(setup.weights.buffers())
                metrics, val_loss = validate(setup, val_loader, runtime, names, epoch, cfg)
                record = EpochRecord(
                    epoch,
                    stats["loss"],
                    val_loss,
                    metrics["miou"],
                    metrics["iou"],
                    metrics["pixel_acc"],
                    metrics["pred_share"],
                    stats["grad_norm_mean"],
                    stats["grad_norm_max"],
                    lr,
                    time.perf_counter() - started,
                    val_boundary_iou=metrics["boundary_iou"],
                    val_mboundary_iou=metrics["mboundary_iou"],
                )
                record.warnings = epoch_warnings(record.row(), progress.rows, metrics, names)
                progress.rows.append(record.row())
                improved = SELECT[cfg.train.select](record.val_miou, progress.best_miou)
                if improved:
                    progress.best_miou, progress.best_epoch = record.val_miou, epoch
                state = checkpoint_state(setup, progress, cfg, names, epoch)  # in every process: it gathers their RNG states
                if master_process:
                    if cfg.train.overlays:
                        save_epoch_overlays(
                            setup.weights, datasets["val"], overlay_idx, run_dir / "overlays" / f"epoch_{epoch:03d}", runtime, names
                        )
                    write_epoch_outputs(run_dir, progress.rows, names)
                    save_epoch_checkpoints(run_dir, state, improved)
                    log(console_line(record.row(), cfg.optim.epochs) + ("  *best*" if improved and cfg.train.select == "best_val" else ""))
                    for warning in record.warnings:
                        log(f"  WARNING: {warning}")
                if signum := agreed_signal(stop.signum):  # arrived during validation or saving: this epoch is complete
                    raise Interrupted(signum, f"after epoch {epoch}; {saved_note(run_dir, epoch)}")
                if stop_after_epoch is not None and stop_after_epoch <= epoch < cfg.optim.epochs:
                    log(
                        f"stopped after epoch {epoch} as asked (--stop-after-epoch {stop_after_epoch}); continue with: {resume_command(run_dir)}"
                    )
                    return {}
        except TrainingDiverged as exc:
            raise TrainingDiverged(
                f"{exc}; training stopped. Checkpoints and metrics up to the last finished epoch are kept in {run_dir}. "
                "Try a lower optim.lr, optim.grad_clip, or train.amp: false"
            ) from None
        except (SegPetError, RuntimeError) as exc:
            # Bad input found while reading pixels (a truncated image, a trimap value outside 1..3; a DataLoader
            # worker re-raises it with its type). If no epoch finished in this new run, take the folder away again
            # (and put back the run --overwrite replaced).
            if run_folder is not None and not progress.rows and is_input_error(exc):
                run_folder.abandon()
            raise
    return test_once(setup.model, test_set, cfg, runtime, names, log)


def quiet(message: str) -> None:
    """The log of processes other than rank 0: they print nothing."""


def processes_note(setup: Setup, cfg: Config) -> str:
    """Under torchrun, the batch per process and the global batch; nothing for one process."""
    if world_size() == 1:
        return ""
    return (
        f"; {world_size()} processes x batch {setup.batch_size} = global batch {world_size() * setup.batch_size} "
        f"(optim.lr {cfg.optim.lr:g} as given, not scaled), sync_bn {cfg.train.sync_bn}"
    )


def write_initial_files(folder: Path, cfg: Config, setup: Setup, state: dict[str, Any], names: list[str]) -> None:
    """What a new run folder holds before its first epoch: config.yaml, class weights, an epoch-0 last.pt (`state`)."""
    with atomic_write(folder / "config.yaml") as f:
        f.write(dump_config(cfg))
    if setup.class_weights is not None:
        write_json(
            folder / "class_weights.json",
            {
                "scheme": cfg.loss.get("class_weights"),
                "class_names": names,
                "pixel_counts": setup.pixel_counts,
                "weights": setup.class_weights,
            },
        )
    save_checkpoint(folder / "checkpoints" / "last.pt", state)  # resumable from the start


def validate(setup: Setup, val_loader, runtime: Runtime, names: list[str], epoch: int, cfg: Config) -> tuple[dict[str, Any], float]:
    """Validation metrics and loss of this epoch's weights; all NaN when there is no validation split."""
    if val_loader is None:  # data.val_fraction: 0
        empty = compute_metrics(torch.zeros(len(names), len(names), dtype=torch.int64), names)
        return {**empty, "boundary_iou": dict.fromkeys(names, math.nan), "mboundary_iou": math.nan}, math.nan
    accumulators = split_accumulators(names, cfg)
    metrics = evaluate_batches(setup.eval_model, val_loader, names, runtime, accumulators=accumulators, loss_fn=setup.loss_fn, desc="val")
    val_loss = metrics.pop("loss")
    if not math.isfinite(val_loss):  # NaN weights: nothing of this epoch is saved, best.pt and last.pt stay
        raise TrainingDiverged(f"validation loss is {val_loss} after epoch {epoch}")
    return metrics, val_loss


def train_epoch(setup: Setup, loader, runtime: Runtime, cfg: Config, epoch: int, stop: DeferredStop) -> Optional[dict[str, float]]:
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
            should_stop=lambda: stop.requested,
            ema=setup.ema,
        )
    except RuntimeError:
        if not stop.requested:
            raise
        return None  # a DataLoader worker died of the same signal


def save_epoch_checkpoints(run_dir: Path, state: dict[str, Any], improved: bool) -> None:
    """last.pt first: if the process dies before best.pt is written, resume rewrites best.pt from it.

    With a finished epoch saved the new run is known good: a run --overwrite moved aside goes."""
    save_checkpoint(run_dir / "checkpoints" / "last.pt", state)
    if improved:
        save_checkpoint(run_dir / "checkpoints" / "best.pt", state)
    discard_replaced_runs(run_dir)


def saved_note(run_dir: Path, epoch: int) -> str:
    return f"{run_dir / 'checkpoints' / 'last.pt'} holds epoch {epoch}. Resume with: {resume_command(run_dir)}"


def test_once(
    model, test_set: PetSegmentation, cfg: Config, runtime: Runtime, names: list[str], log: Callable[[str], None]
) -> dict[str, Any]:
    """The test split is touched once: the best checkpoint, after the last epoch.

    Under torchrun rank 0 reads best.pt and hands its weights to the others (no process but rank 0
    needs the run folder), each process scores its share of the test images, and rank 0 writes."""
    run_dir, master_process = cfg.run_dir, is_main()
    if decided_by_main((run_dir / "test_metrics.json").exists()):
        log(f"test_metrics.json already exists in {run_dir}; not evaluating the test split again")
        return {}
    best_path = run_dir / "checkpoints" / "best.pt"
    when = "during the final test evaluation (every epoch is saved; resuming runs only the test evaluation)"
    with signals_raise(f"{when}; {saved_note(run_dir, cfg.optim.epochs)}"):
        best_epoch = None
        earlier = []
        if master_process:
            best_state = load_checkpoint(best_path)
            load_model_weights(model, best_state, best_path, names)
            best_epoch = best_state["epoch"]
            earlier = earlier_looks(run_dir, cfg, cfg)
        broadcast_from_main(model.state_dict().values())
        test_metrics = evaluate_split(model, test_set, cfg, runtime, names, desc="test", per_image=True)
        test_metrics = {
            "split": "test",
            "checkpoint": "best",
            "checkpoint_epoch": decided_by_main(best_epoch),
            "earlier_test_evaluations": len(earlier),
            **test_metrics,
        }
        if master_process:
            record_test_evaluation(run_dir, cfg, command="train", checkpoint=best_path, epoch=best_epoch, forced=False)
            write_details(run_dir, test_set, test_metrics, model, cfg, runtime, names)
            write_test_outputs(run_dir, test_metrics, names)  # atomic files, test_metrics.json last
    if earlier:
        log(f"\nnote: this test set was evaluated {len(earlier)} time(s) before this final evaluation ({LOG_NAME})")
    log(f"\ntest split, best checkpoint (epoch {test_metrics['checkpoint_epoch']}), {test_metrics['num_images']} images:")
    log(format_table(test_metrics, names))
    if test_metrics.get("groups"):
        log(format_groups(test_metrics["groups"], names))
    return {k: v for k, v in test_metrics.items() if k != "per_image"} if master_process else {}


def overlay_indices(num_images: int, count: int) -> list[int]:
    """A fixed, evenly spaced set of validation images drawn every epoch."""
    count = min(count, num_images)
    return sorted({round(i * (num_images - 1) / max(count - 1, 1)) for i in range(count)}) if count else []


@torch.inference_mode()
def save_epoch_overlays(model, dataset: PetSegmentation, indices: list[int], folder: Path, runtime: Runtime, names: list[str]) -> None:
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
        save_overlay(folder / f"{stem}_overlay.png", rgb, pred)
        save_panel(folder / f"{stem}_panel.png", rgb, target.numpy(), pred, names, title=f"{stem} ({folder.name})")
