"""Evaluation: a model on a split, from one confusion matrix; loading a finished run; the `evaluate` command.

    load_run           run folder -> (config, model with the checkpoint's weights, class names)
    evaluate_batches   the evaluation pass: a confusion matrix over every batch (and the mean loss), with optional TTA
    evaluate_split     every metric of a model on a dataset
    evaluate_run       the `evaluate` command

Test-set discipline: training evaluates best.pt on test exactly once and writes
`test_metrics.json`. `evaluate` defaults to the validation split, never writes over the run's
own files, records every test evaluation in the run (seg_pet.testlog), and refuses to look at the
same test set again unless given --force.
"""

from __future__ import annotations

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
from seg_pet.config import Config, config_to_dict, load_config
from seg_pet.data.cache import attach_cache
from seg_pet.data.loaders import make_loader, resolve_num_workers, this_shard
from seg_pet.data.oxford import PetSegmentation
from seg_pet.data.sources import build_datasets, build_test_dataset
from seg_pet.labels import class_names
from seg_pet.metrics import ConfusionMatrix, compute_metrics, confusion_csv, format_table
from seg_pet.models import build_model
from seg_pet.runtime.device import Runtime
from seg_pet.runtime.distributed import all_reduce_sum, is_main
from seg_pet.runtime.errors import SegPetError
from seg_pet.runtime.fileio import atomic_write, write_json
from seg_pet.runtime.paths import check_output, is_writable_dir
from seg_pet.testlog import LOG_NAME, earlier_looks, record_test_evaluation
from seg_pet.tta import tta_logits
from seg_pet.viz import plot_confusion


class LoadedRun(NamedTuple):
    cfg: Config
    model: nn.Module  # on the CPU, in eval mode
    class_names: list[str]
    state: dict[str, Any]  # the checkpoint (epoch, metrics, ...)
    checkpoint_path: Path


def checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    """best | last -> the run's own file; anything else is a path."""
    return run_dir / "checkpoints" / f"{checkpoint}.pt" if checkpoint in ("best", "last") else Path(checkpoint)


