"""Evaluation: a model on a split, from one confusion matrix; loading a finished run; the `evaluate` command.

    load_run           run folder -> (config, model with the checkpoint's weights, class names)
    evaluate_batches   the evaluation pass: accumulators (seg_pet.metrics) over every batch (and the mean loss), with optional TTA
    evaluate_split     every metric of a model on a dataset (optionally per image and per group)
    write_details      per_image.csv and worst/ (the lowest-mIoU images as panels)
    evaluate_run       the `evaluate` command

Test-set discipline: training evaluates best.pt on test exactly once and writes
`test_metrics.json`. `evaluate` defaults to the validation split, never writes over the run's
own files, records every test evaluation in the run (seg_pet.testlog), and refuses to look at the
same test set again unless given --force.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from seg_pet.checkpoint import load_checkpoint, load_model_weights
from seg_pet.config import Config, config_to_dict, label_spec, load_config
from seg_pet.data.cache import attach_cache
from seg_pet.data.loaders import make_loader, resolve_num_workers, this_shard
from seg_pet.data.segmentation import SegmentationDataset
from seg_pet.data.sources import build_datasets, build_test_dataset
from seg_pet.data.transforms import denormalize
from seg_pet.metrics import Accumulator, BoundaryIoU, ConfusionMatrix, PerImage, confusion_csv, counts_metrics, format_table
from seg_pet.models import build_model
from seg_pet.runtime.device import Runtime
from seg_pet.runtime.distributed import all_reduce_sum, is_main
from seg_pet.runtime.errors import SegPetError
from seg_pet.runtime.fileio import atomic_write, write_json
from seg_pet.runtime.paths import check_output, is_writable_dir
from seg_pet.runtime.runpaths import RunPaths
from seg_pet.testlog import LOG_NAME, earlier_looks, record_test_evaluation
from seg_pet.tta import tta_logits
from seg_pet.viz import plot_confusion, save_panel


class LoadedRun(NamedTuple):
    cfg: Config
    model: nn.Module  # on the CPU, in eval mode
    class_names: list[str]
    state: dict[str, Any]  # the checkpoint (epoch, metrics, ...)
    checkpoint_path: Path


def checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    """best | last -> the run's own file; anything else is a path."""
    return RunPaths(run_dir).checkpoint(checkpoint) if checkpoint in ("best", "last") else Path(checkpoint)


def load_run(run_dir: str | Path, checkpoint: str = "best", overrides: Iterable[str] = ()) -> LoadedRun:
    """A finished (or stopped) run: its config (with `--set` overrides), the model with the checkpoint's weights.

    The checkpoint holds every weight, so the encoder is rebuilt without downloading pretrained weights.
    """
    run_dir = Path(run_dir)
    cfg = load_config(RunPaths(run_dir).require_config("--run").config, list(overrides))
    path = checkpoint_path(run_dir, checkpoint)
    state = load_checkpoint(path)
    names = list(label_spec(cfg.data).names)  # a run folder's config.yaml records its classes
    model = build_model(dataclasses.replace(cfg.model, encoder_weights=None), len(names))
    load_model_weights(model, state, path, names, config_to_dict(cfg)["model"])
    return LoadedRun(cfg, model.eval(), names, state, path)


def split_accumulators(names: list[str], cfg: Config, per_image: bool = False) -> list[Accumulator]:
    """What an evaluation counts: the confusion matrix, boundary IoU, and with `per_image` each image's counts."""
    out: list[Accumulator] = [ConfusionMatrix(len(names)), BoundaryIoU(len(names), cfg.eval.boundary_width)]
    if per_image:
        out.append(PerImage(len(names), cfg.eval.boundary_width))
    return out


