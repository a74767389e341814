"""Numbers from the config and derived from it (seg_pet.config.numbers); the config file's text (UTF-8, duplicate keys)."""

from __future__ import annotations

import math

import pytest

from seg_pet.config import load_config
from seg_pet.config.numbers import check_class_weights, check_number, check_split_sizes, plan_batches
from seg_pet.runtime.errors import ConfigError


def test_check_number_bounds_and_lists():
    meta = {"ge": 0.0, "le": 1e6}
    check_number("k", [0, 3.5, 1e6], meta)
    with pytest.raises(ConfigError, match=r"^k\[1\]: must be >= 0 and <= 1e\+06, got 1e\+08$"):
        check_number("k", [1, 1e8], meta)
    with pytest.raises(ConfigError, match=r"^k: must be a finite number, got nan$"):
        check_number("k", math.nan, meta)
    with pytest.raises(ConfigError, match=r"^run.seed: must be >= 0 and <= 4294967295, got 4294967296$"):
        load_config(None, ["run.seed=4294967296"])


@pytest.mark.parametrize(
    "sets, n_train, expected",
    [
        (["data.batch_size=1", "data.image_size=32"], 10, "data.batch_size: data.batch_size is 1, and at data.image_size 32"),
        (["data.batch_size=8", "data.image_size=32"], 1, "data.batch_size: the training split has 1 image"),
        (["optim.epochs=100000", "data.batch_size=2", "data.image_size=64"], 100_000, "optim.epochs: 100000 epochs x 50000 steps"),
    ],
)
def test_batch_plan_refuses_what_cannot_train(sets, n_train, expected):
    with pytest.raises(ConfigError, match=f"^{expected}"):
        plan_batches(load_config(None, sets), n_train)


def test_batch_plan():
    cfg = load_config(None, ["data.batch_size=8", "data.image_size=64", "optim.epochs=3", "train.max_steps_per_epoch=2"])
    plan = plan_batches(cfg, 20)
    assert (plan.batch_size, plan.steps_per_epoch, plan.total_steps) == (8, 2, 6)
    assert plan_batches(load_config(None, ["data.batch_size=1", "data.image_size=64"]), 5).batch_size == 1  # 2x2 values per channel


def test_split_sizes():
    cfg = load_config(None, ["data.val_fraction=0.5"])
    check_split_sizes(cfg, 1, 1)
    with pytest.raises(ConfigError, match="leaves no training images"):
        check_split_sizes(cfg, 0, 2)
    with pytest.raises(ConfigError, match="leaves no validation images"):
        check_split_sizes(cfg, 2, 0)


def test_class_weights():
    names = ["pet", "background"]
    assert check_class_weights([1, 2.5], names, "w") == [1.0, 2.5]
    for bad in ([1.0], [0, 0], [1, math.inf], [1, -1], "x", [True, 1]):
        with pytest.raises(ConfigError, match="^w: "):
            check_class_weights(bad, names, "w")


def write(tmp_path, data: bytes):
    path = tmp_path / "c.yaml"
    path.write_bytes(data)
    return path


def test_config_text(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml: not UTF-8 text \(byte 0xe9 at line 2, column 12\)"):
        load_config(write(tmp_path, b"run:\n  name: caf\xe9\n"))
    assert load_config(write(tmp_path, "\ufeffrun:\n  name: café\n".encode())).run.name == "café"  # a BOM is fine
    with pytest.raises(ConfigError, match=r"c.yaml: duplicate key 'run' \(lines 1 and 3\)"):
        load_config(write(tmp_path, b"run: {seed: 1}\noptim: {lr: 0.1}\nrun: {seed: 2}\n"))
    with pytest.raises(ConfigError, match=r"--set loss.classes: duplicate key 'a'"):
        load_config(None, ["loss.classes={a: 1, a: 2}"])
    with pytest.raises(ConfigError, match=r"^loss.classes\[1\]: must not contain control characters"):
        load_config(None, ["loss.name=dice", 'loss.classes=[pet, "bor\\nder"]'])
