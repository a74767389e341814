"""Reliability: exact resume, kill/interrupt safety, run-folder rules, NaN safety, no code from files."""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import seg_pet.data.loaders as loaders_module
import seg_pet.training.state as state_module
from seg_pet.checkpoint import load_checkpoint, save_checkpoint
from seg_pet.cli import main
from seg_pet.config import load_config
from seg_pet.runtime.errors import CheckpointError
from seg_pet.runtime.fileio import atomic_write, remove_partial_files, to_jsonable
from seg_pet.training.rundir import create_run_dir, repair_best_checkpoint
from seg_pet.training.train import train
from tests.conftest import REPO, SMALL_MODEL, set_args, tiny_overrides

EPOCHS = 4


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """One synthetic dataset per test process (data.source: synthetic reuses it when the arguments match).
    Session scope, not module: these tests share no trained run, so xdist may spread them over both workers."""
    return tmp_path_factory.mktemp("syn")


def overrides(out: Path, name: str, data_root: Path, **extra) -> list[str]:
    sets = {
        **SMALL_MODEL,  # these tests write many checkpoints
        "data.synthetic_images": 16,
        "data.batch_size": 4,
        "train.overlays": 1,
        "train.max_steps_per_epoch": 2,
        "train.deterministic": "true",
        "optim.epochs": EPOCHS,
        **extra,
    }
    return tiny_overrides(out, name, real=False, data_root=data_root, **sets)


def train_argv(tmp_path: Path, out: Path, name: str, data_root: Path, **extra) -> list[str]:
    config = tmp_path / "empty.yaml"
    config.write_text("")
    return ["train", "--config", str(config), *set_args(overrides(out, name, data_root, **extra))]


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_close(a, b, path="row"):
    """Equal structure, numbers equal to 1e-6 (None == None: NaN is written as null)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-6, rel=0), path
    else:
        assert a == b, path


def assert_complete(run_dir: Path, epochs: int = EPOCHS) -> None:
    """A finished run: every epoch logged once, checkpoints loadable, test evaluated, no leftovers."""
    assert [r["epoch"] for r in rows(run_dir)] == list(range(1, epochs + 1))
    csv_epochs = [line.split(",")[0] for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert csv_epochs == [str(e) for e in range(1, epochs + 1)]
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert last["epoch"] == epochs and best["epoch"] == last["best_epoch"]
    assert json.loads((run_dir / "test_metrics.json").read_text())["checkpoint_epoch"] == best["epoch"]
    assert (run_dir / "test_confusion.csv").is_file() and (run_dir / "plots" / "test_confusion.png").is_file()
    assert [p for p in run_dir.rglob("*") if ".partial-" in p.name] == []
    assert [p for p in run_dir.parent.iterdir() if ".staging-" in p.name] == []


# --------------------------------------------------------------------------- exact resume


RECIPE = {"train.ema": 0.9, "optim.warmup_epochs": 1, "data.rotation": 10, "data.crop_scale": "[0.5, 1]"}


@pytest.mark.parametrize(
    "cache, recipe", [("none", {}), ("device", {"data.rotation": 10}), ("none", RECIPE)], ids=["plain", "device", "recipe"]
)
def test_resume_reproduces_an_uninterrupted_run(tmp_path, data_root, capsys, cache, recipe):
    """Also with data.cache: device, whose batches come from BatchAugment instead of DataLoader workers,
    and with the recipe's options (EMA weights, warmup, rotation), whose state must survive the stop too."""
    out = tmp_path / "out"
    assert main(train_argv(tmp_path, out, "straight", data_root, **{"data.cache": cache, **recipe})) == 0
    straight = out / "straight"

    assert main(train_argv(tmp_path, out, "split", data_root, **{"data.cache": cache, **recipe}) + ["--stop-after-epoch", "2"]) == 0
    split = out / "split"
    assert "stopped after epoch 2" in capsys.readouterr().out
    assert [r["epoch"] for r in rows(split)] == [1, 2]
    assert load_checkpoint(split / "checkpoints" / "last.pt")["epoch"] == 2
    assert not (split / "test_metrics.json").exists()

    assert main(["train", "--resume", str(split)]) == 0
    assert "resuming" in capsys.readouterr().out
    assert_complete(split)

    a, b = rows(straight), rows(split)
    for row in a + b:
        row.pop("seconds")
    assert_close(a, b)
    state_a = load_checkpoint(straight / "checkpoints" / "last.pt")
    state_b = load_checkpoint(split / "checkpoints" / "last.pt")
    assert state_a.keys() == state_b.keys()
    for weights in ("model", "train_weights") if "train_weights" in state_a else ("model",):
        assert state_a[weights].keys() == state_b[weights].keys()
        for key in state_a[weights]:
            assert torch.equal(state_a[weights][key], state_b[weights][key]), (weights, key)
    assert state_a.get("ema_updates") == state_b.get("ema_updates")
    for pid, s in state_a["optimizer"]["state"].items():
        for key, value in s.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(state_b["optimizer"]["state"][pid][key])), key
    assert (state_a["best_epoch"], state_a["best_miou"]) == (state_b["best_epoch"], state_b["best_miou"])
    assert state_a["scheduler"]["last_epoch"] == state_b["scheduler"]["last_epoch"] == EPOCHS * 2


