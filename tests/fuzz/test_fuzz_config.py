"""Fuzz: a valid config with one or two things wrong (value, type, key, section, duplicate, encoding).

Property, for every example: exit code 0 or 2, no traceback; on 2 exactly one line and nothing on
disk changed (no run folder, no output_dir, the existing run beside it untouched). The cheap path is
`train --dry-run` (every check train makes before it writes; it writes nothing, except a
`data.source: synthetic` dataset it generates); a few examples run `train` for real.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given

from seg_pet.config import config_to_dict, load_config
from seg_pet.data.synthetic import MARKER_NAME
from tests.fuzz.conftest import check_contract, fuzz_settings, link_copy, run_cli, sandbox, small_overrides, snapshot
from tests.fuzz.strategies import config_texts

DRY_RUN_EXAMPLES = 25
TRAIN_EXAMPLES = 5
# Keys left to the dry run: valid values could make a real run long or large, or write outside the sandbox ("/").
DRY_RUN_ONLY = {
    ("data", k) for k in ("root", "source", "image_size", "batch_size", "synthetic_images", "num_workers", "cache", "download")
} | {("run", "output_dir"), ("optim", "epochs"), ("train", "max_steps_per_epoch"), ("train", "compile")}


@pytest.fixture(scope="module")
def base(clean_data) -> dict:
    """The valid starting point: the small setting, runs into ./out (the sandbox), the shared dataset read-only."""
    return config_to_dict(load_config(None, small_overrides(Path("out"), "fuzz", clean_data, **{"optim.epochs": 1})))


def every_key(base: dict) -> list[tuple[str, str]]:
    return [(section, key) for section, values in base.items() for key in values]


def in_synthetic_dataset(folder: Path):
    """New entries a dry run may make: a generated synthetic dataset and the folders that hold it."""
    roots = [marker.parent for marker in folder.rglob(MARKER_NAME)]
    return lambda key: any(r == folder / key or r in (folder / key).parents or (folder / key) in r.parents for r in roots)


def run_example(tmp_path: Path, stopped_run: Path, raw: bytes, *flags: str) -> None:
    with sandbox(tmp_path) as box:
        link_copy(stopped_run, box / "out" / "existing")
        (box / "c.yaml").write_bytes(raw)
        before = snapshot(box)
        code, err = run_cli(["train", "--config", "c.yaml", *flags])
        allowed = in_synthetic_dataset(box) if "--dry-run" in flags else (lambda key: True)
        check_contract(code, err, before, snapshot(box), allowed_new=allowed)


def test_fuzz_config_dry_run(base, stopped_run, tmp_path_factory, offline):
    parent = tmp_path_factory.mktemp("fuzz_config")

    @fuzz_settings(DRY_RUN_EXAMPLES)
    @given(raw=config_texts(base, every_key(base)))
    def example(raw: bytes) -> None:
        run_example(parent, stopped_run, raw, "--dry-run")

    example()


def test_fuzz_config_train(base, stopped_run, tmp_path_factory, offline):
    parent = tmp_path_factory.mktemp("fuzz_config_train")
    keys = [key for key in every_key(base) if key not in DRY_RUN_ONLY]

    @fuzz_settings(TRAIN_EXAMPLES)
    @given(raw=config_texts(base, keys))
    def example(raw: bytes) -> None:
        run_example(parent, stopped_run, raw)

    example()
