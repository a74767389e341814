"""Run folders -> the numbers and pictures of the report page -> one HTML file (`build_report`)."""

from __future__ import annotations

import base64
import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import jinja2
import numpy as np
import yaml

from seg_pet.config import flat_keys
from seg_pet.runtime.errors import SegPetError
from seg_pet.runtime.fileio import atomic_write
from seg_pet.runtime.paths import check_output
from seg_pet.viz import plot_confusion, plot_curves, plot_runs

TEMPLATE = "report.html.j2"


def build_report(runs: list[str | Path], out: str | Path, *, overwrite: bool = False, log: Callable[[str], None] = print) -> Path:
    """Read every run folder, render the page, write it atomically to `out` (refused if it exists, unless `overwrite`)."""
    out = Path(out)
    if out.is_dir():
        raise SegPetError(f"--out {out}: is a folder; give the path of the .html file to write")
    if out.exists() and not overwrite:
        raise SegPetError(f"--out {out}: exists; pass --overwrite to replace it")
    check_output(out, "--out", "file")
    data = [read_run(run) for run in runs]
    label_runs(data)
    with tempfile.TemporaryDirectory(prefix="seg_pet_report_") as tmp:
        for run in data:
            run["pictures"] = run_pictures(run, Path(tmp) / run["label"].replace("/", "_"))
        comparison = compare(data, Path(tmp)) if len(data) > 1 else None
        html = render(data, comparison)
    with atomic_write(out) as f:
        f.write(html)
    log(f"report of {len(data)} run(s) written to {out} ({len(html.encode()) / 1e6:.1f} MB)")
    return out


def read_run(path: str | Path) -> dict[str, Any]:
    """What a run folder holds, each part None/empty where it is missing (an unfinished run, no test yet)."""
    folder = Path(path)
    if not folder.exists():
        raise SegPetError(f"RUN {folder}: no such folder")
    if not folder.is_dir() or not (folder / "config.yaml").is_file():
        raise SegPetError(f"RUN {folder}: not a seg_pet run folder (no config.yaml)")
    config = _load(folder / "config.yaml", yaml.safe_load)
    if not isinstance(config, dict):
        raise SegPetError(f"{folder / 'config.yaml'}: not a seg_pet config (expected a mapping)")
    rows = []
    if (folder / "metrics.jsonl").is_file():
        rows = _load(folder / "metrics.jsonl", lambda text: [json.loads(line) for line in text.splitlines() if line.strip()])
    test = _load(folder / "test_metrics.json", json.loads) if (folder / "test_metrics.json").is_file() else None
    names = list((test or {}).get("iou") or (rows[-1].get("val_iou") if rows else None) or [])
    epochs = (config.get("optim") or {}).get("epochs")
    if test is not None:
        status = f"finished: {len(rows)} epochs, tested (best.pt, epoch {test.get('checkpoint_epoch')})"
    elif rows and len(rows) == epochs:
        status = f"trained {len(rows)} of {epochs} epochs; no test metrics"
    else:
        status = f"unfinished: {len(rows)} of {epochs} epochs; no test metrics"
    return {
        "path": str(folder),
        "name": folder.name,
        "config": config,
        "config_text": yaml.safe_dump(config, sort_keys=False),
        "rows": rows,
        "test": test,
        "names": names,
        "status": status,
        "best": best_row(rows, test),
        "warnings": [(r.get("epoch"), w) for r in rows for w in r.get("warnings") or []],
        "worst": sorted((folder / "worst").glob("*.png")) if (folder / "worst").is_dir() else [],
        "groups": {key: sorted(rows, key=_lowest_first) for key, rows in ((test or {}).get("groups") or {}).items()},
    }


def _load(path: Path, parse: Callable[[str], Any]) -> Any:
    try:
        return parse(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SegPetError(f"{path}: cannot read it ({reason})") from None


def best_row(rows: list[dict[str, Any]], test: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The epoch best.pt holds: the tested one, else the highest validation mIoU so far, else the last."""
    if not rows:
        return None
    if test is not None:
        for row in rows:
            if row.get("epoch") == test.get("checkpoint_epoch"):
                return row
    scored = [r for r in rows if _finite(r.get("val_miou"))]
    return max(scored, key=lambda r: r["val_miou"]) if scored else rows[-1]


def _lowest_first(row: dict[str, Any]) -> tuple[bool, float]:
    return (not _finite(row.get("miou")), row["miou"] if _finite(row.get("miou")) else 0.0)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def label_runs(runs: list[dict[str, Any]]) -> None:
    """Each run's label: its folder name, or its path where two runs share a name."""
    names = [r["name"] for r in runs]
    for run in runs:
        run["label"] = run["name"] if names.count(run["name"]) == 1 else run["path"]


def png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def run_pictures(run: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Curves and the test confusion matrix drawn afresh from the numbers; worst/ panels as the run saved them."""
    pictures: dict[str, Any] = {"curves": None, "confusion": None, "worst": []}
    if run["rows"] and run["names"]:
        colours = ((run["config"] or {}).get("data") or {}).get("class_colors")
        palette = np.array(colours, dtype=np.uint8).reshape(-1, 3) if colours else None  # declared colours; else the default (Pet) palette
        plot_curves(run["rows"], run["names"], tmp / "curves.png", palette)
        pictures["curves"] = png(tmp / "curves.png")
    test = run["test"]
    if test is not None and test.get("confusion"):
        title = f"test, epoch {test.get('checkpoint_epoch')} (row-normalised)"
        plot_confusion(test["confusion"], run["names"], tmp / "confusion.png", title=title)
        pictures["confusion"] = png(tmp / "confusion.png")
    pictures["worst"] = [(p.stem, png(p)) for p in run["worst"]]
    return pictures


def compare(runs: list[dict[str, Any]], tmp: Path) -> dict[str, Any]:
    """Several runs: the config keys whose values differ, the curves overlaid, one table of their numbers."""
    flat = [flat_keys(r["config"]) for r in runs]
    keys = sorted({k for f in flat for k in f})
    missing = "(absent)"
    differ = [
        (k, [json.dumps(f[k]) if k in f else missing for f in flat]) for k in keys if len({json.dumps(f.get(k, missing)) for f in flat}) > 1
    ]
    curves = None
    if any(r["rows"] for r in runs):
        plot_runs({r["label"]: r["rows"] for r in runs}, tmp / "compare_curves.png")
        curves = png(tmp / "compare_curves.png")
    return {"config_diff": differ, "curves": curves}


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if _finite(value) else "n/a"


def render(runs: list[dict[str, Any]], comparison: Optional[dict[str, Any]]) -> str:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("seg_pet.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    title = runs[0]["label"] if len(runs) == 1 else f"{len(runs)} runs: " + ", ".join(r["label"] for r in runs)
    return env.get_template(TEMPLATE).render(title=title, runs=runs, comparison=comparison)
