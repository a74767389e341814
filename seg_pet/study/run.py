"""The `study` workflow: check the paths, build each seed's data, run the grid, write the CSVs, the summary and the plots.

Order of work: config and paths are checked before anything else (bad input is one line, exit 2);
the data of every (seed, row) is built before the folder is touched; the runs go seed by seed,
so an interrupted study holds whole seeds first. Ctrl-C or SIGTERM stops before the next
training step: the unfinished run is dropped, and runs.csv, steps.csv, the summary and the
plots are written from the finished runs before the exit (130 / 143). With --overwrite the old
study stays (moved aside, runtime.replace) until the new one is complete: an interrupted or failed
new study is removed and the old one put back. A new study that fails on anything but a stop is
removed, so no half-made folder stays.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from seg_pet.runtime.device import resolve_device
from seg_pet.runtime.errors import SegPetError
from seg_pet.runtime.fileio import atomic_write
from seg_pet.runtime.paths import check_output
from seg_pet.runtime.replace import replacing
from seg_pet.runtime.signals import DeferredStop, Interrupted
from seg_pet.study.config import CONFIG_NAME, StudyConfig, load_study_config, study_config_to_dict, study_optimizer
from seg_pet.study.losses import build_losses
from seg_pet.study.plots import combo_label, write_plots
from seg_pet.study.results import judge, learned_step, summarise, summary_columns, summary_markdown
from seg_pet.study.tasks import StudyTask, build_study_model, pet_task, toy_task
from seg_pet.study.train import score_run, train_run


def runs_columns(loss_names: list[str], class_names: list[str]) -> list[str]:
    return [
        "run_id",
        "seed",
        "source",
        "task",
        "fg_ratio",
        "loss",
        "batch_norm",
        "optimizer",
        "lr",
        "momentum",
        "steps",
        "steps_done",
        *(f"loss_{n}" for n in loss_names),
        "accuracy",
        "base_rate",
        "fg_iou",
        "fg_dice",
        "miou",
        "min_iou",
        *(f"iou_{c}" for c in class_names),
        "pred_fg_share",
        "train_accuracy",
        "train_min_iou",
        "learned_step",
        "grad_norm_first",
        "grad_norm_median",
        "grad_norm_last",
        "converged_accuracy",
        "converged_iou",
        "collapsed",
        "outcome",
        "diverged",
        "seconds",
    ]


def steps_columns(loss_names: list[str], class_names: list[str]) -> list[str]:
    return [
        "run_id",
        "step",
        *(f"loss_{n}" for n in loss_names),
        *(f"grad_norm_{n}" for n in loss_names),
        "accuracy",
        *(f"iou_{c}" for c in class_names),
        "min_iou",
        "pred_fg_share",
    ]


def _cell(value: Any) -> Any:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def csv_text(columns: list[str], rows: list[dict[str, Any]], header: bool = True) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    return out.getvalue()


def write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with atomic_write(path, "w") as f:
        f.write(csv_text(columns, rows))


def _mean(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _median(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def run_row(
    run: dict[str, Any], task: StudyTask, steps: list[dict[str, Any]], ended: str, result: dict[str, Any] | None, cfg: StudyConfig
) -> dict[str, Any]:
    """One runs.csv row: the settings, every loss and the metrics on held-out data, the verdict, the trained loss's gradient norms.

    train_accuracy / train_min_iou: means over the last 10 % of the logged steps, on the training batches
    (BN in training mode); the held-out metrics use BN's running statistics.
    """
    finite = ended == "done"
    grads = [r[f"grad_norm_{run['loss']}"] for r in steps]
    last = steps[-max(1, len(steps) // 10) :]  # the last 10 % of the logged steps
    row = dict(
        run,
        steps_done=steps[-1]["step"] if steps else 0,
        diverged=not finite,
        learned_step=learned_step(steps),
        train_accuracy=_mean(r["accuracy"] for r in last),
        train_min_iou=_mean(r["min_iou"] for r in last),
        grad_norm_first=grads[0] if grads else math.nan,
        grad_norm_median=_median(grads),
        grad_norm_last=_mean(r[f"grad_norm_{run['loss']}"] for r in last),
    )
    metrics = result["metrics"] if result is not None else None
    row.update(judge(metrics, finite, cfg.study.converged_min_iou, cfg.study.converged_acc_gap))
    if metrics is not None:
        row.update({k: v for k, v in result.items() if k.startswith("loss_")})
        row.update(
            fg_iou=metrics["iou"][task.focus],
            fg_dice=metrics["dice"][task.focus],
            miou=metrics["miou"],
            pred_fg_share=metrics["pred_share"][task.focus],
        )
        row.update({f"iou_{c}": metrics["iou"][c] for c in task.class_names})
    return row


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Before any work: the study folder can be created (no file in the way, writable) and is not overwritten by accident."""
    check_output(out_dir, "study folder (study.output_dir / study.name)", "dir")  # no file in the way, writable
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise SegPetError(f"study folder {out_dir} already exists; replace it with --overwrite, or choose another study.name")
        if not (out_dir / CONFIG_NAME).is_file():
            raise SegPetError(f"--overwrite: {out_dir} is not a study folder (no {CONFIG_NAME}); refusing to delete it")