def test_stop_after_an_already_finished_epoch_is_refused(tmp_path, data_root, capsys):
    out = tmp_path / "out"
    assert main(train_argv(tmp_path, out, "r", data_root) + ["--stop-after-epoch", "1"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(out / "r"), "--stop-after-epoch", "1"]) == 2
    assert capsys.readouterr().err == f"error: --stop-after-epoch 1: {out / 'r'} has already finished epoch 1\n"


class Pruned(Exception):
    """What a caller's on_epoch raises to end a run (optuna.TrialPruned in `tune`)."""


def test_on_epoch_gets_each_saved_row_and_what_it_raises_propagates(tmp_path, data_root, capsys):
    """on_epoch is called once per epoch, after its row and last.pt are saved, with that row; an
    exception from it ends train() unchanged and leaves the run folder resumable."""
    out = tmp_path / "out"
    cfg = load_config(None, overrides(out, "hooked", data_root, **{"optim.epochs": 3}))
    seen = []

    def on_epoch(row: dict) -> None:
        saved = load_checkpoint(out / "hooked" / "checkpoints" / "last.pt")
        seen.append((row, rows(out / "hooked")[-1], saved["epoch"], saved["history"][-1]))
        if row["epoch"] == 2:
            raise Pruned("stop here")

    with pytest.raises(Pruned, match="^stop here$"):
        train(cfg, on_epoch=on_epoch, log=lambda message: None)
    assert [row["epoch"] for row, *_ in seen] == [1, 2]
    for row, written, saved_epoch, saved_row in seen:
        assert saved_epoch == row["epoch"]
        assert json.dumps(row, sort_keys=True) == json.dumps(saved_row, sort_keys=True)  # NaN-aware equality
        assert written == json.loads(json.dumps(to_jsonable(row)))  # the metrics.jsonl row, NaN written as null
    assert [r["epoch"] for r in rows(out / "hooked")] == [1, 2]
    assert not (out / "hooked" / "test_metrics.json").exists()
    assert main(["train", "--resume", str(out / "hooked")]) == 0  # the run folder is kept as it was
    assert_complete(out / "hooked", epochs=3)


# --------------------------------------------------------------------------- run folders


def test_existing_run_refused_overwrite_replaces(tmp_path, data_root, capsys):
    out = tmp_path / "out"
    assert main(train_argv(tmp_path, out, "r", data_root, **{"optim.epochs": 1})) == 0
    run_dir = out / "r"
    before = (run_dir / "checkpoints" / "last.pt").read_bytes()
    capsys.readouterr()

    assert main(train_argv(tmp_path, out, "r", data_root, **{"optim.epochs": 1, "run.seed": 7})) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--resume {run_dir}" in err and "--overwrite" in err
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before

    assert main(train_argv(tmp_path, out, "r", data_root, **{"optim.epochs": 1, "run.seed": 7}) + ["--overwrite"]) == 0
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["config"]["run"]["seed"] == 7
    assert_complete(run_dir, epochs=1)


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, data_root, capsys):
    out = tmp_path / "out"
    precious = out / "r" / "thesis.txt"
    precious.parent.mkdir(parents=True)
    precious.write_text("keep me")
    assert main(train_argv(tmp_path, out, "r", data_root) + ["--overwrite"]) == 2
    assert "not a seg_pet run folder" in capsys.readouterr().err
    assert precious.read_text() == "keep me"


def test_create_run_dir_is_all_or_nothing(tmp_path):
    run_dir = tmp_path / "out" / "r"

    def broken(folder: Path) -> None:
        (folder / "config.yaml").write_text("x")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        create_run_dir(run_dir, broken)
    assert not (tmp_path / "out").exists()  # no run folder, no staging folder, no output_dir made for them

    create_run_dir(run_dir, lambda folder: (folder / "config.yaml").write_text("old"))
    with pytest.raises(RuntimeError):
        create_run_dir(run_dir, broken)  # as with --overwrite: the old run survives a failed replacement
    assert (run_dir / "config.yaml").read_text() == "old"
    # The new run fails on bad input before its first epoch: the old run comes back.
    create_run_dir(run_dir, lambda folder: (folder / "config.yaml").write_text("new")).abandon()
    assert (run_dir / "config.yaml").read_text() == "old"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["r"]
    # The new run saves its first epoch: the old run, kept aside until then, goes.
    new = create_run_dir(run_dir, lambda folder: (folder / "config.yaml").write_text("new"))
    assert (run_dir / "config.yaml").read_text() == "new"
    assert sorted(p.name[:12] for p in (tmp_path / "out").iterdir()) == [".r.replaced-", "r"]
    new.complete()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["r"]


