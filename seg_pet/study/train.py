"""One study run: train on one loss while logging every loss and every loss's gradient norm, then score held-out data.

At a logged step (step 1, every `log_every` steps, the last step) the model runs forward once
on the training batch; each loss in the grid is computed from that one output and
`torch.autograd.grad` gives its gradient for all parameters, of which only the norm is kept. The
trained loss's gradient from the same call is the one the optimiser then applies, so logging
changes nothing about training. Between logged steps only the trained loss is back-propagated.
Every logged value is measured on the training batch, before that step's update.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from seg_pet.metrics import ConfusionMatrix, batch_metrics, compute_metrics
from seg_pet.study.tasks import StudyTask


def is_logged(step: int, steps: int, log_every: int) -> bool:
    """Steps are numbered from 1."""
    return step == 1 or step == steps or step % log_every == 0


def grad_norm(grads: tuple[torch.Tensor, ...]) -> float:
    """The global L2 norm of one loss's gradient over all parameters."""
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def step_row(
    step: int, logits: torch.Tensor, y: torch.Tensor, values: dict[str, torch.Tensor], norms: dict[str, float], task: StudyTask
) -> dict[str, Any]:
    """One steps.csv row: every loss, every loss's gradient norm, and the batch's accuracy, class IoUs and predicted focus share."""
    m = batch_metrics(logits.detach(), y, task.class_names)
    row: dict[str, Any] = {"step": step}
    row.update({f"loss_{name}": float(v.detach()) for name, v in values.items()})
    row.update({f"grad_norm_{name}": norm for name, norm in norms.items()})
    row["accuracy"] = m["pixel_acc"]
    row.update({f"iou_{c}": m["iou"][c] for c in task.class_names})
    scored = [v for v in m["iou"].values() if not math.isnan(v)]
    row["min_iou"] = min(scored) if scored else math.nan
    row["pred_fg_share"] = m["pred_share"][task.focus]
    return row


def train_run(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    task: StudyTask,
    trained: str,
    losses: dict[str, nn.Module],
    steps: int,
    log_every: int,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[list[dict[str, Any]], str]:
    """Train on `trained` for `steps` steps. Returns (logged rows, how it ended: "done" | "diverged" | "stopped").

    It stops at the first non-finite value of the trained loss or of its gradient norm, and
    before any step once `should_stop()` is true (Ctrl-C / SIGTERM).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    rows: list[dict[str, Any]] = []
    model.train()
    for step in range(1, steps + 1):
        if should_stop():
            return rows, "stopped"
        x, y = task.batch(step - 1)
        logits = model(x)
        if is_logged(step, steps, log_every):
            values = {name: fn(logits, y) for name, fn in losses.items()}
            norms = {}
            for name, value in values.items():
                grads = torch.autograd.grad(value, params, retain_graph=True)
                norms[name] = grad_norm(grads)
                if name == trained:
                    for p, g in zip(params, grads):
                        p.grad = g
            rows.append(step_row(step, logits, y, values, norms, task))
            finite = math.isfinite(rows[-1][f"loss_{trained}"]) and math.isfinite(norms[trained])
        else:
            loss = losses[trained](logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            finite = math.isfinite(loss.item())
        if not finite:
            return rows, "diverged"
        optimizer.step()
    return rows, "done"


@torch.no_grad()
def score_run(model: nn.Module, task: StudyTask, losses: dict[str, nn.Module], chunk: int = 64) -> dict[str, Any]:
    """Every loss and the confusion-matrix metrics on the held-out set, in eval mode (BN uses its running statistics)."""
    model.eval()
    logits = torch.cat([model(task.eval_x[i : i + chunk]) for i in range(0, len(task.eval_x), chunk)])
    out: dict[str, Any] = {f"loss_{name}": float(fn(logits, task.eval_y)) for name, fn in losses.items()}
    matrix = ConfusionMatrix(len(task.class_names))
    matrix.update(task.eval_y, logits.argmax(1))
    out["metrics"] = compute_metrics(matrix.mat, task.class_names)
    return out
