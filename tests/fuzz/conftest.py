"""Shared pieces of the bad-input tests: a tiny model, a small dataset, one trained run, and the contract check.

The contract every bad input must keep: exit code 2 (or a documented one), exactly one line on
stderr starting with `error: `, no traceback, nothing new on disk and no existing run changed.
`run_cli` runs the real command line in-process (so monkeypatches reach it) and returns the exit
code and stderr; an exception that escapes `main` is returned as its traceback, code None.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
import traceback
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

from seg_pet.cli import main
from seg_pet.data.synthetic import MARKER_NAME, make_synthetic_dataset
from tests.conftest import SMALL_MODEL, set_args, tiny_overrides

# Example counts are fixed and the examples derandomised, so CI runs the same cases every time.
# SEG_PET_FUZZ_SCALE=10 runs ten times as many; SEG_PET_FUZZ_RANDOM=1 draws new ones on each run.
FUZZ_SCALE = float(os.environ.get("SEG_PET_FUZZ_SCALE", "1"))
FUZZ_RANDOM = os.environ.get("SEG_PET_FUZZ_RANDOM") == "1"
FUZZ_LOG = os.environ.get("SEG_PET_FUZZ_LOG")  # a file: each command's exit code and message are appended


def fuzz_settings(max_examples: int) -> settings:
    """Bounded, reproducible, no shrinking (one example is a command run: seconds, not microseconds)."""
    return settings(
        max_examples=max(1, int(max_examples * FUZZ_SCALE)),
        deadline=None,
        derandomize=not FUZZ_RANDOM,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


DATA_IMAGES = 16


def small_overrides(out: Path, name: str, data_root: Path, **extra) -> list[str]:
    """--set overrides for a run of seconds on a copy of the synthetic dataset, read as `data.source: oxford`."""
    sets = {**SMALL_MODEL, "data.batch_size": 4, "train.overlays": 0, "train.max_steps_per_epoch": 2, "optim.epochs": 2, **extra}
    return tiny_overrides(out, name, real=True, data_root=data_root, **sets)


def train_argv(config: Path, out: Path, name: str, data_root: Path, *flags: str, **extra) -> list[str]:
    return ["train", "--config", str(config), *set_args(small_overrides(out, name, data_root, **extra)), *flags]


def run_cli(argv: list[str]) -> tuple[int | None, str]:
    """(exit code, stderr) of `python -m seg_pet ARGV`, in this process; stdout is discarded."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # noqa: BLE001 - an escaped exception is what the contract forbids: report it
            return None, err.getvalue() + traceback.format_exc()
    if FUZZ_LOG:  # what the examples hit: one line per command (exit code, first line of stderr)
        last = (err.getvalue().strip().splitlines() or [""])[-1]
        with open(FUZZ_LOG, "a") as log:
            log.write(f"{code}\t{argv[0]}\t{last[:160]}\n")
    return code, err.getvalue()


def assert_one_line_error(code: int | None, err: str, expected_code: int = 2) -> str:
    """The bad-input contract on stderr; returns the message (without `error: `)."""
    assert code == expected_code, f"exit code {code}, stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0][len("error: ") :]


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under `folder`: folders by mode, files by mode and content hash."""
    state = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        info = path.lstat()
        if path.is_dir():
            state[key] = f"dir {info.st_mode:o}"
        else:
            state[key] = f"file {info.st_mode:o} {hashlib.sha1(path.read_bytes()).hexdigest()}"
    return state


def check_contract(code: int | None, err: str, before: dict[str, str], after: dict[str, str], *, allowed_new=lambda key: True) -> None:
    """Exit 0 or 2, no traceback; on 2 one line and nothing on disk changed; on 0 nothing that existed changed,
    and every new entry is one `allowed_new` accepts."""
    assert code in (0, 2), f"exit code {code}, stderr:\n{err}"
    assert "Traceback" not in err, err
    if code == 2:
        assert_one_line_error(code, err)
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        assert not changed, f"refused, yet changed on disk: {changed[:5]}\n{err}"
        return
    assert all(after.get(k) == v for k, v in before.items()), "an existing file or folder changed"
    unexpected = sorted(k for k in after.keys() - before.keys() if not allowed_new(k))
    assert not unexpected, f"wrote {unexpected[:5]}"


@contextlib.contextmanager
def sandbox(parent: Path) -> Iterator[Path]:
    """A fresh folder to run one example in (the current folder while it runs); removed afterwards."""
    folder = Path(tempfile.mkdtemp(dir=parent))
    try:
        with contextlib.chdir(folder):
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def link_copy(source: Path, target: Path) -> Path:
    """A copy made of hard links (cheap for 10 MB checkpoints); seg_pet never writes a file in place, so the source is safe."""
    shutil.copytree(source, target, copy_function=os.link)
    return target


@pytest.fixture(scope="module")
def offline():
    """Nothing is downloaded while fuzzing: the dataset download fails as offline, and so do encoder weights."""
    import huggingface_hub.constants
    import torchvision.datasets.oxford_iiit_pet as tv_pet

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("offline (fuzz harness)")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tv_pet, "download_and_extract_archive", no_network)
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


def copy_dataset(source: Path, target_root: Path) -> Path:
    """A copy of the synthetic dataset without its marker: to seg_pet just an Oxford-IIIT Pet folder."""
    copy = target_root / "oxford-iiit-pet"
    shutil.copytree(source, copy)
    with contextlib.suppress(FileNotFoundError):
        (copy / MARKER_NAME).unlink()
    return copy


@pytest.fixture(scope="session")
def clean_data(tmp_path_factory) -> Path:
    """data.root of a small dataset (do not modify: copy it with copy_dataset)."""
    root = tmp_path_factory.mktemp("fuzz_data")
    made = make_synthetic_dataset(root / "generated", num_images=DATA_IMAGES, seed=0)
    copy_dataset(made, root / "plain")
    return root / "plain"


@pytest.fixture(scope="session")
def empty_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz_cfg") / "empty.yaml"
    path.write_text("")
    return path


@pytest.fixture(scope="session")
def stopped_run(tmp_path_factory, clean_data, empty_config) -> Path:
    """A run stopped after epoch 1 of 2 (no test evaluation yet); copy it before changing it."""
    out = tmp_path_factory.mktemp("fuzz_runs")
    code, err = run_cli(train_argv(empty_config, out, "stopped", clean_data, "--stop-after-epoch", "1"))
    assert code == 0, err
    return out / "stopped"


@pytest.fixture
def run_copy(stopped_run, tmp_path) -> Path:
    copy = tmp_path / "runs" / stopped_run.name
    shutil.copytree(stopped_run, copy)
    return copy
