"""A config's label spec: the Pet trimap spec for `oxford` and `synthetic` (by `data.border`), the
declared classes for `folder`. Run folders record their config, so a run's classes follow from it."""

from __future__ import annotations

from seg_pet.config.schema import DataConfig
from seg_pet.labels import LabelSpec, declared_spec, pet_spec
from seg_pet.runtime.errors import ConfigError


def label_spec(data: DataConfig) -> LabelSpec:
    """The classes of a config's dataset and how its masks code them; ConfigError naming the key when inconsistent."""
    if data.source != "folder":
        if data.classes:
            raise ConfigError(f"data.classes: applies to data.source: folder only (data.source is {data.source!r}, its classes are fixed)")
        return pet_spec(data.border)
    if not data.classes:
        raise ConfigError("data.classes: data.source: folder needs the class names in class-id order, e.g. [background, cat, dog]")
    try:
        return declared_spec(
            data.classes,
            coding=data.mask_format,
            colors=data.class_colors,
            ignore_values=data.ignore_values if data.mask_format == "index" else (),
            ignore_colors=data.ignore_colors if data.mask_format == "color" else (),
            background=data.background,
        )
    except ValueError as exc:
        key = "data.class_colors" if "colour" in str(exc) else "data.ignore_values" if "ignore value" in str(exc) else "data.classes"
        if "background" in str(exc):
            key = "data.background"
        raise ConfigError(f"{key}: {exc}") from None
