"""The test-set record: every evaluation on the test split is written into the run, whichever command made it.

`RUN/test_evaluations.jsonl` holds one JSON object per test evaluation:

    time              when (UTC, ISO 8601)
    command           train (the end-of-training evaluation) or evaluate
    checkpoint        the checkpoint file evaluated, and checkpoint_epoch its epoch
    data_source, data_root
                      which test set: data.source and the absolute data.root
    forced            true when it was a repeat that --force allowed

The rule, enforced by `evaluate --split test`: a run looks at a test set once. A second look at
the same test set (same data.source and data.root) needs --force. Evaluating the run on another
dataset (`--set data.root=...`) is another test set. A run made before this record existed counts
its test_metrics.json as one evaluation by `train` on the run's own dataset.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from seg_pet.runtime.fileio import atomic_write
from seg_pet.runtime.paths import check_input
from seg_pet.runtime.runpaths import RunPaths

LOG_NAME = RunPaths("").test_log.name


def dataset_identity(cfg: Any) -> dict[str, str]:
    """What makes a test set this one: the data source and the absolute data root (`cfg` is a Config)."""
    return {"data_source": cfg.data.source, "data_root": str(Path(cfg.data.root).resolve())}


def read_test_log(run_dir: Path) -> list[dict[str, Any]]:
    """The records, oldest first. A line that is not a JSON object counts as a look at an unknown test set."""
    path = RunPaths(run_dir).test_log
    if not path.exists():
        return []
    check_input(path, "the test-set record", "file")
    records = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        records.append(record if isinstance(record, dict) else {"command": "unknown", "data_source": None, "data_root": None})
    return records


def earlier_looks(run_dir: Path, cfg: Any, run_cfg: Any) -> list[dict[str, Any]]:
    """Records of earlier evaluations of the test set `cfg` names; `run_cfg` is the run's own config (for old runs)."""
    identity = dataset_identity(cfg)
    records = read_test_log(run_dir)
    if RunPaths(run_dir).test_metrics.is_file() and not any(r.get("command") == "train" for r in records):
        records.append({"command": "train", **dataset_identity(run_cfg)})  # a run from before the record existed
    return [
        r
        for r in records
        if r.get("data_root") is None or (r.get("data_source"), r.get("data_root")) == (identity["data_source"], identity["data_root"])
    ]


def record_test_evaluation(run_dir: Path, cfg: Any, *, command: str, checkpoint: Path, epoch: int, forced: bool) -> None:
    """Append one record (the file is rewritten atomically: a killed process leaves the old or the new one)."""
    path = RunPaths(run_dir).test_log
    old = path.read_text(errors="replace") if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    record = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_epoch": epoch,
        **dataset_identity(cfg),
        "forced": forced,
    }
    with atomic_write(path) as f:
        f.write(old + json.dumps(record) + "\n")
