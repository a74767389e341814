"""`python -m seg_pet tune` at a tiny size (synthetic data, 32 px, a few steps): a study runs and writes its
results, a killed study resumes from its database, pruning stops trials, two jobs share a study, trials
never touch the test split, and each bad input is one line, exit 2, before any trial."""

from __future__ import annotations

import csv
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from seg_pet.cli import main
from seg_pet.config import load_config
from seg_pet.training.train import train
from seg_pet.tune.search import open_storage, open_study
from seg_pet.tune.space import load_space
from tests.conftest import REPO, set_args, tiny_overrides

SMOKE = REPO / "configs" / "smoke.yaml"
SPACE = {
    "objective": {"last_epochs": 2},
    "sampler": {"startup_trials": 2},
    "pruner": {"name": "none"},
    "params": {
        "optim.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
        "data.crop_scale": {"type": "categorical", "choices": [[0.35, 1.0], [0.8, 1.0]]},
    },
}


def write_space(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({**SPACE, **changes}))
    return path


def tune_args(tmp_path: Path, space: Path, trials: int, *extra: str, epochs: int = 2) -> list[str]:
    sets = tiny_overrides(tmp_path, real=False, **{"optim.epochs": epochs, "train.max_steps_per_epoch": 2, "train.overlays": 0})
    return [
        "tune",
        "--config",
        str(SMOKE),
        "--space",
        str(space),
        "--trials",
        str(trials),
        "--out",
        str(tmp_path / "study"),
        *set_args(sets),
        *extra,
    ]


def read_trials(out: Path) -> list[dict]:
    with (out / "trials.csv").open() as f:
        return list(csv.DictReader(f))


