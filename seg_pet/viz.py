"""Pictures of what the model does: colourised masks, overlays, panels, curves, confusion plots.

Owns every PNG the project draws (the class colours come from seg_pet.labels). Uses matplotlib's object API
(`Figure` + `FigureCanvasAgg`), never pyplot, so importing this module changes no global
backend state. Every file is written atomically through `seg_pet.runtime.fileio.atomic_path`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import PercentFormatter
from PIL import Image

from seg_pet.labels import IGNORE_COLOUR, IGNORE_INDEX, MAX_CLASSES, default_palette
from seg_pet.runtime.fileio import atomic_path

OVERLAY_ALPHA = 0.4  # share of the class colour in an overlay; the image keeps 0.6
_DPI = 100


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_image(image: Any) -> np.ndarray:
    """HxWx3 uint8 from a numpy array, PIL image or tensor (CHW or HWC; float taken as 0..1)."""
    arr = _to_numpy(image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {arr.shape}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            arr = np.rint(np.clip(arr, 0.0, 1.0) * 255.0)
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return arr


def _as_mask(mask: Any) -> np.ndarray:
    arr = _to_numpy(mask)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"expected a mask of shape (H, W), got {arr.shape}")
    return arr.astype(np.int64)


def class_colours(num_classes: int, palette: Optional[np.ndarray] = None) -> np.ndarray:
    """(num_classes, 3) uint8: the run's palette (LabelSpec.palette_array), or the default palette."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in 1..{MAX_CLASSES}, got {num_classes}")
    colours = default_palette(num_classes) if palette is None else np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if len(colours) < num_classes:
        raise ValueError(f"{num_classes} classes but the palette has {len(colours)} colours")
    return colours


def colorize(mask: np.ndarray, num_classes: int, palette: Optional[np.ndarray] = None) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours of `palette` (default: default_palette); ignore (255) is black."""
    colours = class_colours(num_classes, palette)
    mask = _as_mask(mask)
    ignore = mask == IGNORE_INDEX
    bad = ~ignore & ((mask < 0) | (mask >= num_classes))
    if bad.any():
        raise ValueError(f"mask holds values outside 0..{num_classes - 1} and {IGNORE_INDEX}: {sorted(np.unique(mask[bad]).tolist())[:5]}")
    out = np.empty(mask.shape + (3,), dtype=np.uint8)
    out[...] = IGNORE_COLOUR
    out[~ignore] = colours[mask[~ignore]]
    return out


def overlay(image: np.ndarray, mask: np.ndarray, num_classes: int = 3, palette: Optional[np.ndarray] = None) -> np.ndarray:
    """0.6 x image + 0.4 x class colour, rounded to uint8; ignore pixels keep the image."""
    img = _as_image(image)
    mask = _as_mask(mask)
    if mask.shape != img.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {img.shape[:2]}")
    colours = colorize(mask, num_classes, palette).astype(np.float64)
    blended = np.rint((1.0 - OVERLAY_ALPHA) * img.astype(np.float64) + OVERLAY_ALPHA * colours)
    out = blended.astype(np.uint8)
    ignore = mask == IGNORE_INDEX
    out[ignore] = img[ignore]
    return out


def save_overlay(
    path: str | os.PathLike, image: np.ndarray, pred: np.ndarray, num_classes: int = 3, palette: Optional[np.ndarray] = None
) -> None:
    """PNG of the prediction overlaid on the image, at the image's own size."""
    with atomic_path(path) as tmp:
        Image.fromarray(overlay(image, pred, num_classes, palette), "RGB").save(tmp, format="PNG")


def per_image_iou(target: np.ndarray, pred: np.ndarray, num_classes: int) -> list[float]:
    """IoU per class on one image, ignore pixels excluded; NaN where a class is in neither mask."""
    target = _as_mask(target)
    pred = _as_mask(pred)
    valid = target != IGNORE_INDEX
    t, p = target[valid], pred[valid]
    ious = []
    for c in range(num_classes):
        inter = np.count_nonzero((t == c) & (p == c))
        union = np.count_nonzero((t == c) | (p == c))
        ious.append(inter / union if union else math.nan)
    return ious


