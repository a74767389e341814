"""Bad input on the newer commands (predict, export, study, torchrun, full disks): one test (or a few) per
class of defect the sweep found; each failed before its fix. The property-based harness is in
test_fuzz_commands.py; these pin the examples down with the exact outcome.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import seg_pet.checkpoint as checkpoint_module
from seg_pet.runtime.errors import StorageError
from seg_pet.runtime.fileio import atomic_path, remove_partial_files, storage_error_of
from tests.fuzz.conftest import assert_one_line_error, link_copy, run_cli, snapshot, train_argv

# --------------------------------------------------------------------------- helpers


def write_images(folder: Path, count: int = 2, size: int = 40) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size + 8 * i, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def predict_argv(run: Path, out: Path, *inputs, extra=()) -> list[str]:
    return ["predict", "--run", str(run), "--checkpoint", "last", "--out", str(out), "--input", *map(str, inputs), *extra]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def run_link(stopped_run, tmp_path) -> Path:
    """A copy of the stopped run made of hard links (seg_pet never writes a file in place)."""
    return link_copy(stopped_run, tmp_path / "runs" / stopped_run.name)


# --------------------------------------------------------------------------- 1. exit codes from one place


def test_torch_full_disk_runtime_error_is_a_storage_error(tmp_path):
    """torch.save on a full disk raises RuntimeError('... unexpected pos ...') without the OSError."""
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")
    with pytest.raises(StorageError, match=f"cannot write {target}"):
        with atomic_path(target):
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4480 vs 4374")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    chained = ValueError("exporter failed")
    chained.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded", "model.onnx")
    assert isinstance(storage_error_of(chained), StorageError)
    assert storage_error_of(ValueError("a bug")) is None


def test_torch_full_disk_during_training_is_exit_3(run_link, monkeypatch):
    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4480 vs 4374")

    monkeypatch.setattr(checkpoint_module.torch, "save", full)
    message = assert_one_line_error(*run_cli(["train", "--resume", str(run_link)]), expected_code=3)
    assert message.startswith(f"cannot write {run_link / 'checkpoints'}")


def test_export_full_disk_is_exit_3(run_link, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", full)
    out = tmp_path / "model.onnx"
    message = assert_one_line_error(
        *run_cli(["export", "--run", str(run_link), "--checkpoint", "last", "--out", str(out)]), expected_code=3
    )
    assert message.startswith(f"cannot write {out}: no space left on device")
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_ctrl_c_in_the_final_cleanup_is_130(monkeypatch):
    """A KeyboardInterrupt in main's own cleanup (after the command) used to escape as a traceback."""
    import seg_pet.cli as cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.gc, "collect", interrupted)
    code, err = run_cli(["predict", "--run", "/nonexistent", "--input", "x.png", "--out", "o"])
    assert code == 130 and "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted"


def test_ctrl_c_after_main_returned_is_130_without_traceback(tmp_path):
    """The interpreter's shutdown (thread pools, atexit): a Ctrl-C there gives 130 and no traceback."""
    script = (
        "import os, signal, sys, runpy, threading\n"
        "sys.argv = ['seg_pet', 'export', '--run', '/nonexistent', '--out', 'm.onnx']\n"
        "threading._register_atexit(lambda: os.kill(os.getpid(), signal.SIGINT))\n"  # as a thread pool's join at shutdown
        "runpy.run_module('seg_pet', run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 130, done.stderr


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--atol", "nan"], "--atol: must be a number > 0"),
        (["--atol", "-1"], "--atol: must be a number > 0"),
        (["--max-mismatch", "nan"], "--max-mismatch: must be a share from 0 to 1"),
        (["--max-mismatch", "-0.5"], "--max-mismatch: must be a share from 0 to 1"),
        (["--opset", "99999"], "--opset: must be a whole number from 9 to"),
        (["--opset", "3"], "--opset: must be a whole number from 9 to"),
    ],
    ids=["atol-nan", "atol-negative", "mismatch-nan", "mismatch-negative", "opset-huge", "opset-tiny"],
)
def test_export_flags_have_ranges(run_link, tmp_path, flags, expected):
    out = tmp_path / "model.onnx"
    before = snapshot(tmp_path)
    message = assert_one_line_error(*run_cli(["export", "--run", str(run_link), "--checkpoint", "last", "--out", str(out), *flags]))
    assert message.startswith(expected), message
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "key, value",
    [
        ("study.seeds", [2**70]),
        ("data.image_size", 10**6),
        ("data.batch_size", 10**7),
        ("model.channels", 10**6),
        ("data.eval_images", 10**9),
        ("data.batch_size", 4096),  # in range alone; with 1024 px images and 16 channels too big (a derived size)
    ],
)
def test_study_config_has_upper_bounds(tmp_path, key, value):
    section, name = key.split(".")
    config = {"study": {"output_dir": str(tmp_path / "studies"), "name": "s", "device": "cpu"}, "optim": {"steps": 1}}
    config.setdefault(section, {})[name] = value
    if value == 4096:
        config["data"]["image_size"] = 1024
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    message = assert_one_line_error(*run_cli(["study", "--config", str(path)]))
    assert message.startswith(key), message
    assert not (tmp_path / "studies").exists()


