"""One study run, the grid of runs, runs.csv / steps.csv, and the `study` workflow."""

from __future__ import annotations

import csv
import math
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import yaml
from torch import nn
from tqdm import tqdm

from seg_pet.config.loading import build_loss_section
from seg_pet.losses import build_loss, compute_class_weights, needs_class_weights
from seg_pet.metrics import ConfusionMatrix, batch_metrics, compute_metrics
from seg_pet.runtime.device import resolve_device
from seg_pet.runtime.errors import SegPetError
from seg_pet.runtime.fileio import atomic_write
from seg_pet.runtime.paths import check_output
from seg_pet.study.config import CONFIG_NAME, StudyConfig, is_converged, load_study_config, run_outcome, study_config_to_dict
from seg_pet.study.plots import combo_label, plot_iou_heatmap, plot_step_grid
from seg_pet.study.tasks import StudyTask, build_study_model, pet_task, study_optimizer, toy_task


def build_losses(names: list[str], task: StudyTask, device: torch.device) -> dict[str, nn.Module]:
    losses = {}
    for name in names:
        loss_cfg = build_loss_section({"name": name})
        weights = compute_class_weights("inverse", task.pixel_counts) if needs_class_weights(loss_cfg) else None
        losses[name] = build_loss(loss_cfg, task.class_names, class_weights=weights).to(device)
    return losses


def global_grad_norm(model: nn.Module) -> float:
    """L2 norm of all parameter gradients together; with max_norm=inf clip_grad_norm_ only measures it."""
    return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=math.inf))


def train_run(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    task: StudyTask,
    trained: str,
    losses: dict[str, nn.Module],
    steps: int,
) -> tuple[list[dict[str, Any]], bool]:
    """Train on `trained`; per step record every loss (training batch, before the update) and the grad norm.

    Returns (step rows, finite); stops at the first non-finite loss or gradient.
    """
    rows = []
    model.train()
    for step in range(steps):
        x, y = task.batch(step)
        logits = model(x)
        loss = losses[trained](logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = global_grad_norm(model)
        with torch.no_grad():
            detached = logits.detach()
            row: dict[str, Any] = {"step": step + 1}
            row.update({f"loss_{name}": float(fn(detached, y)) for name, fn in losses.items()})
            row["grad_norm"] = grad_norm
            ious = batch_metrics(detached, y, task.class_names)["iou"]
            scored = [v for v in ious.values() if not math.isnan(v)]
            row["batch_fg_iou"] = ious[task.focus]
            # The convergence quantity, per step: at 95 % foreground the fg IoU alone hides a collapse.
            row["batch_min_iou"] = min(scored) if scored else math.nan
        rows.append(row)
        if not (math.isfinite(row[f"loss_{trained}"]) and math.isfinite(grad_norm)):
            return rows, False
        optimizer.step()
    return rows, True


@torch.no_grad()
def score_run(model: nn.Module, task: StudyTask, losses: dict[str, nn.Module], chunk: int = 64) -> dict[str, Any]:
    """Every loss, the confusion-matrix metrics and the predicted focus share on the held-out set (eval mode)."""
    model.eval()
    logits = torch.cat([model(task.eval_x[i : i + chunk]) for i in range(0, len(task.eval_x), chunk)])
    out: dict[str, Any] = {f"loss_{name}": float(fn(logits, task.eval_y)) for name, fn in losses.items()}
    matrix = ConfusionMatrix(len(task.class_names))
    matrix.update(task.eval_y, logits.argmax(1))
    out["metrics"] = compute_metrics(matrix.mat, task.class_names)
    return out




def runs_columns(loss_names: list[str], class_names: list[str]) -> list[str]:
    return [
        "run_id", "source", "fg_ratio", "loss", "batch_norm", "optimizer", "lr", "steps", "steps_done",
        *(f"loss_{n}" for n in loss_names),
        "fg_iou", "fg_dice", "miou", "min_iou", *(f"iou_{c}" for c in class_names), "pred_fg_share",
        "grad_norm_first", "grad_norm_median", "grad_norm_last", "converged", "outcome", "diverged", "seconds",
    ]


def steps_columns(loss_names: list[str]) -> list[str]:
    return ["run_id", "step", *(f"loss_{n}" for n in loss_names), "grad_norm", "batch_fg_iou", "batch_min_iou"]


def _cell(value: Any) -> Any:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in columns})


