"""scripts/baseline.py, the plain yardstick trainer, at a tiny size: it trains, and scores the whole test split."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO, SHARED_DATA, requires_pet


@requires_pet
def test_baseline_trains_and_scores_the_test_split(tmp_path) -> None:
    out = tmp_path / "baseline"
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "baseline.py"),
        "--data-root",
        str(SHARED_DATA),
        "--out",
        str(out),
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "16",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["num_images"] == 198  # every image of the slice's official test list
    assert set(metrics["iou"]) == {"pet", "background", "border"}
    assert sum(map(sum, metrics["confusion"])) == 198 * 32 * 32  # one confusion matrix over the whole split
    assert 0 < metrics["miou"] < 1
