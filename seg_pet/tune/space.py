"""The search-space file: which config keys a search varies and how, how a trial is scored, the sampler and the pruner.

    params:     config key -> distribution: {type: float, low, high[, log]}, {type: int, low, high[, log]},
                or {type: categorical, choices: [...]} (a choice may be a list, e.g. data.crop_scale)
    objective:  last_epochs (K: the trial's value is its mean validation mIoU over its last K epochs),
                seeds (runs per trial, seeds run.seed, run.seed + 1, ...; the value is their mean)
    sampler:    startup_trials (random trials before TPE models the results)
    pruner:     name (`median`, `threshold`, `none`) and its options

Read with yaml.safe_load (seg_pet.config's loader). Every key is checked against the config schema by
building the base config with each distribution's ends and each choice, so a search cannot start with a
value `train` would refuse. Knows nothing of Optuna: `suggest` is handed the trial.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seg_pet.config import apply_override, config_from_dict, read_yaml, suggest
from seg_pet.runtime.errors import ConfigError

SECTIONS = ("params", "objective", "sampler", "pruner")
DISTRIBUTIONS = {  # type -> (required fields, optional fields)
    "float": (("low", "high"), ("log",)),
    "int": (("low", "high"), ("log",)),
    "categorical": (("choices",), ()),
}
# pruner name -> its options and their defaults (the builders live with Optuna, in seg_pet.tune.search)
PRUNER_OPTIONS: dict[str, dict[str, Any]] = {
    "median": {"startup_trials": 3, "warmup_epochs": 2},
    "threshold": {"lower": None, "upper": None, "warmup_epochs": 0},
    "none": {},
}
OWNED_BY_TUNE = ("run.name", "run.output_dir", "run.seed")  # each trial's folder and seeds


@dataclass
class Param:
    key: str  # section.key
    type: str  # float | int | categorical
    low: Any = None
    high: Any = None
    log: bool = False
    choices: list[Any] = field(default_factory=list)

    def suggest(self, trial) -> Any:
        """This key's value for an Optuna trial. Choices that are lists go to Optuna as JSON text (it stores scalars only)."""
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log)
        if self.type == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log)
        return decode_choice(trial.suggest_categorical(self.key, [encode_choice(c) for c in self.choices]))


@dataclass
class Space:
    params: list[Param]
    last_epochs: int = 3
    seeds: int = 1
    startup_trials: int = 5
    pruner: str = "median"
    pruner_options: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> dict[str, Any]:
        """What makes two searches' values comparable: the distributions and the objective (stored in the study)."""
        return {
            "params": {p.key: {"type": p.type, "low": p.low, "high": p.high, "log": p.log, "choices": p.choices} for p in self.params},
            "objective": {"last_epochs": self.last_epochs, "seeds": self.seeds},
        }


def encode_choice(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list) else value


def decode_choice(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) and value.startswith("[") else value


