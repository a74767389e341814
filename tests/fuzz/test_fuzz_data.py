"""Fuzz: one file of a small dataset damaged (truncated, random bytes, empty, another format, resized, trimap
values outside 1..3, unreadable, deleted, a folder in its place, a broken split-file line).

Property: `train` (batches of 1, no step cap: every file is decoded in epoch 1) exits 0 or 2 with no
traceback; on 2 one line and nothing on disk changed: no new run folder, and with --overwrite the old
run exactly as it was (it is put back when the new run fails before finishing its first epoch).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from tests.fuzz.conftest import check_contract, copy_dataset, fuzz_settings, link_copy, run_cli, sandbox, snapshot, train_argv
from tests.fuzz.strategies import DATA_DAMAGE

EXAMPLES = 20
EVERY_FILE = {"optim.epochs": 1, "data.batch_size": 1, "data.image_size": 64, "train.max_steps_per_epoch": "null"}


@st.composite
def damages(draw, names: list[str]) -> tuple[str, str, str, int]:
    """(which file: image | trimap | list, its stem, what happens to it, a number that shapes the damage)."""
    action = draw(st.sampled_from(DATA_DAMAGE))
    kind = "list" if action == "list line" else draw(st.sampled_from(["image", "trimap"]))
    return kind, draw(st.sampled_from(names)), action, draw(st.integers(min_value=0, max_value=2**16))


def damage(dataset: Path, kind: str, stem: str, action: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path = {
        "image": dataset / "images" / f"{stem}.jpg",
        "trimap": dataset / "annotations" / "trimaps" / f"{stem}.png",
        "list": dataset / "annotations" / ("trainval.txt" if seed % 2 else "test.txt"),
    }[kind]
    data = path.read_bytes()
    if action == "truncate":
        path.write_bytes(data[: int(len(data) * rng.uniform(0, 0.9))])
    elif action == "random bytes":
        start = int(rng.integers(0, len(data)))
        path.write_bytes(
            data[:start] + rng.integers(0, 256, size=min(64, len(data) - start), dtype=np.uint8).tobytes() + data[start + 64 :]
        )
    elif action == "empty":
        path.write_bytes(b"")
    elif action == "other format":
        with Image.open(path) as im:
            im.load()
        im.save(path, format=["PNG", "GIF", "BMP", "JPEG"][seed % 4])  # a trimap as JPEG: lossy, values change
    elif action == "resize":
        with Image.open(path) as im:
            im.resize((max(1, im.width + int(rng.integers(-8, 9))), max(1, im.height - 1)), Image.NEAREST).save(path, format=im.format)
    elif action == "trimap values":
        with Image.open(path) as im:
            arr = np.array(im)
        arr.reshape(-1)[rng.integers(0, arr.size, size=3)] = rng.choice([0, 4, 255])
        Image.fromarray(arr).save(path, format="PNG" if kind == "trimap" else "JPEG")
    elif action == "unreadable":
        os.chmod(path, 0)
    elif action == "delete":
        path.unlink()
    elif action == "folder":
        path.unlink()
        path.mkdir()
    else:  # a line of a split file: fields missing, not numbers, or bytes that are not text
        lines = data.decode().splitlines()
        i = int(rng.integers(0, len(lines)))
        lines[i] = [lines[i].split()[0], f"{lines[i]} extra", lines[i].replace(" ", " x", 1), "\udcff"][seed % 4]
        path.write_bytes("\n".join(lines).encode("utf-8", "surrogateescape") + b"\n")


def test_fuzz_data(clean_data, stopped_run, empty_config, tmp_path_factory, offline):
    parent = tmp_path_factory.mktemp("fuzz_data")
    names = [line.split()[0] for line in (clean_data / "oxford-iiit-pet" / "annotations" / "trainval.txt").read_text().splitlines()]

    @fuzz_settings(EXAMPLES)
    @given(what=damages(names), overwrite=st.booleans())
    def example(what, overwrite: bool) -> None:
        with sandbox(parent) as box:
            dataset = copy_dataset(clean_data / "oxford-iiit-pet", box / "data")
            damage(dataset, *what)
            flags = ()
            if overwrite:
                link_copy(stopped_run, box / "out" / "r")
                flags = ("--overwrite",)
            before = snapshot(box)
            code, err = run_cli(train_argv(empty_config, box / "out", "r", box / "data", *flags, **EVERY_FILE))
            if code == 0:
                assert "Traceback" not in err, err
                assert (box / "out" / "r" / "test_metrics.json").is_file()
            else:
                check_contract(code, err, before, snapshot(box))

    example()