@torch.inference_mode()
def evaluate_batches(
    model: nn.Module,
    loader: Iterable,
    names: list[str],
    runtime: Runtime,
    *,
    accumulators: Optional[list[Accumulator]] = None,
    loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    desc: str = "val",
    tta: str = "none",
) -> dict[str, Any]:
    """One dict: every accumulator's `compute(names)` (default: the confusion matrix alone) and "loss",
    the mean loss per batch (NaN without loss_fn).

    When targets are larger than the model input (native-resolution evaluation), logits are
    resized bilinearly to the target size before the argmax. Native-resolution batches carry
    a list of masks of differing sizes (data.loaders.collate_native): each image is scored at its own
    size, and the batch loss is the mean of the per-image losses. `tta` (seg_pet.tta): the logits
    are averaged over flipped / rescaled passes before all of this; "none" is one plain pass.

    Under torchrun each process scores its own share of the images (data.loaders.val_loader_for);
    the accumulators and loss sums of all processes are added up at the end (`sync`), so every process
    returns what one process would have computed over all the images with the same weights.
    """
    model.eval()
    accumulators = accumulators if accumulators is not None else [ConfusionMatrix(len(names))]
    total_loss, batches = 0.0, 0
    device = runtime.device
    for images, targets in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None if is_main() else True):
        images = runtime.to_device(images)
        if isinstance(targets, (list, tuple)):
            logits = tta_logits(model, images, tta, runtime.autocast)
            batch_loss = 0.0
            for one_logits, target in zip(logits, targets):
                target = target.to(device, non_blocking=True)[None]
                one_logits = F.interpolate(one_logits[None], size=target.shape[-2:], mode="bilinear", align_corners=False)
                if loss_fn is not None:
                    batch_loss += loss_fn(one_logits, target).item() / len(targets)
                pred = one_logits.argmax(dim=1)
                for acc in accumulators:
                    acc.update(target, pred)
            if loss_fn is not None:
                total_loss += batch_loss
                batches += 1
            continue
        targets = targets.to(device, non_blocking=True)
        logits = tta_logits(model, images, tta, runtime.autocast)
        if logits.shape[-2:] != targets.shape[-2:]:
            logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
        if loss_fn is not None:
            total_loss += loss_fn(logits, targets).item()
            batches += 1
        pred = logits.argmax(dim=1)
        for acc in accumulators:
            acc.update(targets, pred)
    out: dict[str, Any] = {}
    for acc in accumulators:
        acc.sync()
        out.update(acc.compute(names))
    total_loss, batches = all_reduce_sum(torch.tensor([total_loss, batches], dtype=torch.float64)).tolist()
    out["loss"] = total_loss / batches if batches else math.nan
    return out


def evaluate_split(
    model: nn.Module,
    dataset: SegmentationDataset,
    cfg: Config,
    runtime: Runtime,
    names: list[str],
    desc: str = "eval",
    per_image: bool = False,
) -> dict[str, Any]:
    """All metrics of `model` on `dataset`, plus the confusion matrix itself (under torchrun each process
    scores its share; every process returns the metrics of all the images). With `per_image`: also
    "per_image" (one row per image, see per_image_rows) and "groups" (per_group; absent without groups)."""
    loader = make_loader(
        dataset,
        cfg.data.batch_size,
        shuffle=False,
        num_workers=resolve_num_workers(cfg.data.num_workers),
        pin_memory=runtime.pin_memory,
        shard=this_shard(),
    )
    out = evaluate_batches(
        model, loader, names, runtime, accumulators=split_accumulators(names, cfg, per_image), desc=desc, tta=cfg.eval.tta
    )
    out.pop("loss")
    counts = out.pop("per_image_counts", None)
    metrics = {"num_images": len(dataset), **out}
    if counts is not None:
        metrics["per_image"] = per_image_rows(dataset, counts, names)
        groups = per_group(dataset, counts, names)
        if groups:
            metrics["groups"] = groups
    return metrics


def per_image_rows(dataset: SegmentationDataset, counts: list[list[int]], names: list[str]) -> list[dict[str, Any]]:
    """One row per image, in dataset order: image, its group labels, per-class IoU, mIoU, pixel accuracy, boundary IoU."""
    rows = []
    for idx, row in enumerate(counts):
        m = counts_metrics([row], names)
        rows.append(
            {
                "index": idx,
                "image": dataset.name(idx),
                "group": dataset.group(idx),
                "iou": m["iou"],
                "miou": m["miou"],
                "pixel_acc": m["pixel_acc"],
                "boundary_iou": m["mboundary_iou"],
            }
        )
    return rows


