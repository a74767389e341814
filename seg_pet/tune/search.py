"""Optuna's side of a search: the storage and the study, the sampler and the pruner, and the objective a trial runs.

A trial is one or more ordinary `train` runs (one per objective seed) in `<study folder>/trials/`,
with the test split switched off (`train(test=False)`): nothing in a search reads it. After each
epoch the validation mIoU is reported to the trial, and the pruner may stop it (`optuna.TrialPruned`
raised from `train`'s `on_epoch`). A run that diverges is pruned too: it reported what it reached.

The study keeps, in its user attributes, the space it was started with and the base config, so a
second `tune` with the same study name continues only the same search. A trial records the process
that runs it; when a search starts again, a trial left RUNNING by a process that is gone (killed,
machine rebooted) is marked FAIL, and Optuna's heartbeat does the same for processes on other hosts.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import socket
import statistics
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from seg_pet.config import config_from_dict, config_to_dict
from seg_pet.runtime.errors import SegPetError, TrainingDiverged
from seg_pet.runtime.signals import Interrupted, Terminated
from seg_pet.training.train import train
from seg_pet.tune.space import Space, apply_params

INSTALL_HINT = 'pip install -e ".[tune]"'
SQLITE_TIMEOUT_S = 120  # how long a process waits for another's write lock on the study file
HEARTBEAT_S = 60  # a trial's process writes a heartbeat this often; one silent for GRACE_S is failed
GRACE_S = 600
FINISHED = ("COMPLETE", "PRUNED")  # the states --trials counts; failed trials are run again


def require_optuna():
    """The optuna module, or a one-line SegPetError with the install command."""
    try:
        import optuna
    except ImportError:
        raise SegPetError(f"tune needs Optuna, which is not installed: {INSTALL_HINT}") from None
    return optuna


def open_storage(url: str, what: str = "--storage"):
    """An Optuna RDBStorage for `url`, with a lock timeout for SQLite and a heartbeat; one line if it is not a database."""
    optuna = require_optuna()
    kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
        except Exception as exc:  # sqlalchemy's and the drivers' errors: every one means "not a database we can use"
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SegPetError(f"{what} {url}: not a database Optuna can open ({text})") from None


def comparable_config(raw: dict[str, Any]) -> dict[str, Any]:
    """The base config as stored in the study: every key but where runs go (JSON round trip, as the storage keeps it)."""
    data = config_to_dict(config_from_dict(json.loads(json.dumps(raw))))
    data["run"] = {"seed": data["run"]["seed"]}
    return json.loads(json.dumps(data))


def first_difference(a: Any, b: Any, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
        return where
    return f"{where}: {json.dumps(a)} there, {json.dumps(b)} here"


def open_study(storage, name: str, space: Space, raw: dict[str, Any], trials_dir: Path):
    """Create the study, or load it after checking it is the same search; refuse a new study in a folder with another's trials."""
    optuna = require_optuna()
    stored_space, stored_config = space.fingerprint(), comparable_config(raw)
    exists = name in optuna.get_all_study_names(storage)
    if not exists and trials_dir.is_dir() and any(trials_dir.iterdir()):
        raise SegPetError(
            f"{trials_dir} holds the trials of another search; give another --out, or the --storage and --study of that search"
        )
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    if exists:
        theirs = study.user_attrs.get("space")
        if theirs is None:
            raise SegPetError(f"--study {name}: this study was not made by seg_pet tune; choose another --study")
        if theirs != json.loads(json.dumps(stored_space)):
            raise SegPetError(
                f"--study {name} exists in the storage with another search space ({first_difference(theirs, stored_space)}); "
                "use another --study, or the space file it was started with"
            )
        if study.user_attrs.get("config") != stored_config:
            raise SegPetError(
                f"--study {name} exists in the storage with another config ({first_difference(study.user_attrs.get('config'), stored_config)}); "
                "use another --study, or the config it was started with"
            )
    else:
        study.set_user_attr("space", stored_space)
        study.set_user_attr("config", stored_config)
    return study


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_trials(study) -> list[int]:
    """Mark FAIL each RUNNING trial whose process, on this host, is gone; their numbers."""
    optuna = require_optuna()
    failed = []
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid, where = trial.user_attrs.get("pid"), trial.user_attrs.get("host")
        if where == host and isinstance(pid, int) and not process_alive(pid):
            study._storage.set_trial_user_attr(trial._trial_id, "error", f"its process ({pid}) ended without finishing it (killed?)")
            study._storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
            failed.append(trial.number)
    return failed


def count_finished(study) -> int:
    optuna = require_optuna()
    return len(study.get_trials(deepcopy=False, states=tuple(getattr(optuna.trial.TrialState, s) for s in FINISHED)))


def build_sampler(space: Space, seed: int):
    optuna = require_optuna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # constant_liar
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=space.startup_trials, constant_liar=True)


# name -> builder. Steps are epochs counted from 1, and Optuna prunes from step n_warmup_steps on: hence the + 1.
PRUNERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "median": lambda o: require_optuna().pruners.MedianPruner(n_startup_trials=o["startup_trials"], n_warmup_steps=o["warmup_epochs"] + 1),
    "threshold": lambda o: require_optuna().pruners.ThresholdPruner(
        lower=o["lower"], upper=o["upper"], n_warmup_steps=o["warmup_epochs"] + 1
    ),
    "none": lambda o: require_optuna().pruners.NopPruner(),
}