def new_figure(width: float, height: float, layout: str | None = None) -> Figure:
    """A pyplot-free figure with an Agg canvas (no global backend state)."""
    fig = Figure(figsize=(width, height), dpi=_DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI)


def _legend_handles(class_names: Sequence[str], with_ignore: bool, palette: Optional[np.ndarray] = None) -> list[Patch]:
    colours = class_colours(len(class_names), palette)
    handles = [Patch(facecolor=colours[i] / 255.0, edgecolor="black", linewidth=0.5, label=name) for i, name in enumerate(class_names)]
    if with_ignore:
        handles.append(Patch(facecolor=IGNORE_COLOUR / 255.0, edgecolor="black", label="ignore"))
    return handles


def save_panel(
    path: str | os.PathLike,
    image: np.ndarray,
    target: np.ndarray,
    pred: np.ndarray,
    class_names: Sequence[str],
    title: str | None = None,
    show_iou: bool = True,
    palette: Optional[np.ndarray] = None,
    errors: bool = False,
) -> None:
    """One PNG: image | ground truth | prediction (| error map, with `errors`), with a colour legend and per-image IoU."""
    num_classes = len(class_names)
    img = _as_image(image)
    target = _as_mask(target)
    pred = _as_mask(pred)
    if target.shape != img.shape[:2] or pred.shape != img.shape[:2]:
        raise ValueError(f"image {img.shape[:2]}, target {target.shape} and prediction {pred.shape} differ in size")
    h, w = img.shape[:2]
    panel_w = 3.2
    panel_h = min(max(panel_w * h / w, 1.6), 6.0)
    pictures = [img, colorize(target, num_classes, palette), colorize(pred, num_classes, palette)]
    labels = ["image", "ground truth", "prediction"]
    if errors:
        pictures.append(error_map(img, target, pred))
        labels.append("errors (red)")
    fig = new_figure(len(pictures) * panel_w, panel_h + 1.1)
    axes = fig.subplots(1, len(pictures))
    for ax, picture, label in zip(axes, pictures, labels):
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(label, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])

    lines = [title] if title else []
    if show_iou:
        ious = per_image_iou(target, pred, num_classes)
        parts = [f"{name} {iou:.2f}" for name, iou in zip(class_names, ious) if not math.isnan(iou)]
        if parts:
            lines.append("IoU: " + ", ".join(parts))
    if lines:
        fig.suptitle("\n".join(lines), fontsize=10)
    fig.legend(
        handles=_legend_handles(class_names, with_ignore=bool((target == IGNORE_INDEX).any()), palette=palette),
        loc="lower center",
        ncol=min(num_classes + 1, 7),
        frameon=False,
        fontsize=9,
    )
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.12, top=0.88 - 0.04 * len(lines), wspace=0.05)
    save_figure(fig, path)


ERROR_COLOUR = np.array([230, 20, 20], dtype=np.uint8)


