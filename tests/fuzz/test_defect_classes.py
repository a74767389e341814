"""One test (or a few) per class of bad input found by the sweep; each failed before its fix.

The property-based tests beside this file cover each class broadly; these pin the examples down
with the exact message, so a regression names the class it broke.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

import seg_pet.checkpoint as checkpoint_module
from seg_pet.checkpoint import load_checkpoint
from tests.conftest import set_args
from tests.fuzz.conftest import assert_one_line_error, copy_dataset, run_cli, small_overrides, snapshot, train_argv

# Batches of 1 and no step cap: epoch 1 decodes every file (64 px: BatchNorm needs > 1 value per channel).
EVERY_FILE = {"optim.epochs": 1, "data.batch_size": 1, "data.image_size": 64, "train.max_steps_per_epoch": "null"}


def first_image(data_root: Path) -> Path:
    stem = (data_root / "oxford-iiit-pet" / "annotations" / "trainval.txt").read_text().split()[0]
    return data_root / "oxford-iiit-pet" / "images" / f"{stem}.jpg"


@pytest.fixture
def data(clean_data, tmp_path) -> Path:
    """data.root of a private copy of the dataset, free to corrupt."""
    copy_dataset(clean_data / "oxford-iiit-pet", tmp_path / "data")
    return tmp_path / "data"


def refused(argv: list[str], watched: Path, expected_code: int = 2) -> str:
    """Run; assert one line, the exit code, and that nothing under `watched` changed."""
    before = snapshot(watched)
    message = assert_one_line_error(*run_cli(argv), expected_code=expected_code)
    assert snapshot(watched) == before, "a refused command changed files"
    return message


# --------------------------------------------------------------------------- 1. numbers, also derived ones


@pytest.mark.parametrize(
    "extra, expected",
    [
        ({"run.seed": 2**70}, "run.seed: must be >= 0 and <= 4294967295, got 1180591620717411303424"),
        (
            {"loss.name": "ce", "loss.class_weights": "[1e308, 1e308, 1e308]"},
            "loss.class_weights[0]: must be >= 0 and <= 1e+06, got 1e+308",
        ),
        ({"loss.name": "ce_dice", "loss.dice_weight": 1e300}, "loss.dice_weight: must be >= 0 and <= 1000, got 1e+300"),
    ],
    ids=["seed", "class-weights", "dice-weight"],
)
def test_huge_numbers_are_refused(tmp_path, clean_data, empty_config, extra, expected):
    """Each was accepted: the seed overflowed torch (traceback), the weights made the loss inf (exit 1)."""
    message = refused(train_argv(empty_config, tmp_path / "out", "r", clean_data, **extra), tmp_path)
    assert message == expected


def test_dry_run_checks_and_writes_nothing(tmp_path, clean_data, empty_config):
    """--dry-run: every check train makes before it writes; here the image size no machine could hold."""
    message = refused(train_argv(empty_config, tmp_path / "out", "r", clean_data, "--dry-run", **{"data.image_size": 2**20}), tmp_path)
    assert message == "data.image_size: must be >= 32 and <= 2048, got 1048576"
    code, err = run_cli(train_argv(empty_config, tmp_path / "out", "r", clean_data, "--dry-run"))
    assert code == 0, err
    assert not (tmp_path / "out").exists()


def test_derived_no_training_image(tmp_path, data, empty_config):
    """One image per breed and val_fraction 0.9: the carve-out leaves nothing to train on (was ZeroDivisionError)."""
    split = data / "oxford-iiit-pet" / "annotations" / "trainval.txt"
    lines = split.read_text().splitlines()
    first_of_breed = {}
    for line in lines:
        first_of_breed.setdefault(line.split()[1], line)
    split.write_text("\n".join(first_of_breed.values()) + "\n")
    message = refused(train_argv(empty_config, tmp_path / "out", "r", data, **{"data.val_fraction": 0.9}), tmp_path)
    assert message.startswith("data.val_fraction: 0.9 leaves no training images")


# --------------------------------------------------------------------------- 2. config text


def test_config_not_utf8(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_bytes(b"run:\n  name: caf\xe9\n")
    message = refused(["train", "--config", str(config)], tmp_path)
    assert message.startswith(f"{config}: not UTF-8 text (byte 0xe9 at line 2")


def test_config_duplicate_key(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("optim:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n")
    message = refused(["train", "--config", str(config)], tmp_path)
    assert message == f"{config}: duplicate key 'lr' (lines 2 and 4); YAML would silently keep the last one"


@pytest.mark.parametrize("key", ["run.name", "run.output_dir", "data.root"])
def test_control_characters_in_names(tmp_path, clean_data, empty_config, key):
    config = tmp_path / "c.yaml"
    section, name = key.split(".")
    config.write_text(f'{section}:\n  {name}: "a\\x07b"\n')
    sets = [s for s in small_overrides(tmp_path / "out", "r", clean_data) if not s.startswith(f"{key}=")]
    argv = ["train", "--config", str(config), *set_args(sets)]
    message = refused(argv, tmp_path)
    assert message == f"{key}: must not contain control characters, got 'a\\x07b'"


# --------------------------------------------------------------------------- 3. paths of the wrong kind


def test_output_dir_is_a_file(tmp_path, clean_data, empty_config):
    (tmp_path / "afile").write_text("x")
    message = refused(train_argv(empty_config, tmp_path / "afile", "r", clean_data), tmp_path)
    assert message == f"run.output_dir {tmp_path / 'afile'}: is a file, expected a folder"


def test_run_folder_is_a_file(tmp_path, clean_data, empty_config):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "r").write_text("x")
    message = refused(train_argv(empty_config, tmp_path / "out", "r", clean_data), tmp_path)
    assert message == f"run folder {tmp_path / 'out' / 'r'}: is a file, expected a folder"


def test_data_root_is_a_file(tmp_path, empty_config):
    (tmp_path / "afile").write_text("x")
    message = refused(train_argv(empty_config, tmp_path / "out", "r", tmp_path / "afile"), tmp_path)
    assert message == f"data.root {tmp_path / 'afile'}: is a file, expected a folder"


def test_config_is_a_folder(tmp_path):
    message = refused(["train", "--config", str(tmp_path)], tmp_path)
    assert message == f"--config {tmp_path}: is a folder, expected a file"


def test_checkpoint_is_a_folder(run_copy, tmp_path):
    message = refused(["evaluate", "--run", str(run_copy), "--checkpoint", str(tmp_path)], tmp_path)
    assert message == f"--checkpoint {tmp_path}: is a folder, expected a file"


def test_unreadable_config(tmp_path, monkeypatch):
    """Tests run as root, who may read anything: os.access is patched to answer as for another user."""
    config = tmp_path / "c.yaml"
    config.write_text("")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == config else real_access(path, mode, **kw))
    message = refused(["train", "--config", str(config)], tmp_path)
    assert message == f"--config {config}: not readable (permission denied)"


# --------------------------------------------------------------------------- 4. malformed checkpoints


def rewrite_checkpoints(run_dir: Path, change) -> None:
    for name in ("best.pt", "last.pt"):
        path = run_dir / "checkpoints" / name
        state = torch.load(path, weights_only=True)
        change(state)
        torch.save(state, path)


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda s: s.__setitem__("config", [1]), "config: expected a mapping, got list"),
        (lambda s: s.__setitem__("class_names", 3), "class_names: expected a list of strings, got int"),
        (lambda s: s["config"].__setitem__("model", "x"), "config.model: expected a mapping, got str"),
    ],
    ids=["config-list", "class-names-int", "config-model-str"],
)
def test_malformed_checkpoint(run_copy, change, expected):
    rewrite_checkpoints(run_copy, change)
    for argv, name in ((["evaluate", "--run", str(run_copy)], "best.pt"), (["train", "--resume", str(run_copy)], "last.pt")):
        message = refused(argv, run_copy)
        assert message == f"{run_copy / 'checkpoints' / name} is not a seg_pet checkpoint ({expected})"


def test_resume_without_rng_state(run_copy):
    rewrite_checkpoints(run_copy, lambda s: s.pop("rng"))
    message = refused(["train", "--resume", str(run_copy)], run_copy)
    assert message == f"{run_copy / 'checkpoints' / 'last.pt'} is not a seg_pet checkpoint (missing rng, needed to resume)"


# --------------------------------------------------------------------------- 5. output targets chosen by the user


def test_evaluate_out_folder_is_refused_before_the_work(run_copy, tmp_path, monkeypatch):
    import seg_pet.evaluation as evaluation

    monkeypatch.setattr(evaluation, "evaluate_split", lambda *a, **k: pytest.fail("evaluated before checking --out"))
    (tmp_path / "somewhere").mkdir()
    message = refused(["evaluate", "--run", str(run_copy), "--out", str(tmp_path / "somewhere")], tmp_path)
    assert message == f"--out {tmp_path / 'somewhere'}: is a folder, expected a file"


@pytest.mark.parametrize("target", ["config.yaml", "metrics.jsonl", "checkpoints/best.pt", "test_metrics.json"])
def test_evaluate_out_never_writes_over_the_run(run_copy, target):
    message = refused(["evaluate", "--run", str(run_copy), "--out", str(run_copy / target)], run_copy)
    assert message.startswith(f"--out {run_copy / target}: refusing to write over {run_copy}'s own ")


# --------------------------------------------------------------------------- 6. --overwrite keeps the old run until the new one is good


def test_overwrite_keeps_the_old_run_when_a_file_fails_to_decode(tmp_path, data, empty_config):
    out = tmp_path / "out"
    assert run_cli(train_argv(empty_config, out, "r", data, **{"optim.epochs": 1}))[0] == 0
    before = snapshot(out)
    image = first_image(data)
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])  # found only when decoded, in epoch 1
    argv = train_argv(empty_config, out, "r", data, "--overwrite", **EVERY_FILE)
    message = assert_one_line_error(*run_cli(argv))
    assert message.startswith(f"cannot read image {image}")
    assert snapshot(out) == before, "the old run must survive a replacement that failed before its first epoch"


# --------------------------------------------------------------------------- 7. test-set discipline


def test_test_evaluations_are_recorded_and_limited(run_copy, data):
    code, err = run_cli(["evaluate", "--run", str(run_copy), "--split", "test"])
    assert code == 0, err
    records = [json.loads(line) for line in (run_copy / "test_evaluations.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["command"] == "evaluate" and records[0]["checkpoint_epoch"] == 1
    message = assert_one_line_error(*run_cli(["evaluate", "--run", str(run_copy), "--split", "test"]))
    assert "already evaluated on the test split" in message and "test_evaluations.jsonl" in message
    # Another dataset is another test set: not a repeat.
    code, err = run_cli(["evaluate", "--run", str(run_copy), "--split", "test", "--set", f"data.root={data}"])
    assert code == 0, err
    code, err = run_cli(["evaluate", "--run", str(run_copy), "--split", "test", "--force"])
    assert code == 0, err
    records = [json.loads(line) for line in (run_copy / "test_evaluations.jsonl").read_text().splitlines()]
    assert [r["forced"] for r in records] == [False, False, True]
    # The end-of-training test evaluation is recorded too, and knows about the earlier looks.
    code, err = run_cli(["train", "--resume", str(run_copy)])
    assert code == 0, err
    records = [json.loads(line) for line in (run_copy / "test_evaluations.jsonl").read_text().splitlines()]
    assert records[-1]["command"] == "train" and len(records) == 4


# --------------------------------------------------------------------------- 8. a full disk


def test_disk_full_during_a_checkpoint_write(run_copy, monkeypatch):
    last = run_copy / "checkpoints" / "last.pt"
    before = last.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", full)
    message = assert_one_line_error(*run_cli(["train", "--resume", str(run_copy)]), expected_code=3)
    assert message.startswith(f"cannot write {last}: no space left on device")
    assert f"--resume {run_copy}" in message
    assert last.read_bytes() == before and not [p for p in last.parent.iterdir() if ".partial-" in p.name]
    monkeypatch.undo()
    code, err = run_cli(["train", "--resume", str(run_copy)])
    assert code == 0, err
    assert load_checkpoint(last)["epoch"] == 2


# --------------------------------------------------------------------------- 9. messages name the key that is wrong


def test_unknown_encoder_weights_names_encoder_weights(tmp_path, clean_data, empty_config):
    message = refused(train_argv(empty_config, tmp_path / "out", "r", clean_data, **{"model.encoder_weights": "foo"}), tmp_path)
    assert message.startswith("model.encoder_weights: unknown weights 'foo' for encoder timm-mobilenetv3_small_minimal_100")


def test_unknown_encoder_still_names_encoder(tmp_path, clean_data, empty_config):
    message = refused(train_argv(empty_config, tmp_path / "out", "r", clean_data, **{"model.encoder": "resnet9000"}), tmp_path)
    assert message.startswith("model.encoder: unknown encoder 'resnet9000'")


# --------------------------------------------------------------------------- 10. half-made folders, one folder mode


def test_decode_error_leaves_no_empty_output_dir(tmp_path, data, empty_config):
    image = first_image(data)
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    out = tmp_path / "new" / "out"
    argv = train_argv(empty_config, out, "r", data, **EVERY_FILE)
    assert assert_one_line_error(*run_cli(argv)).startswith(f"cannot read image {image}")
    assert not (tmp_path / "new").exists()


def test_run_folder_mode_follows_the_umask(tmp_path, clean_data, empty_config):
    umask = os.umask(0o022)
    try:
        assert run_cli(train_argv(empty_config, tmp_path / "out", "r", clean_data, **{"optim.epochs": 1}))[0] == 0
    finally:
        os.umask(umask)
    run_dir = tmp_path / "out" / "r"
    modes = {p.stat().st_mode & 0o777 for p in [run_dir, *run_dir.rglob("*")] if p.is_dir()}
    assert modes == {0o755}
    assert {p.stat().st_mode & 0o777 for p in run_dir.rglob("*") if p.is_file()} == {0o644}