def per_group(dataset: SegmentationDataset, counts: list[list[int]], names: list[str]) -> dict[str, list[dict[str, Any]]]:
    """For each group key (Pet: breed, species), one row per value: images, and the metrics over that group's
    images summed before dividing (dataset-level within the group). {} for a source without groups."""
    members: dict[str, dict[str, list[list[int]]]] = {}
    for idx, row in enumerate(counts):
        for key, value in (dataset.group(idx) or {}).items():
            members.setdefault(key, {}).setdefault(str(value), []).append(row)
    table: dict[str, list[dict[str, Any]]] = {}
    for key, by_value in members.items():
        table[key] = [{key: value, "num_images": len(rows), **counts_metrics(rows, names)} for value, rows in sorted(by_value.items())]
    return table


def format_groups(groups: dict[str, list[dict[str, Any]]], names: list[str]) -> str:
    """Console tables of `per_group`: one per group key, a row per value, lowest mIoU first."""
    lines = []
    for key, rows in groups.items():
        width = max(len(key), *(len(str(r[key])) for r in rows))
        header = f"{key:<{width}} | images |   mIoU | bIoU   | " + " | ".join(f"{n:>{max(9, len(n))}}" for n in names)
        lines += ["", header, "-" * len(header)]
        for r in sorted(rows, key=lambda r: (math.isnan(r["miou"]), r["miou"])):
            ious = " | ".join(f"{_fmt(r['iou'][n]):>{max(9, len(n))}}" for n in names)
            lines.append(f"{str(r[key]):<{width}} | {r['num_images']:>6} | {_fmt(r['miou']):>6} | {_fmt(r['mboundary_iou']):>6} | {ious}")
    return "\n".join(lines)


def _fmt(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.3f}"


def write_details(
    folder: Path, dataset: SegmentationDataset, metrics: dict[str, Any], model: nn.Module, cfg: Config, runtime: Runtime, names: list[str]
) -> None:
    """per_image.csv (one row per image) and worst/ (the eval.worst lowest-mIoU images as panels:
    image | truth | prediction | error map, at the model's input size) in `folder`."""
    rows = metrics["per_image"]
    keys = sorted({k for r in rows for k in (r["group"] or {})})
    with atomic_write(folder / "per_image.csv") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image", *keys, *(f"iou_{n}" for n in names), "miou", "pixel_acc", "boundary_iou"])
        for r in rows:
            values = [r["iou"][n] for n in names] + [r["miou"], r["pixel_acc"], r["boundary_iou"]]
            writer.writerow(
                [r["image"], *((r["group"] or {}).get(k, "") for k in keys), *("" if math.isnan(v) else f"{v:.6f}" for v in values)]
            )
    ranked = sorted((r for r in rows if not math.isnan(r["miou"])), key=lambda r: r["miou"])[: cfg.eval.worst]
    model.eval()
    for rank_, r in enumerate(ranked, start=1):
        with torch.inference_mode():
            image, target = dataset[r["index"]]
            if target.shape != image.shape[-2:]:  # native-resolution masks: the panel shows them at the model's size
                target = F.interpolate(target[None, None].float(), size=image.shape[-2:], mode="nearest")[0, 0].long()
            logits = tta_logits(model, runtime.to_device(image.unsqueeze(0)), cfg.eval.tta, runtime.autocast)
            pred = logits.float().argmax(1)[0].cpu().numpy()
        group = ", ".join((r["group"] or {}).values())
        title = f"#{rank_} {r['image']}" + (f" ({group})" if group else "") + f": mIoU {_fmt(r['miou'])}"
        save_panel(
            folder / "worst" / f"{rank_:02d}_{r['image']}.png",
            denormalize(image),
            target.numpy(),
            pred,
            names,
            title=title,
            errors=True,
            palette=dataset.spec.palette_array(),
        )


def write_test_outputs(run_dir: Path, metrics: dict[str, Any], names: list[str]) -> None:
    """test_metrics.json is written last: its presence means the run is complete (resume checks it).
    The per-image rows go to per_image.csv (write_details), not into the JSON."""
    metrics = {k: v for k, v in metrics.items() if k != "per_image"}
    matrix = torch.tensor(metrics["confusion"])
    paths = RunPaths(run_dir)
    with atomic_write(paths.test_confusion) as f:
        f.write(confusion_csv(matrix, names))
    plot_confusion(matrix, names, paths.test_confusion_plot, title=f"test, epoch {metrics['checkpoint_epoch']} (row-normalised)")
    write_json(paths.test_metrics, metrics)


