"""Configuration: YAML -> typed, validated dataclasses, plus `--set section.key=value` overrides.

The dataclass defaults below ARE the documented defaults (README, "Config reference").
Every problem is reported as a one-line `ConfigError` naming the key, before anything is
written to disk. YAML is read only with `yaml.safe_load`, so `!!python/object` tags are refused.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from seg_pet.errors import ConfigError


@dataclass
class RunConfig:
    name: str = "pet_unet"
    output_dir: str = "outputs"
    seed: int = 0


@dataclass
class DataConfig:
    source: str = "oxford"  # oxford | synthetic (generated into `root`, for smoke tests)
    root: str = "data"  # the folder that holds oxford-iiit-pet/
    download: bool = False
    image_size: int = 256
    val_fraction: float = 0.1
    border: str = "class"  # class | ignore | pet
    batch_size: int = 16
    num_workers: Union[int, str] = "auto"
    synthetic_images: int = 60  # only for source: synthetic
    cache: str = "none"  # none | memory | disk | device (seg_pet.cache)


@dataclass
class ModelConfig:
    arch: str = "unet"
    encoder: str = "resnet34"
    encoder_weights: Optional[str] = "imagenet"  # imagenet | null | path to a local weights file


@dataclass
class LossConfig:
    """`name` picks the loss; every other field is an option that only some losses accept.

    None means "the loss's own default" (see README, "Losses"); setting an option the chosen
    loss does not use is an error, so a typo never silently trains with the wrong loss.
    """

    name: str = "ce"
    label_smoothing: Optional[float] = None
    class_weights: Union[str, list[float], None] = None
    dice_weight: Optional[float] = None
    dice_variant: Optional[str] = None
    gamma: Optional[float] = None
    alpha: Optional[float] = None
    beta: Optional[float] = None
    classes: Optional[list[str]] = None


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | adam | sgd
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    scheduler: str = "cosine"  # cosine | poly | none
    epochs: int = 30
    grad_clip: Optional[float] = None  # max global gradient norm; null = no clipping


@dataclass
class TrainConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on CUDA where supported; ignored on CPU
    overlays: int = 4  # validation images drawn every epoch
    deterministic: bool = False  # torch.use_deterministic_algorithms; slower on GPU
    compile: bool = False  # torch.compile the model
    max_steps_per_epoch: Optional[int] = None  # cap for quick experiments and tests


@dataclass
class EvalConfig:
    native_resolution: bool = False  # resize logits back to each image's original size


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name


CHOICES = {
    "data.source": ("oxford", "synthetic"),
    "data.border": ("class", "ignore", "pet"),
    "data.cache": ("none", "memory", "disk", "device"),
    "model.arch": ("unet", "unetplusplus", "fpn", "deeplabv3", "deeplabv3plus", "linknet", "pspnet", "manet", "pan", "upernet", "segformer", "dpt"),
    "optim.name": ("adamw", "adam", "sgd"),
    "optim.scheduler": ("cosine", "poly", "none"),
}


# --------------------------------------------------------------------------- loading

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML file (or only defaults when `path` is None), apply `--set` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(path)
    for item in overrides:
        apply_override(raw, item)
    return config_from_dict(raw)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if isinstance(exc, yaml.constructor.ConstructorError) and "tag:yaml.org,2002:python/" in problem:
            tag = problem.split("tag:yaml.org,2002:", 1)[1].rstrip("'")
            problem = f"tag !!{tag} is not allowed (configs are read with yaml.safe_load and never create Python objects)"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one `section.key=value` override; the value is parsed as YAML (so 1e-3, null, [1, 2] work)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or key.count(".") != 1 or not all(key.split(".")):
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. optim.lr=0.001")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}: value {text!r} is not valid YAML") from None
    section, name = key.split(".")
    existing = raw.setdefault(section, {})
    if not isinstance(existing, dict):
        raise ConfigError(f"{section}: must be a mapping of keys, got {type(existing).__name__}")
    existing[name] = value


def config_from_dict(raw: dict[str, Any]) -> Config:
    sections = {}
    for section_field in dataclasses.fields(Config):
        sections[section_field.name] = section_field
    for section, values in raw.items():
        if section not in sections:
            raise ConfigError(f"unknown config section {section!r}{_suggest(section, sections)}")
        if values is not None and not isinstance(values, dict):
            raise ConfigError(f"{section}: must be a mapping of keys, got {type(values).__name__}")
    built = {}
    for name, section_field in sections.items():
        cls = section_field.default_factory  # type: ignore[misc]
        built[name] = _build_section(name, cls, raw.get(name) or {})
    cfg = Config(**built)
    validate(cfg)
    return cfg


def _build_section(section: str, cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown key {section}.{key}{_suggest(key, names)}")
        kwargs[key] = _check_type(f"{section}.{key}", value, hints[key])
    return cls(**kwargs)


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(options)}"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return tp.__name__


def _check_type(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against a type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _check_type(key, value, arg)
            except ConfigError:
                continue
    elif origin is list:
        if isinstance(value, list):
            (item_tp,) = typing.get_args(tp)
            return [_check_type(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    elif tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML follows YAML 1.1, where `1e-4` (no dot) is a string; users mean a number.
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


# --------------------------------------------------------------------------- validation


def validate(cfg: Config) -> None:
    """Values that type-check but cannot work. Each error names its key."""

    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{key}: {message}")

    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            fail(key, f"must be one of {', '.join(choices)}; got {value!r}")

    if not cfg.run.name or "/" in cfg.run.name or cfg.run.name in (".", ".."):
        fail("run.name", f"must be a plain folder name, got {cfg.run.name!r}")
    if cfg.data.image_size < 32 or cfg.data.image_size % 32:
        fail("data.image_size", f"must be a positive multiple of 32 (U-Net downsamples 5 times), got {cfg.data.image_size}")
    if not 0.0 < cfg.data.val_fraction < 1.0:
        fail("data.val_fraction", f"must be between 0 and 1 (exclusive), got {cfg.data.val_fraction}")
    if cfg.data.batch_size < 1:
        fail("data.batch_size", f"must be >= 1, got {cfg.data.batch_size}")
    workers = cfg.data.num_workers
    if (isinstance(workers, str) and workers != "auto") or (isinstance(workers, int) and workers < 0):
        fail("data.num_workers", f"must be 'auto' or an integer >= 0, got {workers!r}")
    if cfg.data.synthetic_images < 8:
        fail("data.synthetic_images", f"must be >= 8, got {cfg.data.synthetic_images}")
    if cfg.optim.lr <= 0:
        fail("optim.lr", f"must be > 0, got {cfg.optim.lr}")
    if cfg.optim.weight_decay < 0:
        fail("optim.weight_decay", f"must be >= 0, got {cfg.optim.weight_decay}")
    if not 0 <= cfg.optim.momentum < 1:
        fail("optim.momentum", f"must be in [0, 1), got {cfg.optim.momentum}")
    if cfg.optim.epochs < 1:
        fail("optim.epochs", f"must be >= 1, got {cfg.optim.epochs}")
    if cfg.optim.grad_clip is not None and cfg.optim.grad_clip <= 0:
        fail("optim.grad_clip", f"must be > 0 or null, got {cfg.optim.grad_clip}")
    if cfg.train.overlays < 0:
        fail("train.overlays", f"must be >= 0, got {cfg.train.overlays}")
    if cfg.train.max_steps_per_epoch is not None and cfg.train.max_steps_per_epoch < 1:
        fail("train.max_steps_per_epoch", f"must be >= 1 or null, got {cfg.train.max_steps_per_epoch}")
    device = cfg.train.device
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        fail("train.device", f"must be auto, cpu, cuda or cuda:N; got {device!r}")

    from seg_pet.data import class_names  # local import: data imports config

    from seg_pet.losses import validate_loss_options

    validate_loss_options(cfg.loss, class_names(cfg.data.border))


# --------------------------------------------------------------------------- saving


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
