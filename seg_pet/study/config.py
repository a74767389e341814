"""The study's config: its own sections, built and checked with the public seg_pet.config helpers."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from seg_pet.config import LOSS_OPTIONS, apply_override, build_section, read_yaml, suggest
from seg_pet.config.loading import build_loss_section, validate_loss
from seg_pet.labels import BACKGROUND, class_names
from seg_pet.runtime.errors import ConfigError

TOY_CLASSES = ["foreground", BACKGROUND]  # same order as the Pet classes: the object first, background second
FOREGROUND_ID, BACKGROUND_ID = 0, 1
PET_FOCUS = "border"  # the minority class of the 3-class trimap task (~12 % of pixels)
CONFIG_NAME = "study_config.yaml"




@dataclass
class StudySection:
    name: str = "loss_study"
    output_dir: str = "outputs"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    converged_min_iou: float = 0.9  # see is_converged
    cpu_threads: Optional[int] = 1  # torch intra-op threads on CPU; null = torch's default (all cores)


@dataclass
class StudyDataConfig:
    source: str = "toy"  # toy (thresholded noise) | pet (the real trimaps, border as minority)
    image_size: int = 32
    batch_size: int = 8
    fg_ratios: list[float] = field(default_factory=lambda: [0.05, 0.5, 0.95])  # toy only
    eval_images: int = 64  # toy only: held-out noise images scored at the end of each run
    root: str = "../shared/data"  # pet only: the folder that holds oxford-iiit-pet/
    val_fraction: float = 0.2  # pet only: share of trainval held out and scored at the end


@dataclass
class StudyModelConfig:
    arch: str = "tiny"  # tiny (a few 3x3 convs) | unet (smp Unet, random init)
    channels: int = 16  # tiny only
    layers: int = 3  # tiny only: number of 3x3 conv layers before the 1x1 classifier
    encoder: str = "resnet18"  # unet only
    decoder_channels: list[int] = field(default_factory=lambda: [256, 128, 64, 32, 16])  # unet only (smp's default)


@dataclass
class StudyGridConfig:
    losses: list[str] = field(default_factory=lambda: ["ce", "dice", "dice_sq", "dice_fg", "dice_fg_sq"])
    batch_norm: list[bool] = field(default_factory=lambda: [False, True])
    optimizers: list[str] = field(default_factory=lambda: ["adam", "sgd"])


@dataclass
class StudyOptimConfig:
    steps: int = 250
    adam_lr: float = 3e-3
    sgd_lr: float = 0.1
    sgd_momentum: float = 0.9


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
OPTIMIZERS = ("adam", "sgd")


def load_study_config(path: str | Path | None, overrides: Iterable[str] = ()) -> StudyConfig:
    """Read a study YAML (or only defaults when `path` is None), apply `--set` overrides, validate."""
    raw: dict[str, Any] = read_yaml(path) if path is not None else {}
    for item in overrides:
        apply_override(raw, item)
    return study_config_from_dict(raw)


def study_config_from_dict(raw: dict[str, Any]) -> StudyConfig:
    sections = {f.name: f.default_factory for f in dataclasses.fields(StudyConfig)}  # type: ignore[misc]
    for section, values in raw.items():
        if section not in sections:
            raise ConfigError(f"unknown study config section {section!r}{suggest(section, sections)}")
        if values is not None and not isinstance(values, dict):
            raise ConfigError(f"{section}: must be a mapping of keys, got {type(values).__name__}")
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
    return class_names("class")


def focus_class(source: str) -> str:
    """The class reported as fg_iou / fg_dice: the toy foreground, or the Pet border (the minority)."""
    return TOY_CLASSES[FOREGROUND_ID] if source == "toy" else PET_FOCUS


def validate_study(cfg: StudyConfig) -> None:
    """Values that type-check but cannot work. Each error names its key."""

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

    s, d, m, g, o = cfg.study, cfg.data, cfg.model, cfg.grid, cfg.optim
    if not s.name or "/" in s.name or s.name in (".", ".."):
        fail("study.name", f"must be a plain folder name, got {s.name!r}")
    if not (s.device in ("auto", "cpu", "cuda") or (s.device.startswith("cuda:") and s.device[5:].isdigit())):
        fail("study.device", f"must be auto, cpu, cuda or cuda:N; got {s.device!r}")
    if s.cpu_threads is not None and s.cpu_threads < 1:
        fail("study.cpu_threads", f"must be >= 1 or null, got {s.cpu_threads}")
    if not 0.0 < s.converged_min_iou <= 1.0:
        fail("study.converged_min_iou", f"must be in (0, 1], got {s.converged_min_iou}")
    if d.source not in ("toy", "pet"):
        fail("data.source", f"must be one of toy, pet; got {d.source!r}")
    if m.arch not in ("tiny", "unet"):
        fail("model.arch", f"must be one of tiny, unet; got {m.arch!r}")
    if not d.fg_ratios:
        fail("data.fg_ratios", "must list at least one foreground ratio")
    for r in d.fg_ratios:
        if not 0.0 < r < 1.0:
            fail("data.fg_ratios", f"every ratio must be between 0 and 1 (exclusive), got {r}")
    if len(set(d.fg_ratios)) != len(d.fg_ratios):
        fail("data.fg_ratios", f"lists a ratio twice: {d.fg_ratios}")
    if m.arch == "unet" and (d.image_size < 32 or d.image_size % 32):
        fail("data.image_size", f"must be a positive multiple of 32 for model.arch: unet (it downsamples 5 times), got {d.image_size}")
    if d.image_size < 4:
        fail("data.image_size", f"must be >= 4, got {d.image_size}")
    if d.batch_size < 1:
        fail("data.batch_size", f"must be >= 1, got {d.batch_size}")
    if d.eval_images < 1:
        fail("data.eval_images", f"must be >= 1, got {d.eval_images}")
    if not 0.0 < d.val_fraction < 1.0:
        fail("data.val_fraction", f"must be between 0 and 1 (exclusive), got {d.val_fraction}")
    if m.channels < 1:
        fail("model.channels", f"must be >= 1, got {m.channels}")
    if m.layers < 1:
        fail("model.layers", f"must be >= 1, got {m.layers}")
    if len(m.decoder_channels) != 5 or min(m.decoder_channels) < 1:
        fail("model.decoder_channels", f"must be 5 numbers >= 1 (one per decoder stage), got {m.decoder_channels}")
    check_list("grid.losses", g.losses, LOSS_OPTIONS)
    names = class_names_for(d.source)
    for loss in g.losses:
        try:
            validate_loss(build_loss_section({"name": loss}), names)
        except ConfigError as exc:
            fail("grid.losses", str(exc))
    check_list("grid.batch_norm", g.batch_norm, (False, True))
    check_list("grid.optimizers", g.optimizers, OPTIMIZERS)
    if o.steps < 1:
        fail("optim.steps", f"must be >= 1, got {o.steps}")
    for key in ("adam_lr", "sgd_lr"):
        if getattr(o, key) <= 0:
            fail(f"optim.{key}", f"must be > 0, got {getattr(o, key)}")
    if not 0.0 <= o.sgd_momentum < 1.0:
        fail("optim.sgd_momentum", f"must be in [0, 1), got {o.sgd_momentum}")


def is_converged(class_iou: dict[str, float], min_iou: float, finite: bool = True) -> bool:
    """The convergence rule: the run stayed finite and EVERY class has final IoU >= min_iou.

    Every class, not only the foreground: at 95 % foreground, predicting foreground
    everywhere already scores foreground IoU 0.95 (and at 5 % the same trick for
    background scores 0.95 background IoU), so a one-class threshold would count a
    collapsed model as converged; that model's other class has IoU 0. A class absent from
    both target and prediction (IoU NaN) is not scored; with no scored class nothing converged.
    """
    scored = [v for v in class_iou.values() if v is not None and not math.isnan(v)]
    return bool(finite and scored and min(scored) >= min_iou)


COLLAPSED_BELOW = 0.1  # a class scored below this IoU is (almost) never predicted where it is


def run_outcome(class_iou: dict[str, float], min_iou: float, finite: bool = True) -> str:
    """diverged (non-finite) | converged (is_converged) | collapsed (some class IoU < 0.1: the
    model predicts essentially one class there) | partial (learned every class, not well enough)."""
    if not finite:
        return "diverged"
    if is_converged(class_iou, min_iou, finite):
        return "converged"
    scored = [v for v in class_iou.values() if v is not None and not math.isnan(v)]
    return "collapsed" if not scored or min(scored) < COLLAPSED_BELOW else "partial"
