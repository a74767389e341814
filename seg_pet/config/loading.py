"""Loading a config: YAML -> typed, checked dataclasses (seg_pet.config.schema), plus `--set` overrides.

Every problem is reported as a one-line `ConfigError` naming the key, before anything is
written to disk. YAML is read only with `yaml.safe_load`, so `!!python/object` tags are refused.
Each key is checked against its declaration in the schema: type, allowed values, range, and for
every number that it is finite.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from seg_pet.config.schema import CLASS_WEIGHT_SCHEMES, LOSS_OPTIONS, Config, LossConfig
from seg_pet.labels import BACKGROUND, class_names
from seg_pet.runtime.errors import ConfigError

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
    sections = {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]
    for section, values in raw.items():
        if section not in sections:
            raise ConfigError(f"unknown config section {section!r}{suggest(section, sections)}")
        if values is not None and not isinstance(values, dict):
            raise ConfigError(f"{section}: must be a mapping of keys, got {type(values).__name__}")
    built = {}
    for name, cls in sections.items():
        values = raw.get(name) or {}
        built[name] = build_loss_section(values) if cls is LossConfig else build_section(name, cls, values)
    cfg = Config(**built)
    validate(cfg)
    return cfg


def build_section(section: str, cls: type, values: dict[str, Any], *, null_is_default: bool = False) -> Any:
    """One schema dataclass from a mapping: unknown keys, types, choices, ranges and finiteness checked.

    `null_is_default`: a null value means "the default" (loss options: null = the loss's own default).
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown key {section}.{key}{suggest(key, list(fields))}")
        if value is None and null_is_default:
            continue
        kwargs[key] = check_value(f"{section}.{key}", _check_type(f"{section}.{key}", value, hints[key]), fields[key].metadata)
    return cls(**kwargs)


def build_loss_section(values: dict[str, Any]) -> LossConfig:
    """`loss.name` picks the options dataclass; the other keys are that loss's options.

    A key that belongs to another loss is an error when set, and ignored when null (run folders
    written by older versions list every option of every loss, mostly as null)."""
    name = build_section("loss", LossConfig, {"name": values.get("name", "ce")}).name
    options_cls = LOSS_OPTIONS[name]
    accepted = {f.name for f in dataclasses.fields(options_cls)}
    every_option = {f.name for cls in LOSS_OPTIONS.values() for f in dataclasses.fields(cls)}
    own = {}
    for key, value in values.items():
        if key == "name":
            continue
        if key not in accepted:
            if key not in every_option:
                raise ConfigError(f"unknown key loss.{key}{suggest(key, sorted(every_option | {'name'}))}")
            if value is not None:
                allowed = ", ".join(f"loss.{k}" for k in sorted(accepted)) or "no options"
                raise ConfigError(f"loss.{key} does not apply to loss {name!r}; it accepts: {allowed}")
            continue
        own[key] = value
    return LossConfig(name=name, options=build_section("loss", options_cls, own, null_is_default=True))


def check_value(key: str, value: Any, meta: typing.Mapping[str, Any]) -> Any:
    """A typed value against its declaration: finite numbers, allowed values, range."""
    numbers = value if isinstance(value, list) else [value]
    for number in numbers:
        if isinstance(number, float) and not math.isfinite(number):
            raise ConfigError(f"{key}: must be a finite number, got {number}")
    choices = meta.get("choices") or ()
    if choices and value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(map(str, choices))}; got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for bound, ok in _BOUNDS.items():
            limit = meta.get(bound)
            if limit is not None and not ok(value, limit):
                raise ConfigError(f"{key}: must be {describe_range(meta)}, got {value}")
    return value


_BOUNDS = {"ge": lambda v, b: v >= b, "gt": lambda v, b: v > b, "le": lambda v, b: v <= b, "lt": lambda v, b: v < b}
_BOUND_WORDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def describe_range(meta: typing.Mapping[str, Any]) -> str:
    """e.g. '> 0 and < 1' from the schema's bounds ('' when unbounded)."""
    return " and ".join(f"{_BOUND_WORDS[b]} {meta[b]:g}" for b in _BOUND_WORDS if meta.get(b) is not None)


def suggest(word: str, options) -> str:
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
    """Rules that involve more than one key, or more than a type and a range. Each error names its key."""

    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{key}: {message}")

    if not cfg.run.name or "/" in cfg.run.name or cfg.run.name in (".", ".."):
        fail("run.name", f"must be a plain folder name, got {cfg.run.name!r}")
    if cfg.data.image_size % 32:
        fail("data.image_size", f"must be a positive multiple of 32 (U-Net downsamples 5 times), got {cfg.data.image_size}")
    workers = cfg.data.num_workers
    if (isinstance(workers, str) and workers != "auto") or (isinstance(workers, int) and workers < 0):
        fail("data.num_workers", f"must be 'auto' or an integer >= 0, got {workers!r}")
    device = cfg.train.device
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        fail("train.device", f"must be auto, cpu, cuda or cuda:N; got {device!r}")
    validate_loss(cfg.loss, class_names(cfg.data.border))


def validate_loss(loss: LossConfig, names: list[str]) -> None:
    """The loss options that depend on the classes (data.border decides how many there are)."""
    classes = loss.get("classes")
    if classes is not None:
        if not classes:
            raise ConfigError(f"loss.classes must be a non-empty list of names from: {', '.join(names)}")
        for c in classes:
            if c not in names:
                raise ConfigError(f"loss.classes: unknown class {c!r}; valid names: {', '.join(names)}")
        if len(set(classes)) != len(classes):
            raise ConfigError(f"loss.classes lists a class twice: {list(classes)}")
    weights = loss.get("class_weights")
    if isinstance(weights, str):
        if weights not in CLASS_WEIGHT_SCHEMES:
            raise ConfigError(f"loss.class_weights: unknown scheme {weights!r}; choose one of: "
                              f"{', '.join(CLASS_WEIGHT_SCHEMES)}, or a list of {len(names)} numbers")
    elif weights is not None:
        if len(weights) != len(names):
            raise ConfigError(f"loss.class_weights: expected {len(names)} weights (one per class: {', '.join(names)}), got {len(weights)}")
        if not all(w >= 0 for w in weights) or not any(w > 0 for w in weights):
            raise ConfigError(f"loss.class_weights must be numbers >= 0, not all 0, got {list(weights)}")
    dice_kind = loss.get("dice_variant") if loss.name == "ce_dice" else loss.name
    if dice_kind.startswith("dice_fg") and BACKGROUND not in names:
        raise ConfigError(f"loss {loss.name!r} needs a class named {BACKGROUND!r}; classes are: {', '.join(names)}")
    if loss.name == "tversky" and loss.get("alpha") + loss.get("beta") <= 0:
        raise ConfigError("loss.alpha + loss.beta must be > 0 (with both 0 the Tversky loss is constant)")


# --------------------------------------------------------------------------- saving


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain data, as in config.yaml: the loss options flat beside loss.name."""
    data = dataclasses.asdict(cfg)
    data["loss"] = {"name": cfg.loss.name, **data["loss"]["options"]}
    return data


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