def load_run(run_dir: str | Path, checkpoint: str = "best", overrides: Iterable[str] = ()) -> LoadedRun:
    """A finished (or stopped) run: its config (with `--set` overrides), the model with the checkpoint's weights.

    The checkpoint holds every weight, so the encoder is rebuilt without downloading pretrained weights.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise SegPetError(f"--run {run_dir}: not a seg_pet run folder (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml", list(overrides))
    path = checkpoint_path(run_dir, checkpoint)
    state = load_checkpoint(path)
    names = class_names(cfg.data.border)
    model = build_model(dataclasses.replace(cfg.model, encoder_weights=None), len(names))
    load_model_weights(model, state, path, names, config_to_dict(cfg)["model"])
    return LoadedRun(cfg, model.eval(), names, state, path)


@torch.inference_mode()
def evaluate_batches(
    model: nn.Module,
    loader: Iterable,
    num_classes: int,
    runtime: Runtime,
    *,
    loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    desc: str = "val",
    tta: str = "none",
) -> tuple[ConfusionMatrix, float]:
    """Confusion matrix over the whole loader, and the mean loss per batch (NaN without loss_fn).

    When targets are larger than the model input (native-resolution evaluation), logits are
    resized bilinearly to the target size before the argmax. Native-resolution batches carry
    a list of masks of differing sizes (data.collate_native): each image is scored at its own
    size, and the batch loss is the mean of the per-image losses. `tta` (seg_pet.tta): the logits
    are averaged over flipped / rescaled passes before all of this; "none" is one plain pass.

    Under torchrun each process scores its own share of the images (data.loaders.val_loader_for);
    the matrices and loss sums of all processes are added up at the end, so every process returns
    what one process would have computed over all the images with the same weights.
    """
    model.eval()
    matrix = ConfusionMatrix(num_classes)
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
                matrix.update(target, one_logits.argmax(dim=1))
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
        matrix.update(targets, logits.argmax(dim=1))
    all_reduce_sum(matrix.mat)
    total_loss, batches = all_reduce_sum(torch.tensor([total_loss, batches], dtype=torch.float64)).tolist()
    return matrix, (total_loss / batches if batches else math.nan)


def evaluate_split(
    model: nn.Module, dataset: PetSegmentation, cfg: Config, runtime: Runtime, names: list[str], desc: str = "eval"
) -> dict[str, Any]:
    """All metrics of `model` on `dataset` from one confusion matrix, plus the matrix itself (under torchrun
    each process scores its share; every process returns the metrics of all the images)."""
    loader = make_loader(
        dataset,
        cfg.data.batch_size,
        shuffle=False,
        num_workers=resolve_num_workers(cfg.data.num_workers),
        pin_memory=runtime.pin_memory,
        shard=this_shard(),
    )
    matrix, _ = evaluate_batches(model, loader, len(names), runtime, desc=desc, tta=cfg.eval.tta)
    metrics = compute_metrics(matrix.mat, names)
    return {"num_images": len(dataset), **metrics, "confusion": matrix.mat.tolist()}


def write_test_outputs(run_dir: Path, metrics: dict[str, Any], names: list[str]) -> None:
    """test_metrics.json is written last: its presence means the run is complete (resume checks it)."""
    matrix = torch.tensor(metrics["confusion"])
    with atomic_write(run_dir / "test_confusion.csv") as f:
        f.write(confusion_csv(matrix, names))
    plot_confusion(
        matrix, names, run_dir / "plots" / "test_confusion.png", title=f"test, epoch {metrics['checkpoint_epoch']} (row-normalised)"
    )
    write_json(run_dir / "test_metrics.json", metrics)


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
    force: bool = False,
    log=print,
) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise SegPetError(f"--run {run_dir}: not a seg_pet run folder (no config.yaml)")
    if out is not None:
        check_output(out, "--out", "file")  # before the work: never write over the run's own files
    cfg, model, names, state, path = load_run(run_dir, checkpoint, overrides)
    check_split_unchanged(cfg, load_config(run_dir / "config.yaml"), split)
    if split == "val" and cfg.data.val_fraction == 0:
        raise SegPetError(
            f"--run {run_dir}: trained on all of trainval (data.val_fraction: 0), so it has no validation split; use --split test"
        )
    looks = earlier_looks(run_dir, cfg, load_config(run_dir / "config.yaml")) if split == "test" else []
    if looks and not force:
        raise SegPetError(
            f"{run_dir} was already evaluated on the test split of {cfg.data.root} ({len(looks)} time(s), recorded in {LOG_NAME}); "
            "the test set is for one final number, not for model selection: use --split val, or --force if you really mean it"
        )
    if split == "test" and not is_writable_dir(run_dir):
        raise SegPetError(f"--run {run_dir}: not writable; a test evaluation is recorded in the run ({LOG_NAME})")
    runtime = Runtime.create(cfg.train.device, amp=cfg.train.amp)
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
    metrics = evaluate_split(model, dataset, cfg, runtime, names, desc=split)
    metrics = {"split": split, "checkpoint": str(checkpoint), "checkpoint_epoch": state["epoch"], "tta": cfg.eval.tta, **metrics}
    tta_note = "" if cfg.eval.tta == "none" else f", TTA {cfg.eval.tta}"
    log(f"{split} split, {checkpoint} checkpoint (epoch {state['epoch']}{tta_note}), {metrics['num_images']} images:")
    log(format_table(metrics, names))
    if split == "test":
        record_test_evaluation(run_dir, cfg, command="evaluate", checkpoint=path, epoch=state["epoch"], forced=bool(looks))
    if out is not None:
        write_json(out, metrics)
        log(f"metrics written to {out}")
    return metrics