def _median(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def _tail_mean(values: list[float], frac: float = 0.1) -> float:
    tail = [v for v in values[-max(1, int(len(values) * frac)):] if math.isfinite(v)]
    return sum(tail) / len(tail) if tail else math.nan


def summary_row(run: dict[str, Any], task: StudyTask, steps: list[dict[str, Any]], finite: bool, result: dict[str, Any] | None,
                min_iou: float) -> dict[str, Any]:
    grads = [r["grad_norm"] for r in steps]
    row = dict(run)
    row.update(steps_done=len(steps), diverged=not finite,
               grad_norm_first=grads[0] if grads else math.nan, grad_norm_median=_median(grads), grad_norm_last=_tail_mean(grads))
    if result is None:  # diverged: no meaningful model to score
        row.update(converged=False, outcome="diverged")
        return row
    m = result["metrics"]
    row.update({k: v for k, v in result.items() if k.startswith("loss_")})
    row.update(fg_iou=m["iou"][task.focus], fg_dice=m["dice"][task.focus], miou=m["miou"],
               pred_fg_share=m["pred_share"][task.focus])
    row.update({f"iou_{c}": m["iou"][c] for c in task.class_names})
    scored = [v for v in m["iou"].values() if not math.isnan(v)]
    row["min_iou"] = min(scored) if scored else math.nan
    row["converged"] = is_converged(m["iou"], min_iou, finite)
    row["outcome"] = run_outcome(m["iou"], min_iou, finite)
    return row




def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    check_output(out_dir.parent, "study.output_dir", "dir")
    check_output(out_dir, "study folder", "dir")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise SegPetError(f"study folder {out_dir} already exists; replace it with --overwrite, or choose another study.name")
        if not (out_dir / CONFIG_NAME).is_file():
            raise SegPetError(f"--overwrite: {out_dir} is not a study folder (no {CONFIG_NAME}); refusing to delete it")


def run_study(config_path: str | Path | None, overrides: Iterable[str] = (), *, overwrite: bool = False,
              log: Callable[[str], None] = print, progress: bool = True) -> Path:
    """Run the whole grid; returns the output folder. Bad input fails before anything is written."""
    cfg = load_study_config(config_path, list(overrides))
    out_dir = cfg.out_dir
    check_out_dir(out_dir, overwrite)
    device = resolve_device(cfg.study.device, key="study.device")
    threads = torch.get_num_threads()
    if device.type == "cpu" and cfg.study.cpu_threads is not None:
        torch.set_num_threads(cfg.study.cpu_threads)
    try:
        return _run_grid(cfg, device, log, progress)
    finally:
        torch.set_num_threads(threads)  # a global setting: leave it as the caller had it


def _run_grid(cfg: StudyConfig, device: torch.device, log: Callable[[str], None], progress: bool) -> Path:
    out_dir = cfg.out_dir
    g = cfg.grid
    ratios = cfg.data.fg_ratios if cfg.data.source == "toy" else [None]
    # Build (and so check) the Pet data before the folder is touched.
    tasks = [toy_task(cfg, r, device) if r is not None else pet_task(cfg, device) for r in ratios]

    if out_dir.exists():
        shutil.rmtree(out_dir)  # --overwrite, checked above
    out_dir.mkdir(parents=True)
    with atomic_write(out_dir / CONFIG_NAME) as f:
        yaml.safe_dump(study_config_to_dict(cfg), f, sort_keys=False)

    plan = [(t, bn, opt, loss) for t in tasks for bn in g.batch_norm for opt in g.optimizers for loss in g.losses]
    names = tasks[0].class_names
    run_cols, step_cols = runs_columns(g.losses, names), steps_columns(g.losses)
    runs: list[dict[str, Any]] = []
    all_steps: list[dict[str, Any]] = []
    steps_by_run: dict[int, list[dict[str, Any]]] = {}
    log(f"study {out_dir}: {len(plan)} runs x {cfg.optim.steps} steps on {device} "
        f"({cfg.data.source}, {cfg.model.arch}, {cfg.data.image_size}px, batch {cfg.data.batch_size})")
    start = time.perf_counter()
    bar = tqdm(plan, desc="study", unit="run", disable=not progress, dynamic_ncols=True)
    for run_id, (task, bn, opt, loss) in enumerate(bar):
        t0 = time.perf_counter()
        # Same seed for every run: identical initial weights for a given architecture and BN setting.
        torch.manual_seed(cfg.study.seed)
        model = build_study_model(cfg.model, task.in_channels, len(task.class_names), bn).to(device)
        optimizer, lr = study_optimizer(opt, cfg.optim, model.parameters())
        losses = build_losses(g.losses, task, device)
        steps, finite = train_run(model, optimizer, task, loss, losses, cfg.optim.steps)
        result = score_run(model, task, losses) if finite else None
        run = dict(run_id=run_id, source=cfg.data.source, fg_ratio=task.fg_ratio, loss=loss, batch_norm=bn,
                   optimizer=opt, lr=lr, steps=cfg.optim.steps)
        row = summary_row(run, task, steps, finite, result, cfg.study.converged_min_iou)
        row["seconds"] = time.perf_counter() - t0
        runs.append(row)
        for s in steps:
            s["run_id"] = run_id
        steps_by_run[run_id] = steps
        all_steps.extend(steps)
        write_csv(out_dir / "runs.csv", run_cols, runs)
        write_csv(out_dir / "steps.csv", step_cols, all_steps)
        bar.set_postfix_str(f"{task.label} {loss} {combo_label(bn, opt)}: {row['outcome']}, "
                            f"{task.focus} IoU {row.get('fg_iou', math.nan):.2f}, min IoU {row.get('min_iou', math.nan):.2f}")
    bar.close()

    rows = [(t.fg_ratio, t.label) for t in tasks]
    focus = tasks[0].focus
    plot_step_grid(runs, steps_by_run, rows, g.losses, "trained",
                   "training loss (the loss each run optimises, on its training batch)", out_dir / "loss_curves.png")
    plot_step_grid(runs, steps_by_run, rows, g.losses, "grad_norm",
                   "global gradient norm (all parameters, before each update)", out_dir / "grad_norm_curves.png", log_y=True)
    plot_iou_heatmap(runs, rows, g.losses, g.batch_norm, g.optimizers, focus, cfg.study.converged_min_iou,
                     out_dir / "final_iou_heatmap.png")
    converged = sum(r["converged"] for r in runs)
    log(f"{converged}/{len(runs)} runs converged (every class IoU >= {cfg.study.converged_min_iou:g}); "
        f"{time.perf_counter() - start:.0f}s; results in {out_dir}")
    return out_dir
