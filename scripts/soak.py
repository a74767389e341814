"""Soak test: many short trainings, each killed and resumed, then checked for a complete run folder.

Not part of the unit suite (it takes minutes). For each of --runs runs:

  1. start `python -m seg_pet train` on the real data slice (32 px, resnet18, few steps);
  2. SIGKILL it after a random delay (usually once the run folder exists, every 4th run at any
     moment from process start, so the kill can land during import, data checks or setup);
  3. every other run: `--resume`, then SIGTERM after a random delay (expect exit 143, or 0 if it
     had already finished);
  4. `--resume` (or a fresh start when the kill came before the folder existed) to the end;
  5. check the folder: every epoch logged exactly once in metrics.jsonl and metrics.csv, overlays
     for every epoch, last.pt / best.pt load with weights_only and agree, test outputs present,
     no temporary files of interrupted writes, no staging folders.

Prints one line per run and a summary line; exit code 0 when every run is complete.

    python scripts/soak.py --data-root /work/shared/data --runs 20
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def overrides(args: argparse.Namespace, out: Path, name: str, workers: int) -> list[str]:
    sets = {
        "run.output_dir": out,
        "run.name": name,
        "data.source": "oxford",
        "data.root": args.data_root,
        "data.image_size": 32,
        "data.batch_size": 8,
        "data.num_workers": workers,
        "model.encoder": "resnet18",
        "model.encoder_weights": "null",
        "optim.epochs": args.epochs,
        "train.device": "cpu",
        "train.overlays": 1,
        "train.max_steps_per_epoch": args.steps,
    }
    return [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]


class Proc:
    """A `python -m seg_pet` child with stdout/stderr in files (so a kill never blocks on a pipe)."""

    live: list[Proc] = []  # killed when the soak itself is stopped, so no orphan writes on

    def __init__(self, argv: list[str], logs: Path, tag: str):
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self.out, self.err = logs / f"{tag}.out", logs / f"{tag}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.popen = subprocess.Popen([sys.executable, "-m", "seg_pet", *argv], stdout=out, stderr=err, env=env, cwd=REPO)
        self.started = time.monotonic()
        Proc.live = [p for p in Proc.live if p.popen.poll() is None] + [self]

    @classmethod
    def kill_all(cls) -> None:
        for proc in cls.live:
            if proc.popen.poll() is None:
                proc.popen.kill()
                proc.popen.wait()

    def wait_for(self, text: str, timeout: float = 300) -> bool:
        """True once `text` is on stdout; False if the process ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.out.read_text():
                return True
            if self.popen.poll() is not None:
                return text in self.out.read_text()
            time.sleep(0.05)
        raise TimeoutError(f"no {text!r} after {timeout}s")

    def wait(self, timeout: float = 600) -> int:
        return self.popen.wait(timeout=timeout)

    def stderr_tail(self) -> str:
        lines = self.err.read_text().strip().splitlines()
        return lines[-1] if lines else ""