def error_map(image: np.ndarray, target: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The image dimmed to grey, wrong pixels in red, pixels whose target is ignored in the ignore colour."""
    grey = (_as_image(image).astype(np.float32).mean(axis=2, keepdims=True) * 0.5).astype(np.uint8)
    out = np.repeat(grey, 3, axis=2)
    target, pred = _as_mask(target), _as_mask(pred)
    out[(target != pred) & (target != IGNORE_INDEX)] = ERROR_COLOUR
    out[target == IGNORE_INDEX] = IGNORE_COLOUR
    return out


def _num(value: Any) -> float:
    """A float, NaN for None/missing/non-numeric (NaN IoU is stored as null in JSON)."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _class_value(per_class: Any, index: int, name: str) -> float:
    """Look a class up by name, by index or by index as a string (JSON keys are strings)."""
    if per_class is None:
        return math.nan
    if isinstance(per_class, Mapping):
        for key in (name, index, str(index)):
            if key in per_class:
                return _num(per_class[key])
        return math.nan
    if isinstance(per_class, Sequence) and not isinstance(per_class, str) and index < len(per_class):
        return _num(per_class[index])
    return math.nan


def plot_curves(
    rows: Sequence[Mapping[str, Any]], class_names: Sequence[str], path: str | os.PathLike, palette: Optional[np.ndarray] = None
) -> None:
    """Training curves: losses per epoch; val mIoU, per-class IoU, mean boundary IoU and pixel accuracy per epoch.

    Missing keys and None/NaN values leave gaps; a single epoch shows as markers.
    """
    if not rows:
        raise ValueError("plot_curves needs at least one epoch row")
    epochs = [_num(r.get("epoch", i + 1)) for i, r in enumerate(rows)]
    has_lr = any(not math.isnan(_num(r.get("lr"))) for r in rows)
    fig = new_figure(12.5 if has_lr else 10.5, 3.8)
    axes = fig.subplots(1, 3 if has_lr else 2)
    marker = dict(marker="o", markersize=3.5)

    ax = axes[0]
    for key, label, colour in (("train_loss", "train", "tab:blue"), ("val_loss", "val", "tab:orange")):
        values = [_num(r.get(key)) for r in rows]
        if not all(math.isnan(v) for v in values):
            ax.plot(epochs, values, label=label, color=colour, **marker)
    ax.set_title("loss")
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)

    ax = axes[1]
    miou = [_num(r.get("val_miou")) for r in rows]
    ax.plot(epochs, miou, label="mIoU", color="black", linewidth=2.0, **marker)
    colours = class_colours(len(class_names), palette)
    for i, name in enumerate(class_names):
        colour = colours[i] / 255.0
        values = [_class_value(r.get("val_iou"), i, name) for r in rows]
        ax.plot(epochs, values, label=f"IoU {name}", color=colour, linewidth=1.2, **marker)
    biou = [_num(r.get("val_mboundary_iou")) for r in rows]
    if not all(math.isnan(v) for v in biou):
        ax.plot(epochs, biou, label="boundary IoU", color="black", linestyle=":", linewidth=1.5, **marker)
    acc = [_num(r.get("val_pixel_acc")) for r in rows]
    if not all(math.isnan(v) for v in acc):
        ax.plot(epochs, acc, label="pixel acc", color="grey", linestyle="--", linewidth=1.0, **marker)
    ax.set_title("validation")
    ax.set_xlabel("epoch")
    ax.set_ylim(0.0, 1.02)  # a little headroom so a perfect 1.0 is not cut by the frame
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the axes: inside it hid the low curves

    if has_lr:
        ax = axes[2]
        ax.plot(epochs, [_num(r.get("lr")) for r in rows], color="tab:green", **marker)
        ax.set_title("learning rate")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)

    finite_epochs = [e for e in epochs if not math.isnan(e)]
    if finite_epochs and max(finite_epochs) - min(finite_epochs) < 1:
        # One epoch: matplotlib would zoom to a tiny range around the single point.
        for ax in axes:
            ax.set_xlim(min(finite_epochs) - 1, max(finite_epochs) + 1)
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    save_figure(fig, path)


def plot_runs(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike) -> None:
    """Several runs' curves overlaid, one colour per run: losses (train solid, val dashed), val mIoU, val boundary IoU."""
    fig = new_figure(13.0, 4.0)
    axes = fig.subplots(1, 3)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    marker = dict(marker="o", markersize=3.0)
    for (label, rows), colour in zip(runs.items(), colours):
        epochs = [_num(r.get("epoch", i + 1)) for i, r in enumerate(rows)]
        axes[0].plot(epochs, [_num(r.get("train_loss")) for r in rows], color=colour, label=f"{label} train", **marker)
        axes[0].plot(epochs, [_num(r.get("val_loss")) for r in rows], color=colour, linestyle="--", label=f"{label} val", **marker)
        axes[1].plot(epochs, [_num(r.get("val_miou")) for r in rows], color=colour, label=label, **marker)
        axes[2].plot(epochs, [_num(r.get("val_mboundary_iou")) for r in rows], color=colour, label=label, **marker)
    for ax, title in zip(axes, ("loss (train solid, val dashed)", "validation mIoU", "validation boundary IoU")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax is not axes[0]:
            ax.set_ylim(0.0, 1.02)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)


