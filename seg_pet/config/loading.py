"""Loading a config: YAML -> typed, checked dataclasses (seg_pet.config.schema), plus `--set` overrides.

Every problem is reported as a one-line `ConfigError` naming the key, before anything is
written to disk. YAML is read only with a `yaml.SafeLoader` (so `!!python/object` tags are
refused) that also refuses a key given twice in one mapping (plain YAML keeps the last one
silently) and refuses aliases (`*name`: one short line could expand to gigabytes, "billion laughs");
files must be UTF-8. Each key is checked against its declaration in the schema: type,
allowed values, range, for every number that it is finite (seg_pet.config.numbers), and for every
string that it holds no control characters (values become file names and log lines).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from seg_pet.config.classes import label_spec
from seg_pet.config.numbers import check_class_weights, check_number
from seg_pet.config.schema import CLASS_WEIGHT_SCHEMES, LOSSES, Config, LossConfig
from seg_pet.runtime.errors import ConfigError
from seg_pet.runtime.paths import check_text

MAX_WORKERS = 64
MAX_RUN_NAME = 200
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML file (or only defaults when `path` is None), apply `--set` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(path)
    for item in overrides:
        apply_override(raw, item)
    return config_from_dict(raw)


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping, naming both lines, and any alias."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            mark = event.start_mark
            raise ConfigError(
                f"line {mark.line + 1}, column {mark.column + 1}: YAML aliases (*{str(event.anchor)[:40]}) are not allowed "
                "in a config; write the value out"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Mark] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                mark = key_node.start_mark
                try:
                    first = seen.setdefault(key, mark)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not mark:
                    where = (
                        f"lines {first.line + 1} and {mark.line + 1}"
                        if first.line != mark.line
                        else f"line {mark.line + 1}, columns {first.column + 1} and {mark.column + 1}"
                    )
                    raise ConfigError(f"duplicate key {key!r} ({where}); YAML would silently keep the last one")
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    """YAML text -> plain data, with the safe loader that refuses duplicate keys (and nesting deep enough to crash it)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise ConfigError("nested too deeply (thousands of levels of [ or {); a config is two levels deep") from None


