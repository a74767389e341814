"""The study's figures. Every curve is the median over seeds with a band from the lowest to the highest seed.

loss_curves.png            rows = grid row (e.g. fg 5%), columns = trained loss; each run's own loss
grad_norm_curves.png       the same layout: the gradient norm of the trained loss (log scale)
outcome_heatmap.png        one panel per (BN, optimiser): colour = median lowest-class IoU over seeds;
                           each cell counts the seeds that met the accuracy rule, the IoU rule, or collapsed
all_losses_<bn>_<opt>.png  the original's figure: for each trained loss (rows), the values of ALL
                           losses and the gradient norms of ALL losses, per grid row (columns)
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.lines import Line2D

from seg_pet.study.config import StudyConfig
from seg_pet.viz import new_figure, save_figure

BN_COLOURS = {True: "tab:blue", False: "tab:orange"}
OPTIMIZER_DASHES = {"adam": "-", "sgd": "--", "sgd_momentum": ":"}
LOSS_COLOURS = [
    "tab:red",
    "tab:blue",
    "tab:green",
    "tab:purple",
    "tab:brown",
    "tab:olive",
    "tab:cyan",
    "tab:pink",
    "tab:gray",
    "tab:orange",
    "black",
]


def combo_label(batch_norm: bool, optimizer: str) -> str:
    return f"{'BN' if batch_norm else 'no BN'}, {optimizer}"


def seed_band(
    runs: list[dict[str, Any]], steps_by_run: dict[int, list[dict[str, Any]]], key: str, positive: bool = False
) -> tuple[list[int], list[float], list[float], list[float]]:
    """(steps, median, lowest, highest) of steps.csv column `key` over the given runs (the seeds of one cell)."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for row in steps_by_run.get(run["run_id"], []):
            v = row[key]
            if math.isfinite(v) and (v > 0 or not positive):
                by_step.setdefault(row["step"], []).append(v)
    xs = sorted(by_step)
    return (xs, [statistics.median(by_step[x]) for x in xs], [min(by_step[x]) for x in xs], [max(by_step[x]) for x in xs])


def _draw_band(ax, band, colour: str, dash: str = "-", label: str | None = None, width: float = 1.1) -> None:
    xs, median, low, high = band
    if not xs:
        return
    ax.plot(xs, median, color=colour, linestyle=dash, linewidth=width, label=label)
    if low != high:
        ax.fill_between(xs, low, high, color=colour, alpha=0.15, linewidth=0)


def _style(ax, log_y: bool) -> None:
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)


def _figure_legend(fig, axes) -> None:
    handles, labels = [], []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), frameon=False, fontsize=8)


