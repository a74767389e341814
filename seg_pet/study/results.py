"""How a run is judged (two convergence rules, collapse, the step it learns the minority class) and the summary over seeds.

A run's held-out metrics decide its `outcome`, checked in this order:

    diverged   a loss or its gradient became NaN/Inf; the run stopped there
    collapsed  one class everywhere: a single class takes >= 99.5 % of the held-out predictions
    converged  the IoU rule: every class's IoU >= study.converged_min_iou
    accurate   the accuracy rule only (the original's criterion, which judged models by accuracy):
               accuracy >= base rate + study.converged_acc_gap * (1 - base rate), where the base
               rate is the accuracy of predicting the majority class everywhere. With the default
               0.5: 0.975 at 5 % or 95 % foreground, 0.75 at 50 %
    partial    neither rule holds, yet every class is predicted somewhere

The IoU rule is the stricter one on imbalanced data: at 5 % foreground, accuracy 0.975 allows as
many errors as half the foreground, foreground IoU about 0.5; IoU 0.9 needs accuracy about 0.995.

`learned_step`: the first logged step at which the training batch's lowest per-class IoU
reaches 0.5 (LEARNED_IOU). Off balance the lowest IoU is the minority class's, so this is when
the run first finds the minority class; a collapsed prediction scores 0 there.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any, Optional

COLLAPSED_SHARE = 0.995  # one class predicted on at least this share of the held-out pixels
LEARNED_IOU = 0.5


def scored_min(class_iou: dict[str, float]) -> float:
    """The lowest per-class IoU; a class absent from target and prediction (NaN) is not scored."""
    scored = [v for v in class_iou.values() if v is not None and not math.isnan(v)]
    return min(scored) if scored else math.nan


def iou_rule(class_iou: dict[str, float], min_iou: float) -> bool:
    """Every scored class has IoU >= min_iou (one class alone would count a collapse at 95 % foreground as success)."""
    lowest = scored_min(class_iou)
    return not math.isnan(lowest) and lowest >= min_iou


def accuracy_rule(accuracy: float, base_rate: float, gap: float) -> bool:
    return accuracy >= base_rate + gap * (1.0 - base_rate)


def is_collapsed(pred_share: dict[str, float]) -> bool:
    shares = [v for v in pred_share.values() if not math.isnan(v)]
    return bool(shares) and max(shares) >= COLLAPSED_SHARE


def judge(metrics: Optional[dict[str, Any]], finite: bool, min_iou: float, gap: float) -> dict[str, Any]:
    """The run's verdict from compute_metrics' output on held-out data (None when it diverged)."""
    if not finite or metrics is None:
        return dict(converged_accuracy=False, converged_iou=False, collapsed=False, outcome="diverged")
    base_rate = max(v for v in metrics["gt_share"].values() if not math.isnan(v))
    verdict = dict(
        base_rate=base_rate,
        accuracy=metrics["pixel_acc"],
        min_iou=scored_min(metrics["iou"]),
        converged_accuracy=accuracy_rule(metrics["pixel_acc"], base_rate, gap),
        converged_iou=iou_rule(metrics["iou"], min_iou),
        collapsed=is_collapsed(metrics["pred_share"]),
    )
    states = {"collapsed": verdict["collapsed"], "converged": verdict["converged_iou"], "accurate": verdict["converged_accuracy"]}
    verdict["outcome"] = next((name for name, holds in states.items() if holds), "partial")
    return verdict


def learned_step(steps: list[dict[str, Any]]) -> Optional[int]:
    """The first logged step whose batch min-class IoU >= LEARNED_IOU; None if it never got there."""
    return next((row["step"] for row in steps if row["min_iou"] >= LEARNED_IOU), None)


# --------------------------------------------------------------------------- summary over seeds

CELL_KEYS = ("task", "batch_norm", "optimizer", "loss")  # task: the grid row, e.g. "fg 5%"


def summary_columns() -> list[str]:
    return [
        *CELL_KEYS,
        "fg_ratio",
        "seeds",
        "converged_accuracy",
        "converged_iou",
        "collapsed",
        "diverged",
        "accuracy_median",
        "accuracy_min",
        "accuracy_max",
        "min_iou_median",
        "min_iou_min",
        "min_iou_max",
        "train_min_iou_median",
        "learned_step_median",
        "learned_step_min",
        "learned_step_max",
        "never_learned",
        "grad_norm_median",
    ]


def _spread(values: Iterable[float]) -> tuple[float, float, float]:
    """(median, min, max) of the finite values; NaN when there are none."""
    finite = sorted(v for v in values if v is not None and not math.isnan(v))
    return (statistics.median(finite), finite[0], finite[-1]) if finite else (math.nan, math.nan, math.nan)


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, BN, optimiser, loss), in the order the runs came: counts over seeds, median and range.

    A run that never learned the minority class counts as step infinity in learned_step's median and range.
    """
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        cells.setdefault(tuple(run[k] for k in CELL_KEYS), []).append(run)
    rows = []
    for key, group in cells.items():
        row: dict[str, Any] = dict(zip(CELL_KEYS, key), fg_ratio=statistics.median(r["fg_ratio"] for r in group), seeds=len(group))
        for flag in ("converged_accuracy", "converged_iou", "collapsed"):
            row[flag] = sum(bool(r[flag]) for r in group)
        row["diverged"] = sum(r["outcome"] == "diverged" for r in group)
        for name in ("accuracy", "min_iou"):
            row[f"{name}_median"], row[f"{name}_min"], row[f"{name}_max"] = _spread(r.get(name) for r in group)
        row["train_min_iou_median"] = _spread(r.get("train_min_iou") for r in group)[0]
        finite_runs = [r for r in group if r["outcome"] != "diverged"]
        learned = [math.inf if r.get("learned_step") is None else float(r["learned_step"]) for r in finite_runs]
        row["learned_step_median"], row["learned_step_min"], row["learned_step_max"] = _spread(learned)
        row["never_learned"] = sum(math.isinf(v) for v in learned)
        row["grad_norm_median"] = _spread(r.get("grad_norm_median") for r in group)[0]  # of each run's median over its steps
        rows.append(row)
    return rows


