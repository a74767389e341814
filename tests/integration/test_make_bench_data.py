"""scripts/make_bench_data.py: a full-size Oxford-layout dataset from the real slice, here at small counts."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from torchvision.datasets import OxfordIIITPet

from tests.conftest import PET_DIR, REPO, SHARED_DATA, requires_pet

pytestmark = requires_pet

SCRIPT = REPO / "scripts" / "make_bench_data.py"
COUNTS = {"trainval": 30, "test": 20}


def _load_script():
    spec = importlib.util.spec_from_file_location("make_bench_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(out: Path, trainval: int = COUNTS["trainval"], test: int = COUNTS["test"]) -> list[str]:
    return ["--from", str(SHARED_DATA), "--out", str(out), "--trainval", str(trainval), "--test", str(test)]


def _build(out: Path, **counts: int) -> Path:
    assert _load_script().main(_args(out, **counts)) == 0
    return out / "oxford-iiit-pet"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def _tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Relative path -> (bytes, mtime_ns) of every file and folder under root ('' bytes for folders)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"", p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime_ns): a cheap snapshot of the real slice."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _split_ids(pet: Path, split: str) -> list[list[str]]:
    return [line.split() for line in (pet / "annotations" / f"{split}.txt").read_text().splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("bench"))


def test_torchvision_reads_both_splits(built: Path) -> None:
    for split, count in COUNTS.items():
        ds = OxfordIIITPet(built.parent, split=split, target_types="segmentation")
        assert len(ds) == count
        assert ds.classes == ["Abyssinian", "American Bulldog"]  # both breeds, even at small counts
        for image_path, trimap_path in zip(ds._images, ds._segs):
            with Image.open(image_path) as image, Image.open(trimap_path) as trimap:
                assert image.size == trimap.size
    header = [line for line in (PET_DIR / "annotations" / "list.txt").read_text().splitlines() if line.startswith("#")]
    listed = (built / "annotations" / "list.txt").read_text().splitlines()
    assert listed[:6] == header and len(header) == 6
    assert sorted(listed[6:]) == sorted(" ".join(f) for s in COUNTS for f in _split_ids(built, s))
    assert len(list((built / "images").iterdir())) == sum(COUNTS.values())  # ids unique across splits


def test_copies_are_byte_identical_and_from_the_same_split(built: Path) -> None:
    for split in COUNTS:
        sources = {}  # image bytes -> [(trimap bytes, columns, breed)] of this split's listed sources
        for image_id, *columns in _split_ids(PET_DIR, split):
            image, trimap = PET_DIR / "images" / f"{image_id}.jpg", PET_DIR / "annotations" / "trimaps" / f"{image_id}.png"
            if image.is_file() and trimap.is_file():
                sources.setdefault(image.read_bytes(), []).append((trimap.read_bytes(), columns, image_id.rsplit("_", 1)[0]))
        for new_id, *columns in _split_ids(built, split):
            image = (built / "images" / f"{new_id}.jpg").read_bytes()
            trimap = (built / "annotations" / "trimaps" / f"{new_id}.png").read_bytes()
            assert image in sources, f"{new_id}.jpg is not a {split} source image"
            assert (trimap, columns, new_id.rsplit("_", 1)[0]) in sources[image], f"{new_id}: trimap or columns do not match its image"


def test_deterministic(built: Path, tmp_path: Path) -> None:
    again = _build(tmp_path)
    first, second = _tree(built), _tree(again)
    assert list(first) == list(second)
    assert all(first[path][0] == second[path][0] for path in first)


def test_same_args_do_nothing(tmp_path: Path, capsys) -> None:
    pet = _build(tmp_path)
    before = _tree(tmp_path)
    capsys.readouterr()
    assert _load_script().main(_args(tmp_path)) == 0
    assert "already complete" in capsys.readouterr().out
    assert _tree(tmp_path) == before
    assert pet.exists()


def test_other_counts_rebuild_in_place(tmp_path: Path) -> None:
    pet = _build(tmp_path)
    _build(tmp_path, trainval=7, test=5)
    assert [p.name for p in tmp_path.iterdir()] == ["oxford-iiit-pet"]  # no temporary folder left
    assert len(OxfordIIITPet(tmp_path, split="trainval", target_types="segmentation")) == 7
    assert len(OxfordIIITPet(tmp_path, split="test", target_types="segmentation")) == 5
    assert len(list((pet / "images").iterdir())) == 12


def test_failed_write_leaves_the_previous_dataset_and_no_partial_one(tmp_path: Path, monkeypatch, capsys) -> None:
    pet = _build(tmp_path, trainval=7, test=5)
    before = _tree(tmp_path)
    script, copied = _load_script(), []
    real_copy = script.shutil.copyfile

    def failing_copy(src, dst):
        if len(copied) == 10:
            raise OSError(28, "No space left on device")
        copied.append(dst)
        return real_copy(src, dst)

    monkeypatch.setattr(script.shutil, "copyfile", failing_copy)
    assert script.main(_args(tmp_path)) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert _tree(tmp_path) == before  # the old dataset untouched, the partial folder gone
    assert pet.exists()


def _assert_one_line_error(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_refuses_to_write_into_a_real_dataset(tmp_path: Path) -> None:
    real = tmp_path / "real" / "oxford-iiit-pet"
    (real / "annotations").mkdir(parents=True)
    (real / "annotations" / "trainval.txt").write_text("Abyssinian_100 1 1 1\n")
    (real / "images").mkdir()
    before = _tree(tmp_path)
    _assert_one_line_error(_run(*_args(tmp_path / "real")))
    assert _tree(tmp_path) == before


@pytest.mark.parametrize(
    "case",
    ["trainval 0", "test -3", "missing source", "out is the source", "out inside the source"],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path: Path, case: str) -> None:
    out = tmp_path / "out"
    args = {
        "trainval 0": _args(out, trainval=0),
        "test -3": _args(out, test=-3),
        "missing source": ["--from", str(tmp_path / "nowhere"), "--out", str(out)],
        "out is the source": _args(SHARED_DATA),
        "out inside the source": _args(PET_DIR / "bench"),
    }[case]
    before = _listing(SHARED_DATA)
    _assert_one_line_error(_run(*args))
    assert not out.exists() and not (PET_DIR / "bench").exists()
    assert _listing(SHARED_DATA) == before
