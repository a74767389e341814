"""`train(cfg)`: the training workflow, as a list of named steps (like torchvision's references/segmentation).

Everything that can fail on bad input (config, data files, weights, device) is checked before the
run folder is created, so a refused run leaves nothing behind. Under torchrun (docs/distributed.md)
every process runs `train` on its share of the images; the input checks run before the processes
connect, so all of them refuse bad input alike, and rank 0 alone writes files and prints.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

from seg_pet.config import Config, label_spec
from seg_pet.data.sources import build_datasets, build_test_dataset
from seg_pet.runtime.device import Runtime
from seg_pet.runtime.distributed import is_main, join_process_group, world_size
from seg_pet.runtime.runpaths import RunPaths
from seg_pet.runtime.seeding import seed_everything
from seg_pet.training.epoch import log_test, open_board, prepare_data, run_epoch, save_epoch
from seg_pet.training.final_test import test_once
from seg_pet.training.guard import guarded_run
from seg_pet.training.rundir import check_run_dir, resume_command
from seg_pet.training.state import Setup, accept_run, begin_run, build_setup, load_resume_state
from seg_pet.training.tensorboard import require_tensorboard


def train(
    cfg: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_after_epoch: Optional[int] = None,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
    on_epoch: Optional[Callable[[dict[str, Any]], None]] = None,
    test: bool = True,
) -> dict[str, Any]:
    """Train, validate every epoch, keep best/last checkpoints, then evaluate best.pt on test once.

    `stop_after_epoch` ends the process cleanly once that epoch is saved (no test evaluation);
    `--resume` continues exactly where it stopped, with the schedule of the full `optim.epochs`.
    `on_epoch(row)` is called in every process once an epoch's row (as in metrics.jsonl) and its
    checkpoints are saved; what it raises propagates, the run folder kept as it is. Returns the
    test metrics ({} when stopped early). Raises SegPetError (bad input), TrainingDiverged,
    Interrupted. `dry_run`: every check up to here, then return {} having written nothing.
    `test=False`: the test split is never read (returns {}).
    """
    require_tensorboard(cfg.train.tensorboard)
    paths = RunPaths(cfg.run_dir)
    check_run_dir(paths.root, resume, overwrite)
    runtime = Runtime.create(
        cfg.train.device, amp=cfg.train.amp, deterministic=cfg.train.deterministic, channels_last=cfg.train.channels_last
    )
    seed_everything(cfg.run.seed)
    runtime.apply_backend_flags()
    resume_state = load_resume_state(cfg, stop_after_epoch) if resume else None
    names = list(label_spec(cfg.data).names)
    datasets = build_datasets(cfg)
    test_set = build_test_dataset(cfg) if test else None  # file checks only: no test pixel is read until the end
    join_process_group(runtime.device, cfg.train.dist_timeout)  # under torchrun; nothing otherwise
    log = log if is_main() else quiet
    setup = build_setup(cfg, names, runtime, datasets["train"], resume_state, log)
    if dry_run:
        log(f"dry run: config, paths, run folder, data files, batch plan and model checked; nothing written ({paths.root})")
        return {}
    progress, new_folder = begin_run(setup, resume_state, cfg, names, log)
    log(describe(paths, datasets, names, setup, runtime, cfg))
    with open_board(cfg, progress) as board:  # train.tensorboard: rank 0 writes its events; None otherwise
        with guarded_run(paths, new_folder, progress.rows) as guard:
            data = prepare_data(cfg, datasets, setup, runtime, log)
            for epoch in progress.epochs(cfg.optim.epochs):
                record = run_epoch(setup, data, runtime, cfg, names, epoch, progress.rows, guard)
                improved = progress.add(record, cfg.train.select)
                save_epoch(setup, progress, improved, data, runtime, cfg, names, log, board)
                accept_run(cfg, new_folder, resume)  # an epoch is saved: the run is accepted (later calls change nothing)
                if on_epoch is not None:
                    on_epoch(record.row())
                guard.stop_if_asked(epoch, finished=True)  # a signal during validation or saving: this epoch is complete
                if progress.stopped_early(log):  # train.early_stop: every process stops here together
                    break
                if stopped_as_asked(stop_after_epoch, epoch, cfg, paths, log):
                    return {}
        if test_set is None:
            return {}
        metrics = test_once(setup.model, test_set, cfg, runtime, names, log)
        log_test(board, metrics, cfg, progress)
    return metrics


def quiet(message: str) -> None:
    """The log of processes other than rank 0: they print nothing."""


def stopped_as_asked(stop_after_epoch: Optional[int], epoch: int, cfg: Config, paths: RunPaths, log: Callable[[str], None]) -> bool:
    """--stop-after-epoch reached before the last epoch: say how to continue."""
    if stop_after_epoch is None or not stop_after_epoch <= epoch < cfg.optim.epochs:
        return False
    log(f"stopped after epoch {epoch} as asked (--stop-after-epoch {stop_after_epoch}); continue with: {resume_command(paths.root)}")
    return True


def describe(paths: RunPaths, datasets: dict, names: list[str], setup: Setup, runtime: Runtime, cfg: Config) -> str:
    """The run's first line: folder, images, classes, device, and under torchrun the batch per process and the global batch."""
    line = f"run {paths.root}: {len(datasets['train'])} train / {len(datasets['val'])} val images, classes {names}, {runtime.describe()}"
    if world_size() == 1:
        return line
    return line + (
        f"; {world_size()} processes x batch {setup.batch_size} = global batch {world_size() * setup.batch_size} "
        f"(optim.lr {cfg.optim.lr:g} as given, not scaled), sync_bn {cfg.train.sync_bn}"
    )
