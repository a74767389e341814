"""The one path checker (seg_pet.runtime.paths) and refused writes (StorageError)."""

from __future__ import annotations

import errno
import os

import pytest

from seg_pet.runtime.errors import SegPetError, StorageError
from seg_pet.runtime.fileio import atomic_write
from seg_pet.runtime.paths import check_input, check_output, check_text


def make_run(folder):
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text("")
    return folder


def test_input_kinds(tmp_path):
    (tmp_path / "f").write_text("x")
    assert check_input(tmp_path / "f", "--config") == tmp_path / "f"
    assert check_input(tmp_path, "--run", "dir") == tmp_path
    with pytest.raises(SegPetError, match=r"^--config .*: is a folder, expected a file$"):
        check_input(tmp_path, "--config")
    with pytest.raises(SegPetError, match=r"^--run .*/f: is a file, expected a folder$"):
        check_input(tmp_path / "f", "--run", "dir")
    with pytest.raises(SegPetError, match=r"^--config .*/nope: no such file$"):
        check_input(tmp_path / "nope", "--config")
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(SegPetError, match="a broken symbolic link"):
        check_input(tmp_path / "link", "--config")


def test_unreadable(tmp_path, monkeypatch):
    path = tmp_path / "f"
    path.write_text("x")
    path.chmod(0)  # no read bit: refused even for root, who could read it
    with pytest.raises(SegPetError, match="not readable"):
        check_input(path, "--config")
    path.chmod(0o644)
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # another user
    with pytest.raises(SegPetError, match="not readable"):
        check_input(path, "--config")


@pytest.mark.parametrize("text", ["a\nb", "a\x00b", "tab\there", "\x1b[31m"])
def test_control_characters(text):
    with pytest.raises(SegPetError, match="must not contain control characters"):
        check_text(text, "run.name")


def test_names_the_os_cannot_hold(tmp_path):
    with pytest.raises(SegPetError, match="the path is empty"):
        check_output("", "--out")
    with pytest.raises(SegPetError, match="bytes long; at most 255"):
        check_output(tmp_path / ("x" * 256), "--out", "dir")
    with pytest.raises(SegPetError, match="the file name is too long"):
        check_output(tmp_path / ("x" * 240 + ".json"), "--out")  # its temporary .NAME.partial-XXXXXXXX.json would not fit


def test_output_parents(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SegPetError, match=r"^--out .*/f/m.json: .*/f is a file, not a folder$"):
        check_output(tmp_path / "f" / "m.json", "--out")
    assert check_output(tmp_path / "new" / "deeper" / "m.json", "--out") == tmp_path / "new" / "deeper" / "m.json"
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    with pytest.raises(SegPetError, match="cannot create it, .*ro is not writable"):
        check_output(tmp_path / "ro" / "new" / "m.json", "--out")


def test_a_run_folder_is_never_written_over(tmp_path):
    run = make_run(tmp_path / "run")
    for target in ("config.yaml", "checkpoints/best.pt", "test_metrics.json", "plots/x.png", "overlays"):
        with pytest.raises(SegPetError, match="refusing to write over .*'s own"):
            check_output(run / target, "--out")
    with pytest.raises(SegPetError, match="is a run folder; refusing to write into it"):
        check_output(run, "--out", "dir")
    assert check_output(run / "my_val_metrics.json", "--out")  # a new name of the user's own is fine
    assert check_output(run, "run folder", "dir", run_folder=True)  # train's own run folder (--overwrite, --resume)


def test_refused_write_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(StorageError, match=r"^cannot write .*metrics.json: no space left on device; the previous file is unchanged"):
        with atomic_write(target) as f:
            f.write("new")
    monkeypatch.undo()
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    assert StorageError("x").exit_code == 3 and SegPetError("x").exit_code == 2