def epoch_reporter(trial, offset: int, rows: list[dict[str, Any]]) -> Callable[[dict[str, Any]], None]:
    """train's on_epoch: keep the row, report its validation mIoU at step offset + epoch, and stop the run if the pruner says so."""
    optuna = require_optuna()

    def on_epoch(row: dict[str, Any]) -> None:
        rows.append(row)
        miou = row["val_miou"]
        if isinstance(miou, (int, float)) and math.isfinite(miou):
            trial.report(float(miou), offset + row["epoch"])
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {row['epoch']} (validation mIoU {miou:.4f})")

    return on_epoch


def trial_value(rows: list[dict[str, Any]], last_epochs: int) -> float:
    """The mean validation mIoU of the last `last_epochs` epochs (all of them when the run has fewer)."""
    values = [r["val_miou"] for r in rows[-last_epochs:] if isinstance(r["val_miou"], (int, float)) and math.isfinite(r["val_miou"])]
    if not values:
        raise TrainingDiverged("no finite validation mIoU in the last epochs")
    return statistics.fmean(values)


def trial_run_name(number: int, seed_index: int, seeds: int) -> str:
    return f"trial_{number:04d}" + (f"_seed{seed_index}" if seeds > 1 else "")


def make_objective(space: Space, raw: dict[str, Any], trials_dir: Path, parent_pid: int) -> Callable[[Any], float]:
    """The function Optuna calls per trial: sample the params, train each seed without test, return the mean of their values."""
    optuna = require_optuna()

    def objective(trial) -> float:
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())
        values = {p.key: p.suggest(trial) for p in space.params}
        base_seed = int((raw.get("run") or {}).get("seed", 0))
        scores, run_dirs = [], []
        try:
            for i in range(space.seeds):
                name = trial_run_name(trial.number, i, space.seeds)
                cfg = config_from_dict(
                    apply_params(raw, {**values, "run.output_dir": str(trials_dir), "run.name": name, "run.seed": base_seed + i})
                )
                run_dirs.append(str(cfg.run_dir))
                trial.set_user_attr("run_dirs", run_dirs)
                rows: list[dict[str, Any]] = []
                offset = i * cfg.optim.epochs
                reporter = epoch_reporter(trial, offset, rows)

                def on_epoch(row: dict[str, Any], reporter=reporter) -> None:
                    if os.getppid() != parent_pid:  # the tune process is gone: stop, as a kill would
                        raise Interrupted(15, "the tune process that started this worker is gone")
                    reporter(row)

                print(f"trial {trial.number}: {name} {json.dumps(values)}", flush=True)
                try:
                    train(cfg, on_epoch=on_epoch, test=False)
                except TrainingDiverged as exc:
                    trial.set_user_attr("diverged", str(exc).split(";")[0])
                    raise optuna.TrialPruned(f"diverged: {str(exc).split(';')[0]}") from None
                scores.append(trial_value(rows, space.last_epochs))
                trial.set_user_attr("seed_values", scores)
        except SegPetError as exc:
            trial.set_user_attr("error", str(exc))
            raise
        except (Interrupted, Terminated) as exc:  # Optuna marks a trial FAIL on KeyboardInterrupt (not on other BaseExceptions)
            trial.set_user_attr("error", f"stopped: {exc}")
            raise KeyboardInterrupt(str(exc)) from None
        return statistics.fmean(scores)

    return objective


def stop_with_parent(parent_pid: int) -> None:
    """Linux: this process is killed when the tune process dies (SIGKILL included), as its trial would be."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    if os.getppid() != parent_pid:
        os._exit(137)


def start_loader_workers_as_train() -> str:
    """This process was spawned, so its DataLoader workers would be spawned too: a fresh interpreter
    that imports torch and unpickles the image cache every epoch. Back to the platform's default
    (fork on Linux), as under `train`; returns the start method now in force."""
    multiprocessing.set_start_method(None, force=True)
    return multiprocessing.get_start_method()


def work(job: dict[str, Any]) -> None:
    """One worker process: its share of the trials, output to its log file. Exit 0, 130/143 stopped, 1 crashed."""
    stop_with_parent(job["parent_pid"])
    start_loader_workers_as_train()
    log = open(job["log"], "a", buffering=1)  # noqa: SIM115 - the process's stdout and stderr until it exits
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    optuna = require_optuna()
    space = job["space"]
    storage = open_storage(job["storage"])
    study = optuna.load_study(
        study_name=job["study"],
        storage=storage,
        sampler=build_sampler(space, job["seed"]),
        pruner=PRUNERS[space.pruner](space.pruner_options),
    )
    objective = make_objective(space, job["raw"], Path(job["trials_dir"]), job["parent_pid"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            study.optimize(objective, n_trials=job["trials"], catch=(SegPetError,), gc_after_trial=True)
        except KeyboardInterrupt:
            sys.exit(130)
    sys.exit(0)
