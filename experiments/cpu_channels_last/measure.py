"""Is channels_last faster for seg_pet's models on this CPU? The model step alone (scripts/benchmark.py
--ceiling-only: forward + backward + AdamW on one batch of 8, one thread) in both layouts, for the
slice recipe's U-Nets at 64 and 128 px. The two layouts alternate, `--repeats` times each; the table
gives the median images/s and the ratio. Run from the repo root on a quiet machine:

    python experiments/cpu_channels_last/measure.py --out outputs/cpu_channels_last
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODELS = {  # name -> benchmark.py --set arguments
    "U-Net, 5 stages (smp default)": [],
    "U-Net, 4 stages": ["model.encoder_depth=4"],
    "U-Net, 4 stages, decoder 64-32-16-8": ["model.encoder_depth=4", "model.decoder_channels=[64,32,16,8]"],
}

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--out", type=Path, required=True)
p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
p.add_argument("--repeats", type=int, default=3)
p.add_argument("--steps", type=int, default=10)
args = p.parse_args()
args.out.mkdir(parents=True, exist_ok=True)


def images_per_s(size: int, sets: list[str], layout: str, i: int) -> float:
    out = args.out / f"{size}_{len(sets)}_{layout}_{i}.json"
    cmd = [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--device", "cpu", "--ceiling-only", "--threads", "1"]
    cmd += ["--image-size", str(size), "--batch-size", "8", "--steps", str(args.steps), "--warmup", "3", f"--{layout}", "--out", str(out)]
    for item in sets:
        cmd += ["--set", item]
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.read_text())["results"]["ceiling"]["images_per_s"]


rows = ["| model | image size | img/s, default layout | img/s, channels_last | channels_last / default |", "|---|---:|---:|---:|---:|"]
for size in args.sizes:
    for name, sets in MODELS.items():
        runs = {"no-channels-last": [], "channels-last": []}
        for i in range(args.repeats):
            for layout in runs:
                runs[layout].append(images_per_s(size, sets, layout, i))
        plain, nhwc = (statistics.median(runs[k]) for k in ("no-channels-last", "channels-last"))
        rows.append(f"| {name} | {size} px | {plain:.1f} | {nhwc:.1f} | {nhwc / plain:.2f} |")
        print(rows[-1], flush=True)
(args.out / "table.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
