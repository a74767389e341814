"""scripts/gpu_check.py without a GPU: the refusal, --dry-run, and the ratio / goal / report logic on a made-up results dict."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED_DATA

SCRIPT = REPO / "scripts" / "gpu_check.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a machine that has one
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120, env=env, cwd=REPO)


def test_without_cuda_it_says_so_in_one_line_and_exits_2(tmp_path: Path) -> None:
    result = _run("--out", str(tmp_path / "gc"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "no CUDA GPU" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "gc").exists()  # nothing written


def test_dry_run_lists_the_steps_without_cuda(tmp_path: Path) -> None:
    result = _run("--dry-run", "--out", str(tmp_path / "gc"))
    assert result.returncode == 0, result.stderr
    steps = ["environment", "data", "bench_memory", "bench_device", "train", "cuda_tests", "bench_compile"]
    lines = result.stdout.splitlines()
    listed = [line.split()[1] for line in lines if line.strip()[:1].isdigit()]
    assert listed == steps
    assert "pytest -m cuda" in result.stdout and "--naive-baseline" in result.stdout and "--compile" in result.stdout
    assert "goals:" in result.stdout and ">= 0.95" in result.stdout and "< 2.5" in result.stdout
    assert not (tmp_path / "gc").exists()


def test_a_missing_smp_is_one_line_that_says_how_to_carry_the_wheel(monkeypatch) -> None:
    gpu_check = _load_script()
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_import = gpu_check.importlib.import_module

    def without_smp(name, *args):
        if name == "segmentation_models_pytorch":
            raise ImportError("No module named 'segmentation_models_pytorch'")
        return real_import(name, *args)

    monkeypatch.setattr(gpu_check.importlib, "import_module", without_smp)
    reason = gpu_check.refusal()
    assert reason is not None and "\n" not in reason
    assert "segmentation-models-pytorch" in reason
    assert "pip download --no-deps --only-binary=:all:" in reason and "pip install --no-deps --target" in reason


# --------------------------------------------------------------------------- the report from a made-up results dict


def _bench(ceiling: float, train: dict[str, tuple[float, float]], evaluation: dict[str, float], naive: float | None = None) -> dict:
    """A benchmark.py report: train phases as (steady img/s, epoch start overhead s)."""
    results = {"ceiling": {"images_per_s": ceiling}, "engine_resident": {"images_per_s": ceiling * 0.99}}
    peaks = {"ceiling": 9000.0, "engine_resident": 9000.0}
    for cache, (rate, start) in train.items():
        results[f"data_{cache}"] = {"images_per_s": 5000.0, "epoch_start_s": start}
        results[f"train_{cache}"] = {"images_per_s": rate, "epoch_start_s": start, "epoch_start_overhead_s": start}
        results[f"eval_{cache}"] = {"images_per_s": evaluation[cache], "epoch_start_s": start}
        peaks |= {f"train_{cache}": 10000.0, f"eval_{cache}": 3000.0}
    if naive is not None:
        results["naive_fp32"] = {"images_per_s": naive}
        peaks["naive_fp32"] = 12000.0
    for r in results.values():
        r["ratio_to_ceiling"] = r["images_per_s"] / ceiling
    return {
        "settings": {"batch_size": 32, "train_images": 3312, "image_size": 256},
        "results": results,
        "derived": {},
        "cache": {},
        "memory": {"peak_gpu_mib": peaks},
    }


def _results(**training) -> dict:
    return {
        "command": "python scripts/gpu_check.py --out gc",
        "environment": {"gpu": "NVIDIA H100 80GB HBM3", "gpu_memory_mib": 81559.0, "driver": "580.0", "torch": "2.x", "cuda": "13.0"},
        "steps": {"environment": {"status": "ok", "seconds": 1.0}, "bench_memory": {"status": "ok", "seconds": 60.0}},
        "benchmark": {
            # memory: 960 img/s steady, 0.5 s loader start per epoch of 103 batches (3,296 images) -> 838 img/s per epoch
            "memory": _bench(1000.0, {"none": (500.0, 0.8), "memory": (960.0, 0.5)}, {"none": 1500.0, "memory": 2900.0}, naive=400.0),
            # device: no workers, no start: 980 img/s, 0.98 of its own ceiling
            "device": _bench(1000.0, {"none": (450.0, 0.8), "device": (980.0, 0.0)}, {"none": 1400.0, "device": 3500.0}),
            "compile": _bench(1300.0, {}, {}),
        },
        "training": {
            "cache": "device",
            "train_images": 3312,
            "val_images": 368,
            "peak_gpu_mib": 15000.0,
            "test_miou": 0.5,
            "epochs": [
                {"epoch": 1, "seconds": 4.0, "train_loss": 0.9, "val_miou": 0.4},
                {"epoch": 2, "seconds": 2.2, "train_loss": 0.7, "val_miou": 0.5},
                {"epoch": 3, "seconds": 2.4, "train_loss": 0.6, "val_miou": 0.55},
            ],
        }
        | training,
        "cuda_tests": {
            "summary": "10 passed, 1 failed in 95.0s",
            "passed": 10,
            "failed": 1,
            "skipped": 0,
            "error": 0,
            "tests": [
                {"test": "test_compiled_model_trains_one_epoch", "outcome": "failed", "seconds": 60.0, "message": "AssertionError: a | b"}
            ],
        },
    }


def test_ratios_are_to_the_same_run_ceiling_and_the_naive_baseline() -> None:
    gpu_check = _load_script()
    derived = gpu_check.derive(_results())
    memory, device, none = derived["caches"]["memory"], derived["caches"]["device"], derived["caches"]["none"]
    assert memory["train_epoch_images_per_s"] == pytest.approx(3296 / (3296 / 960 + 0.5))
    assert memory["train_over_ceiling"] == pytest.approx(3296 / (3296 / 960 + 0.5) / 1000)
    assert device["train_over_ceiling"] == pytest.approx(0.98) and device["train_over_naive"] == pytest.approx(980 / 400)
    assert device["eval_over_train"] == pytest.approx(3500 / 980) and device["run"] == "device"
    assert none["run"] == "memory" and none["train_steady_images_per_s"] == 500.0  # `none` beside the naive baseline
    assert derived["best_cache"] == "device" and derived["naive_images_per_s"] == 400.0
    assert derived["compile_over_plain_ceiling"] == pytest.approx(1.3)
    assert derived["epoch_seconds"] == pytest.approx(2.3)  # median of the epochs after the first


def test_goals_pass_fail_and_not_measured() -> None:
    gpu_check = _load_script()
    results = _results()
    results["derived"] = gpu_check.derive(results)
    goals = {g["goal"]: g for g in gpu_check.check_goals(results)}
    assert [g["status"] for g in goals.values()] == ["pass"] * 4
    assert goals["train_vs_ceiling"]["value"] == pytest.approx(0.98) and "device" in goals["train_vs_ceiling"]["basis"]

    slow = _results(
        epochs=[
            {"epoch": 1, "seconds": 5.0, "train_loss": 1.0, "val_miou": 0.3},
            {"epoch": 2, "seconds": 2.6, "train_loss": 0.9, "val_miou": 0.4},
        ]
    )
    slow["benchmark"]["device"] = _bench(1000.0, {"none": (450.0, 0.8), "device": (900.0, 0.0)}, {"none": 1400.0, "device": 2000.0})
    del slow["benchmark"]["memory"]["results"]["naive_fp32"]
    goals = {g["goal"]: g["status"] for g in gpu_check.check_goals(slow)}
    assert goals == {"train_vs_ceiling": "FAIL", "train_vs_naive": "not measured", "eval_vs_train": "FAIL", "epoch_seconds": "FAIL"}

    small = _results(train_images=180)  # not the full-size split: the epoch goal cannot be judged
    assert {g["goal"]: g["status"] for g in gpu_check.check_goals(small)}["epoch_seconds"] == "not measured"
    assert all(g["status"] == "not measured" for g in gpu_check.check_goals({"benchmark": {}, "training": {}}))


def test_markdown_and_json_reports() -> None:
    gpu_check = _load_script()
    results = _results()
    results["derived"] = gpu_check.derive(results)
    results["goals"] = gpu_check.check_goals(results)
    text = gpu_check.render_markdown(results)
    assert text.startswith("# GPU check\n") and "NVIDIA H100 80GB HBM3" in text
    assert "| end-to-end training / same-run bf16 ceiling | >= 0.95 | 0.98× | **pass** |" in text
    assert "| seconds per epoch of 3,312 training images | < 2.5 | 2.30 s | **pass** |" in text
    assert "| `device` (best) | device | 1,000.0 | 980.0 | 980.0 | 0.98 | 2.45 | 3,500.0 | 3.57 | 10,000 / 3,000 |" in text
    assert "| `memory` | memory |" in text and "838.0" in text
    assert "400.0 img/s, peak GPU 12,000 MiB" in text and "1.30× the uncompiled ceiling" in text
    assert "| 2 | 2.20 | 0.7000 | 0.5000 |" in text  # the training run's epochs
    assert "10 passed, 1 failed" in text and "| `test_compiled_model_trains_one_epoch` | failed | AssertionError: a / b |" in text
    json.loads(json.dumps(results))  # the whole dict is JSON
    empty = gpu_check.render_markdown({"benchmark": {}, "training": {}})  # nothing measured still renders
    assert "**not measured**" in empty and "no benchmark ran" in empty and "not run" in empty


def test_the_bench_set_is_an_existing_data_root_or_built_by_make_bench_data(tmp_path: Path) -> None:
    gpu_check = _load_script()
    ran = []

    class FakeCheck:
        def __init__(self, data_root, source):
            self.args = gpu_check.parse_args(
                ["--out", str(tmp_path / "gc"), *(["--data-root", str(data_root)] if data_root else []), "--from", str(source)]
            )
            self.results, self.temporary = {"steps": {}}, None

        def run(self, name, cmd):
            ran.append((name, cmd))
            return 0

    existing = tmp_path / "full"
    (existing / "oxford-iiit-pet" / "annotations").mkdir(parents=True)
    (existing / "oxford-iiit-pet" / "annotations" / "trainval.txt").write_text("")
    check = FakeCheck(existing, SHARED_DATA)
    assert gpu_check.step_data(check) == existing and ran == []  # used as it is
    assert "as it is" in check.results["steps"]["data"]["note"]

    check = FakeCheck(tmp_path / "new", SHARED_DATA)
    assert gpu_check.step_data(check) == tmp_path / "new" and check.temporary is None
    name, cmd = ran[-1]
    assert name == "data" and cmd[1].endswith("make_bench_data.py")
    assert cmd[2:] == ["--from", str(SHARED_DATA), "--out", str(tmp_path / "new")]

    check = FakeCheck(None, SHARED_DATA)  # no --data-root: a temporary folder, removed at the end
    root = gpu_check.step_data(check)
    assert check.temporary == root and ran[-1][1][-1] == str(root)
    root.rmdir()

    check = FakeCheck(tmp_path / "new", tmp_path / "nowhere")  # no slice to build from: the step fails with a reason
    assert gpu_check.step_data(check) is None and "--from" in check.results["steps"]["data"]["note"]