def _num(value: float, fmt: str) -> str:
    if value is None or math.isnan(value):
        return "–"
    return "never" if math.isinf(value) else format(value, fmt)


def _median_range(row: dict[str, Any], name: str, fmt: str) -> str:
    median, low, high = (row[f"{name}_{k}"] for k in ("median", "min", "max"))
    if row["seeds"] == 1 or low == high:
        return _num(median, fmt)
    return f"{_num(median, fmt)} ({_num(low, fmt)}–{_num(high, fmt)})"


def _bn_optimizer(row: dict[str, Any]) -> str:
    return f"{'BN' if row['batch_norm'] else 'no BN'}, {row['optimizer']}"


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    """The summary as a markdown table: counts k/n over seeds, medians with (min–max) over seeds.

    "train min IoU": the median over seeds of the lowest class IoU on the last 10 % of the logged training batches.
    "grad norm": the median over seeds of each run's median gradient norm of its trained loss over the logged steps.
    """
    header = [
        "task",
        "BN, optimiser",
        "loss",
        "acc. rule",
        "IoU rule",
        "collapsed",
        "accuracy",
        "min-class IoU",
        "train min IoU",
        "learns minority (step)",
        "grad norm",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        n = r["seeds"]
        collapsed = f"{r['collapsed']}/{n}" + (f", {r['diverged']} diverged" if r["diverged"] else "")
        cells = [
            r["task"],
            _bn_optimizer(r),
            r["loss"],
            f"{r['converged_accuracy']}/{n}",
            f"{r['converged_iou']}/{n}",
            collapsed,
            _median_range(r, "accuracy", ".3f"),
            _median_range(r, "min_iou", ".2f"),
            _num(r["train_min_iou_median"], ".2f"),
            _median_range(r, "learned_step", ".0f"),
            _num(r["grad_norm_median"], ".2g"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