def plot_step_grid(
    runs: list[dict[str, Any]],
    steps_by_run: dict[int, list[dict[str, Any]]],
    rows: list[str],
    losses: list[str],
    prefix: str,
    title: str,
    path: Path,
    log_y: bool = False,
) -> None:
    """Rows = grid row, columns = trained loss; one median line (and seed band) per (BN, optimiser).

    prefix: "loss_" plots each run's own training loss, "grad_norm_" its gradient norm.
    """
    fig = new_figure(2.7 * len(losses) + 0.8, 2.2 * len(rows) + 1.1)
    axes = fig.subplots(len(rows), len(losses), squeeze=False, sharex=True)
    for i, row in enumerate(rows):
        for j, loss in enumerate(losses):
            ax = axes[i][j]
            cell = [r for r in runs if r["task"] == row and r["loss"] == loss]
            for bn, opt in dict.fromkeys((r["batch_norm"], r["optimizer"]) for r in cell):
                seeds = [r for r in cell if r["batch_norm"] == bn and r["optimizer"] == opt]
                _draw_band(
                    ax,
                    seed_band(seeds, steps_by_run, f"{prefix}{loss}", positive=log_y),
                    BN_COLOURS[bn],
                    OPTIMIZER_DASHES.get(opt, "-."),
                    combo_label(bn, opt),
                )
            _style(ax, log_y)
            if i == 0:
                ax.set_title(f"trained on {loss}", fontsize=9)
            if j == 0:
                ax.set_ylabel(row, fontsize=9)
            if i == len(rows) - 1:
                ax.set_xlabel("step", fontsize=8)
    _figure_legend(fig, axes)
    fig.suptitle(f"{title}; median over seeds, band = lowest to highest seed", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    save_figure(fig, path)


def _cell_text(s: dict[str, Any]) -> str:
    n = s["seeds"]
    if s["diverged"] == n:
        return "diverged"
    low, high = s["min_iou_min"], s["min_iou_max"]
    spread = f" ({low:.2f}–{high:.2f})" if n > 1 and low != high else ""
    lines = [f"{s['min_iou_median']:.2f}{spread}", f"acc {s['converged_accuracy']}/{n}  IoU {s['converged_iou']}/{n}"]
    if s["collapsed"]:
        lines.append(f"collapsed {s['collapsed']}/{n}")
    if s["diverged"]:
        lines.append(f"diverged {s['diverged']}/{n}")
    return "\n".join(lines)


def plot_outcome_heatmap(
    summary: list[dict[str, Any]],
    rows: list[str],
    losses: list[str],
    batch_norm: list[bool],
    optimizers: list[str],
    cfg: StudyConfig,
    path: Path,
) -> None:
    """One panel per (BN, optimiser): rows = grid row, columns = trained loss, colour = median lowest-class IoU.

    The lowest class's IoU, not the foreground's: a collapsed model at 95 % foreground scores
    foreground IoU 0.95 but background IoU 0, so it shows dark here.
    """
    fig = new_figure(1.55 * len(losses) * len(optimizers) + 1.8, 0.95 * len(rows) * len(batch_norm) + 1.7, layout="constrained")
    axes = fig.subplots(len(batch_norm), len(optimizers), squeeze=False)
    image = None
    for bi, bn in enumerate(batch_norm):
        for oi, opt in enumerate(optimizers):
            ax = axes[bi][oi]
            grid = np.full((len(rows), len(losses)), np.nan)
            for s in summary:
                if s["batch_norm"] != bn or s["optimizer"] != opt:
                    continue
                i, j = rows.index(s["task"]), losses.index(s["loss"])
                grid[i, j] = s["min_iou_median"]
                ax.text(
                    j,
                    i,
                    _cell_text(s),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if not math.isnan(grid[i, j]) and grid[i, j] > 0.6 else "white",
                )
            image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
            ax.set_xticks(range(len(losses)), labels=losses, fontsize=7, rotation=30)
            ax.set_yticks(range(len(rows)), labels=rows, fontsize=7)
            ax.set_title(combo_label(bn, opt), fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02, label="median lowest-class IoU (held-out)")
    st = cfg.study
    fig.suptitle(
        f"median (range) lowest-class IoU over seeds; counts of seeds meeting the accuracy rule (acc. >= base + "
        f"{st.converged_acc_gap:g} of the gap), the IoU rule (every class >= {st.converged_min_iou:g}), or collapsed "
        f"(one class everywhere)",
        fontsize=8,
    )
    save_figure(fig, path)


def plot_all_losses(
    runs: list[dict[str, Any]],
    steps_by_run: dict[int, list[dict[str, Any]]],
    rows: list[str],
    losses: list[str],
    batch_norm: bool,
    optimizer: str,
    path: Path,
) -> None:
    """The original's figure for one (BN, optimiser): rows = trained loss; for each grid row two panels,
    the values of every loss and the gradient norms of every loss (log scale), all on the same batches."""
    fig = new_figure(2.5 * 2 * len(rows) + 0.6, 1.9 * len(losses) + 1.2)
    axes = fig.subplots(len(losses), 2 * len(rows), squeeze=False, sharex=True)
    colours = dict(zip(losses, LOSS_COLOURS))
    for i, trained in enumerate(losses):
        for k, row in enumerate(rows):
            seeds = [
                r
                for r in runs
                if r["task"] == row and r["loss"] == trained and r["batch_norm"] == batch_norm and r["optimizer"] == optimizer
            ]
            for c, (prefix, what) in enumerate((("loss_", "loss values"), ("grad_norm_", "gradient norms"))):
                ax = axes[i][2 * k + c]
                for name in losses:
                    _draw_band(
                        ax,
                        seed_band(seeds, steps_by_run, f"{prefix}{name}", positive=c == 1),
                        colours[name],
                        label=name,
                        width=2.0 if name == trained else 1.0,
                    )
                _style(ax, log_y=c == 1)
                if i == 0:
                    ax.set_title(f"{row}: {what}", fontsize=9)
                if i == len(losses) - 1:
                    ax.set_xlabel("step", fontsize=8)
            axes[i][0].set_ylabel(f"trained on\n{trained}", fontsize=9)
    fig.legend(
        handles=[Line2D([], [], color=colours[name], label=name) for name in losses],
        loc="lower center",
        ncol=len(losses),
        frameon=False,
        fontsize=8,
    )
    fig.suptitle(
        f"{combo_label(batch_norm, optimizer)}: every loss and every loss's gradient norm on the training batch "
        f"(thick = the trained loss); median over seeds, band = range",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 0.96))
    save_figure(fig, path)


def write_plots(
    out_dir: Path,
    cfg: StudyConfig,
    runs: list[dict[str, Any]],
    steps_by_run: dict[int, list[dict[str, Any]]],
    summary: list[dict[str, Any]],
    rows: list[str],
) -> None:
    g = cfg.grid
    plot_step_grid(runs, steps_by_run, rows, g.losses, "loss_", "training loss (the loss each run optimises)", out_dir / "loss_curves.png")
    plot_step_grid(
        runs,
        steps_by_run,
        rows,
        g.losses,
        "grad_norm_",
        "gradient norm of the trained loss (all parameters)",
        out_dir / "grad_norm_curves.png",
        log_y=True,
    )
    plot_outcome_heatmap(summary, rows, g.losses, g.batch_norm, g.optimizers, cfg, out_dir / "outcome_heatmap.png")
    for bn in g.batch_norm:
        for opt in g.optimizers:
            plot_all_losses(runs, steps_by_run, rows, g.losses, bn, opt, out_dir / f"all_losses_{'bn' if bn else 'nobn'}_{opt}.png")
