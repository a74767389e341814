"""The data of one grid row (toy noise at a set foreground ratio, or the Pet slice), and the study's networks."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import segmentation_models_pytorch as smp
import torch
from torch import nn

from seg_pet.config import Config, DataConfig, RunConfig
from seg_pet.data.sources import build_datasets
from seg_pet.data.transforms import eval_transforms
from seg_pet.runtime.errors import ConfigError
from seg_pet.study.config import (
    BACKGROUND_ID,
    FOREGROUND_ID,
    PET_FOCUS,
    TOY_CLASSES,
    StudyConfig,
    StudyModelConfig,
    class_names_for,
)


@dataclass
class StudyTask:
    """One row of the grid: a fixed training stream and a held-out set, shared by every run in the row."""

    label: str  # the grid row: "fg 5%" (toy) or "border" (Pet); runs with the same label form one row of every table
    seed: int
    fg_ratio: float  # share of the focus class among training pixels (toy: as requested)
    class_names: list[str]
    focus: str
    in_channels: int
    batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]]  # step -> (x, y) on the device
    eval_x: torch.Tensor
    eval_y: torch.Tensor
    pixel_counts: list[int]  # per class over the training data, for wce's weights


def make_noise_batch(n: int, size: int, fg_ratio: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(x float (n, 1, size, size) uniform in [0, 1), y int64 (n, size, size)).

    A pixel is foreground when x > t = 1 - fg_ratio; for uniform x, P(x > t) = fg_ratio.
    """
    x = torch.rand(n, 1, size, size, generator=generator)
    y = torch.where(x[:, 0] > 1.0 - fg_ratio, FOREGROUND_ID, BACKGROUND_ID).long()
    return x, y


def _ratio_seed(seed: int, fg_ratio: float) -> int:
    return seed * 1_000_003 + round(fg_ratio * 1e6)


def toy_task(cfg: StudyConfig, fg_ratio: float, seed: int, device: torch.device) -> StudyTask:
    size, batch_size = cfg.data.image_size, cfg.data.batch_size
    base = _ratio_seed(seed, fg_ratio)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        # One generator per step: batch `step` is the same for every run, whatever ran before.
        x, y = make_noise_batch(batch_size, size, fg_ratio, torch.Generator().manual_seed(base + 7919 * (step + 1)))
        return x.to(device), y.to(device)

    eval_x, eval_y = make_noise_batch(cfg.data.eval_images, size, fg_ratio, torch.Generator().manual_seed(base))
    counts = torch.zeros(2, dtype=torch.int64)
    for step in range(min(cfg.optim.steps, 16)):  # the stream is i.i.d.; a few batches estimate its balance
        counts += torch.bincount(batch(step)[1].flatten().cpu(), minlength=2)
    return StudyTask(
        label=f"fg {100 * fg_ratio:g}%",
        seed=seed,
        fg_ratio=fg_ratio,
        class_names=list(TOY_CLASSES),
        focus=TOY_CLASSES[FOREGROUND_ID],
        in_channels=1,
        batch=batch,
        eval_x=eval_x.to(device),
        eval_y=eval_y.to(device),
        pixel_counts=counts.tolist(),
    )


def _stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    images, masks = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(images), torch.stack(masks)


def pet_task(cfg: StudyConfig, seed: int, device: torch.device) -> StudyTask:
    """The 3-class trimap task (pet, background, border) on the real slice; border is the minority.

    Images are decoded once, resized to image_size (no random crop: the study is about the loss,
    and a fixed set makes runs comparable) and kept in memory; the only augmentation is a
    seeded horizontal flip, identical for every run.
    """
    d = cfg.data
    data_cfg = Config(
        run=RunConfig(seed=seed),
        data=DataConfig(source="oxford", root=d.root, image_size=d.image_size, border="class", val_fraction=d.val_fraction),
    )
    datasets = build_datasets(data_cfg)
    for ds in datasets.values():
        ds.transforms = eval_transforms(d.image_size)
    train_x, train_y = _stack(datasets["train"])
    eval_x, eval_y = _stack(datasets["val"])
    names = class_names_for("pet")
    counts = torch.bincount(train_y.flatten(), minlength=len(names))[: len(names)].tolist()
    focus = names.index(PET_FOCUS)
    share = counts[focus] / max(sum(counts), 1)

    # The batch schedule: epoch-wise shuffles and per-image flips, drawn once from the seed.
    g = torch.Generator().manual_seed(seed)
    n = len(train_x)
    order = torch.cat([torch.randperm(n, generator=g) for _ in range(math.ceil(cfg.optim.steps * d.batch_size / n) + 1)])
    flips = torch.rand(len(order), generator=g) < 0.5
    train_x, train_y = train_x.to(device), train_y.to(device)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        sl = slice(step * d.batch_size, (step + 1) * d.batch_size)
        idx, flip = order[sl].to(device), flips[sl].to(device)
        x, y = train_x[idx], train_y[idx]
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = torch.where(flip[:, None, None], y.flip(-1), y)
        return x, y

    return StudyTask(
        label=PET_FOCUS,
        seed=seed,
        fg_ratio=share,
        class_names=names,
        focus=PET_FOCUS,
        in_channels=3,
        batch=batch,
        eval_x=eval_x.to(device),
        eval_y=eval_y.to(device),
        pixel_counts=counts,
    )


def build_tiny_net(in_channels: int, num_classes: int, channels: int, layers: int, batch_norm: bool) -> nn.Sequential:
    """`layers` x (3x3 conv -> [BN] -> ReLU), then a 1x1 conv to class logits.

    With BN the convs have no bias (BN's shift replaces it), as in every BN network.
    """
    modules: list[nn.Module] = []
    c_in = in_channels
    for _ in range(layers):
        modules.append(nn.Conv2d(c_in, channels, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            modules.append(nn.BatchNorm2d(channels))
        modules.append(nn.ReLU(inplace=True))
        c_in = channels
    modules.append(nn.Conv2d(c_in, num_classes, 1))
    return nn.Sequential(*modules)


def build_study_model(cfg: StudyModelConfig, in_channels: int, num_classes: int, batch_norm: bool) -> nn.Module:
    if cfg.arch == "tiny":
        return build_tiny_net(in_channels, num_classes, cfg.channels, cfg.layers, batch_norm)
    try:
        model = smp.Unet(
            encoder_name=cfg.encoder,
            encoder_weights=None,
            in_channels=in_channels,
            classes=num_classes,
            decoder_channels=tuple(cfg.decoder_channels),
            decoder_use_norm="batchnorm" if batch_norm else False,
        )
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"model.encoder: {str(exc).splitlines()[0]}") from None
    if not batch_norm:
        # The ResNet encoder has BN after every conv; "without BN" has to remove those too.
        _strip_batch_norm(model)
    return model


def _strip_batch_norm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.Identity())
        else:
            _strip_batch_norm(child)
