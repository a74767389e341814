"""Hypothesis strategies for the bad-input fuzz harness: odd values, config mutations, checkpoint and file corruptions.

Every strategy draws from a fixed, small vocabulary of "what goes wrong in practice" (a NaN, a
number far out of range, a wrong type, an empty or very long string, control characters, an
unknown or duplicated key, a non-UTF-8 byte) rather than uniform noise, so a few dozen examples
cover the classes.
"""

from __future__ import annotations

import math

import torch
import yaml
from hypothesis import strategies as st

CONTROL = "".join(chr(c) for c in [*range(0, 32), 127])

numbers = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 0, -1, -(10**30), 10**30, 2**63, 1e308, -1e-308, 0.5, 3]),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
)
strings = st.one_of(
    st.sampled_from(["", " ", "x" * 300, "x" * 5000, "../..", "/", ".", "nan", "1e999", "null", "ü" * 200]),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
    st.builds(lambda a, c, b: a + c + b, st.text(max_size=4), st.sampled_from(CONTROL), st.text(max_size=4)),
)
odd_values = st.one_of(
    numbers,
    strings,
    st.booleans(),
    st.none(),
    st.lists(st.one_of(numbers, strings), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


# --------------------------------------------------------------------------- configs

paths = st.one_of(
    strings,
    st.sampled_from(
        [
            "out",
            "out/existing",
            "out/existing/config.yaml",
            "out/existing/checkpoints",
            "c.yaml",
            "new/deeper/folder",
            "/dev/null",
            "/proc/1",
        ]
    ),
)


def like(value: object) -> st.SearchStrategy:
    """Values of the same type as a valid one, mostly at or past the edges (a number far out of range, an odd path)."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.one_of(st.sampled_from([0, -1, 1, 2, 31, 33, 2**31, 2**32, 2**64, 10**30, -(10**30)]), st.integers(-100, 10**5))
    if isinstance(value, float):
        return st.one_of(st.sampled_from([0.0, -0.0, 1.0, 1e-300, 1e300, -1e300, math.nan, math.inf]), st.floats(-10, 10))
    if isinstance(value, str):
        return paths
    return odd_values


@st.composite
def config_texts(draw, base: dict, keys: list[tuple[str, str]]) -> bytes:
    """A valid config (`base`, nested dict) with one or two things wrong with it, as the file's bytes."""
    data = {section: dict(values) for section, values in base.items()}
    text_edits = []
    for _ in range(draw(st.integers(min_value=1, max_value=2))):
        kind = draw(st.sampled_from(["value", "value", "value", "unknown key", "section", "duplicate", "encoding", "nesting"]))
        section, key = draw(st.sampled_from(keys))
        if kind in ("value", "unknown key") and not isinstance(data.get(section), dict):
            continue  # the section itself was replaced by an earlier edit
        if kind == "value":
            data[section][key] = draw(st.one_of(like(base[section][key]), odd_values))
        elif kind == "unknown key":
            name = draw(st.text(min_size=1, max_size=8))
            data.setdefault(section if draw(st.booleans()) else "extra", {})[name] = draw(odd_values)
        elif kind == "section":
            data[section] = draw(st.one_of(st.none(), numbers, strings, st.lists(st.integers(), max_size=2)))
        else:
            text_edits.append((kind, section, key))
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=draw(st.booleans()))
    for kind, section, key in text_edits:
        if kind == "duplicate" and f"\n{section}:\n" in f"\n{text}":
            # a second `key:` line inside the section: YAML would silently keep the last one
            text = text.replace(f"{section}:\n", f"{section}:\n  {key}: {yaml.safe_dump(draw(odd_values)).splitlines()[0]}\n", 1)
    if any(kind == "nesting" for kind, _, _ in text_edits):  # deep enough to exhaust a recursive parser
        depth = draw(st.sampled_from([50, 5000]))
        text += f"{draw(st.sampled_from(['extra', 'run']))}: {'[' * depth}{']' * depth}\n"
    raw = text.encode("utf-8")
    if any(kind == "encoding" for kind, _, _ in text_edits):
        how = draw(st.sampled_from(["latin-1 byte", "utf-16", "truncated utf-8", "nul"]))
        if how == "latin-1 byte":
            raw = raw.replace(b"run:", b"r\xe9n:", 1) if b"run:" in raw else b"\xe9" + raw
        elif how == "utf-16":
            raw = text.encode("utf-16")
        elif how == "truncated utf-8":
            raw += "ü".encode()[:1]
        else:
            raw = raw.replace(b"\n", b"\n\x00", 1)
    return raw


# --------------------------------------------------------------------------- checkpoints

weird = st.one_of(
    odd_values,
    st.builds(lambda n: torch.zeros(n), st.integers(min_value=0, max_value=3)),
    st.just(torch.tensor([1.5, math.nan])),
    st.just(torch.zeros(2, dtype=torch.uint8)),
)


@st.composite
def checkpoint_edits(draw, state: dict) -> tuple[tuple[str, ...], str, object]:
    """(key path into the checkpoint, 'delete' | 'replace', new value): one field of a real checkpoint corrupted."""
    paths: list[tuple[str, ...]] = [(k,) for k in state]
    paths += [("config", s) for s in state["config"]] + [("config", "model", k) for k in state["config"]["model"]]
    paths += [("rng", k) for k in state["rng"]] + [("optimizer", k) for k in state["optimizer"]]
    if state["history"]:
        paths += [("history", 0, k) for k in state["history"][0]]
    paths += [("model", next(iter(state["model"])))]
    path = draw(st.sampled_from(paths))
    action = draw(st.sampled_from(["delete", "replace", "replace", "replace"]))
    return path, action, draw(weird) if action == "replace" else None


def apply_edit(state: dict, edit: tuple[tuple, str, object]) -> None:
    path, action, value = edit
    target = state
    for part in path[:-1]:
        target = target[part]
    if action == "delete":
        del target[path[-1]]
    else:
        target[path[-1]] = value


# --------------------------------------------------------------------------- data files

DATA_DAMAGE = [
    "truncate",
    "random bytes",
    "empty",
    "other format",
    "resize",
    "trimap values",
    "unreadable",
    "delete",
    "folder",
    "list line",
]
