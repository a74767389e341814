"""The recipe sweep: finished seg_pet configurations against the plain baseline (scripts/baseline.py), several seeds each, on test.

Searching for a recipe is `python -m seg_pet tune`'s job (docs/tune.md): it varies config keys with
Optuna on validation only. This script is the step after: every (variant, seed) is one finished
configuration that trains, then reads the test split once (seg_pet: the checkpoint its config
selects; the baseline: its last weights), with its wall time, beside the baseline at the same image
size and epochs. `--config-variant tuned=OUT/best.yaml` adds a config file, such as tune's best.yaml,
as a variant. The one-change VARIANTS below are the hand-written sweep behind docs/recipe.md's table,
kept so that table can be rerun; new choices are searched with tune. Nothing here chooses anything on
the test split: the `val` columns are what choices are made on, the test columns are reported.

    python scripts/recipe_sweep.py --out outputs/recipe_sweep/64px --image-size 64 --epochs 20 --seeds 0 1 2 --jobs 2
    python scripts/recipe_sweep.py --out outputs/recipe_sweep/tuned --variants baseline shipped --config-variant tuned=outputs/tune_slice/best.yaml

A run whose test_metrics.json exists is reused, so an interrupted sweep continues where it stopped
(delete OUT/VARIANT to rerun one). Writes OUT/results.csv (one row per run), OUT/summary.md (mean ± sd
per variant, with the difference to the baseline) and OUT/summary.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tqdm import tqdm  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# The recipe as it was before the sweep, pinned key by key, so that this row means the same thing
# whatever the shipped configs say later. Every variant below changes one thing from it.
BEFORE = {
    "data.val_fraction": 0.1,
    "data.batch_size": 8,
    "data.crop_scale": [0.35, 1.0],
    "data.rotation": 0.0,
    "data.cutmix": 0.0,
    "loss.name": "ce",
    "loss.label_smoothing": None,  # null: the loss's own default (no smoothing)
    "loss.dice_weight": None,
    "model.encoder_depth": 5,
    "model.decoder_channels": None,
    "optim.name": "adamw",
    "optim.lr": 0.002,
    "optim.weight_decay": 0.0001,
    "optim.warmup_epochs": 0,
    "train.ema": None,
    "train.channels_last": None,
    "train.select": "best_val",
    "eval.tta": "none",
}

# The recipe now shipped (configs/pet_slice_cpu.yaml), pinned key by key: the base of the variants that change it.
NARROW = {
    "loss.name": "ce_dice",
    "data.crop_scale": [0.8, 1.0],
    "optim.warmup_epochs": 1,
    "model.encoder_depth": 4,
    "model.decoder_channels": [64, 32, 16, 8],
}

# name -> (what it changes, overrides on top of BEFORE). "shipped" is configs/pet_slice_cpu.yaml as it is.
VARIANTS: dict[str, tuple[str, dict]] = {
    "before": ("seg_pet's recipe before the sweep: 10 % held out, best validation epoch", {}),
    "last": ("10 % held out, last epoch instead of the best validation epoch", {"train.select": "last"}),
    "all_trainval": (
        "all of trainval, no validation, last epoch",
        {"data.val_fraction": 0, "train.select": "last"},
    ),
    "ema": ("EMA of the weights (decay 0.99), best validation epoch", {"train.ema": 0.99}),
    "warmup": ("1 epoch of linear warmup, then cosine", {"optim.warmup_epochs": 1}),
    "lr_1e-3": ("peak learning rate 1e-3 instead of 2e-3", {"optim.lr": 0.001}),
    "lr_4e-3": ("peak learning rate 4e-3 instead of 2e-3", {"optim.lr": 0.004}),
    "wd_0.05": ("weight decay 0.05", {"optim.weight_decay": 0.05}),
    "batch_4": ("batches of 4 instead of 8: twice the steps for the same epochs", {"data.batch_size": 4}),
    "ce_dice": ("CE + Dice", {"loss.name": "ce_dice"}),
    "ce_median": ("CE with median-frequency class weights", {"loss.class_weights": "median"}),
    "crop_0.5": ("random crop scale 0.5-1 (the baseline's)", {"data.crop_scale": [0.5, 1.0]}),
    "crop_0.8": ("random crop scale 0.8-1", {"data.crop_scale": [0.8, 1.0]}),
    "crop_0.2": ("random crop scale 0.2-1", {"data.crop_scale": [0.2, 1.0]}),
    "rotate_15": ("random rotation up to 15 degrees", {"data.rotation": 15}),
    "hand_tuned": (
        "the one-change sweep's recipe, shipped before the tune study: CE + Dice, crop 0.8-1, 1 warmup epoch",
        {"loss.name": "ce_dice", "data.crop_scale": [0.8, 1.0], "optim.warmup_epochs": 1},
    ),
    "hand_tuned_d4": (
        "`hand_tuned` with 4 encoder stages (faster per epoch: give it more epochs with --variant-epochs)",
        {"loss.name": "ce_dice", "data.crop_scale": [0.8, 1.0], "optim.warmup_epochs": 1, "model.encoder_depth": 4},
    ),
    "hand_tuned_d4_narrow": (
        "`hand_tuned_d4` with half-width decoder stages, 64-32-16-8 (faster again: more epochs)",
        {
            **NARROW,
        },
    ),
    "hand_tuned_d4_rot": (
        "`hand_tuned_d4` with random rotations up to 15 degrees",
        {"loss.name": "ce_dice", "data.crop_scale": [0.8, 1.0], "optim.warmup_epochs": 1, "model.encoder_depth": 4, "data.rotation": 15},
    ),
    "hand_tuned_d4_narrow_aug": (
        "`hand_tuned_d4_narrow` with stronger augmentation for its longer schedule: crop 0.5-1, rotations up to 15 degrees",
        {
            "loss.name": "ce_dice",
            "data.crop_scale": [0.5, 1.0],
            "data.rotation": 15,
            "optim.warmup_epochs": 1,
            "model.encoder_depth": 4,
            "model.decoder_channels": [64, 32, 16, 8],
        },
    ),
    "hand_tuned_d3": (
        "`hand_tuned` with 3 encoder stages (decoder 64-32-16): a much smaller, faster model, given more epochs",
        {"loss.name": "ce_dice", "data.crop_scale": [0.8, 1.0], "optim.warmup_epochs": 1, "model.encoder_depth": 3},
    ),
    "hand_tuned_d4_narrow_cutmix": (
        "`hand_tuned_d4_narrow` with CutMix on half of the training images",
        {
            **NARROW,
            "data.cutmix": 0.5,
        },
    ),
    "hand_tuned_d4_narrow_cutmix_all": (
        "`hand_tuned_d4_narrow` with CutMix on every training image",
        {
            **NARROW,
            "data.cutmix": 1.0,
        },
    ),
    "hand_tuned_d4_narrow_sgd": (
        "`hand_tuned_d4_narrow` with SGD (momentum 0.9, peak lr 0.05, weight decay 5e-4) instead of AdamW",
        {
            **NARROW,
            "optim.name": "sgd",
            "optim.lr": 0.05,
            "optim.weight_decay": 0.0005,
        },
    ),
    "hand_tuned_d4_narrow_wd": (
        "`hand_tuned_d4_narrow` with weight decay 0.05 instead of 1e-4",
        {
            **NARROW,
            "optim.weight_decay": 0.05,
        },
    ),
    "shipped": ("configs/pet_slice_cpu.yaml as shipped", None),
}

# Evaluation-only variants: another finished configuration of a trained variant's runs, scored on the
# test split with other eval.* settings (`evaluate --force`, recorded in the run's test_evaluations.jsonl).
EVAL_VARIANTS: dict[str, tuple[str, str, dict]] = {
    "tta_hflip": ("`before`, scored with hflip test-time augmentation", "before", {"eval.tta": "hflip"}),
    "native_res": ("`before`, scored at each image's original size", "before", {"eval.native_resolution": True}),
    "shipped_native": ("`shipped`, scored at each image's original size", "shipped", {"eval.native_resolution": True}),
}


ALL = {"baseline": "scripts/baseline.py", **{k: v[0] for k, v in VARIANTS.items()}, **{k: v[0] for k, v in EVAL_VARIANTS.items()}}


def variant_overrides(name: str) -> dict:
    extra = VARIANTS.get(name, ("", None))[1]  # a --config-variant: its file as it is
    return {} if extra is None else {**BEFORE, **extra}


def run_settings(variant: str, seed: int, out: Path, *, data_root: str, image_size: int, epochs: int, max_steps=None) -> dict:
    """The config keys one (variant, seed) run of the sweep trains with, into the run folder `out`."""
    return {
        **variant_overrides(variant),
        "run.output_dir": str(out.parent),
        "run.name": out.name,
        "run.seed": seed,
        "data.root": data_root,
        "data.image_size": image_size,
        "optim.epochs": epochs,
        "train.overlays": 0,  # drawing is not part of the comparison
        "data.cache": "memory",  # decoded once; training is bit-identical to reading the files (docs/performance.md)
        **({"train.max_steps_per_epoch": max_steps} if max_steps else {}),
    }


def seg_pet_command(args: argparse.Namespace, variant: str, seed: int, out: Path) -> list[str]:
    epochs = args.variant_epochs.get(variant, args.epochs)
    sets = run_settings(variant, seed, out, data_root=args.data_root, image_size=args.image_size, epochs=epochs, max_steps=args.max_steps)
    config = args.config_variants.get(variant, REPO / "configs" / "pet_slice_cpu.yaml")
    cmd = [sys.executable, "-m", "seg_pet", "train", "--config", str(config)]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    return cmd


def baseline_command(args: argparse.Namespace, seed: int, out: Path) -> list[str]:
    cmd = [sys.executable, str(REPO / "scripts" / "baseline.py"), "--data-root", args.data_root, "--out", str(out)]
    cmd += ["--image-size", str(args.image_size), "--epochs", str(args.epochs), "--seed", str(seed)]
    return cmd + (["--max-steps", str(args.max_steps)] if args.max_steps else [])


def evaluate_command(args: argparse.Namespace, variant: str, seed: int, out: Path) -> list[str]:
    _, trained, sets = EVAL_VARIANTS[variant]
    cmd = [sys.executable, "-m", "seg_pet", "evaluate", "--run", str(args.out / trained / f"seed{seed}"), "--split", "test"]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    return cmd + ["--force", "--out", str(out / "test_metrics.json")]


def command(args: argparse.Namespace, variant: str, seed: int, out: Path) -> list[str]:
    if variant == "baseline":
        return baseline_command(args, seed, out)
    if variant in EVAL_VARIANTS:
        return evaluate_command(args, variant, seed, out)
    return seg_pet_command(args, variant, seed, out) + (["--overwrite"] if out.exists() else [])  # an unfinished run starts again


def run_one(args: argparse.Namespace, variant: str, seed: int) -> dict:
    out = args.out / variant / f"seed{seed}"
    if not (out / "test_metrics.json").is_file():
        cmd = command(args, variant, seed, out)
        out.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
        started = time.perf_counter()
        log = out.parent / f"seed{seed}.log"
        with log.open("w") as f:
            done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        if done.returncode != 0:
            raise SystemExit(f"{variant} seed {seed} failed (exit {done.returncode}); see {log}")
        (out / "wall_seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
    return result_row(out, variant, seed)


def result_row(out: Path, variant: str, seed: int) -> dict:
    test = json.loads((out / "test_metrics.json").read_text())
    wall = out / "wall_seconds.txt"
    if variant in EVAL_VARIANTS:  # the training time is the trained variant's; this row adds an evaluation
        wall = args_out(out) / EVAL_VARIANTS[variant][1] / f"seed{seed}" / "wall_seconds.txt"
    row = {
        "variant": variant,
        "seed": seed,
        "test_miou": test["miou"],
        **{f"test_{name}": iou for name, iou in test["iou"].items()},
        "wall_s": float(wall.read_text()) if wall.is_file() else test.get("seconds", math.nan),
        "val_miou": math.nan,
        "checkpoint_epoch": test.get("checkpoint_epoch", ""),
    }
    history = out / "metrics.csv"
    if variant != "baseline" and history.is_file():
        with history.open() as f:
            vals = [float(r["val_miou"]) for r in csv.DictReader(f) if r.get("val_miou") not in (None, "", "nan")]
        epoch = test.get("checkpoint_epoch")
        if vals and isinstance(epoch, int) and 1 <= epoch <= len(vals):
            row["val_miou"] = vals[epoch - 1]  # validation mIoU of the checkpoint that was tested
    return row


def args_out(run_out: Path) -> Path:
    """OUT from OUT/VARIANT/seedK."""
    return run_out.parent.parent


def mean_sd(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(rows: list[dict], order: list[str]) -> list[dict]:
    """Mean ± sd per variant. `val_vs_before`: the validation mIoU minus `before`'s for the same seed
    (the same validation images: the split follows the seed), averaged over seeds: what choices are made on."""
    base_miou = mean_sd([r["test_miou"] for r in rows if r["variant"] == "baseline"])[0]
    before_val = {r["seed"]: r["val_miou"] for r in rows if r["variant"] == "before"}
    summary = []
    for variant in order:
        mine = [r for r in rows if r["variant"] == variant]
        if not mine:
            continue
        entry = {"variant": variant, "runs": len(mine)}
        for key in ("test_miou", "test_border", "test_pet", "test_background", "val_miou", "wall_s"):
            entry[key] = mean_sd([r[key] for r in mine])
        entry["vs_baseline"] = entry["test_miou"][0] - base_miou
        entry["val_vs_before"] = mean_sd([r["val_miou"] - before_val.get(r["seed"], math.nan) for r in mine])
        summary.append(entry)
    return summary


def markdown(summary: list[dict], args: argparse.Namespace) -> str:
    def fmt(pair, digits=3):
        m, s = pair
        return "n/a" if math.isnan(m) else f"{m:.{digits}f} ± {s:.{digits}f}"

    def signed(pair):
        m, s = pair
        return "n/a" if math.isnan(m) else f"{m:+.3f} ± {s:.3f}"

    lines = [
        f"{args.image_size} px, {args.epochs} epochs, seeds {' '.join(map(str, args.seeds))}; mean ± sd over seeds.",
        "",
        "| variant | what it changes | test mIoU | vs baseline | test border IoU | val mIoU (selected epoch) | val vs before, same seed | wall time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in summary:
        what = "scripts/baseline.py" if e["variant"] == "baseline" else ALL.get(e["variant"]) or f"`{args.config_variants[e['variant']]}`"
        if e["variant"] in args.variant_epochs:
            what += f", {args.variant_epochs[e['variant']]} epochs"
        delta = "" if e["variant"] == "baseline" else f"{e['vs_baseline']:+.3f}"
        wall = "n/a" if math.isnan(e["wall_s"][0]) else f"{e['wall_s'][0]:.0f}"
        lines.append(
            f"| {e['variant']} | {what} | {fmt(e['test_miou'])} | {delta} | {fmt(e['test_border'])} | {fmt(e['val_miou'])} "
            f"| {signed(e['val_vs_before'])} | {wall} |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(summary) + 1.2))
    names = [e["variant"] for e in summary][::-1]
    for key, colour, offset in (("test_miou", "tab:blue", 0.15), ("test_border", "tab:orange", -0.15)):
        means = [e[key][0] for e in summary][::-1]
        sds = [e[key][1] for e in summary][::-1]
        ax.errorbar(means, [i + offset for i in range(len(names))], xerr=sds, fmt="o", color=colour, label=key.replace("_", " "))
    base = next((e for e in summary if e["variant"] == "baseline"), None)
    if base is not None:
        ax.axvline(base["test_miou"][0], color="tab:blue", ls=":", lw=1)
        ax.axvline(base["test_border"][0], color="tab:orange", ls=":", lw=1)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("IoU on the test split (mean ± sd over seeds; dotted: baseline)")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)  # above the axes: never over a point
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(ALL), choices=list(ALL))
    p.add_argument("--jobs", type=int, default=1, help="runs at once")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run")
    p.add_argument("--max-steps", type=int, default=None, help="cap on steps per epoch (tests)")
    p.add_argument(
        "--config-variant",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="also train this config file as variant NAME (e.g. tuned=outputs/tune_slice/best.yaml); repeatable",
    )
    p.add_argument(
        "--variant-epochs",
        action="append",
        default=[],
        metavar="NAME=N",
        help="train variant NAME for N epochs instead of --epochs (a faster model, more epochs in the same wall time)",
    )
    args = p.parse_args()
    args.config_variants = {}
    for item in args.config_variant:
        name, sep, file = item.partition("=")
        if not sep or not name or not file or name in ALL or name in args.config_variants or "/" in name:
            p.error(f"--config-variant {item!r}: expected NAME=FILE with a new variant name")
        if not Path(file).is_file():
            p.error(f"--config-variant {name}: no such file {file}")
        args.config_variants[name] = Path(file).resolve()
        args.variants.append(name)
    epochs_items, args.variant_epochs = args.variant_epochs, {}
    for item in epochs_items:
        name, sep, number = item.partition("=")
        if not sep or name not in args.variants or name == "baseline" or not number.isdigit() or int(number) < 1:
            p.error(f"--variant-epochs {item!r}: expected NAME=N for a seg_pet variant being trained, N >= 1")
        args.variant_epochs[name] = int(number)
    if len(args.seeds) < 2:
        p.error("--seeds: give at least two seeds, the spread is part of the result")
    args.out.mkdir(parents=True, exist_ok=True)
    missing = {EVAL_VARIANTS[v][1] for v in args.variants if v in EVAL_VARIANTS} - set(args.variants)
    if missing:
        p.error(f"--variants: also name {', '.join(sorted(missing))}, whose runs the evaluation-only variants score")
    trained = [(v, s) for v in args.variants if v not in EVAL_VARIANTS for s in args.seeds]
    scored = [(v, s) for v in args.variants if v in EVAL_VARIANTS for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(tqdm(pool.map(lambda job: run_one(args, *job), trained), total=len(trained), desc="train", unit="run"))
        rows += list(tqdm(pool.map(lambda job: run_one(args, *job), scored), total=len(scored), desc="evaluate", unit="run"))
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with (args.out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    summary = summarise(rows, args.variants)
    (args.out / "summary.md").write_text(markdown(summary, args))
    plot(summary, args.out / "summary.png")
    print(markdown(summary, args))
    print(f"wrote {args.out / 'results.csv'}, {args.out / 'summary.md'}, {args.out / 'summary.png'}")


if __name__ == "__main__":
    main()