def normalise_rows(mat: Any) -> np.ndarray:
    """Confusion counts -> row shares (recall per true class); an all-zero row stays 0, not NaN."""
    counts = _to_numpy(mat).astype(np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"expected a square (C, C) matrix, got {counts.shape}")
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def plot_confusion(mat: Any, class_names: Sequence[str], path: str | os.PathLike, title: str = "") -> None:
    """Row-normalised confusion heat map: true class on y, predicted on x, percentages annotated."""
    shares = normalise_rows(mat)
    counts = _to_numpy(mat).astype(np.float64)
    n = len(class_names)
    if shares.shape != (n, n):
        raise ValueError(f"confusion matrix is {shares.shape} but there are {n} class names")
    size = 1.3 * n + 2.2
    fig = new_figure(size + 0.6, size)
    ax = fig.subplots()
    im = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    row_totals = counts.sum(axis=1)
    for i in range(n):
        for j in range(n):
            value = shares[i, j]
            ax.text(
                j,
                i,
                # A class absent from the ground truth has no recall: say so instead of "0.0%".
                f"{100 * value:.1f}%" if row_totals[i] > 0 else "-",
                ha="center",
                va="center",
                fontsize=10,
                color="white" if value > 0.5 else "black",
            )
    ax.set_xticks(range(n), labels=list(class_names))
    ax.set_yticks(range(n), labels=[f"{name}\n(n={int(t):,})" for name, t in zip(class_names, row_totals)])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion (rows sum to 100%)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, format=PercentFormatter(xmax=1.0, decimals=0))
    fig.tight_layout()
    save_figure(fig, path)


def plot_class_balance(
    counts: Mapping[str, int] | Sequence[int],
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
    palette: Optional[np.ndarray] = None,
) -> None:
    """Bar chart of pixel shares per class; dict keys not among class_names (e.g. 'ignore') come last."""
    if isinstance(counts, Mapping):
        labels = list(class_names)
        values = [_num(_class_value(counts, i, name)) for i, name in enumerate(class_names)]
        known = set(class_names) | {str(i) for i in range(len(class_names))} | set(range(len(class_names)))
        for key, value in counts.items():
            if key not in known:
                labels.append(str(key))
                values.append(_num(value))
    else:
        values = [_num(v) for v in counts]
        if len(values) != len(class_names):
            raise ValueError(f"{len(values)} counts for {len(class_names)} class names")
        labels = list(class_names)
    values = [0.0 if math.isnan(v) else v for v in values]
    total = sum(values)
    shares = [v / total if total > 0 else 0.0 for v in values]
    palette_colours = class_colours(len(class_names), palette)
    colours = [palette_colours[i] / 255.0 if i < len(class_names) else (0.6, 0.6, 0.6) for i in range(len(labels))]

    fig = new_figure(1.2 * len(labels) + 2.5, 3.6)
    ax = fig.subplots()
    bars = ax.bar(range(len(labels)), [100 * s for s in shares], color=colours, edgecolor="black", linewidth=0.5)
    for bar, share, value in zip(bars, shares, values):
        ax.annotate(
            f"{100 * share:.1f}%\n({int(value):,} px)",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 2),
            textcoords="offset points",
        )
    ax.set_xticks(range(len(labels)), labels=labels)
    ax.set_ylabel("share of pixels (%)")
    ax.set_ylim(0, max(100 * max(shares, default=0.0) * 1.25, 1.0))
    ax.set_title(title or "class balance", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
