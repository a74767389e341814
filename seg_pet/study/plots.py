"""The study's figures: per-step curves per grid row, and the final-IoU heat map."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from seg_pet.study.config import COLLAPSED_BELOW
from seg_pet.viz import new_figure, save_figure

_LINE_STYLES = {  # (batch_norm, optimizer) -> colour, dash
    (True, "adam"): ("tab:blue", "-"),
    (True, "sgd"): ("tab:blue", "--"),
    (False, "adam"): ("tab:orange", "-"),
    (False, "sgd"): ("tab:orange", "--"),
}


_OUTCOME_TAGS = {"converged": "\u2713", "partial": "partial", "collapsed": "collapsed"}


def combo_label(batch_norm: bool, optimizer: str) -> str:
    return f"{'BN' if batch_norm else 'no BN'}, {optimizer.upper() if optimizer == 'sgd' else optimizer.capitalize()}"


def plot_step_grid(runs: list[dict[str, Any]], steps_by_run: dict[int, list[dict[str, Any]]], rows: list[tuple[float, str]],
                   losses: list[str], value: str, title: str, path: Path, log_y: bool = False) -> None:
    """Rows = foreground ratio, columns = trained loss, one line per (BN, optimiser).

    value: "trained" plots each run's own training loss; otherwise a steps.csv column (grad_norm).
    """
    fig = new_figure(2.7 * len(losses) + 0.8, 2.2 * len(rows) + 1.1)
    axes = fig.subplots(len(rows), len(losses), squeeze=False, sharex=True)
    for i, (ratio, label) in enumerate(rows):
        for j, loss in enumerate(losses):
            ax = axes[i][j]
            for run in runs:
                if run["fg_ratio"] != ratio or run["loss"] != loss:
                    continue
                key = f"loss_{loss}" if value == "trained" else value
                steps = steps_by_run.get(run["run_id"], [])
                xs = [r["step"] for r in steps]
                ys = [r[key] if math.isfinite(r[key]) and (not log_y or r[key] > 0) else math.nan for r in steps]
                colour, dash = _LINE_STYLES[(run["batch_norm"], run["optimizer"])]
                ax.plot(xs, ys, color=colour, linestyle=dash, linewidth=1.1,
                        label=combo_label(run["batch_norm"], run["optimizer"]))
            if log_y:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.set_title(f"trained on {loss}", fontsize=9)
            if j == 0:
                ax.set_ylabel(label, fontsize=9)
            if i == len(rows) - 1:
                ax.set_xlabel("step", fontsize=8)
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    save_figure(fig, path)


def plot_iou_heatmap(runs: list[dict[str, Any]], rows: list[tuple[float, str]], losses: list[str], batch_norm: list[bool],
                     optimizers: list[str], focus: str, min_iou: float, path: Path) -> None:
    """One panel per (BN, optimiser): rows = foreground ratio, columns = trained loss, colour = final fg IoU.

    Each cell also names the run's outcome (check = converged), because a high foreground IoU
    alone can hide a collapse: at 95 % foreground, "everything is foreground" scores 0.95.
    """

    fig = new_figure(1.2 * len(losses) * len(optimizers) + 1.8, 0.75 * len(rows) * len(batch_norm) + 1.6, layout="constrained")
    axes = fig.subplots(len(batch_norm), len(optimizers), squeeze=False)
    image = None
    for bi, bn in enumerate(batch_norm):
        for oi, opt in enumerate(optimizers):
            ax = axes[bi][oi]
            grid = np.full((len(rows), len(losses)), np.nan)
            marks = {}
            for run in runs:
                if run["batch_norm"] != bn or run["optimizer"] != opt:
                    continue
                i = [r for r, _ in rows].index(run["fg_ratio"])
                j = losses.index(run["loss"])
                value = run.get("fg_iou", math.nan)
                grid[i, j] = value if value is not None else math.nan
                marks[(i, j)] = run["outcome"]
            image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
            for (i, j), outcome in marks.items():
                v = grid[i, j]
                value = "n/a" if math.isnan(v) else f"{v:.2f}"
                text = "NaN loss" if outcome == "diverged" else f"{value}\n{_OUTCOME_TAGS.get(outcome, outcome)}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="black" if not math.isnan(v) and v > 0.6 else "white")
            ax.set_xticks(range(len(losses)), labels=losses, fontsize=7, rotation=30)
            ax.set_yticks(range(len(rows)), labels=[label for _, label in rows], fontsize=7)
            ax.set_title(combo_label(bn, opt), fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02, label=f"final {focus} IoU")
    fig.suptitle(f"final {focus} IoU on held-out data; \u2713 converged (every class IoU >= {min_iou:g}), "
                 f"collapsed = some class IoU < {COLLAPSED_BELOW:g}", fontsize=9)
    save_figure(fig, path)
