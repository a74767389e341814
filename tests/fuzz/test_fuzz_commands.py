"""Fuzz the newer commands: `predict` (input trees with `..`, link loops, odd files, existing outputs),
`export` (flags and output paths it must refuse). Study configs: tests/fuzz/test_command_defects.py.

Property, for every example, in a fresh sandbox holding a copy of a trained run: an exit code in
the command's documented set (docs/troubleshooting.md), no traceback; on 2 exactly one line and
nothing on disk changed; otherwise every file written or changed resolves, after symbolic links
and `..`, inside the output the command was given, and no file that existed before changed unless
`--overwrite` (or predict's `--skip-existing`, which appends rows) was given. Each example is one
in-process command at 32 px: well under a few seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from tests.fuzz.conftest import assert_one_line_error, fuzz_settings, link_copy, run_cli, sandbox, snapshot

PREDICT_EXAMPLES = 10
EXPORT_EXAMPLES = 8


def inside(path: Path, root: Path) -> bool:
    real, root = os.path.realpath(path), os.path.realpath(root)
    return real == root or real.startswith(root + os.sep)


def check_command(code, err, before, after, box: Path, out_roots: list[Path], codes: tuple[int, ...], may_change: bool) -> None:
    """The contract above; `out_roots`: what the command may write (a folder, or a model and its sidecar)."""
    assert code in codes, f"exit code {code}, stderr:\n{err}"
    assert "Traceback" not in err, err
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if code == 2:
        assert_one_line_error(code, err)
        assert not changed, f"refused, yet changed on disk: {changed[:5]}\n{err}"
        return
    outside = [k for k in changed if not any(inside(box / k, root) for root in out_roots)]
    assert not outside, f"wrote outside {out_roots}: {outside[:5]}\n{err}"
    if not may_change:
        modified = [k for k in before if k in changed]
        assert not modified, f"changed existing entries without --overwrite: {modified[:5]}\n{err}"


def write_image(path: Path, size: int = 40) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(len(str(path))).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def predict_tree(box: Path, run: Path) -> None:
    """photos/ with good images, odd files and a link loop; out/ with outputs of an earlier predict."""
    write_image(box / "photos" / "a.png")
    write_image(box / "photos" / "sub" / "b.png")
    (box / "photos" / "notes.png").write_text("not an image")
    (box / "photos" / "empty.jpg").write_bytes(b"")
    (box / "photos" / "folder.png").mkdir()
    (box / "photos" / "sub" / "loop").symlink_to("..")
    write_image(box / "elsewhere" / "c.png")
    (box / "out" / "masks").mkdir(parents=True)
    write_image(box / "out" / "masks" / "a.png")
    (box / "out" / "predictions.csv").write_text("input,mask\nphotos/a.png,masks/a.png\n")


INPUTS = [
    "photos",
    "photos/*.png",
    "photos/**",
    "photos/**/*.png",
    "photos/sub/../*.png",
    "photos/../elsewhere/*.png",
    "photos/sub/loop/sub/loop/a.png",
    "photos/notes.png",
    "photos/folder.png",
    "missing/*.png",
    "run/checkpoints/*",
]
OUTS = ["out", "new", "out/../new2", "photos", "photos/sub/loop/x", "run", "run/checkpoints", "out/predictions.csv", "/proc/1/x"]


def test_fuzz_predict(stopped_run, tmp_path_factory):
    parent = tmp_path_factory.mktemp("fuzz_predict")

    @fuzz_settings(PREDICT_EXAMPLES)
    @given(
        inputs=st.lists(st.sampled_from(INPUTS), min_size=1, max_size=3),
        out=st.sampled_from(OUTS),
        flags=st.lists(
            st.sampled_from(["--overwrite", "--skip-existing", "--overlay", "--probabilities", "--checkpoint=last", "--batch-size=1"]),
            max_size=3,
            unique=True,
        ),
    )
    def example(inputs: list[str], out: str, flags: list[str]) -> None:
        with sandbox(parent) as box:
            run = link_copy(stopped_run, box / "run")
            predict_tree(box, run)
            before = snapshot(box)
            code, err = run_cli(["predict", "--run", "run", "--out", out, "--input", *inputs, *flags])
            may_change = "--overwrite" in flags or "--skip-existing" in flags
            check_command(code, err, before, snapshot(box), box, [box / out], (0, 1, 2), may_change)

    example()


def test_fuzz_export(stopped_run, tmp_path_factory):
    """Output paths and flags export must refuse (a real ONNX export takes tens of seconds on a shared 2-core machine;
    the success path is tests/integration/test_export.py): exit 2, one line, nothing changed."""
    parent = tmp_path_factory.mktemp("fuzz_export")
    numbers = st.sampled_from(["nan", "-1", "inf", "0", "1e-3", "1e9", "x"])

    @fuzz_settings(EXPORT_EXAMPLES)
    @given(
        out=st.sampled_from(["run/config.yaml", "run", "run/checkpoints/m.onnx", "dir.onnx", "side.onnx", "old.onnx", "/proc/1/m.onnx"]),
        opset=st.sampled_from([None, "0", "-3", "6", "17", "999", "nan"]),
        atol=st.one_of(st.none(), numbers),
        mismatch=st.one_of(st.none(), numbers),
        flags=st.lists(st.sampled_from(["--overwrite", "--checkpoint=last", "--checkpoint=missing.pt"]), max_size=2, unique=True),
    )
    def example(out: str, opset, atol, mismatch, flags: list[str]) -> None:
        if out == "old.onnx" and "--overwrite" in flags:
            flags = [f for f in flags if f != "--overwrite"]  # would succeed: a real export
        with sandbox(parent) as box:
            link_copy(stopped_run, box / "run")
            (box / "old.onnx").write_bytes(b"an earlier model")
            (box / "old.json").write_text("{}")
            (box / "dir.onnx").mkdir()
            (box / "side.json").mkdir()  # the sidecar's place is a folder
            argv = ["export", "--run", "run", "--out", out, *flags]
            for flag, value in (("--opset", opset), ("--atol", atol), ("--max-mismatch", mismatch)):
                if value is not None:
                    argv.append(f"{flag}={value}")
            before = snapshot(box)
            code, err = run_cli(argv)
            model = box / out
            check_command(code, err, before, snapshot(box), box, [model, model.with_suffix(".json")], (2,), False)

    example()