def decode_text(data: bytes, path: Path) -> str:
    """UTF-8 (a byte-order mark is allowed), or a ConfigError naming the first bad byte's line and column."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}, column {column}); save it as UTF-8"
        ) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = decode_text(path.read_bytes(), path)
    try:
        data = parse_yaml(text)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
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
        value = parse_yaml(text) if text.strip() else None
    except ConfigError as exc:
        raise ConfigError(f"--set {key}: {exc}") from None
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}: value {text!r} is not valid YAML") from None
    section, name = key.split(".")
    existing = raw.setdefault(section, {})
    if not isinstance(existing, dict):
        raise ConfigError(f"{section}: must be a mapping of keys, got {type(existing).__name__}")
    existing[name] = value


def schema_sections(raw: dict[str, Any], schema: type, what: str = "config") -> dict[str, type]:
    """The section dataclasses of `schema` (Config, or the study's), after checking `raw` has no unknown
    section and every section is a mapping."""
    sections = {f.name: f.default_factory for f in dataclasses.fields(schema)}  # type: ignore[misc]
    for section, values in raw.items():
        if section not in sections:
            raise ConfigError(f"unknown {what} section {section!r}{suggest(section, sections)}")
        if values is not None and not isinstance(values, dict):
            raise ConfigError(f"{section}: must be a mapping of keys, got {type(values).__name__}")
    return sections


def config_from_dict(raw: dict[str, Any]) -> Config:
    sections = schema_sections(raw, Config)
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
    options_cls = LOSSES[name].options
    accepted = {f.name for f in dataclasses.fields(options_cls)}
    every_option = {f.name for cls, _ in LOSSES.values() for f in dataclasses.fields(cls)}
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
    """A typed value against its declaration: no control characters, allowed values, finite numbers in range."""
    for where, text in enumerate(value) if isinstance(value, list) else [(None, value)]:
        if isinstance(text, str):
            check_text(text, key if where is None else f"{key}[{where}]", ConfigError)
    choices = meta.get("choices") or ()
    if choices and value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(map(str, choices))}; got {value!r}")
    check_number(key, value, meta)
    return value


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

    if not cfg.run.name or "/" in cfg.run.name or "\\" in cfg.run.name or cfg.run.name in (".", ".."):
        fail("run.name", f"must be a plain folder name, got {cfg.run.name!r}")
    if len(cfg.run.name.encode()) > MAX_RUN_NAME:  # the temporary names beside the run folder add about 30 bytes
        fail("run.name", f"must be at most {MAX_RUN_NAME} bytes long, got {len(cfg.run.name.encode())}")
    if cfg.data.image_size % 32:
        fail("data.image_size", f"must be a positive multiple of 32 (U-Net downsamples 5 times), got {cfg.data.image_size}")
    workers = cfg.data.num_workers
    if (isinstance(workers, str) and workers != "auto") or (isinstance(workers, int) and not 0 <= workers <= MAX_WORKERS):
        fail("data.num_workers", f"must be 'auto' or an integer from 0 to {MAX_WORKERS}, got {workers!r}")
    device = cfg.train.device
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        fail("train.device", f"must be auto, cpu, cuda or cuda:N; got {device!r}")
    scale = cfg.data.crop_scale
    if len(scale) != 2 or scale[0] > scale[1]:
        fail("data.crop_scale", f"must be [min, max] with 0 < min <= max <= 1, got {cfg.data.crop_scale}")
    if cfg.data.val_fraction == 0 and cfg.train.select != "last":
        fail("train.select", "data.val_fraction: 0 leaves no validation split to select on; use train.select: last")
    if cfg.data.val_fraction == 0 and cfg.train.early_stop:
        fail("train.early_stop", "data.val_fraction: 0 leaves no validation mIoU to stop on; set train.early_stop: 0")
    if cfg.optim.warmup_epochs >= cfg.optim.epochs:
        fail("optim.warmup_epochs", f"must be less than optim.epochs ({cfg.optim.epochs}), got {cfg.optim.warmup_epochs:g}")
    spec = label_spec(cfg.data)
    validate_loss(cfg.loss, list(spec.names), spec.background)


def validate_loss(loss: LossConfig, names: list[str], background: Optional[str] = None) -> None:
    """The loss options that depend on the classes (the label spec: `names`, and the `background` class)."""
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
            raise ConfigError(
                f"loss.class_weights: unknown scheme {weights!r}; choose one of: "
                f"{', '.join(CLASS_WEIGHT_SCHEMES)}, or a list of {len(names)} numbers"
            )
    elif weights is not None:
        check_class_weights(weights, names, "loss.class_weights")
    dice_kind = loss.get("dice_variant") if loss.name == "ce_dice" else loss.name
    if dice_kind.startswith("dice_fg") and background not in names:
        raise ConfigError(
            f"loss {loss.name!r} leaves out the background class, and these classes declare none ({', '.join(names)}); "
            "set data.background (folder source) or choose another loss"
        )
    if loss.name == "tversky" and loss.get("alpha") + loss.get("beta") <= 0:
        raise ConfigError("loss.alpha + loss.beta must be > 0 (with both 0 the Tversky loss is constant)")


# --------------------------------------------------------------------------- saving


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain data, as in config.yaml: the loss options flat beside loss.name."""
    data = dataclasses.asdict(cfg)
    data["loss"] = {"name": cfg.loss.name, **data["loss"]["options"]}
    return data


def flat_keys(value: Any, prefix: str = "") -> dict[str, Any]:
    """Plain config data with nested keys joined by '.' ("optim.lr"), as `--set` writes them."""
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(flat_keys(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
