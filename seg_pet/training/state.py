"""What training holds between steps, and how it goes into and out of a checkpoint.

`Setup` is built once per process from the config (model, loss, optimiser, schedule, batch plan);
`Progress` is what the epochs have produced so far. `checkpoint_state` and `restore` are exact
inverses, which is what makes `--resume` continue bit-for-bit (RNG states included). `begin_run`
starts the epochs: from last.pt on resume, else in a new run folder holding an epoch-0 last.pt.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from seg_pet.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from seg_pet.config import Config, config_to_dict, dump_config, label_spec
from seg_pet.config.numbers import check_class_weights, plan_batches
from seg_pet.data.loaders import count_pixels, resolve_num_workers
from seg_pet.data.segmentation import SegmentationDataset
from seg_pet.losses import build_loss, compute_class_weights, needs_class_weights
from seg_pet.models import build_model
from seg_pet.runtime.device import Runtime
from seg_pet.runtime.distributed import gathered, is_distributed, is_main, rank, world_size
from seg_pet.runtime.errors import CheckpointError, DataError, SegPetError, first_line
from seg_pet.runtime.fileio import atomic_write, remove_partial_files, write_json
from seg_pet.runtime.runpaths import RunPaths
from seg_pet.runtime.seeding import rng_state, set_rng_state
from seg_pet.training.early_stop import EarlyStop
from seg_pet.training.optim import build_optimizer, build_scheduler
from seg_pet.training.parallel import data_parallel, global_batch_norm, unwrapped
from seg_pet.training.records import EpochRecord, check_history
from seg_pet.training.rundir import NewRunFolder, create_run_dir, repair_best_checkpoint, replaced_runs


@dataclass
class Setup:
    model: nn.Module  # what is validated, saved as "model" and tested: the trained module, or with train.ema its average
    step_model: nn.Module  # what the optimiser steps: the trained module, or torch.compile / (under torchrun) DDP of it
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler]
    scaler: Optional[torch.amp.GradScaler]
    batch_size: int
    steps_per_epoch: int
    workers: int
    pixel_counts: Optional[list[int]] = None
    class_weights: Optional[list[float]] = None
    ema: Optional[AveragedModel] = None  # train.ema: the moving average of the trained weights and buffers (`model` is its module)

    @property
    def trained(self) -> nn.Module:
        """The module the optimiser steps, without wrappers (saved as "train_weights" when train.ema is set)."""
        return unwrapped(self.step_model)


@dataclass
class Progress:
    start_epoch: int = 1
    best_miou: float = -math.inf
    best_epoch: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    early_stop: EarlyStop = field(default_factory=lambda: EarlyStop(None))  # train.early_stop: its counter (saved in checkpoints)
    stop_now: bool = False  # the epoch just added ran train.early_stop's patience out

    def add(self, record: EpochRecord, select: str) -> bool:
        """Append the epoch's row and count it for train.early_stop; True when the epoch becomes best.pt (train.select)."""
        self.rows.append(record.row())
        self.stop_now = self.early_stop.update(record.val_miou)  # in every process: the decision is rank 0's
        improved = select == "last" or (not math.isnan(record.val_miou) and record.val_miou > self.best_miou)
        if improved:
            self.best_miou, self.best_epoch = record.val_miou, record.epoch
        return improved

    def epochs(self, total: int) -> range:
        """The epochs left to train: none when a resumed run had already stopped early."""
        return range(self.start_epoch, (self.start_epoch if self.early_stop.stopped else total + 1))

    def stopped_early(self, log: Callable[[str], None]) -> bool:
        """True (and one line logged) when train.early_stop ends training after the epoch just saved."""
        if self.stop_now:
            e = self.early_stop
            log(
                f"early stop after epoch {self.rows[-1]['epoch']}: no validation mIoU gain above {e.min_delta:g} for {e.patience} "
                f"epoch(s) (best {e.best:.4f}); testing best.pt"
            )
        return self.stop_now


def load_resume_state(cfg: Config, stop_after_epoch: Optional[int]) -> dict[str, Any]:
    """checkpoints/last.pt of the run being resumed, checked against the config before anything is built."""
    run_dir = cfg.run_dir
    last = RunPaths(run_dir).last
    if not last.is_file():
        raise CheckpointError(f"--resume {run_dir}: no checkpoints/last.pt to resume from")
    state = load_checkpoint(last, resume=True)
    if stop_after_epoch is not None and stop_after_epoch <= state["epoch"]:
        raise SegPetError(f"--stop-after-epoch {stop_after_epoch}: {run_dir} has already finished epoch {state['epoch']}")
    saved_optim = state["config"].get("optim", {}).get("name")
    if saved_optim != cfg.optim.name:
        raise CheckpointError(f"{last} holds {saved_optim} optimiser state, the config asks for optim.name={cfg.optim.name!r}")
    return state