def load(out: Path, name: str = "space"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def no_test_outputs(out: Path) -> None:
    runs = [p for p in (out / "trials").iterdir() if p.is_dir()]
    assert runs
    for run in runs:
        assert not (run / "test_metrics.json").exists() and not (run / "test_evaluations.jsonl").exists(), run


def test_a_three_trial_study_writes_its_results_and_never_tests(tmp_path, capsys) -> None:
    space = write_space(tmp_path / "space.yaml")
    assert main(tune_args(tmp_path, space, 3)) == 0
    out = tmp_path / "study"
    rows = read_trials(out)
    assert [r["state"] for r in rows] == ["complete"] * 3
    for r in rows:  # the value is the mean validation mIoU of the last 2 epochs of the trial's own run
        with (Path(r["run_dirs"]) / "metrics.csv").open() as f:
            vals = [float(m["val_miou"]) for m in csv.DictReader(f)]
        assert len(vals) == 2 and float(r["value"]) == pytest.approx(sum(vals) / 2, rel=1e-5)
    best = max(rows, key=lambda r: float(r["value"]))
    cfg = load_config(out / "best.yaml")  # a full config train accepts
    assert cfg.optim.lr == pytest.approx(float(best["optim.lr"]), rel=1e-5)
    assert str(cfg.data.crop_scale) == best["data.crop_scale"]
    assert cfg.run.name == "space_best" and cfg.data.image_size == 32
    summary = (out / "summary.md").read_text()
    assert f"Best: trial {best['trial']}" in summary and summary in capsys.readouterr().out
    assert (out / "history.png").stat().st_size > 0 and (out / "importances.png").stat().st_size > 0
    no_test_outputs(out)


def test_train_without_test_reads_nothing_of_the_test_split(tmp_path, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the test split was touched")

    monkeypatch.setattr("seg_pet.training.train.build_test_dataset", refuse)
    monkeypatch.setattr("seg_pet.training.train.test_once", refuse)
    seen = []
    cfg = load_config(SMOKE, tiny_overrides(tmp_path, real=False, **{"train.overlays": 0}))
    assert train(cfg, test=False, on_epoch=seen.append, log=lambda _: None) == {}
    assert [r["epoch"] for r in seen] == [1, 2] and {"val_miou", "val_iou", "train_loss"} <= set(seen[0])
    assert not (cfg.run_dir / "test_metrics.json").exists()


def test_a_killed_study_resumes_without_repeating_finished_trials(tmp_path) -> None:
    space = write_space(tmp_path / "space.yaml")
    args = [sys.executable, "-m", "seg_pet", *tune_args(tmp_path, space, 2, epochs=4)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "study"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 300
        while not (out / "trials" / "trial_0001" / "metrics.jsonl").exists():  # trial 0 done, trial 1 one epoch in
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:] if proc.poll() else "timeout"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # the tune process alone: its worker dies with it
    finally:
        proc.wait()
    study = load(out)
    states = {t.number: t.state.name for t in study.trials}
    assert states == {0: "COMPLETE", 1: "RUNNING"}
    first_done = study.trials[0].datetime_complete
    stamp = (out / "trials" / "trial_0000" / "metrics.jsonl").stat().st_mtime_ns
    pid = study.trials[1].user_attrs["pid"]
    for _ in range(100):  # the worker's death signal is delivered asynchronously
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)

    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "trial 1: its process is gone (killed?); marked failed" in again.stderr
    study = load(out)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert study.trials[0].datetime_complete == first_done  # not run again
    assert (out / "trials" / "trial_0000" / "metrics.jsonl").stat().st_mtime_ns == stamp
    assert "ended without finishing" in study.trials[1].user_attrs["error"]
    assert [r["state"] for r in read_trials(out)] == ["complete", "fail", "complete"]


def test_the_pruner_stops_trials_after_its_warmup(tmp_path, capsys) -> None:
    # a threshold no validation mIoU reaches: every trial is stopped after its warm-up epoch
    space = write_space(tmp_path / "space.yaml", pruner={"name": "threshold", "lower": 1.1, "warmup_epochs": 1})
    assert main(tune_args(tmp_path, space, 2, epochs=4)) == 0
    out = tmp_path / "study"
    rows = read_trials(out)
    assert [(r["state"], r["epochs"]) for r in rows] == [("pruned", "2")] * 2
    for r in rows:
        assert len((Path(r["run_dirs"]) / "metrics.jsonl").read_text().splitlines()) == 2  # epochs 3 and 4 never ran
    assert not (out / "best.yaml").exists() and not (out / "history.png").exists()
    assert "No trial completed" in (out / "summary.md").read_text()
    assert "pruned after 2 epoch(s)" in capsys.readouterr().out
    no_test_outputs(out)


def test_two_jobs_share_one_study(tmp_path) -> None:
    space = write_space(tmp_path / "space.yaml")
    assert main(tune_args(tmp_path, space, 2, "--jobs", "2")) == 0
    out = tmp_path / "study"
    study = load(out)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert len({t.user_attrs["pid"] for t in study.trials}) == 2  # one trial in each worker process
    for log in ("worker_0.log", "worker_1.log"):
        assert (out / "logs" / log).read_text().count("run ") >= 1


# --------------------------------------------------------------------------- bad input: one line, exit 2, before any trial


def one_line_error(capsys, args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_an_unknown_key_or_bad_distribution_is_one_line(tmp_path, capsys) -> None:
    space = write_space(tmp_path / "space.yaml", params={"optim.lrr": {"type": "float", "low": 1e-3, "high": 1e-2}})
    assert "did you mean 'lr'" in one_line_error(capsys, tune_args(tmp_path, space, 1))
    space = write_space(tmp_path / "space.yaml", params={"optim.lr": {"type": "float", "low": 1e-2, "high": 1e-3}})
    assert "low must be less than high" in one_line_error(capsys, tune_args(tmp_path, space, 1))
    assert not (tmp_path / "study").exists()


def test_a_storage_that_is_not_a_database_is_one_line(tmp_path, capsys) -> None:
    space = write_space(tmp_path / "space.yaml")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not a database\n" * 50)
    err = one_line_error(capsys, tune_args(tmp_path, space, 1, "--storage", f"sqlite:///{notes}"))
    assert "not a database" in err and notes.read_text() == "my notes, not a database\n" * 50
    assert "not a database" in one_line_error(capsys, tune_args(tmp_path, space, 1, "--storage", "http://example.com/study"))
    assert not (tmp_path / "study").exists()


def test_a_study_name_with_another_space_is_one_line(tmp_path, capsys) -> None:
    space = write_space(tmp_path / "space.yaml")
    raw = {"data": {"source": "synthetic"}}
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    open_study(open_storage(storage), "search", load_space(space, raw), raw, tmp_path / "none")
    other = write_space(tmp_path / "other.yaml", objective={"last_epochs": 1})
    err = one_line_error(capsys, tune_args(tmp_path, other, 1, "--storage", storage, "--study", "search"))
    assert "exists in the storage with another search space (objective.last_epochs: 2 there, 1 here)" in err
    assert len(load_study_trials(storage, "search")) == 0


def load_study_trials(storage: str, name: str) -> list:
    return optuna.load_study(study_name=name, storage=storage).trials


def test_no_validation_split_is_one_line(tmp_path, capsys) -> None:
    space = write_space(tmp_path / "space.yaml")
    err = one_line_error(capsys, tune_args(tmp_path, space, 1, "--set", "data.val_fraction=0", "--set", "train.select=last"))
    assert "validation only" in err


def test_without_optuna_the_install_command_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    space = write_space(tmp_path / "space.yaml")
    assert 'pip install -e ".[tune]"' in one_line_error(capsys, tune_args(tmp_path, space, 1))
    assert not (tmp_path / "study").exists()


def _start_method_in_a_tune_worker(queue) -> None:
    from seg_pet.tune.search import start_loader_workers_as_train

    queue.put((multiprocessing.get_start_method(), start_loader_workers_as_train()))


def test_a_tune_worker_starts_loader_workers_as_train_does() -> None:
    """tune's workers are spawned; their DataLoader workers must not be (a fresh interpreter and the
    whole image cache pickled again every epoch made trials slower than the same `train`)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_start_method_in_a_tune_worker, args=(queue,))
    process.start()
    inherited, now = queue.get(timeout=120)
    process.join()
    assert inherited == "spawn"
    assert now == multiprocessing.get_start_method() != "spawn"