# The keys that decide which trainval images are the validation split (data.oxford.stratified_split).
SPLIT_KEYS = (("data", "val_fraction"), ("run", "seed"))


def check_split_unchanged(cfg: Config, trained: Config, split: str) -> None:
    """`--set` may not change which images count as validation: images the run trained on would be scored as held out."""
    if split != "val":
        return
    for section, key in SPLIT_KEYS:
        new, old = getattr(getattr(cfg, section), key), getattr(getattr(trained, section), key)
        if new != old:
            raise SegPetError(
                f"--set {section}.{key}={new}: would change which images count as validation (the run used {old}, and trained "
                "on the rest); evaluate keeps the run's own split: drop this --set"
            )


def evaluate_run(
    run_dir: str | Path,
    *,
    split: str = "val",
    checkpoint: str = "best",
    overrides: tuple[str, ...] | list[str] = (),
    out: Optional[str | Path] = None,
    details: Optional[str | Path] = None,
    force: bool = False,
    log=print,
) -> dict[str, Any]:
    """`details`: a new (or empty) folder for per_image.csv and worst/ (write_details)."""
    run_dir = Path(run_dir)
    paths = RunPaths(run_dir).require_config("--run")
    if out is not None:
        check_output(out, "--out", "file")  # before the work: never write over the run's own files
    if details is not None:
        check_output(details, "--details", "dir")
        if Path(details).is_dir() and any(Path(details).iterdir()):
            raise SegPetError(f"--details {details}: not empty; give a new folder (nothing is written over)")
    cfg, model, names, state, path = load_run(run_dir, checkpoint, overrides)
    check_split_unchanged(cfg, load_config(run_dir / "config.yaml"), split)
    if split == "val" and cfg.data.val_fraction == 0:
        raise SegPetError(
            f"--run {run_dir}: trained on all of trainval (data.val_fraction: 0), so it has no validation split; use --split test"
        )
    looks = earlier_looks(run_dir, cfg, load_config(paths.config)) if split == "test" else []
    if looks and not force:
        raise SegPetError(
            f"{run_dir} was already evaluated on the test split of {cfg.data.root} ({len(looks)} time(s), recorded in {LOG_NAME}); "
            "the test set is for one final number, not for model selection: use --split val, or --force if you really mean it"
        )
    if split == "test" and not is_writable_dir(run_dir):
        raise SegPetError(f"--run {run_dir}: not writable; a test evaluation is recorded in the run ({LOG_NAME})")
    runtime = Runtime.create(cfg.train.device, amp=cfg.train.amp, channels_last=cfg.train.channels_last)
    dataset = build_test_dataset(cfg) if split == "test" else build_datasets(cfg)["val"]
    if split == "val" and cfg.data.cache == "disk":  # reuse the run's validation cache (bit-identical to decoding)
        attach_cache(
            dataset,
            "disk",
            data_root=cfg.data.root,
            run_dir=run_dir,
            num_workers=resolve_num_workers(cfg.data.num_workers),
            log=log,
            name=split,
        )
    model = runtime.place(model)
    metrics = evaluate_split(model, dataset, cfg, runtime, names, desc=split, per_image=True)
    metrics = {"split": split, "checkpoint": str(checkpoint), "checkpoint_epoch": state["epoch"], "tta": cfg.eval.tta, **metrics}
    tta_note = "" if cfg.eval.tta == "none" else f", TTA {cfg.eval.tta}"
    log(f"{split} split, {checkpoint} checkpoint (epoch {state['epoch']}{tta_note}), {metrics['num_images']} images:")
    log(format_table(metrics, names))
    if metrics.get("groups"):
        log(format_groups(metrics["groups"], names))
    if split == "test":
        record_test_evaluation(run_dir, cfg, command="evaluate", checkpoint=path, epoch=state["epoch"], forced=bool(looks))
    if details is not None:
        write_details(Path(details), dataset, metrics, model, cfg, runtime, names)
        log(f"per-image results and the {min(cfg.eval.worst, len(dataset))} lowest-mIoU images written to {details}")
    if out is not None:
        write_json(out, {k: v for k, v in metrics.items() if k != "per_image"})
        log(f"metrics written to {out}")
    return metrics
