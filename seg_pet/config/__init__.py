"""The config layer: the schema (one declaration of every key), loading, `--set`, and validation.

    schema     dataclasses: types, defaults, allowed values, ranges, help text; LOSSES (options, help) per loss
    loading    YAML (safe_load) + overrides -> a checked `Config`; `config_to_dict` / `dump_config` back
    reference  docs/configuration.md, generated from the schema
    classes    `label_spec(cfg.data)`: the run's classes (seg_pet.labels.LabelSpec)

Public, so the loss study builds its own sections with the same checks.
"""

from seg_pet.config.classes import label_spec
from seg_pet.config.loading import (
    apply_override,
    build_section,
    config_from_dict,
    config_to_dict,
    dump_config,
    flat_keys,
    load_config,
    read_yaml,
    suggest,
)
from seg_pet.config.schema import (
    LOSSES,
    Config,
    DataConfig,
    EvalConfig,
    LossConfig,
    LossSpec,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    allowed,
    builders_for,
    option,
)

__all__ = [
    "LOSSES",
    "Config",
    "DataConfig",
    "EvalConfig",
    "LossConfig",
    "LossSpec",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "allowed",
    "apply_override",
    "builders_for",
    "build_section",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "flat_keys",
    "label_spec",
    "load_config",
    "option",
    "read_yaml",
    "suggest",
]
