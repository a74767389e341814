"""Train one recipe_sweep variant for one seed on validation only (the test split is never read).

For a choice the sweep's 3 seeds cannot settle: more seeds, each a fresh 20-image validation split,
scored by best-epoch and last-5-epochs validation mIoU. Run from the repo root, one thread per run:

    OMP_NUM_THREADS=1 python experiments/recipe_narrow/train_val_only.py --variant shipped --epochs 30 --seed 3 --out outputs/recipe_narrow/val_seeds
"""

import argparse
import csv
import importlib.util
import json
from pathlib import Path

from seg_pet.config import load_config
from seg_pet.training.train import train

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("recipe_sweep", REPO / "scripts" / "recipe_sweep.py")
sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep)

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--variant", required=True, choices=sorted(sweep.VARIANTS))
p.add_argument("--epochs", type=int, required=True)
p.add_argument("--seed", type=int, required=True)
p.add_argument("--out", type=Path, required=True)
p.add_argument("--data-root", default="../shared/data")
p.add_argument("--image-size", type=int, default=64)
args = p.parse_args()

run = args.out / args.variant / f"seed{args.seed}"
sets = sweep.run_settings(args.variant, args.seed, run, data_root=args.data_root, image_size=args.image_size, epochs=args.epochs)
cfg = load_config(REPO / "configs" / "pet_slice_cpu.yaml", [f"{k}={json.dumps(v)}" for k, v in sets.items()])
train(cfg, test=False)
rows = list(csv.DictReader((run / "metrics.csv").open()))
val = [float(r["val_miou"]) for r in rows]
print(json.dumps({"variant": args.variant, "seed": args.seed, "best_val": max(val), "last5_val": sum(val[-5:]) / len(val[-5:])}))
