"""scripts/benchmark.py runs on CPU in tiny settings and writes the documented JSON."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("cache", ["memory", "device"])
def test_benchmark_cpu_tiny_writes_json(tmp_path: Path, capsys, cache: str) -> None:
    benchmark = _load_script("benchmark")
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        code = benchmark.main([
            "--device", "cpu", "--synthetic", "16", "--data-root", str(tmp_path / "data"), "--image-size", "32",
            "--batch-size", "2", "--steps", "2", "--warmup", "1", "--workers", "0", "--threads", "1",
            "--cache", cache, "--out", str(out),
        ])
    finally:
        torch.set_num_threads(threads)  # --threads is process-wide
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report) == {"settings", "results", "derived", "cache", "memory"}
    phases = {"ceiling", "engine_resident", "data_none", "train_none", "eval_none", f"data_{cache}", f"train_{cache}", f"eval_{cache}"}
    assert set(report["results"]) == phases
    for name, result in report["results"].items():
        assert result["images_per_s"] > 0 and math.isfinite(result["ratio_to_ceiling"]), name
        if name.startswith(("data_", "train_", "eval_")):
            assert "epoch_start_s" in result
    assert report["results"]["ceiling"]["ratio_to_ceiling"] == 1.0
    s = report["settings"]
    for key in ("device", "torch", "smp", "usable_cpus", "image_size", "batch_size", "workers", "amp", "channels_last", "compile", "command"):
        assert key in s, key
    assert (s["device"], s["image_size"], s["batch_size"], s["encoder"], s["amp"], s["channels_last"]) == ("cpu", 32, 2, "resnet18", None, False)
    assert {f"data_over_train_step_{cache}", "data_over_ceiling_none"} <= set(report["derived"])
    assert report["cache"]["mode"] == cache and report["cache"]["size_mib"] > 0 and report["memory"]["peak_rss_mib"] > 0
    assert "ceiling" in capsys.readouterr().out  # the table is printed