def test_yaml_aliases_are_refused(tmp_path):
    """Billion laughs: nine lines of aliases expand to 10**9 items (a MemoryError traceback before)."""
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [{', '.join(['*' + chr(96 + i)] * 10)}]")
    lines.append("run: {name: *i}")
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")
    message = assert_one_line_error(*run_cli(["train", "--config", str(path), "--dry-run"]))
    assert "YAML aliases (*a) are not allowed" in message and len(message) < 200


def test_a_huge_value_is_not_echoed(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("optim:\n  epochs: '" + "9" * 10_000_000 + "'\n")
    code, err = run_cli(["train", "--config", str(path), "--dry-run"])
    message = assert_one_line_error(code, err)
    assert message.startswith("optim.epochs: expected int") and len(err) < 1000


# --------------------------------------------------------------------------- 2. one output-root rule


def test_export_sidecar_never_lands_on_a_run_file(run_link):
    """--out RUN/test_metrics.onnx would write the sidecar over the run's test_metrics.json."""
    (run_link / "test_metrics.json").write_text("{}")
    before = snapshot(run_link)
    argv = ["export", "--run", str(run_link), "--checkpoint", "last", "--out", str(run_link / "test_metrics.onnx"), "--overwrite"]
    message = assert_one_line_error(*run_cli(argv))
    assert "test_metrics.json" in message and "own test_metrics.json" in message
    assert snapshot(run_link) == before


def test_export_sidecar_symlink_out_of_place_is_refused(run_link, tmp_path):
    (tmp_path / "model.json").symlink_to(run_link / "config.yaml")
    before = snapshot(run_link)
    argv = ["export", "--run", str(run_link), "--checkpoint", "last", "--out", str(tmp_path / "model.onnx"), "--overwrite"]
    message = assert_one_line_error(*run_cli(argv))
    assert "model.json" in message
    assert snapshot(run_link) == before


def test_export_sidecar_is_a_folder(run_link, tmp_path):
    """The model file used to be replaced already when the sidecar write failed with IsADirectoryError."""
    out = tmp_path / "model.onnx"
    out.write_bytes(b"old model")
    (tmp_path / "model.json").mkdir()
    argv = ["export", "--run", str(run_link), "--checkpoint", "last", "--out", str(out), "--overwrite"]
    message = assert_one_line_error(*run_cli(argv))
    assert message == f"the sidecar {tmp_path / 'model.json'}: is a folder, expected a file"
    assert out.read_bytes() == b"old model"


def test_export_run_without_validation_split(run_link, tmp_path):
    config = yaml.safe_load((run_link / "config.yaml").read_text())
    config["data"]["val_fraction"] = 0
    config["train"]["select"] = "last"
    (run_link / "config.yaml").unlink()  # a hard link: write a new file, not through it
    (run_link / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "model.onnx"
    # --opset 17: the TorchScript exporter (seconds); torch.export with dynamic sizes spends minutes on this
    # LinkNet. The exporters themselves are tested in tests/integration/test_export.py.
    argv = ["export", "--run", str(run_link), "--checkpoint", "last", "--out", str(out), "--opset", "17"]
    code, err = run_cli(argv)
    assert code == 0 and "Traceback" not in err, err
    assert out.is_file() and out.with_suffix(".json").is_file()
    verified_on = json.loads(out.with_suffix(".json").read_text())["verification"]["images"]
    assert verified_on and all(Path(name).is_file() for name in verified_on), verified_on  # training images, not random ones


def test_predict_dotdot_pattern_stays_inside_out(run_link, tmp_path):
    write_images(tmp_path / "photos" / "b")
    (tmp_path / "photos" / "a" / "x").mkdir(parents=True)
    out = tmp_path / "out"
    pattern = str(tmp_path / "photos" / "a" / "*" / ".." / ".." / "b" / "*.png")
    code, err = run_cli(predict_argv(run_link, out, pattern))
    assert code == 0, err
    written = sorted(
        p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png") if "photos" not in p.parts and "runs" not in p.parts
    )
    assert written == ["out/masks/img0.png", "out/masks/img1.png"]


def test_predict_leaves_other_processes_partial_files(run_link, tmp_path):
    images = write_images(tmp_path / "photos")
    out = tmp_path / "out"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        theirs = out / f".last.pt.partial-{other.pid}-abcdefgh.pt"
        legacy = out / ".metrics.csv.partial-abcdefgh.csv"
        theirs.write_bytes(b"a training writing here")
        legacy.write_bytes(b"owner unknown")
        code, err = run_cli(predict_argv(run_link, out, *images))
        assert code == 0, err
        assert theirs.exists() and legacy.exists()
    finally:
        other.kill()
        other.wait()
    assert remove_partial_files(out) == [theirs]  # its process is gone now


def test_predict_overwrite_of_some_images_keeps_the_other_rows(run_link, tmp_path):
    images = write_images(tmp_path / "photos", count=3)
    out = tmp_path / "out"
    assert run_cli(predict_argv(run_link, out, *images))[0] == 0
    code, err = run_cli(predict_argv(run_link, out, images[0], extra=["--overwrite"]))
    assert code == 0, err
    assert sorted(row["path"] for row in read_rows(out / "predictions.csv")) == sorted(map(str, images))


@pytest.mark.parametrize("folder", ["masks/img0.png", "predictions.csv"])
def test_predict_output_that_is_a_folder(run_link, tmp_path, folder):
    images = write_images(tmp_path / "photos")
    out = tmp_path / "out"
    assert run_cli(predict_argv(run_link, out, *images))[0] == 0
    target = out / folder
    target.unlink()
    target.mkdir()
    before = snapshot(out)
    message = assert_one_line_error(*run_cli(predict_argv(run_link, out, *images, extra=["--overwrite"])))
    assert message == f"--out {target}: is a folder, expected a file"
    assert snapshot(out) == before


def test_predict_recursive_glob_through_link_loops_returns(tmp_path):
    """glob.glob('**') follows symbolic links: two loops made it walk 2**40 paths."""
    script = (
        "import os, sys\n"
        "from seg_pet.predict import collect_inputs\n"
        "os.makedirs('d/sub'); open('d/sub/a.png', 'wb').close()\n"
        "os.symlink('..', 'd/sub/up'); os.symlink('.', 'd/self')\n"
        "print(sorted(i.key.as_posix() for i in collect_inputs(['d/**/*.png'])))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['sub/a']"


def test_predict_pil_warnings_stay_off_the_console(run_link, tmp_path, monkeypatch):
    images = write_images(tmp_path / "photos")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # > MAX pixels: DecompressionBombWarning (2x: error)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        code, err = run_cli(predict_argv(run_link, tmp_path / "out", *images))
    assert code == 0, err
    assert "Warning" not in err, err


def test_predict_ctrl_c_says_how_to_continue(run_link, tmp_path, monkeypatch):
    import seg_pet.predict.files as files

    images = write_images(tmp_path / "photos")
    real = files._Job.run_batch

    def interrupted(self, batch):
        real(self, batch)
        raise KeyboardInterrupt

    monkeypatch.setattr(files._Job, "run_batch", interrupted)
    code, err = run_cli(predict_argv(run_link, tmp_path / "out", *images, extra=["--batch-size", "1"]))
    assert code == 130 and "Traceback" not in err, err
    assert "run the same command with --skip-existing" in err
    assert len(read_rows(tmp_path / "out" / "predictions.csv")) == 1


# --------------------------------------------------------------------------- 3. one replace-safely rule


def tiny_study(tmp_path: Path, steps: int = 2) -> Path:
    config = {
        "study": {"output_dir": str(tmp_path / "studies"), "name": "s", "device": "cpu"},
        "data": {"fg_ratios": [0.5], "image_size": 8, "batch_size": 2, "eval_images": 2},
        "model": {"channels": 2, "layers": 1},
        "grid": {"losses": ["ce"], "batch_norm": [False], "optimizers": ["adam", "sgd"]},
        "optim": {"steps": steps},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_study_overwrite_then_ctrl_c_keeps_the_old_study(tmp_path, monkeypatch):
    import seg_pet.study.run as study_run

    config = tiny_study(tmp_path)
    assert run_cli(["study", "--config", str(config)])[0] == 0
    old = snapshot(tmp_path / "studies")
    real = study_run.train_run

    def ctrl_c(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the study's DeferredStop records it; the run stops at its next step
        return real(*args, **kwargs)

    monkeypatch.setattr(study_run, "train_run", ctrl_c)
    code, err = run_cli(["study", "--config", str(config), "--overwrite", "--set", "optim.steps=3"])
    assert code == 130, err
    assert "the previous one is back in place" in err
    assert snapshot(tmp_path / "studies") == old


def test_study_failure_leaves_no_half_made_folder(tmp_path, monkeypatch):
    import seg_pet.study.run as study_run

    def broken(*args, **kwargs):
        raise MemoryError("no room for the activations")

    monkeypatch.setattr(study_run, "train_run", broken)
    code, err = run_cli(["study", "--config", str(tiny_study(tmp_path))])
    assert code is None and "MemoryError" in err  # a crash, not bad input: the traceback stays
    assert not (tmp_path / "studies" / "s").exists()


def truncate_images(data_root: Path, target: Path) -> Path:
    """A copy of the dataset whose images all lose their second half (the headers survive: found when decoded)."""
    shutil.copytree(data_root, target)
    for image in (target / "images").glob("*.jpg"):
        data = image.read_bytes()
        image.write_bytes(data[: len(data) // 2])
    return target


@pytest.mark.parametrize("failure", ["ctrl_c", "crash"])
def test_train_overwrite_then_failure_in_epoch_1_puts_the_old_run_back(run_link, clean_data, empty_config, monkeypatch, failure):
    """The old run used to stay hidden in .NAME.replaced-* (no message) while the new one stayed in its place."""
    import seg_pet.training.epoch as epoch_module

    before = snapshot(run_link.parent)
    real = epoch_module.train_epoch

    def failing(*args, **kwargs):
        if failure == "ctrl_c":
            os.kill(os.getpid(), signal.SIGINT)  # DeferredStop records it; the run stops after this step
            return real(*args, **kwargs)
        raise MemoryError("no room for the activations")

    monkeypatch.setattr(epoch_module, "train_epoch", failing)
    code, err = run_cli(train_argv(empty_config, run_link.parent, run_link.name, clean_data, "--overwrite"))
    if failure == "ctrl_c":
        assert code == 130 and "Traceback" not in err, err
        assert f"the old run is back in {run_link}" in err
    else:
        assert code is None and "MemoryError" in err  # a crash, not bad input: the traceback stays
    assert snapshot(run_link.parent) == before


def test_train_resume_never_deletes_a_replaced_run_it_did_not_make(run_link):
    """A .NAME.replaced-* beside the run (left by a killed --overwrite) used to be deleted by the next resume's first epoch."""
    aside = run_link.parent / f".{run_link.name}.replaced-x"
    aside.mkdir()
    (aside / "config.yaml").write_text("old run")
    code, err = run_cli(["train", "--resume", str(run_link)])
    assert code == 0, err
    assert (aside / "config.yaml").read_text() == "old run"


def test_train_resume_refused_on_bad_data_keeps_config_yaml(run_link, clean_data, tmp_path):
    """--set data.root=... used to be written to config.yaml before the first decode error refused the run."""
    bad = truncate_images(clean_data / "oxford-iiit-pet", tmp_path / "bad" / "oxford-iiit-pet").parent
    config = (run_link / "config.yaml").read_bytes()
    message = assert_one_line_error(*run_cli(["train", "--resume", str(run_link), "--set", f"data.root={bad}"]))
    assert "cannot read image" in message and "truncated" in message
    assert (run_link / "config.yaml").read_bytes() == config


# --------------------------------------------------------------------------- 4. commands that are not data-parallel


@pytest.mark.parametrize("command", ["evaluate", "predict", "export", "study"])
def test_commands_that_are_not_data_parallel_refuse_torchrun(command, tmp_path, monkeypatch):
    argv = {
        "evaluate": ["evaluate", "--run", str(tmp_path)],
        "predict": ["predict", "--run", str(tmp_path), "--input", str(tmp_path), "--out", str(tmp_path / "o")],
        "export": ["export", "--run", str(tmp_path), "--out", str(tmp_path / "m.onnx")],
        "study": ["study", "--config", str(tiny_study(tmp_path))],
    }[command]
    before = snapshot(tmp_path)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    message = assert_one_line_error(*run_cli(argv))
    assert message.startswith(f"{command} does not run under torchrun with 2 processes")
    monkeypatch.setenv("RANK", "1")
    code, err = run_cli(argv)
    assert code == 2 and err == ""  # rank 0 alone says it
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- 5. messages


@pytest.mark.parametrize("override", ["data.val_fraction=0.5", "run.seed=7"])
def test_evaluate_refuses_a_different_validation_split(run_link, override):
    message = assert_one_line_error(*run_cli(["evaluate", "--run", str(run_link), "--checkpoint", "last", "--set", override]))
    assert message.startswith(f"--set {override.split('=')[0]}=") and "would change which images count as validation" in message