def build_setup(
    cfg: Config,
    names: list[str],
    runtime: Runtime,
    train_set: SegmentationDataset,
    resume_state: Optional[dict[str, Any]],
    log: Callable[[str], None],
) -> Setup:
    """Class weights, model, loss, optimiser and schedule, in the order that fixes the RNG stream."""
    share = len(train_set) // world_size()  # under torchrun each process trains on its share of the images
    if share < 1:
        raise DataError(f"{len(train_set)} training images cannot be shared among {world_size()} processes")
    plan = plan_batches(cfg, share)
    pixel_counts = weights = None
    if needs_class_weights(cfg.loss):
        if resume_state is not None and resume_state.get("class_weights") is not None:
            pixel_counts, weights = resume_state["pixel_counts"], resume_state["class_weights"]
            source = f"{RunPaths(cfg.run_dir).last} class_weights"
        else:
            pixel_counts = count_pixels(train_set, len(names))
            weights = compute_class_weights(cfg.loss.get("class_weights"), pixel_counts)
            source = f"loss.class_weights: {cfg.loss.get('class_weights')} (from training-split pixel counts)"
        weights = check_class_weights(weights, names, source)
        log(
            "class weights (from training-split pixel counts): "
            + ", ".join(f"{n} {w:.3f} ({c} px)" for n, w, c in zip(names, weights, pixel_counts))
        )
    model = build_model(cfg.model, len(names))
    if cfg.train.sync_bn and is_distributed():
        model = global_batch_norm(model, runtime)
    model = runtime.place(model)
    loss_fn = build_loss(cfg.loss, names, weights, background=train_set.spec.background).to(
        runtime.device
    )  # class weights are buffers: follow the logits
    o = cfg.optim
    optimizer = build_optimizer(o.name, model.parameters(), lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum)
    step_model = data_parallel(model, runtime) if is_distributed() else model
    if cfg.train.compile:  # under torchrun the DDP wrapper is compiled (TorchDynamo splits the graph at its gradient buckets)
        step_model = torch.compile(step_model)
    ema = None
    if cfg.train.ema is not None:  # BN statistics are averaged too (use_buffers), so the average is evaluated as it is
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema), use_buffers=True)
    return Setup(
        model=ema.module if ema is not None else model,
        step_model=step_model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        scheduler=build_scheduler(o.scheduler, optimizer, plan.total_steps, round(o.warmup_epochs * plan.steps_per_epoch)),
        scaler=runtime.grad_scaler(),
        batch_size=plan.batch_size,
        steps_per_epoch=plan.steps_per_epoch,
        workers=resolve_num_workers(cfg.data.num_workers),
        pixel_counts=pixel_counts,
        class_weights=weights,
        ema=ema,
    )


def checkpoint_state(setup: Setup, progress: Progress, cfg: Config, names: list[str], epoch: int) -> dict[str, Any]:
    """What a checkpoint holds. Called in every process (the RNG states are gathered); rank 0 saves it.

    The weights are those of the unwrapped model (no DDP `module.` prefix): a checkpoint of a torchrun
    run loads in one process and the other way round. `rng` is this process's (rank 0's) RNG state,
    `rng_by_rank` every process's, in rank order, for an exact resume under torchrun.
    """
    rows = progress.rows
    rngs = gathered(rng_state())
    ema = setup.ema
    return {
        "model": setup.model.state_dict(),
        # train.ema: "model" holds the averaged weights (what evaluate and predict load), these the trained ones
        **({"train_weights": setup.trained.state_dict(), "ema_updates": int(ema.n_averaged)} if ema is not None else {}),
        "optimizer": setup.optimizer.state_dict(),
        "scheduler": setup.scheduler.state_dict() if setup.scheduler is not None else None,
        "scaler": setup.scaler.state_dict() if setup.scaler is not None else None,
        "rng": rngs[0],
        "rng_by_rank": rngs,
        "world_size": len(rngs),
        "global_batch": setup.batch_size * len(rngs),
        "config": config_to_dict(cfg),
        "class_names": names,
        "labels": label_spec(cfg.data).to_dict(),  # the classes and mask coding (seg_pet.labels.LabelSpec)
        "epoch": epoch,
        "best_miou": progress.best_miou,
        "best_epoch": progress.best_epoch,
        "early_stop": progress.early_stop.state(),
        "history": rows,
        "metrics": rows[-1] if rows else {},
        "pixel_counts": setup.pixel_counts,
        "class_weights": setup.class_weights,
    }