def run_study(
    config_path: str | Path | None,
    overrides: Iterable[str] = (),
    *,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> Path:
    """Run the whole grid; returns the output folder. Bad input fails before anything is written.

    Raises Interrupted (exit code 130 / 143) after writing the finished runs when Ctrl-C or SIGTERM arrives.
    """
    cfg = load_study_config(config_path, list(overrides))
    check_out_dir(cfg.out_dir, overwrite)
    device = resolve_device(cfg.study.device, key="study.device")
    threads = torch.get_num_threads()
    if device.type == "cpu" and cfg.study.cpu_threads is not None:
        torch.set_num_threads(cfg.study.cpu_threads)
    try:
        with DeferredStop() as stop:
            tasks = build_tasks(cfg, device)  # reads (and so checks) the data before the folder is touched
            with replacing(cfg.out_dir, "study folder", keep_new_on=(Interrupted,)) as old:
                try:
                    return _run_grid(cfg, tasks, device, log, progress, stop)
                except Interrupted as exc:
                    if old is None:
                        raise
                    raise Interrupted(
                        exc.signum, f"before the new study {cfg.out_dir} was complete; the previous one is back in place"
                    ) from None
    finally:
        torch.set_num_threads(threads)  # a global setting: leave it as the caller had it


def build_tasks(cfg: StudyConfig, device: torch.device) -> list[StudyTask]:
    """Every (seed, row) task, seed by seed; building them reads (and so checks) the Pet data before the folder is touched."""
    if cfg.data.source == "pet":
        return [pet_task(cfg, seed, device) for seed in cfg.study.seeds]
    return [toy_task(cfg, ratio, seed, device) for seed in cfg.study.seeds for ratio in cfg.data.fg_ratios]


def one_run(
    cfg: StudyConfig,
    task: StudyTask,
    batch_norm: bool,
    optimizer_name: str,
    loss: str,
    run_id: int,
    device: torch.device,
    should_stop: Callable[[], bool],
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """Train and score one run; returns (runs.csv row, logged steps), or None when a stop was requested mid-run."""
    t0 = time.perf_counter()
    names = task.class_names
    torch.manual_seed(task.seed)  # identical initial weights for a given seed, architecture and BN setting
    model = build_study_model(cfg.model, task.in_channels, len(names), batch_norm).to(device)
    optimizer = study_optimizer(optimizer_name, cfg.optim, model.parameters())
    losses = build_losses(cfg.study.losses, cfg.grid.losses, names, task.pixel_counts, device)
    steps, ended = train_run(model, optimizer, task, loss, losses, cfg.optim.steps, cfg.study.log_every, should_stop)
    if ended == "stopped":
        return None
    result = score_run(model, task, losses) if ended == "done" else None
    settings = optimizer.param_groups[0]
    run = dict(
        run_id=run_id,
        seed=task.seed,
        source=cfg.data.source,
        task=task.label,
        fg_ratio=task.fg_ratio,
        loss=loss,
        batch_norm=batch_norm,
        optimizer=optimizer_name,
        lr=settings["lr"],
        momentum=settings.get("momentum", 0.0),
        steps=cfg.optim.steps,
    )
    row = run_row(run, task, steps, ended, result, cfg)
    row["seconds"] = time.perf_counter() - t0
    return row, [dict(s, run_id=run_id) for s in steps]


def write_results(
    cfg: StudyConfig,
    runs: list[dict[str, Any]],
    steps_by_run: dict[int, list[dict[str, Any]]],
    planned: int,
    rows: list[str],
    log: Callable[[str], None],
) -> str:
    """summary.csv, summary.md and the figures from the finished runs; logs the table and returns a line of totals."""
    out_dir = cfg.out_dir
    summary = summarise(runs)
    write_csv(out_dir / "summary.csv", summary_columns(), summary)
    table = summary_markdown(summary)
    with atomic_write(out_dir / "summary.md", "w") as f:
        f.write(f"# {cfg.study.name}: {len(runs)} of {planned} runs, seeds {cfg.study.seeds}\n\n{table}")
    write_plots(out_dir, cfg, runs, steps_by_run, summary, rows)
    log(table)
    totals = {k: sum(bool(r[k]) for r in runs) for k in ("converged_accuracy", "converged_iou", "collapsed", "diverged")}
    return (
        f"{len(runs)} runs: {totals['converged_accuracy']} converged by the accuracy rule, {totals['converged_iou']} by the "
        f"IoU rule (every class >= {cfg.study.converged_min_iou:g}), {totals['collapsed']} collapsed, {totals['diverged']} diverged"
    )


def _run_grid(
    cfg: StudyConfig, tasks: list[StudyTask], device: torch.device, log: Callable[[str], None], progress: bool, stop: DeferredStop
) -> Path:
    out_dir, g = cfg.out_dir, cfg.grid
    out_dir.mkdir(parents=True)
    with atomic_write(out_dir / CONFIG_NAME) as f:
        yaml.safe_dump(study_config_to_dict(cfg), f, sort_keys=False)
    names = tasks[0].class_names
    run_cols, step_cols = runs_columns(g.losses, names), steps_columns(g.losses, names)
    write_csv(out_dir / "runs.csv", run_cols, [])  # headers first: an interrupt before the first run still leaves both files
    with atomic_write(out_dir / "steps.csv", "w") as f:
        f.write(csv_text(step_cols, []))

    plan = [(t, bn, opt, loss) for t in tasks for bn in g.batch_norm for opt in g.optimizers for loss in g.losses]
    runs: list[dict[str, Any]] = []
    steps_by_run: dict[int, list[dict[str, Any]]] = {}
    log(
        f"study {out_dir}: {len(plan)} runs ({len(cfg.study.seeds)} seeds) x {cfg.optim.steps} steps on {device} "
        f"({cfg.data.source}, {cfg.study.losses} losses, {cfg.model.arch}, {cfg.data.image_size}px, batch {cfg.data.batch_size})"
    )
    start = time.perf_counter()
    bar = tqdm(plan, desc="study", unit="run", disable=not progress, dynamic_ncols=True)
    for run_id, (task, bn, opt, loss) in enumerate(bar):
        done = one_run(cfg, task, bn, opt, loss, run_id, device, lambda: stop.requested)
        if done is None:
            break  # Ctrl-C / SIGTERM: the unfinished run is dropped
        row, steps = done
        runs.append(row)
        steps_by_run[run_id] = steps
        with open(out_dir / "steps.csv", "a") as f:  # appended in one write per run: an interrupt leaves whole runs
            f.write(csv_text(step_cols, steps, header=False))
        write_csv(out_dir / "runs.csv", run_cols, runs)
        bar.set_postfix_str(
            f"seed {task.seed} {task.label} {loss} {combo_label(bn, opt)}: {row['outcome']}, "
            f"acc {row.get('accuracy', math.nan):.3f}, min IoU {row.get('min_iou', math.nan):.2f}"
        )
    bar.close()

    totals = write_results(cfg, runs, steps_by_run, len(plan), [t.label for t in tasks[: len(tasks) // len(cfg.study.seeds)]], log)
    log(f"{totals}; {time.perf_counter() - start:.0f}s; results in {out_dir}")
    if stop.requested:
        raise Interrupted(
            stop.signum,
            f"after {len(runs)} of {len(plan)} runs: runs.csv, steps.csv, summary and plots hold the finished runs in {out_dir}",
        )
    return out_dir
