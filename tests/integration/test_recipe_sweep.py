"""scripts/recipe_sweep.py at a tiny size: seg_pet, the baseline and a config-file variant trained per seed,
an evaluation-only variant scored from a trained one, the summary written, and finished runs reused on a
second call. One sweep covers all of it: each trained (variant, seed) is a process that reads the slice."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

from tests.conftest import REPO, SHARED_DATA, requires_pet


def sweep(out, *variants: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "scripts" / "recipe_sweep.py"), "--out", str(out), "--data-root", str(SHARED_DATA)]
    cmd += ["--image-size", "32", "--epochs", "1", "--max-steps", "1", "--seeds", "0", "1", "--variants", *variants]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=out.parent, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)


def tuned_config(folder) -> str:
    """e.g. tune's best.yaml: trained as it is, at the sweep's size, epochs and seeds."""
    tuned = folder / "best.yaml"
    tuned.write_text(
        (REPO / "configs" / "pet_slice_cpu.yaml")
        .read_text()
        .replace("name: ce_dice", "name: focal")
        .replace("warmup_epochs: 1 ", "warmup_epochs: 0 ")
    )
    return str(tuned)


@requires_pet
def test_sweep_trains_scores_summarises_and_reuses_runs(tmp_path) -> None:
    out = tmp_path / "sweep"
    tuned = tuned_config(tmp_path)
    variants = ("baseline", "before", "tta_hflip", "tuned")
    done = sweep(out, "baseline", "before", "tta_hflip", "--config-variant", f"tuned={tuned}", "--variant-epochs", "tuned=2")
    assert done.returncode == 0, done.stderr[-2000:]
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["variant"], r["seed"]) for r in rows) == sorted((v, s) for v in variants for s in ("0", "1"))
    for seed in (0, 1):
        trained = json.loads((out / "before" / f"seed{seed}" / "test_metrics.json").read_text())
        scored = json.loads((out / "tta_hflip" / f"seed{seed}" / "test_metrics.json").read_text())
        assert (trained.get("tta", "none"), scored["tta"]) == ("none", "hflip")
        assert scored["num_images"] == trained["num_images"] == 198
        # the extra look at the test split is on record in the trained run
        looks = (out / "before" / f"seed{seed}" / "test_evaluations.jsonl").read_text().splitlines()
        assert len(looks) == 2
        config = (out / "tuned" / f"seed{seed}" / "config.yaml").read_text()  # the file as it is, at the sweep's size
        assert "name: focal" in config and "image_size: 32" in config
        assert "epochs: 2" in config  # its own epoch count (--variant-epochs), the others the sweep's
        assert "epochs: 1" in (out / "before" / f"seed{seed}" / "config.yaml").read_text()
    summary = (out / "summary.md").read_text()
    for variant in ("baseline", "before", "tta_hflip"):
        assert f"| {variant} |" in summary
    assert f"| tuned | `{tuned}`, 2 epochs |" in summary
    assert (out / "summary.png").stat().st_size > 0

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/test_metrics.json")}
    assert len(stamps) == 8
    again = sweep(out, "baseline", "before", "tta_hflip", "--config-variant", f"tuned={tuned}", "--variant-epochs", "tuned=2")
    assert again.returncode == 0, again.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/test_metrics.json")} == stamps  # nothing trained twice


@requires_pet
def test_an_evaluation_variant_needs_its_trained_variant(tmp_path) -> None:
    done = sweep(tmp_path / "sweep", "tta_hflip")
    assert done.returncode == 2 and "also name before" in done.stderr


@requires_pet
def test_a_config_variant_needs_a_new_name(tmp_path) -> None:
    bad = sweep(tmp_path / "bad", "before", "--config-variant", f"before={tuned_config(tmp_path)}")
    assert bad.returncode == 2 and "new variant name" in bad.stderr
    assert not (tmp_path / "bad" / "before").exists()  # refused before anything trained


@requires_pet
def test_variant_epochs_name_a_trained_seg_pet_variant(tmp_path) -> None:
    for item in ("baseline=30", "nosuch=30", "before=0", "before"):
        bad = sweep(tmp_path / "bad", "baseline", "before", "--variant-epochs", item)
        assert bad.returncode == 2 and f"--variant-epochs {item!r}" in bad.stderr
    assert not (tmp_path / "bad" / "before").exists()


def test_every_named_variant_is_a_config_seg_pet_accepts() -> None:
    """A typo in a variant's pinned keys would otherwise surface only after a sweep's first hours."""
    import importlib.util

    from seg_pet.config import load_config
    from seg_pet.models import build_model

    spec = importlib.util.spec_from_file_location("recipe_sweep", REPO / "scripts" / "recipe_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in module.VARIANTS:
        sets = [f"{key}={json.dumps(value)}" for key, value in module.variant_overrides(name).items()]
        cfg = load_config(REPO / "configs" / "pet_slice_cpu.yaml", sets)
        build_model(cfg.model, num_classes=3)