def check_run(run_dir: Path, epochs: int) -> list[str]:
    """Problems with a finished run folder (empty when complete)."""
    from seg_pet.checkpoint import load_checkpoint
    from seg_pet.runtime.errors import CheckpointError

    problems = []
    try:
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        if [r["epoch"] for r in rows] != list(range(1, epochs + 1)):
            problems.append(f"metrics.jsonl epochs {[r['epoch'] for r in rows]}")
        csv_epochs = [line.split(",")[0] for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
        if csv_epochs != [str(e) for e in range(1, epochs + 1)]:
            problems.append(f"metrics.csv epochs {csv_epochs}")
    except (OSError, ValueError, KeyError) as exc:
        problems.append(f"metrics: {exc}")
    for epoch in range(1, epochs + 1):
        if not list((run_dir / "overlays" / f"epoch_{epoch:03d}").glob("*_overlay.png")):
            problems.append(f"no overlays for epoch {epoch}")
    try:
        last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
        if last["epoch"] != epochs:
            problems.append(f"last.pt holds epoch {last['epoch']}")
        if best["epoch"] != last["best_epoch"]:
            problems.append(f"best.pt holds epoch {best['epoch']}, last.pt says best is {last['best_epoch']}")
        test = json.loads((run_dir / "test_metrics.json").read_text())
        if test["checkpoint_epoch"] != best["epoch"]:
            problems.append(f"test_metrics.json from epoch {test['checkpoint_epoch']}, best.pt is {best['epoch']}")
    except (CheckpointError, OSError, ValueError, KeyError) as exc:
        problems.append(str(exc))
    for name in ("config.yaml", "test_confusion.csv", "plots/curves.png", "plots/test_confusion.png"):
        if not (run_dir / name).is_file():
            problems.append(f"missing {name}")
    partial = [p.name for p in run_dir.rglob("*") if ".partial-" in p.name]
    staging = [p.name for p in run_dir.parent.iterdir() if p.name.startswith(f".{run_dir.name}.staging-")]
    if partial or staging:
        problems.append(f"leftovers {partial + staging}")
    return problems


def soak_one(args: argparse.Namespace, index: int, rng: random.Random, out: Path, logs: Path, counts: dict) -> list[str]:
    name = f"soak_{index:02d}"
    run_dir = out / name
    workers = 2 if index % 5 == 4 else 0  # some runs have DataLoader workers to kill too
    start_argv = ["train", "--config", str(out / "empty.yaml"), *overrides(args, out, name, workers)]
    events = []

    # 1. start, SIGKILL after a random delay
    proc = Proc(start_argv, logs, f"{name}_1_start")
    if index % 4 == 0:
        time.sleep(rng.uniform(1.0, 15.0))
    elif proc.wait_for("run "):
        time.sleep(rng.uniform(0.0, 6.0))
    proc.popen.kill()
    proc.wait()
    counts["sigkill"] += 1
    events.append("kill" + ("" if run_dir.exists() else "(before folder)"))

    # 2. every other run: resume, then SIGTERM after a random delay
    if index % 2 == 1 and run_dir.exists():
        proc = Proc(["train", "--resume", str(run_dir)], logs, f"{name}_2_term")
        if proc.wait_for("resuming "):
            time.sleep(rng.uniform(0.5, 5.0))
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
            counts["sigterm"] += 1
        code = proc.wait()
        events.append(f"term->{code}")
        if code not in (0, 143, -signal.SIGTERM):  # -15: it arrived as the interpreter was exiting
            return [f"after SIGTERM: exit {code}: {proc.stderr_tail()}"]
        if code == 143 and "Resume with:" not in proc.err.read_text():
            return ["SIGTERM exit without a resume hint"]

    # 3. finish: resume, or a fresh start if the kill came before the run folder existed
    argv = ["train", "--resume", str(run_dir)] if run_dir.exists() else start_argv
    proc = Proc(argv, logs, f"{name}_3_finish")
    code = proc.wait()
    events.append(f"{argv[1]}->{code}")
    if code != 0:
        return [f"finishing run: exit {code}: {proc.stderr_tail()}"]
    problems = check_run(run_dir, args.epochs)
    counts["checkpoints"] += 2 * (not problems)
    print(f"  {name}: {' '.join(events)}: {'complete' if not problems else 'INCOMPLETE: ' + '; '.join(problems)}", flush=True)
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"), help="folder holding oxford-iiit-pet/")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="train.max_steps_per_epoch")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random kill delays")
    parser.add_argument("--out", type=Path, help="where the runs go (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the run folders after a fully successful soak")
    args = parser.parse_args()
    if not (Path(args.data_root) / "oxford-iiit-pet" / "annotations" / "trainval.txt").is_file():
        print(f"soak: no Oxford-IIIT Pet under {args.data_root} (--data-root)", file=sys.stderr)
        return 2

    out = args.out or Path(tempfile.mkdtemp(prefix="seg_pet_soak_"))
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (out / "empty.yaml").write_text("")
    rng = random.Random(args.seed)
    counts = {"sigkill": 0, "sigterm": 0, "checkpoints": 0}
    failed = []
    started = time.monotonic()
    print(f"soak: {args.runs} runs of {args.epochs} epochs x {args.steps} steps in {out}", flush=True)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    try:
        for index in range(args.runs):
            problems = soak_one(args, index, rng, out, logs, counts)
            if problems:
                failed.append(index)
                print(f"  soak_{index:02d}: FAILED: {'; '.join(problems)} (logs in {logs})", flush=True)
    finally:
        Proc.kill_all()
    seconds = time.monotonic() - started
    complete = args.runs - len(failed)
    print(
        f"soak: {complete}/{args.runs} runs complete after {counts['sigkill']} SIGKILLs and {counts['sigterm']} SIGTERMs; "
        f"{counts['checkpoints']} checkpoints load; {len(failed)} failed{' ' + str(failed) if failed else ''}; {seconds:.0f}s"
    )
    if failed or args.keep or args.out:
        print(f"soak: run folders and logs kept in {out}")
    else:
        shutil.rmtree(out, ignore_errors=True)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
