"""Evaluating a model on a split, and the `evaluate` command for a finished run.

Test-set discipline: training evaluates best.pt on test exactly once and writes
`test_metrics.json`. `evaluate` defaults to the validation split, never overwrites
`test_metrics.json`, and refuses to look at test again unless given --force.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from seg_pet.cache import attach_cache
from seg_pet.checkpoint import load_checkpoint, load_model_weights
from seg_pet.config import Config, config_to_dict, load_config
from seg_pet.data import PetSegmentation, build_datasets, build_test_dataset, class_names, make_loader, resolve_num_workers
from seg_pet.engine import evaluate
from seg_pet.errors import SegPetError
from seg_pet.fileio import atomic_write, write_json
from seg_pet.metrics import compute_metrics, confusion_csv, format_table
from seg_pet.models import build_model
from seg_pet.visualisation import plot_confusion


def evaluate_split(model: torch.nn.Module, dataset: PetSegmentation, cfg: Config, device: torch.device, names: list[str], desc: str = "eval") -> dict[str, Any]:
    """All metrics of `model` on `dataset` from one confusion matrix, plus the matrix itself."""
    from seg_pet.train import amp_dtype_for  # the device/AMP policy lives with training

    loader = make_loader(dataset, cfg.data.batch_size, shuffle=False, num_workers=resolve_num_workers(cfg.data.num_workers),
                         pin_memory=device.type == "cuda")
    matrix, _ = evaluate(model, loader, len(names), device, amp_dtype=amp_dtype_for(device, cfg.train.amp), desc=desc,
                         channels_last=device.type == "cuda")
    metrics = compute_metrics(matrix.mat, names)
    return {"num_images": len(dataset), **metrics, "confusion": matrix.mat.tolist()}


def write_test_outputs(run_dir: Path, metrics: dict[str, Any], names: list[str]) -> None:
    """test_metrics.json is written last: its presence means the run is complete (resume checks it)."""
    matrix = torch.tensor(metrics["confusion"])
    with atomic_write(run_dir / "test_confusion.csv") as f:
        f.write(confusion_csv(matrix, names))
    plot_confusion(matrix, names, run_dir / "plots" / "test_confusion.png", title=f"test, epoch {metrics['checkpoint_epoch']} (row-normalised)")
    write_json(run_dir / "test_metrics.json", metrics)


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
    if split == "test" and (run_dir / "test_metrics.json").exists() and not force:
        raise SegPetError(
            f"{run_dir} was already evaluated on the test split (test_metrics.json); the test set is for one final "
            "number, not for model selection: use --split val, or --force if you really mean it"
        )
    if out is not None and Path(out).resolve() == (run_dir / "test_metrics.json").resolve():
        raise SegPetError(f"--out {out}: refusing to overwrite the training run's test_metrics.json")
    cfg = load_config(run_dir / "config.yaml", overrides)
    ckpt_path = run_dir / "checkpoints" / f"{checkpoint}.pt" if checkpoint in ("best", "last") else Path(checkpoint)
    state = load_checkpoint(ckpt_path)
    names = class_names(cfg.data.border)
    from seg_pet.train import resolve_device

    device = resolve_device(cfg.train.device)
    dataset = build_test_dataset(cfg) if split == "test" else build_datasets(cfg)["val"]
    if split == "val" and cfg.data.cache == "disk":  # reuse the run's validation cache (bit-identical to decoding)
        attach_cache(dataset, "disk", data_root=cfg.data.root, run_dir=run_dir, num_workers=resolve_num_workers(cfg.data.num_workers), log=log, name=split)
    model = build_model(_without_download(cfg).model, len(names))
    load_model_weights(model, state, ckpt_path, names, config_to_dict(cfg)["model"])
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    metrics = evaluate_split(model, dataset, cfg, device, names, desc=split)
    metrics = {"split": split, "checkpoint": str(checkpoint), "checkpoint_epoch": state["epoch"], **metrics}
    log(f"{split} split, {checkpoint} checkpoint (epoch {state['epoch']}), {metrics['num_images']} images:")
    log(format_table(metrics, names))
    if out is not None:
        write_json(out, metrics)
        log(f"metrics written to {out}")
    return metrics


def _without_download(cfg: Config) -> Config:
    """The checkpoint holds every weight, so the encoder needs no pretrained download to be rebuilt."""
    import dataclasses

    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, encoder_weights=None))