def restore(setup: Setup, state: dict[str, Any], cfg: Config, names: list[str], log: Callable[[str], None]) -> Progress:
    """The inverse of checkpoint_state, in every process: weights, optimiser, schedule, this process's RNG, history."""
    last = RunPaths(cfg.run_dir).last
    model_cfg = config_to_dict(cfg)["model"]
    # A run with train.ema saved the trained weights under "train_weights" and the average under "model".
    load_model_weights(setup.trained, {**state, "model": state.get("train_weights", state["model"])}, last, names, model_cfg)
    if setup.ema is not None and "train_weights" in state:
        load_model_weights(setup.model, state, last, names, model_cfg)
        setup.ema.n_averaged.fill_(int(state.get("ema_updates", 0)))
    # train.ema set on resume of a run without one: n_averaged is 0, so the first step's update starts the average.
    try:
        setup.optimizer.load_state_dict(state["optimizer"])
        if setup.scheduler is not None and state.get("scheduler"):
            setup.scheduler.load_state_dict(state["scheduler"])
        if setup.scaler is not None and state.get("scaler"):
            setup.scaler.load_state_dict(state["scaler"])
    except (ValueError, KeyError, RuntimeError, TypeError, AttributeError, IndexError) as exc:
        raise CheckpointError(
            f"{last}: the optimiser/scheduler state does not fit the config ({first_line(exc)}); "
            "was an optim.* key changed since the run started?"
        ) from None
    history = check_history(state["history"], state["epoch"], last)
    saved = state.get("rng_by_rank") or [state["rng"]]
    try:
        set_rng_state(saved[rank()] if rank() < len(saved) else saved[0])
    except (ValueError, KeyError, RuntimeError, TypeError, IndexError) as exc:
        raise CheckpointError(f"{last} is not a seg_pet checkpoint (rng: {first_line(exc)})") from None
    if len(saved) != world_size():
        log(
            f"note: {last} was saved by {len(saved)} process(es), this run has {world_size()}: training continues, but not "
            f"bit-for-bit as it would have (other shards, global batch {setup.batch_size * world_size()} instead of "
            f"{state.get('global_batch', '?')}; see docs/distributed.md)"
        )
    progress = Progress(state["epoch"] + 1, state["best_miou"], state["best_epoch"], history, early_stopper(cfg))
    progress.early_stop.load(state.get("early_stop"))  # a checkpoint from before early stopping: the counter starts afresh
    return progress


def begin_run(
    setup: Setup, resume_state: Optional[dict[str, Any]], cfg: Config, names: list[str], log: Callable[[str], None]
) -> tuple[Progress, Optional[NewRunFolder]]:
    """Progress restored from last.pt (the run folder tidied), or a new run folder with an epoch-0 last.pt (rank 0 makes it)."""
    if resume_state is not None:
        progress = restore(setup, resume_state, cfg, names, log)
        if is_main():
            tidy_resumed_run(resume_state, cfg, progress, log)
        return progress, None
    progress = Progress(early_stop=early_stopper(cfg))
    initial = checkpoint_state(setup, progress, cfg, names, 0)  # in every process: it gathers their RNG states
    if not is_main():
        return progress, None
    return progress, create_run_dir(cfg.run_dir, lambda folder: write_initial_files(RunPaths(folder), cfg, setup, initial, names))


def early_stopper(cfg: Config) -> EarlyStop:
    """train.early_stop's counter, fresh (patience 0 or null: off)."""
    return EarlyStop(cfg.train.early_stop or None, cfg.train.early_stop_min_delta)


def write_initial_files(paths: RunPaths, cfg: Config, setup: Setup, state: dict[str, Any], names: list[str]) -> None:
    """What a new run folder holds before its first epoch: config.yaml, class weights, an epoch-0 last.pt (`state`)."""
    with atomic_write(paths.config) as f:
        f.write(dump_config(cfg))
    if setup.class_weights is not None:
        scheme = cfg.loss.get("class_weights")
        write_json(
            paths.class_weights,
            {"scheme": scheme, "class_names": names, "pixel_counts": setup.pixel_counts, "weights": setup.class_weights},
        )
    save_checkpoint(paths.last, state)  # resumable from the start


def accept_run(cfg: Config, new_folder: Optional[NewRunFolder], resume: bool) -> None:
    """The run's first epoch in this process is saved (rank 0 writes): a new run is complete, and the run it
    replaced goes; a resumed run's config.yaml takes the --set changes (not before: a refused run changes nothing)."""
    if new_folder is not None:
        new_folder.complete()
    if resume and is_main():
        paths = RunPaths(cfg.run_dir)
        if paths.config.read_text() != dump_config(cfg):  # --set on resume, or the folder was moved
            with atomic_write(paths.config) as f:
                f.write(dump_config(cfg))


def tidy_resumed_run(state: dict[str, Any], cfg: Config, progress: Progress, log: Callable[[str], None]) -> None:
    """The run folder of a resumed run put in order (rank 0 only: it writes)."""
    paths = RunPaths(cfg.run_dir)
    # Leftovers of a killed process: temporary files of unfinished writes, a best.pt one step behind.
    remove_partial_files(paths.root)
    if repair_best_checkpoint(paths.root, state):
        log(f"best.pt rewritten from last.pt (epoch {state['epoch']}): the previous process stopped between the two writes")
    for old in replaced_runs(paths.root):
        log(f"note: {old} holds a run an interrupted --overwrite replaced; it is kept (delete it, or move it back by hand)")
    log(f"resuming {paths.root} after epoch {state['epoch']} (best val mIoU {progress.best_miou:.4f} at epoch {progress.best_epoch})")
