"""docs/configuration.md, generated from the schema: `python -m seg_pet.config.reference > docs/configuration.md`.

A test regenerates the page and fails when the file in the repo differs, so the reference is
always the schema's own word.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from seg_pet.config.numbers import describe_range
from seg_pet.config.schema import LOSSES, SECTION_HELP, Config, LossConfig

INTRO = """# Configuration reference

<!-- Generated from seg_pet/config/schema.py by `python -m seg_pet.config.reference > docs/configuration.md`;
     a test fails when this page and the schema disagree. Do not edit by hand. -->

A config is YAML with up to seven sections. Every key is optional; the defaults below apply.
Unknown keys (with a suggestion), wrong types, values outside the allowed set or range, and
numbers that are not finite (`.nan`, `.inf`) are one-line errors naming the key (exit code 2),
before anything is written. Any key can be overridden on the command line with
`--set section.key=value` (the value is parsed as YAML: `1e-3`, `null`, `[1, 2]`).
The resolved config (file + `--set` + defaults) is written to the run folder as `config.yaml`.

Shipped configs: `configs/pet_unet.yaml` (the real job), `configs/pet_slice_cpu.yaml` (the real
two-breed slice on a CPU), `configs/smoke.yaml` (synthetic data, CPU, about a minute).
"""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return "null" if tp is type(None) else tp.__name__


def _default(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _rows(prefix: str, cls: type) -> list[str]:
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.name == "options":
            continue
        meta = f.metadata
        allowed = ", ".join(f"`{c}`" for c in meta.get("choices") or ()) or describe_range(meta)
        rows.append(
            f"| `{prefix}.{f.name}` | {_type_name(hints[f.name])} | {_default(meta.get('default', f.default))} | {allowed} | {meta.get('help', '')} |"
        )
    return rows


def render() -> str:
    lines = [INTRO]
    header = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for section in dataclasses.fields(Config):
        lines += [f"## `{section.name}`: {SECTION_HELP[section.name]}", "", *header, *_rows(section.name, section.default_factory), ""]
        if section.default_factory is LossConfig:
            lines += [
                "### Loss options",
                "",
                "Each loss accepts only its own options, flat beside `loss.name`. Setting an option the chosen "
                "loss does not use is an error; `null` means the loss's own default.",
                "",
                "| `loss.name` | what it is | options |",
                "|---|---|---|",
            ]
            for name, (options_cls, help_text) in LOSSES.items():
                options = ", ".join(f"`{f.name}`" for f in dataclasses.fields(options_cls)) or "none"
                lines.append(f"| `{name}` | {help_text} | {options} |")
            option_rows: dict[str, str] = {}  # an option shared by several losses is listed once, with its first default
            for options_cls, _ in LOSSES.values():
                for f, row in zip(dataclasses.fields(options_cls), _rows("loss", options_cls)):
                    option_rows.setdefault(f.name, row)
            lines += ["", *header, *option_rows.values(), ""]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
