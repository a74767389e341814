"""The config schema is the one owner of every key: its reference page, its allowed values and its checks."""

from __future__ import annotations

import dataclasses
import re
import typing

import pytest
import segmentation_models_pytorch as smp

from seg_pet.config import Config, load_config
from seg_pet.config.reference import render
from seg_pet.config.schema import ARCHITECTURES, LOSSES, builders_for
from seg_pet.runtime.errors import ConfigError
from tests.conftest import REPO


def test_docs_config_reference_is_generated_from_the_schema() -> None:
    page = REPO / "docs" / "configuration.md"
    assert page.read_text() == render(), "docs/configuration.md is stale: python -m seg_pet.config.reference > docs/configuration.md"


def test_reference_lists_every_key_with_its_default() -> None:
    page = render()
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.default_factory):
            if f.name != "options":
                assert f"`{section.name}.{f.name}`" in page
    for options, _ in LOSSES.values():
        for f in dataclasses.fields(options):
            assert f"`loss.{f.name}`" in page
    assert "| `optim.lr` | float | `0.001` | > 0 and <= 10 |" in page


def test_a_builder_table_must_cover_exactly_the_names_the_schema_allows() -> None:
    assert builders_for(("a", "b"), {"b": 2, "a": 1}) == {"b": 2, "a": 1}
    with pytest.raises(TypeError, match=r"builders for \['a'\] do not match .*\['a', 'b'\]"):
        builders_for(("a", "b"), {"a": 1})  # an allowed name nothing builds
    with pytest.raises(TypeError, match="do not match"):
        builders_for(("a",), {"a": 1, "c": 3})  # a builder no config can choose


def test_the_architectures_are_ones_the_installed_smp_offers() -> None:
    assert set(ARCHITECTURES) <= set(smp.MODEL_ARCHITECTURES_MAPPING)


def numeric_keys() -> list[tuple[str, type]]:
    keys = []
    for section in dataclasses.fields(Config):
        if section.name == "loss":
            continue
        hints = typing.get_type_hints(section.default_factory)
        for f in dataclasses.fields(section.default_factory):
            args = typing.get_args(hints[f.name]) or (hints[f.name],)
            if float in args:
                keys.append(f"{section.name}.{f.name}")
    return keys


def is_list(key: str) -> bool:
    section, name = key.split(".")
    schema = {f.name: f.default_factory for f in dataclasses.fields(Config)}[section]
    return typing.get_origin(typing.get_type_hints(schema)[name]) is list


@pytest.mark.parametrize("key", numeric_keys())
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_every_float_key_refuses_non_finite_values(key: str, value: str) -> None:
    if is_list(key):  # a list of numbers (data.crop_scale): the first item is the bad one
        with pytest.raises(ConfigError, match=rf"^{re.escape(key)}\[0\]: must be a finite number"):
            load_config(None, [f"{key}=[{value}, 1]"])
        return
    with pytest.raises(ConfigError, match=rf"^{key}: must be a finite number"):
        load_config(None, [f"{key}={value}"])


@pytest.mark.parametrize("option", ["label_smoothing", "dice_weight"])
def test_loss_options_refuse_non_finite_values(option: str) -> None:
    with pytest.raises(ConfigError, match=rf"^loss\.{option}: must be a finite number"):
        load_config(None, ["loss.name=ce_dice", f"loss.{option}=.nan"])
