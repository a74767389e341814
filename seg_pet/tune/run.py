"""The `tune` workflow: check everything, open the study, run the worker processes, show progress, write the results.

Order: Optuna present, base config, space file, study name, output folder, storage, study (same
search if it exists) — every refusal is one line before any trial. Then trials left RUNNING by a
dead process are marked FAIL, and `--trials N` is topped up: the study ends with N finished
(complete or pruned) trials, so a stopped search started again runs only what is missing.

The trials run in `jobs` worker processes (spawned; one is still a separate process, so this one
keeps the terminal for the progress bar and the one line per finished trial). Each worker appends
its output, the trials' epoch lines included, to `<out>/logs/worker_K.log`. Ctrl-C or SIGTERM
stops the workers at their next training step (the unfinished trials are marked FAIL); the results
are then written from the finished trials.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from seg_pet.config import config_from_dict
from seg_pet.runtime.errors import ConfigError, SegPetError
from seg_pet.runtime.paths import check_output, check_text
from seg_pet.runtime.signals import Interrupted, Terminated
from seg_pet.tune.results import write_results
from seg_pet.tune.search import count_finished, fail_dead_trials, open_storage, open_study, require_optuna, work
from seg_pet.tune.space import base_raw, decode_choice, load_space

POLL_S = 2.0


@dataclass
class TuneOutcome:
    out: Path
    ran: int  # trials finished by this call
    workers_failed: list[int]  # exit codes of workers that crashed
    summary: str


def run_tune(
    config: Path,
    space_path: Path,
    trials: int,
    *,
    jobs: int = 1,
    storage: str | None = None,
    study: str | None = None,
    out: Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    command: str = "",
    progress: bool = True,
) -> TuneOutcome:
    require_optuna().logging.set_verbosity(require_optuna().logging.WARNING)  # this process prints its own lines
    raw = base_raw(config, overrides)
    cfg = config_from_dict(base_raw(config, overrides))
    if cfg.data.val_fraction == 0:
        raise ConfigError("data.val_fraction: 0 leaves no validation split; tune scores trials on validation only")
    space = load_space(space_path, raw)
    name = study or Path(space_path).stem
    check_text(name, "--study")
    if not name or "/" in name or name in (".", ".."):
        raise SegPetError(f"--study: must be a plain name, got {name!r}")
    out = check_output(out or Path(cfg.run.output_dir) / name, "--out", "dir")
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    if storage is None:
        out.mkdir(parents=True, exist_ok=True)
    store = open_storage(url)
    trials_dir = out / "trials"
    the_study = open_study(store, name, space, raw, trials_dir)
    out.mkdir(parents=True, exist_ok=True)
    for number in fail_dead_trials(the_study):
        print(f"trial {number}: its process is gone (killed?); marked failed", file=sys.stderr)
    existing = {t.number for t in the_study.get_trials(deepcopy=False)}
    missing = max(0, trials - count_finished(the_study))
    if missing == 0:
        print(f"study {name} already has {trials} finished trials; writing its results", file=sys.stderr)
    workers_failed, signum = [], None
    if missing:
        workers_failed, signum = run_workers(the_study, missing, jobs, space, raw, url, name, out, cfg.run.seed, existing, progress)
    summary = write_results(the_study, space, raw, out, command)
    if signum is not None:
        raise Interrupted(signum, f"during the search; the finished trials and their results are in {out}; the same command continues it")
    ran = sum(1 for t in the_study.get_trials(deepcopy=False) if t.number not in existing and t.state.is_finished())
    return TuneOutcome(out, ran, workers_failed, summary)


def shares(total: int, jobs: int) -> list[int]:
    return [n for n in (total // jobs + (i < total % jobs) for i in range(jobs)) if n]


def run_workers(
    study, missing: int, jobs: int, space, raw: dict[str, Any], url: str, name: str, out: Path, seed: int, existing: set, progress: bool
) -> tuple[list[int], int | None]:
    """Start the workers, follow the study until they end: the exit codes of the workers that crashed, and
    the signal that stopped the search (None when it ran to the end)."""
    (out / "logs").mkdir(exist_ok=True)
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch threads or locks
    workers = []
    for i, n in enumerate(shares(missing, jobs)):
        job = {
            "parent_pid": os.getpid(),
            "log": str(out / "logs" / f"worker_{i}.log"),
            "space": space,
            "raw": raw,
            "storage": url,
            "study": name,
            "trials_dir": str(out / "trials"),
            "trials": n,
            "seed": abs(hash((seed, len(existing), i))) % 2**32,  # a resumed search does not replay its first samples
        }
        process = ctx.Process(target=work, args=(job,), name=f"tune-worker-{i}")
        process.start()
        workers.append(process)
    bar = tqdm(total=missing, desc=f"tune {name}", unit="trial", dynamic_ncols=True, disable=not progress)
    seen: set[int] = set()
    try:
        while True:
            alive = any(p.is_alive() for p in workers)
            report_finished(study, existing, seen, bar)
            if not alive:
                break
            time.sleep(POLL_S)
    except (KeyboardInterrupt, Terminated) as exc:
        signum = signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM
        for p in workers:  # Ctrl-C reached them too (same terminal); SIGTERM did not: pass it on
            if p.is_alive() and signum == signal.SIGTERM:
                os.kill(p.pid, signal.SIGTERM)
        for p in workers:
            p.join()
        report_finished(study, existing, seen, bar)
        return [], signum
    finally:
        bar.close()
    failed = [p.exitcode for p in workers if p.exitcode not in (0, None)]
    for i, p in enumerate(workers):
        if p.exitcode not in (0, None):
            print(f"worker {i} stopped with exit code {p.exitcode}; see {out / 'logs' / f'worker_{i}.log'}", file=sys.stderr)
    return failed, None


def report_finished(study, existing: set, seen: set, bar) -> None:
    """One line per trial finished since the last look, and the bar moved on."""
    for t in study.get_trials(deepcopy=False):
        if t.number in existing or t.number in seen or not t.state.is_finished():
            continue
        seen.add(t.number)
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={decode_choice(v)}" for k, v in t.params.items())
        if t.state.name == "COMPLETE":
            what = f"value {t.value:.4f}"
        elif t.state.name == "PRUNED":
            what = f"pruned after {len(t.intermediate_values)} epoch(s)" + (
                f" ({t.user_attrs['diverged']})" if "diverged" in t.user_attrs else ""
            )
        else:
            what = f"failed: {t.user_attrs.get('error', 'see the worker log')}"
        bar.write(f"trial {t.number}: {what}  [{params}]")
        bar.update(1)
