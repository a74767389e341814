"""scripts/benchmark.py runs on CPU in tiny settings and writes the documented JSON."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, SHARED_DATA, requires_pet


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the script is executed
    spec.loader.exec_module(module)
    return module


def _run(tmp_path: Path, *extra: str, data: tuple[str, ...] = ()) -> dict:
    """Tiny CPU settings; `data` replaces the default 16-image synthetic dataset."""
    benchmark = _load_script("benchmark")
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        code = benchmark.main(
            [
                "--device",
                "cpu",
                *(data or ("--synthetic", "16", "--data-root", str(tmp_path / "data"))),
                "--image-size",
                "32",
                "--batch-size",
                "2",
                "--steps",
                "2",
                "--warmup",
                "1",
                "--workers",
                "0",
                "--threads",
                "1",
                "--out",
                str(out),
                *extra,
            ]
        )
    finally:
        torch.set_num_threads(threads)  # --threads is process-wide
    assert code == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("cache", ["memory", "device"])
def test_benchmark_cpu_tiny_writes_json(tmp_path: Path, capsys, cache: str) -> None:
    report = _run(tmp_path, "--cache", cache)
    assert set(report) == {"settings", "results", "derived", "cache", "memory"}
    phases = {"ceiling", "engine_resident", "data_none", "train_none", "eval_none", f"data_{cache}", f"train_{cache}", f"eval_{cache}"}
    assert set(report["results"]) == phases
    for name, result in report["results"].items():
        assert result["images_per_s"] > 0 and math.isfinite(result["ratio_to_ceiling"]), name
        if name.startswith(("data_", "train_", "eval_")):
            assert "epoch_start_s" in result
    assert report["results"]["ceiling"]["ratio_to_ceiling"] == 1.0
    s = report["settings"]
    for key in (
        "device",
        "torch",
        "smp",
        "usable_cpus",
        "image_size",
        "batch_size",
        "workers",
        "amp",
        "channels_last",
        "compile",
        "command",
    ):
        assert key in s, key
    assert (s["device"], s["image_size"], s["batch_size"], s["encoder"], s["amp"], s["channels_last"]) == (
        "cpu",
        32,
        2,
        "resnet18",
        None,
        False,
    )
    assert {f"data_over_train_step_{cache}", "data_over_ceiling_none", f"eval_over_train_{cache}"} <= set(report["derived"])
    assert report["cache"]["mode"] == cache and report["cache"]["size_mib"] > 0 and report["memory"]["peak_rss_mib"] > 0
    assert "ceiling" in capsys.readouterr().out  # the table is printed


@requires_pet
def test_naive_baseline_on_the_bench_set_is_timed_in_the_same_run(tmp_path: Path) -> None:
    """--naive-baseline: torchvision's OxfordIIITPet + v2 transforms feeding an fp32 step, beside the other phases.

    The data is scripts/make_bench_data.py's output (here at small counts), read as data.root like any dataset."""
    bench_root = tmp_path / "bench"
    assert (
        _load_script("make_bench_data").main(["--from", str(SHARED_DATA), "--out", str(bench_root), "--trainval", "24", "--test", "8"]) == 0
    )
    report = _run(
        tmp_path, "--cache", "none", "--naive-baseline", "--naive-workers", "0", "--channels-last", data=("--data-root", str(bench_root))
    )
    assert (report["settings"]["data_root"], report["settings"]["data_source"]) == (str(bench_root), "oxford")
    assert report["settings"]["train_images"] + report["settings"]["val_images"] == 24
    assert set(report["results"]) == {"ceiling", "engine_resident", "data_none", "train_none", "eval_none", "naive_fp32"}
    naive = report["results"]["naive_fp32"]
    assert naive["images_per_s"] > 0 and math.isfinite(naive["ratio_to_ceiling"])
    assert report["derived"]["train_over_naive_none"] > 0
    s = report["settings"]
    assert s["channels_last"] is True  # --channels-last overrides the CPU default
    assert s["naive_baseline"]["workers"] == 0 and s["naive_baseline"]["amp"] is None


def test_ceiling_only_reads_no_data(tmp_path: Path) -> None:
    report = _run(tmp_path, "--ceiling-only")
    assert set(report["results"]) == {"ceiling", "engine_resident"}
    assert report["derived"] == {} and report["cache"] == {}
    assert report["settings"]["train_images"] is None and not (tmp_path / "data").exists()


def test_set_changes_the_model_measured_and_a_bad_key_is_one_line(tmp_path: Path, capsys) -> None:
    report = _run(tmp_path, "--ceiling-only", "--set", "model.encoder_depth=3", "--set", "model.decoder_channels=[16,8,4]")
    assert (report["settings"]["encoder_depth"], report["settings"]["decoder_channels"]) == (3, [16, 8, 4])
    capsys.readouterr()
    benchmark = _load_script("benchmark")
    assert benchmark.main(["--device", "cpu", "--ceiling-only", "--set", "model.depth=3", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.depth" in err and not (tmp_path / "x.json").exists()


def test_cuda_requested_without_cuda_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    benchmark = _load_script("benchmark")
    assert benchmark.main(["--device", "cuda", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "CUDA is not available" in err


@pytest.mark.slow
def test_benchmark_nproc_runs_through_torchrun_and_reports_scaling(tmp_path: Path, capsys) -> None:
    """--nproc 2 on CPU (gloo): 1 and 2 processes, images/s of each process and the efficiency (correctness only)."""
    report = _run(tmp_path, "--nproc", "2", "--cache", "none")
    assert set(report["runs"]) == {"1", "2"} and set(report["scaling"]) == {"ddp_resident", "ddp_train"}
    for phase in ("ddp_resident", "ddp_train"):
        two = report["runs"]["2"][phase]
        assert len(two["images_per_s_per_process"]) == 2 and all(x > 0 for x in two["images_per_s_per_process"])
        assert two["images_per_s"] == pytest.approx(sum(two["images_per_s_per_process"]))
        assert report["scaling"][phase] == pytest.approx(two["images_per_s"] / (2 * report["runs"]["1"][phase]["images_per_s"]))
    assert "efficiency" in capsys.readouterr().out
