"""The study's config: its own sections, declared with `option(...)` and built with the public seg_pet.config helpers."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from seg_pet.config import apply_override, build_section, option, read_yaml, suggest
from seg_pet.config.loading import schema_sections
from seg_pet.labels import BACKGROUND, pet_spec
from seg_pet.runtime.errors import ConfigError
from seg_pet.study.losses import LOSS_FAMILIES
from seg_pet.training.optim import build_optimizer

TOY_CLASSES = ["foreground", BACKGROUND]  # same order as the Pet classes: the object first, background second
FOREGROUND_ID, BACKGROUND_ID = 0, 1
PET_FOCUS = "border"  # the minority class of the 3-class trimap task (~12 % of pixels)
CONFIG_NAME = "study_config.yaml"


MAX_SEED = 2**32 - 1
MAX_LIST = 64  # seeds, fg_ratios: each is a whole repeat of the grid
MAX_ACTIVATION = 2**28  # values of one layer's activations (batch x channels x pixels): 1 GiB of float32


def list_option(default: list, help: str, **bounds: Any) -> Any:
    """`option` for a list key: a dataclass needs a factory for a mutable default; `bounds` (ge, le...) apply to each item."""
    return field(default_factory=lambda: list(default), metadata={"help": help, **bounds})


@dataclass
class StudySection:
    name: str = option("loss_study", "the output folder is `<output_dir>/<name>/`")
    output_dir: str = option("outputs", "parent of the study folder")
    seeds: list[int] = list_option(
        [0], "one repeat of the whole grid per seed (data stream, initial weights, Pet split)", ge=0, le=MAX_SEED
    )
    device: str = option("auto", "auto | cpu | cuda | cuda:N")
    losses: str = option(
        "project", "loss family: `classic` (the original's formulas) or `project` (seg_pet.losses)", choices=tuple(LOSS_FAMILIES)
    )
    log_every: int = option(
        10, "every loss's value and gradient norm are logged at step 1, every N steps and the last step", ge=1, le=10**6
    )
    converged_min_iou: float = option(0.9, "IoU rule: every class's held-out IoU >= this", gt=0.0, le=1.0)
    converged_acc_gap: float = option(
        0.5, "accuracy rule: accuracy >= base rate + this share of the gap from base rate to 1", gt=0.0, lt=1.0
    )
    cpu_threads: Optional[int] = option(1, "torch intra-op threads on CPU; null = torch's default (all cores)", ge=1, le=1024)


@dataclass
class StudyDataConfig:
    source: str = option("toy", "toy (thresholded noise) | pet (the real trimaps, border as minority)", choices=("toy", "pet"))
    image_size: int = option(32, "pixels per side", ge=4, le=1024)
    batch_size: int = option(8, "images per training step", ge=1, le=4096)
    fg_ratios: list[float] = list_option([0.05, 0.5, 0.95], "toy only: one grid row per foreground share")
    eval_images: int = option(64, "toy only: held-out noise images scored at the end of each run", ge=1, le=65536)
    root: str = option("../shared/data", "pet only: the folder that holds oxford-iiit-pet/")
    val_fraction: float = option(0.2, "pet only: share of trainval held out and scored at the end", gt=0.0, lt=1.0)


@dataclass
class StudyModelConfig:
    arch: str = option("tiny", "tiny (a few 3x3 convs) | unet (smp Unet, random init)", choices=("tiny", "unet"))
    channels: int = option(16, "tiny only: channels of every 3x3 conv", ge=1, le=4096)
    layers: int = option(3, "tiny only: 3x3 conv layers before the 1x1 classifier", ge=1, le=256)
    encoder: str = option("resnet18", "unet only")
    decoder_channels: list[int] = list_option([256, 128, 64, 32, 16], "unet only: 5 numbers (smp's default)", ge=1, le=4096)


@dataclass
class StudyGridConfig:
    losses: list[str] = list_option(["ce", "dice", "dice_sq", "dice_fg", "dice_fg_sq"], "losses of the `study.losses` family")
    batch_norm: list[bool] = list_option([False, True], "BN before each nonlinearity off / on")
    optimizers: list[str] = list_option(["adam", "sgd"], "adam | sgd (plain) | sgd_momentum")


@dataclass
class StudyOptimConfig:
    steps: int = option(250, "training steps per run", ge=1, le=10**7)
    adam_lr: float = option(3e-3, "Adam's constant learning rate", gt=0.0)
    sgd_lr: float = option(0.1, "the constant learning rate of both SGDs", gt=0.0)
    sgd_momentum: float = option(0.9, "sgd_momentum only (plain `sgd` has none)", gt=0.0, lt=1.0)


@dataclass
class StudyConfig:
    study: StudySection = field(default_factory=StudySection)
    data: StudyDataConfig = field(default_factory=StudyDataConfig)
    model: StudyModelConfig = field(default_factory=StudyModelConfig)
    grid: StudyGridConfig = field(default_factory=StudyGridConfig)
    optim: StudyOptimConfig = field(default_factory=StudyOptimConfig)

    @property
    def out_dir(self) -> Path:
        return Path(self.study.output_dir) / self.study.name


# Optimisers by name: each builds from the optim section, with a constant learning rate and no weight decay
# (the study compares losses, not schedules). Plain SGD is the original's; sgd_momentum is the project's earlier choice.
OPTIMIZERS: dict[str, Any] = {
    "adam": lambda o, params: build_optimizer("adam", params, lr=o.adam_lr),
    "sgd": lambda o, params: build_optimizer("sgd", params, lr=o.sgd_lr),
    "sgd_momentum": lambda o, params: build_optimizer("sgd", params, lr=o.sgd_lr, momentum=o.sgd_momentum),
}


def study_optimizer(name: str, cfg: StudyOptimConfig, params) -> torch.optim.Optimizer:
    return OPTIMIZERS[name](cfg, params)


# Keys that only mean something for one data source or architecture: setting one for the
# other is an error (as with loss options), so a config never silently ignores a setting.
_ONLY_FOR = {
    "data.fg_ratios": ("data.source", "toy"),
    "data.eval_images": ("data.source", "toy"),
    "data.root": ("data.source", "pet"),
    "data.val_fraction": ("data.source", "pet"),
    "model.channels": ("model.arch", "tiny"),
    "model.layers": ("model.arch", "tiny"),
    "model.encoder": ("model.arch", "unet"),
    "model.decoder_channels": ("model.arch", "unet"),
}


def load_study_config(path: str | Path | None, overrides: Iterable[str] = ()) -> StudyConfig:
    """Read a study YAML (or only defaults when `path` is None), apply `--set` overrides, validate."""
    raw: dict[str, Any] = read_yaml(path) if path is not None else {}
    for item in overrides:
        apply_override(raw, item)
    return study_config_from_dict(raw)


def study_config_from_dict(raw: dict[str, Any]) -> StudyConfig:
    sections = schema_sections(raw, StudyConfig, "study config")
    built = {name: build_section(name, cls, raw.get(name) or {}) for name, cls in sections.items()}
    cfg = StudyConfig(**built)
    for key, (selector, wanted) in _ONLY_FOR.items():
        section, name = key.split(".")
        sel_section, sel_name = selector.split(".")
        if name in (raw.get(section) or {}) and getattr(getattr(cfg, sel_section), sel_name) != wanted:
            raise ConfigError(f"{key} applies only to {selector}: {wanted}; remove it")
    validate_study(cfg)
    return cfg


def study_config_to_dict(cfg: StudyConfig) -> dict[str, Any]:
    """The config as a dict without the keys that do not apply, so the saved file loads again."""
    raw = dataclasses.asdict(cfg)
    for key, (selector, wanted) in _ONLY_FOR.items():
        section, name = key.split(".")
        sel_section, sel_name = selector.split(".")
        if raw[sel_section][sel_name] != wanted:
            del raw[section][name]
    return raw


def class_names_for(source: str) -> list[str]:
    if source == "toy":
        return list(TOY_CLASSES)
    return list(pet_spec("class").names)


def validate_study(cfg: StudyConfig) -> None:
    """Rules beyond one key's type and range. Each error names its key."""

    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{key}: {message}")

    def check_list(key: str, values: list, choices: Iterable) -> None:
        choices = list(choices)
        if not values:
            fail(key, f"must list at least one of {', '.join(map(str, choices))}")
        for v in values:
            if v not in choices:
                fail(key, f"unknown value {v!r}{suggest(v, [str(c) for c in choices])}")
        if len(set(values)) != len(values):
            fail(key, f"lists a value twice: {values}")

    s, d, m, g = cfg.study, cfg.data, cfg.model, cfg.grid
    if not s.name or "/" in s.name or s.name in (".", ".."):
        fail("study.name", f"must be a plain folder name, got {s.name!r}")
    if not s.seeds or len(s.seeds) > MAX_LIST or min(s.seeds) < 0 or len(set(s.seeds)) != len(s.seeds):
        fail("study.seeds", f"must list 1 to {MAX_LIST} seeds, each >= 0 and none twice; got {s.seeds}")
    if not (s.device in ("auto", "cpu", "cuda") or (s.device.startswith("cuda:") and s.device[5:].isdigit())):
        fail("study.device", f"must be auto, cpu, cuda or cuda:N; got {s.device!r}")
    if (
        not d.fg_ratios
        or len(d.fg_ratios) > MAX_LIST
        or not all(0.0 < r < 1.0 for r in d.fg_ratios)
        or len(set(d.fg_ratios)) != len(d.fg_ratios)
    ):
        fail("data.fg_ratios", f"must list 1 to {MAX_LIST} ratios between 0 and 1 (exclusive), none twice; got {d.fg_ratios}")
    # Derived sizes: what one batch (and the held-out set) holds must fit a machine, checked before any folder is made.
    width = m.channels if m.arch == "tiny" else max(m.decoder_channels + [64])
    for key, images in (("data.batch_size", d.batch_size), ("data.eval_images", d.eval_images if d.source == "toy" else 0)):
        if images * width * d.image_size**2 > MAX_ACTIVATION:
            fail(
                key,
                f"{images} images x {width} channels x {d.image_size}x{d.image_size} pixels is more than {MAX_ACTIVATION} "
                "activation values per layer (1 GiB); lower it, data.image_size or the channels",
            )
    if m.arch == "unet" and d.image_size % 32:
        fail("data.image_size", f"must be a positive multiple of 32 for model.arch: unet (it downsamples 5 times), got {d.image_size}")
    if len(m.decoder_channels) != 5 or min(m.decoder_channels) < 1:
        fail("model.decoder_channels", f"must be 5 numbers >= 1 (one per decoder stage), got {m.decoder_channels}")
    family = LOSS_FAMILIES[s.losses]
    check_list("grid.losses", g.losses, family.names)
    for loss in g.losses:
        try:
            family.check(loss, class_names_for(d.source))
        except ConfigError as exc:
            fail("grid.losses", str(exc))
    check_list("grid.batch_norm", g.batch_norm, (False, True))
    check_list("grid.optimizers", g.optimizers, OPTIMIZERS)