def test_nothing_written_outside_run_folder_and_data_root(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "c.yaml").write_text("")
    monkeypatch.chdir(work)
    sets = overrides(Path("runs"), "r", Path("data"), **{"optim.epochs": 1})  # relative paths, used as given
    assert main(["train", "--config", "c.yaml", *set_args(sets)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    assert sorted(p.name for p in work.iterdir()) == ["c.yaml", "data", "runs"]
    assert sorted(p.name for p in (work / "runs").iterdir()) == ["r"]
    assert sorted(p.name for p in (work / "data").iterdir()) == ["oxford-iiit-pet"]
    assert_complete(work / "runs" / "r", epochs=1)


# --------------------------------------------------------------------------- atomic writes and repair


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(ZeroDivisionError):
        with atomic_write(target) as f:
            f.write("half of the new")
            raise ZeroDivisionError("failed half-way")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_remove_partial_files_only_removes_leftovers(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a finished process: its temporary files are leftovers
    leftover = tmp_path / "checkpoints" / f".last.pt.partial-{dead.pid}-abc12345.pt"
    leftover.write_bytes(b"half")
    live = tmp_path / f".metrics.csv.partial-{os.getpid()}-abc12345.csv"  # a write in progress (this process)
    unknown = tmp_path / ".metrics.csv.partial-abc123.csv"  # no PID: owner unknown
    keep = [tmp_path / ".synthetic.json", tmp_path / "checkpoints" / "last.pt", tmp_path / "partial-notes.txt", live, unknown]
    for path in keep:
        path.write_text("x")
    assert remove_partial_files(tmp_path) == [leftover]
    assert not leftover.exists() and all(p.exists() for p in keep)


def _state(epoch: int, best_epoch: int) -> dict:
    return {
        "model": {"w": torch.full((2,), float(epoch))},
        "config": {"model": {}},
        "class_names": ["a", "b"],
        "epoch": epoch,
        "best_epoch": best_epoch,
    }


def test_best_checkpoint_repaired_after_kill_between_last_and_best(tmp_path):
    best = tmp_path / "checkpoints" / "best.pt"
    save_checkpoint(best, _state(1, 1))
    # Killed after last.pt (epoch 2, the new best) and before best.pt: resume rewrites best.pt.
    assert repair_best_checkpoint(tmp_path, _state(2, 2)) is True
    assert load_checkpoint(best)["epoch"] == 2 and torch.equal(load_checkpoint(best)["model"]["w"], torch.full((2,), 2.0))
    # Epoch 3 did not improve: best.pt (epoch 2) is right and stays.
    before = best.read_bytes()
    assert repair_best_checkpoint(tmp_path, _state(3, 2)) is False
    assert best.read_bytes() == before


# --------------------------------------------------------------------------- NaN / Inf


@pytest.mark.parametrize("where", ["train", "val"])
def test_nan_loss_never_overwrites_best(tmp_path, data_root, capsys, monkeypatch, where):
    current = {"epoch": 0}
    real_epoch_seed, real_build_loss = loaders_module.epoch_seed, state_module.build_loss

    def spy_epoch_seed(seed, epoch):
        current["epoch"] = epoch
        return real_epoch_seed(seed, epoch)

    class Poisoned(torch.nn.Module):
        """The real loss, NaN from epoch 2 on in training steps (where=train) or validation (where=val)."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, logits, targets):
            value = self.inner(logits, targets)
            in_val = torch.is_inference_mode_enabled()
            if current["epoch"] >= 2 and in_val == (where == "val"):
                return value * math.nan
            return value

    def poisoned_build_loss(*args, **kwargs):
        return Poisoned(real_build_loss(*args, **kwargs))

    monkeypatch.setattr(loaders_module, "epoch_seed", spy_epoch_seed)
    monkeypatch.setattr(state_module, "build_loss", poisoned_build_loss)
    out = tmp_path / "out"
    code = main(train_argv(tmp_path, out, "r", data_root, **{"optim.epochs": 3}))
    err = capsys.readouterr().err
    assert code == 1
    assert ("loss is nan at step 1 of epoch 2/3" if where == "train" else "validation loss is nan after epoch 2") in err
    assert "Traceback" not in err
    run_dir = out / "r"
    assert load_checkpoint(run_dir / "checkpoints" / "best.pt")["epoch"] == 1
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 1
    assert [r["epoch"] for r in rows(run_dir)] == [1]


# --------------------------------------------------------------------------- untrusted files


class _Payload:
    """Unpickling this calls open(marker, 'w'): proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_crafted_pickle_checkpoint_is_refused(tmp_path, capsys, writer):
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("")
    evil = run_dir / "checkpoints" / "last.pt"
    payload = {"format": 1, "model": _Payload(marker), "config": {}, "epoch": 1, "class_names": []}
    if writer == "torch.save":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(evil)
    assert main(["train", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: refusing to load {evil}: it contains Python objects") and err.count("\n") == 1
    assert main(["evaluate", "--run", str(run_dir), "--checkpoint", str(evil)]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists()


# --------------------------------------------------------------------------- real processes: signals and kills


def test_sigterm_outside_training_exits_143(capsys, monkeypatch):
    import seg_pet.cli as cli

    def busy(args):
        os.kill(os.getpid(), signal.SIGTERM)  # e.g. while loading data or evaluating
        time.sleep(5)
        raise AssertionError("SIGTERM did not stop the command")

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli.COMMANDS["evaluate"], "run", busy)
    assert cli.main(["evaluate", "--run", "x"]) == 143
    assert capsys.readouterr().err == "terminated (SIGTERM)\n"
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_while_reading_a_checkpoint_is_not_a_bad_checkpoint(tmp_path, capsys, monkeypatch):
    """load_checkpoint turns torch's many exception types into CheckpointError; a signal must pass through."""
    import seg_pet.checkpoint as checkpoint
    import seg_pet.cli as cli

    path = tmp_path / "last.pt"
    save_checkpoint(path, _state(1, 1))

    def slow_load(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not stop the load")

    monkeypatch.setattr(checkpoint.torch, "load", slow_load)
    monkeypatch.setattr(cli.COMMANDS["evaluate"], "run", lambda args: checkpoint.load_checkpoint(path))
    assert cli.main(["evaluate", "--run", "x"]) == 143
    assert capsys.readouterr().err == "terminated (SIGTERM)\n"


def spawn(argv: list[str], log: Path, new_group: bool = False) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "seg_pet", *argv], stdout=f, stderr=subprocess.PIPE, env=env, text=True, start_new_session=new_group
        )


def wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, f"process ended before printing {text!r}: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"no {text!r} after {timeout}s"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, code, workers",
    [(signal.SIGINT, 130, 2), (signal.SIGTERM, 143, 0)],
    ids=["SIGINT-to-process-group-with-workers", "SIGTERM-to-process"],
)
def test_signal_saves_resumable_checkpoint(tmp_path, data_root, capsys, signum, code, workers):
    out = tmp_path / "out"
    log = tmp_path / "stdout.txt"
    proc = spawn(train_argv(tmp_path, out, "r", data_root, **{"optim.epochs": 50, "data.num_workers": workers}), log, new_group=True)
    wait_for(log, "epoch   1/50", proc)
    if workers:
        os.killpg(proc.pid, signum)  # as Ctrl-C in a terminal: the main process and its DataLoader workers
    else:
        proc.send_signal(signum)  # as `kill PID` or a scheduler's pre-emption
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    run_dir = out / "r"
    assert "Traceback" not in err
    assert err.count("received: stopping after this step") == 1, err  # workers leave stopping to the main process
    assert f"Resume with: python -m seg_pet train --resume {run_dir}" in err
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"]
    assert 1 <= saved < 50
    assert f"holds epoch {saved}" in err
    assert [r["epoch"] for r in rows(run_dir)] == list(range(1, saved + 1))

    assert main(["train", "--resume", str(run_dir), "--stop-after-epoch", str(saved + 1)]) == 0
    assert [r["epoch"] for r in rows(run_dir)] == list(range(1, saved + 2))
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == saved + 1


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_a_resumable_run(tmp_path, data_root, capsys):
    rng = random.Random(5)
    epochs = 3
    for trial in range(4):
        out = tmp_path / f"out{trial}"
        log = tmp_path / f"stdout{trial}.txt"
        argv = train_argv(tmp_path, out, "r", data_root, **{"optim.epochs": epochs})
        proc = spawn(argv, log)
        if trial == 0:
            time.sleep(rng.uniform(2.0, 8.0))  # anywhere: import, data checks, run-folder setup, training
        else:
            wait_for(log, "run ", proc)  # the run folder exists: epochs, checkpoint writes, test evaluation
            time.sleep(rng.uniform(0.0, 3.0))
        proc.kill()
        proc.communicate(timeout=60)
        run_dir = out / "r"
        capsys.readouterr()
        if run_dir.exists():
            assert main(["train", "--resume", str(run_dir)]) == 0, capsys.readouterr().err
        else:  # killed before the folder appeared: nothing half-made blocks a fresh start
            assert main(argv) == 0, capsys.readouterr().err
        assert_complete(run_dir, epochs)