def apply_params(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of the raw config dict with `section.key -> value` set."""
    out = copy.deepcopy(raw)
    for key, value in values.items():
        section, name = key.split(".")
        out.setdefault(section, {})
        if out[section] is None:
            out[section] = {}
        out[section][name] = value
    return out


def base_raw(config: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The user's config as plain data (only the keys it sets), with --set applied; checked by building it."""
    raw = read_yaml(config)
    for item in overrides:
        apply_override(raw, item)
    config_from_dict(copy.deepcopy(raw))
    return raw


def load_space(path: str | Path, raw: dict[str, Any]) -> Space:
    """Read and check a space file against the base config `raw`; a ConfigError names the file and the key."""
    path = Path(path)
    data = read_yaml(path)
    try:
        return parse_space(data, raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse_space(data: dict[str, Any], raw: dict[str, Any]) -> Space:
    for section in data:
        if section not in SECTIONS:
            raise ConfigError(f"unknown section {section!r}{suggest(section, SECTIONS)}")
    params = data.get("params")
    if not isinstance(params, dict) or not params:
        raise ConfigError(
            "params: must map config keys (section.key) to distributions, e.g. optim.lr: {type: float, low: 1e-4, high: 1e-2, log: true}"
        )
    space = Space([parse_param(str(key), spec) for key, spec in params.items()])
    objective = mapping(data, "objective")
    space.last_epochs = whole(objective, "objective.last_epochs", space.last_epochs, 1)
    space.seeds = whole(objective, "objective.seeds", space.seeds, 1)
    unknown(objective, "objective", ("last_epochs", "seeds"))
    sampler = mapping(data, "sampler")
    space.startup_trials = whole(sampler, "sampler.startup_trials", space.startup_trials, 0)
    unknown(sampler, "sampler", ("startup_trials",))
    pruner = mapping(data, "pruner")
    space.pruner = str(pruner.get("name", space.pruner))
    if space.pruner not in PRUNER_OPTIONS:
        raise ConfigError(f"pruner.name: must be one of {', '.join(PRUNER_OPTIONS)}; got {space.pruner!r}")
    defaults = PRUNER_OPTIONS[space.pruner]
    unknown(pruner, "pruner", ("name", *defaults))
    for key, default in defaults.items():
        value = pruner.get(key, default)
        if key.endswith("epochs") or key.endswith("trials"):
            value = whole(pruner, f"pruner.{key}", default, 0)
        elif value is not None:
            value = number(value, f"pruner.{key}")
        space.pruner_options[key] = value
    if space.pruner == "threshold" and space.pruner_options["lower"] is None and space.pruner_options["upper"] is None:
        raise ConfigError("pruner: the threshold pruner needs lower or upper (a validation mIoU)")
    for param in space.params:
        check_against_schema(param, raw)
    return space


def mapping(data: dict[str, Any], section: str) -> dict[str, Any]:
    value = data.get(section) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{section}: must be a mapping, got {type(value).__name__}")
    return value


def unknown(values: dict[str, Any], section: str, allowed: tuple[str, ...]) -> None:
    for key in values:
        if key not in allowed:
            raise ConfigError(f"unknown key {section}.{key}{suggest(str(key), allowed)}")


def whole(values: dict[str, Any], key: str, default: int, minimum: int) -> int:
    value = values.get(key.split(".", 1)[1], default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}: expected a whole number >= {minimum}, got {value!r}")
    return value


def number(value: Any, key: str) -> float:
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as text
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    return value


def parse_param(key: str, spec: Any) -> Param:
    where = f"params.{key}"
    if key.count(".") != 1 or not all(key.split(".")):
        raise ConfigError(f"{where}: a key is section.key, e.g. optim.lr")
    if key in OWNED_BY_TUNE:
        raise ConfigError(f"{where}: tune sets {', '.join(OWNED_BY_TUNE)} itself (each trial's folder; objective.seeds for seeds)")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a distribution such as {{type: float, low: 1e-4, high: 1e-2, log: true}}, got {spec!r}")
    kind = spec.get("type")
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}.type: must be one of {', '.join(DISTRIBUTIONS)}; got {kind!r}")
    required, optional = DISTRIBUTIONS[kind]
    for name in spec:
        if name != "type" and name not in required + optional:
            raise ConfigError(f"{where}: unknown field {name!r} for type {kind}{suggest(str(name), required + optional)}")
    for name in required:
        if name not in spec:
            raise ConfigError(f"{where}: type {kind} needs {' and '.join(required)}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log: expected true or false, got {log!r}")
    if kind == "categorical":
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}.choices: expected a non-empty list, got {choices!r}")
        for i, choice in enumerate(choices):
            items = choice if isinstance(choice, list) else [choice]
            if not all(item is None or isinstance(item, (bool, int, float, str)) for item in items):
                raise ConfigError(f"{where}.choices[{i}]: expected a number, text, true/false, null or a list of them, got {choice!r}")
        if len({json.dumps(c) for c in choices}) != len(choices):
            raise ConfigError(f"{where}.choices: a choice is listed twice: {choices}")
        return Param(key, kind, choices=choices)
    low, high = number(spec["low"], f"{where}.low"), number(spec["high"], f"{where}.high")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer() and isinstance(low, int) and isinstance(high, int)):
        raise ConfigError(f"{where}: type int needs whole numbers for low and high, got {low!r} and {high!r}")
    if not low < high:
        raise ConfigError(f"{where}: low must be less than high, got low {low!r}, high {high!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: log: true needs low > 0, got {low!r}")
    return Param(key, kind, low=float(low) if kind == "float" else low, high=float(high) if kind == "float" else high, log=log)


def check_against_schema(param: Param, raw: dict[str, Any]) -> None:
    """Build the base config with each end of the range (each choice): the schema's own checks name the problem."""
    values = param.choices if param.type == "categorical" else [param.low, param.high]
    for value in values:
        try:
            config_from_dict(apply_params(raw, {param.key: value}))
        except ConfigError as exc:
            what = f"choice {value!r}" if param.type == "categorical" else f"{'low' if value == param.low else 'high'} {value!r}"
            text = str(exc)
            prefix = "" if param.key in text else f"{param.key}: "
            raise ConfigError(f"params.{param.key} ({what}): {prefix}{text}") from None
