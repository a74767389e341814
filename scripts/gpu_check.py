"""Prove the GPU path on one GPU, in one command, and record it: python scripts/gpu_check.py --out gpu_check

Runs, in this order, each step as a subprocess with its own time limit inside --budget (default
540 s, so the whole check fits in 10 minutes on one H100):

  environment  GPU, driver, torch, CUDA, cuDNN, torchvision, smp, Python, usable CPUs
  data         the benchmark dataset: --data-root if it holds oxford-iiit-pet/, else built there (or in a
               temporary folder, removed at the end) by scripts/make_bench_data.py from the real slice
               (--from): 3,680 trainval images (3,312 train / 368 val) and 3,669 test images
  bench_memory scripts/benchmark.py at 256 px, batch 32, U-Net resnet34, bf16 + channels_last +
               cudnn.benchmark: the model-step ceiling, train and eval with data.cache none and memory,
               and the naive baseline (torchvision OxfordIIITPet + per-image v2 transforms, 8 workers,
               fp32 step), all in one process
  bench_device the same with data.cache device (its own same-run ceiling)
  train        a short real training run (`python -m seg_pet train`, --epochs epochs, data.cache
               --train-cache) on that dataset: seconds per epoch and peak GPU memory
  cuda_tests   python -m pytest -m cuda tests/cuda: the summary and every test's outcome
  bench_compile the ceiling again with torch.compile (--ceiling-only --compile)

and writes into --out: gpu_check.json (everything, including each benchmark's own JSON and every
CUDA test's outcome) and gpu_check.md (the tables), rewritten after every step so a stopped check
keeps what it measured, plus logs/<step>.log: eight files in all. The training run's folder and a
bench set built in a temporary folder are deleted at the end. The goals, each reported as pass, FAIL or not measured:

  train_vs_ceiling  end-to-end training (steady rate with the per-epoch loader start spread over one
                    epoch) >= 95 % of the bf16 ceiling measured in the same benchmark process
  train_vs_naive    that training throughput >= 2x the naive fp32 baseline of this check
  eval_vs_train     evaluation throughput >= 3x training throughput (same cache, same process)
  epoch_seconds     one epoch of 3,312 training images (+ 368 validation) < 2.5 s: the median epoch
                    of the training run after the first

Exit codes: 0 every step ran, every CUDA test passed and every goal passed; 1 otherwise (the
reports are still written); 2 this machine cannot run the check (no CUDA GPU, a missing package:
one line says which and how to carry it). --dry-run lists the steps and needs none of that.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SOURCES = (REPO / "shared" / "data", REPO.parent / "shared" / "data")  # the real slice, inside the checkout or beside it
BENCH = {"image_size": 256, "batch_size": 32, "encoder": "resnet34"}
FULL_TRAIN_IMAGES = 3312  # the full dataset's trainval (3,680) less its 10 % validation split
GOALS = {  # name -> (threshold, how it is compared, what it says)
    "train_vs_ceiling": (0.95, ">=", "end-to-end training / same-run bf16 ceiling"),
    "train_vs_naive": (2.0, ">=", "end-to-end training / naive fp32 baseline"),
    "eval_vs_train": (3.0, ">=", "evaluation / training throughput"),
    "epoch_seconds": (2.5, "<", f"seconds per epoch of {FULL_TRAIN_IMAGES:,} training images"),
}
STEPS = {  # name -> (time limit in seconds, what it does)
    "environment": (30, "GPU, driver, torch, CUDA, cuDNN, package versions"),
    "data": (120, "the benchmark dataset: --data-root, or built by scripts/make_bench_data.py from --from"),
    "bench_memory": (150, "benchmark.py --cache memory --naive-baseline: ceiling, data.cache none + memory, naive fp32 baseline"),
    "bench_device": (120, "benchmark.py --cache device: ceiling, data.cache none + device"),
    "train": (150, "python -m seg_pet train: a few epochs at 256 px, seconds per epoch, peak GPU memory"),
    "cuda_tests": (240, "python -m pytest -m cuda tests/cuda"),
    "bench_compile": (180, "benchmark.py --ceiling-only --compile: the ceiling with torch.compile"),
}
NEEDED = {  # import name -> pip name: what the steps import (seg_pet, its tests, the benchmark)
    "segmentation_models_pytorch": "segmentation-models-pytorch",
    "torchvision": "torchvision",
    "yaml": "pyyaml",
    "tqdm": "tqdm",
    "matplotlib": "matplotlib",
    "PIL": "pillow",
    "pytest": "pytest",
}
TRAIN_WRAPPER = (  # python -m seg_pet train, then the process's peak GPU memory into the file named first
    "import json, sys, torch\n"
    "from seg_pet.cli import main\n"
    "peak_file = sys.argv.pop(1)\n"
    "code = main(sys.argv[1:])\n"
    "peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None\n"
    "json.dump({'peak_gpu_mib': peak}, open(peak_file, 'w'))\n"
    "sys.exit(code)\n"
)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    p.add_argument(
        "--out", type=Path, default=Path("gpu_check"), help="folder for gpu_check.json, gpu_check.md and logs/ (default ./gpu_check)"
    )
    p.add_argument(
        "--data-root",
        type=Path,
        help="a data root holding oxford-iiit-pet/ (used as is), or where to build the bench set "
        "(default: a temporary folder, removed at the end)",
    )
    p.add_argument(
        "--from",
        dest="source",
        type=Path,
        help=f"the real slice's data root for make_bench_data.py (default: the first of {', '.join(str(s) for s in SOURCES)} that exists)",
    )
    p.add_argument("--epochs", type=int, default=3, help="epochs of the training run (default 3)")
    p.add_argument("--train-cache", choices=("none", "memory", "device"), default="device", help="data.cache of the training run")
    p.add_argument(
        "--steps",
        nargs="+",
        choices=list(STEPS)[1:],
        default=list(STEPS)[1:],
        metavar="STEP",
        help=f"run only these steps (environment always runs): {' '.join(list(STEPS)[1:])}",
    )
    p.add_argument(
        "--budget", type=float, default=540.0, help="seconds for the whole check; a step that no longer fits is skipped (default 540)"
    )
    p.add_argument("--dry-run", action="store_true", help="list the steps and exit (works without CUDA)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- what this machine needs


def refusal() -> Optional[str]:
    """One line saying why this machine cannot run the check, or None."""
    try:
        import torch
    except ImportError:
        return "gpu_check: torch is not installed in this Python; run the check with the Python that holds PyTorch"
    if not torch.cuda.is_available():
        return (
            f"gpu_check: no CUDA GPU here (torch {torch.__version__} sees none); run it on a machine with one, "
            "e.g. `python scripts/gpu_check.py --out gpu_check` (--dry-run lists the steps)"
        )
    for module, package in NEEDED.items():
        try:
            importlib.import_module(module)
        except ImportError:
            version = "==0.6.0" if package == "segmentation-models-pytorch" else ""
            return (
                f"gpu_check: {package} is not installed here; carry its wheel: where pip can reach PyPI, "
                f"`pip download --no-deps --only-binary=:all: -d .whl {package}{version}`, then here "
                "`pip install --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site` (see docs/performance.md)"
            )
    return None


def environment() -> dict[str, Any]:
    import segmentation_models_pytorch as smp
    import torch
    import torchvision

    props = torch.cuda.get_device_properties(0)
    env = {
        "gpu": torch.cuda.get_device_name(0),
        "gpu_memory_mib": props.total_memory / 2**20,
        "compute_capability": f"{props.major}.{props.minor}",
        "bf16_supported": torch.cuda.is_bf16_supported(),
        "gpu_count": torch.cuda.device_count(),
        "driver": None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "torchvision": torchvision.__version__,
        "smp": smp.__version__,
        "python": platform.python_version(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    try:
        query = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
        if query.returncode == 0 and query.stdout.strip():
            env["driver"] = query.stdout.strip().splitlines()[0].split(",")[-1].strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return env


# --------------------------------------------------------------------------- running steps


class Check:
    """The steps' shared state: the results dict, the time budget, where logs and reports go."""

    def __init__(self, args: argparse.Namespace, argv: list[str]):
        self.args, self.out = args, args.out
        self.logs = self.out / "logs"
        self.deadline = time.monotonic() + args.budget
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "PYTHONUNBUFFERED": "1",
            "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG", ":4096:8"),
        }
        self.results: dict[str, Any] = {
            "command": "python scripts/gpu_check.py " + " ".join(argv),
            "goals_defined": {name: {"threshold": t, "compare": c, "what": w} for name, (t, c, w) in GOALS.items()},
            "environment": {},
            "steps": {},
            "benchmark": {},
            "training": {},
            "cuda_tests": {},
        }
        self.temporary: Optional[Path] = None  # a bench set built in a temporary folder, removed at the end

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, cmd: list[str]) -> Optional[int]:
        """Run one step's command with its log in logs/<name>.log; None when it did not run or was stopped."""
        limit = min(STEPS[name][0], self.remaining())
        step = {"command": " ".join(cmd), "log": f"logs/{name}.log"}
        self.results["steps"][name] = step
        if limit < 10:
            step.update(status="skipped", note=f"out of time: {self.remaining():.0f} s of --budget left")
            return None
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{name}.log"
        started = time.monotonic()
        print(f"gpu_check: {name}: {STEPS[name][1]} (at most {limit:.0f} s)", flush=True)
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=self.env, start_new_session=True)
            try:
                code: Optional[int] = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the step's own process group: its DataLoader workers too
                proc.wait()
                code = None
        step["seconds"] = time.monotonic() - started
        step["returncode"] = code
        step["status"] = "ok" if code == 0 else "timed out" if code is None else "failed"
        if code != 0:
            step["log_tail"] = log_path.read_text(errors="replace").splitlines()[-15:]
        print(f"gpu_check: {name}: {step['status']} in {step['seconds']:.0f} s", flush=True)
        return code

    def write(self) -> None:
        self.results["derived"] = derive(self.results)
        self.results["goals"] = check_goals(self.results)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=2, default=str, allow_nan=True) + "\n")
        (self.out / "gpu_check.md").write_text(render_markdown(self.results))


def find_source(given: Optional[Path]) -> Optional[Path]:
    candidates = [given] if given is not None else list(SOURCES)
    for root in candidates:
        if (root / "oxford-iiit-pet" / "annotations" / "trainval.txt").is_file():
            return root
    return None


def step_data(check: Check) -> Optional[Path]:
    """The data root the benchmark and the training run read (as data.root)."""
    given = check.args.data_root
    if given is not None and (given / "oxford-iiit-pet" / "annotations" / "trainval.txt").is_file():
        check.results["steps"]["data"] = {"status": "ok", "seconds": 0.0, "note": f"used {given} as it is"}
        return given
    source = find_source(check.args.source)
    if source is None:
        check.results["steps"]["data"] = {
            "status": "failed",
            "note": "no real Oxford-IIIT Pet slice to build the bench set from: pass --from DIR "
            "(a data root holding oxford-iiit-pet/) or --data-root with a full dataset",
        }
        return None
    root = given if given is not None else Path(tempfile.mkdtemp(prefix="seg_pet_bench_"))
    if given is None:
        check.temporary = root
    code = check.run("data", [PYTHON, str(REPO / "scripts" / "make_bench_data.py"), "--from", str(source), "--out", str(root)])
    return root if code == 0 else None


def benchmark_command(check: Check, root: Path, name: str, *extra: str) -> list[str]:
    return [
        PYTHON,
        str(REPO / "scripts" / "benchmark.py"),
        "--device",
        "cuda",
        "--data-root",
        str(root),
        "--image-size",
        str(BENCH["image_size"]),
        "--batch-size",
        str(BENCH["batch_size"]),
        "--encoder",
        BENCH["encoder"],
        "--run-dir",
        str(check.out / "bench_run"),
        "--out",
        str(check.out / f"{name}.json"),
        *extra,
    ]


def step_benchmark(check: Check, root: Path, name: str, *extra: str) -> None:
    if check.run(name, benchmark_command(check, root, name, *extra)) == 0:
        report_path = check.out / f"{name}.json"
        check.results["benchmark"][name.removeprefix("bench_")] = json.loads(report_path.read_text())
        report_path.unlink()  # held in gpu_check.json


def step_train(check: Check, root: Path) -> None:
    """The run folder is temporary: what the check needs from it (epochs, test mIoU, peak memory) goes into the results."""
    runs = Path(tempfile.mkdtemp(prefix="seg_pet_gpu_check_train_"))
    try:
        train_run(check, root, runs)
    finally:
        shutil.rmtree(runs, ignore_errors=True)


def train_run(check: Check, root: Path, runs: Path) -> None:
    config = runs / "empty.yaml"
    config.write_text("")
    peak_file = runs / "peak.json"
    sets = {
        "run.output_dir": runs,
        "run.name": "gpu_check",
        "data.root": root,
        "data.image_size": BENCH["image_size"],
        "data.batch_size": BENCH["batch_size"],
        "data.num_workers": "auto",
        "data.cache": check.args.train_cache,
        "model.encoder": BENCH["encoder"],
        "model.encoder_weights": "null",
        "optim.epochs": check.args.epochs,
        "train.device": "cuda",
        "train.overlays": 2,
    }
    cmd = [
        PYTHON,
        "-c",
        TRAIN_WRAPPER,
        str(peak_file),
        "train",
        "--config",
        str(config),
        *[arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")],
    ]
    code = check.run("train", cmd)
    run_dir = runs / "gpu_check"
    training: dict[str, Any] = {"cache": check.args.train_cache, "epochs_asked": check.args.epochs}
    if (run_dir / "metrics.jsonl").is_file():
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        training["epochs"] = [
            {"epoch": r["epoch"], "seconds": r["seconds"], "train_loss": r["train_loss"], "val_miou": r["val_miou"]} for r in rows
        ]
    log = (check.logs / "train.log").read_text(errors="replace") if (check.logs / "train.log").is_file() else ""
    match = re.search(r"(\d+) train / (\d+) val images", log)  # train's own first line states the split
    training["train_images"], training["val_images"] = (int(match[1]), int(match[2])) if match else (None, None)
    if peak_file.is_file():
        training.update(json.loads(peak_file.read_text()))
    if (run_dir / "test_metrics.json").is_file():
        training["test_miou"] = json.loads((run_dir / "test_metrics.json").read_text()).get("miou")
    training["returncode"] = code
    check.results["training"] = training


def step_cuda_tests(check: Check) -> None:
    xml_path = check.out / "cuda_tests.xml"
    check.run(
        "cuda_tests", [PYTHON, "-m", "pytest", "-m", "cuda", "tests/cuda", "-q", "-rA", "-p", "no:cacheprovider", f"--junitxml={xml_path}"]
    )
    log_path = check.logs / "cuda_tests.log"
    summary = ""
    if log_path.is_file():
        lines = [line.strip("= ") for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
        summary = next((line for line in reversed(lines) if re.search(r"\b(passed|failed|skipped|error|errors|deselected)\b", line)), "")
    tests = parse_junit(xml_path) if xml_path.is_file() else []
    xml_path.unlink(missing_ok=True)  # every outcome is in the results
    counts = {kind: sum(t["outcome"] == kind for t in tests) for kind in ("passed", "failed", "skipped", "error")}
    check.results["cuda_tests"] = {"summary": summary, **counts, "tests": tests}


def parse_junit(path: Path) -> list[dict[str, str]]:
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for kind, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            element = case.find(kind)
            if element is not None:
                outcome = name
                message = ((element.get("message") or "").strip().splitlines() or [""])[0][:300]
                break
        tests.append({"test": case.get("name", ""), "outcome": outcome, "seconds": float(case.get("time", 0) or 0), "message": message})
    return tests


# --------------------------------------------------------------------------- ratios, goals, report (pure functions of the results)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def train_epoch_rate(report: dict[str, Any], cache: str) -> Optional[float]:
    """train_<cache> with its per-epoch loader start spread over one epoch of the run's training split."""
    result = report.get("results", {}).get(f"train_{cache}")
    if result is None or not _finite(result.get("images_per_s")):
        return None
    steady = result["images_per_s"]
    settings = report.get("settings", {})
    batch = settings.get("batch_size") or 1
    images = ((settings.get("train_images") or 0) // batch) * batch
    start = result.get("epoch_start_overhead_s")
    if not images or not _finite(start) or start <= 0:
        return steady
    return images / (images / steady + start)


def derive(results: dict[str, Any]) -> dict[str, Any]:
    """Per cache: training and evaluation throughput, each against its same-run ceiling and the naive baseline."""
    bench = results.get("benchmark", {})
    naive = bench.get("memory", {}).get("results", {}).get("naive_fp32", {}).get("images_per_s")
    naive = naive if _finite(naive) else None
    caches: dict[str, Any] = {}
    for run_name, report in bench.items():
        res = report.get("results", {})
        ceiling = res.get("ceiling", {}).get("images_per_s")
        peaks = report.get("memory", {}).get("peak_gpu_mib", {})
        for phase in res:
            if not phase.startswith("train_"):
                continue
            cache = phase.removeprefix("train_")
            if cache in caches:
                continue  # `none` is measured by both runs: keep the first (bench_memory, beside the naive baseline)
            rate = train_epoch_rate(report, cache)
            steady = res[phase]["images_per_s"]
            evaluation = res.get(f"eval_{cache}", {}).get("images_per_s")
            caches[cache] = {
                "run": run_name,
                "ceiling_images_per_s": ceiling,
                "train_steady_images_per_s": steady,
                "train_epoch_images_per_s": rate,
                "train_over_ceiling": rate / ceiling if rate and _finite(ceiling) and ceiling > 0 else None,
                "train_over_naive": rate / naive if rate and naive else None,
                "eval_images_per_s": evaluation,
                "eval_over_train": evaluation / steady if _finite(evaluation) and steady else None,
                "peak_gpu_mib_train": peaks.get(phase),
                "peak_gpu_mib_eval": peaks.get(f"eval_{cache}"),
            }
    best = max(
        (c for c in caches if caches[c]["train_epoch_images_per_s"]), key=lambda c: caches[c]["train_epoch_images_per_s"], default=None
    )
    compile_ceiling = bench.get("compile", {}).get("results", {}).get("ceiling", {}).get("images_per_s")
    plain_ceilings = [
        r["results"]["ceiling"]["images_per_s"] for n, r in bench.items() if n != "compile" and "ceiling" in r.get("results", {})
    ]
    epochs = results.get("training", {}).get("epochs", [])
    later = [e["seconds"] for e in epochs[1:]] or [e["seconds"] for e in epochs]
    return {
        "caches": caches,
        "best_cache": best,
        "naive_images_per_s": naive,
        "compile_ceiling_images_per_s": compile_ceiling if _finite(compile_ceiling) else None,
        "compile_over_plain_ceiling": compile_ceiling / max(plain_ceilings) if _finite(compile_ceiling) and plain_ceilings else None,
        "epoch_seconds": statistics.median(later) if later else None,
    }


def check_goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal: its measured value and pass / FAIL, or `not measured` with the reason."""
    derived = results.get("derived") or derive(results)
    best = derived["best_cache"]
    chosen = derived["caches"].get(best, {}) if best else {}
    training = results.get("training", {})
    values: dict[str, tuple[Optional[float], str]] = {
        "train_vs_ceiling": (chosen.get("train_over_ceiling"), f"data.cache {best}" if best else "no training phase measured"),
        "train_vs_naive": (
            chosen.get("train_over_naive"),
            f"data.cache {best}" if derived["naive_images_per_s"] else "naive baseline not measured",
        ),
        "eval_vs_train": (chosen.get("eval_over_train"), f"data.cache {best}" if best else "no evaluation phase measured"),
        "epoch_seconds": (
            derived["epoch_seconds"],
            f"training run, data.cache {training.get('cache')}, "
            f"median of {max(len(training.get('epochs', [])) - 1, 1)} epoch(s) after the first",
        ),
    }
    if training.get("train_images") not in (None, FULL_TRAIN_IMAGES) and derived["epoch_seconds"] is not None:
        values["epoch_seconds"] = (None, f"the training split has {training['train_images']} images, not {FULL_TRAIN_IMAGES:,}")
    goals = []
    for name, (threshold, compare, what) in GOALS.items():
        value, basis = values[name]
        if value is None or not _finite(value):
            status = "not measured"
        else:
            status = "pass" if (value >= threshold if compare == ">=" else value < threshold) else "FAIL"
        goals.append({"goal": name, "what": what, "target": f"{compare} {threshold:g}", "value": value, "status": status, "basis": basis})
    return goals


def _num(value: Any, digits: int = 1, suffix: str = "") -> str:
    return f"{value:,.{digits}f}{suffix}" if _finite(value) else "–"


def render_markdown(results: dict[str, Any]) -> str:
    derived = results.get("derived") or derive(results)
    goals = results.get("goals") or check_goals(results)
    env = results.get("environment", {})
    lines = ["# GPU check", ""]
    if env:
        lines += [
            f"{env.get('gpu', '?')} ({_num(env.get('gpu_memory_mib'), 0)} MiB), driver {env.get('driver') or '?'}, "
            f"torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, torchvision {env.get('torchvision')}, "
            f"smp {env.get('smp')}, Python {env.get('python')}, {env.get('usable_cpus')} usable CPUs; {env.get('date', '')}.",
            "",
        ]
    lines += [
        f"Command: `{results.get('command', 'python scripts/gpu_check.py')}`. Benchmarks: {BENCH['image_size']} px, batch "
        f"{BENCH['batch_size']}, U-Net {BENCH['encoder']} (random init), bf16 autocast, channels_last, cudnn.benchmark.",
        "",
    ]
    lines += ["## Goals", "", "| goal | target | measured | result | basis |", "|---|---|---:|---|---|"]
    for g in goals:
        value = _num(g["value"], 2, " s" if g["goal"] == "epoch_seconds" else "×")
        lines.append(f"| {g['what']} | {g['target']} | {value} | **{g['status']}** | {g['basis']} |")
    lines += [
        "",
        "## Throughput",
        "",
        "Training: the steady rate, and that rate with the per-epoch loader start spread over one epoch (what the goals use).",
        "Ratios are to the ceiling measured in the same benchmark process and to the naive fp32 baseline of this check.",
        "",
        "| data.cache | run | ceiling img/s | train img/s (steady) | train img/s (per epoch) | × ceiling | × naive | eval img/s | eval × train "
        "| peak GPU MiB train / eval |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cache, c in derived["caches"].items():
        best = " (best)" if cache == derived["best_cache"] else ""
        lines.append(
            f"| `{cache}`{best} | {c['run']} | {_num(c['ceiling_images_per_s'])} | {_num(c['train_steady_images_per_s'])} | "
            f"{_num(c['train_epoch_images_per_s'])} | {_num(c['train_over_ceiling'], 2)} | {_num(c['train_over_naive'], 2)} | "
            f"{_num(c['eval_images_per_s'])} | {_num(c['eval_over_train'], 2)} | "
            f"{_num(c['peak_gpu_mib_train'], 0)} / {_num(c['peak_gpu_mib_eval'], 0)} |"
        )
    if not derived["caches"]:
        lines.append("| – | no benchmark ran | | | | | | | | |")
    naive_peak = results.get("benchmark", {}).get("memory", {}).get("memory", {}).get("peak_gpu_mib", {}).get("naive_fp32")
    lines += [
        "",
        f"* Naive fp32 baseline (torchvision OxfordIIITPet + per-image v2 transforms, 8 workers, fp32 step): "
        f"{_num(derived['naive_images_per_s'])} img/s, peak GPU {_num(naive_peak, 0)} MiB.",
        f"* Ceiling with torch.compile: {_num(derived['compile_ceiling_images_per_s'])} img/s "
        f"({_num(derived['compile_over_plain_ceiling'], 2)}× the uncompiled ceiling).",
    ]
    training = results.get("training", {})
    lines += ["", "## Training run", ""]
    if training.get("epochs"):
        lines += [
            f"`python -m seg_pet train`, data.cache {training.get('cache')}, {training.get('train_images')} train / "
            f"{training.get('val_images')} val images, peak GPU {_num(training.get('peak_gpu_mib'), 0)} MiB, "
            f"test mIoU {_num(training.get('test_miou'), 3)} (random init, a few epochs: not a quality figure).",
            "",
            "| epoch | seconds (train + val) | train loss | val mIoU |",
            "|---:|---:|---:|---:|",
        ]
        for e in training["epochs"]:
            lines.append(f"| {e['epoch']} | {_num(e['seconds'], 2)} | {_num(e['train_loss'], 4)} | {_num(e['val_miou'], 4)} |")
    else:
        lines.append("Not run, or no epoch finished (see Steps).")
    tests = results.get("cuda_tests", {})
    lines += ["", "## CUDA tests", "", f"`python -m pytest -m cuda tests/cuda`: {tests.get('summary') or 'not run'}"]
    bad = [t for t in tests.get("tests", []) if t["outcome"] in ("failed", "error", "skipped")]
    if bad:
        lines += ["", "| test | outcome | message |", "|---|---|---|"]
        lines += [f"| `{t['test']}` | {t['outcome']} | {t['message'].replace('|', '/')} |" for t in bad]
    lines += ["", "## Steps", "", "| step | status | seconds | note |", "|---|---|---:|---|"]
    for name, step in results.get("steps", {}).items():
        lines.append(f"| {name} | {step.get('status')} | {_num(step.get('seconds'), 0)} | {step.get('note', '')} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def dry_run(args: argparse.Namespace) -> int:
    print(f"gpu_check would run, within --budget {args.budget:.0f} s, writing {args.out}/gpu_check.json and gpu_check.md:")
    for i, (name, (limit, what)) in enumerate(STEPS.items(), 1):
        chosen = name == "environment" or name in args.steps
        print(f"  {i}. {name:<13} {what} (at most {limit} s){'' if chosen else ' [not chosen]'}")
    print("goals: " + "; ".join(f"{what} {compare} {threshold:g}" for threshold, compare, what in GOALS.values()))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.dry_run:
        return dry_run(args)
    reason = refusal()
    if reason is not None:
        print(reason, file=sys.stderr)
        return 2
    args.out = args.out.resolve()  # the steps run in the repository root
    args.data_root = args.data_root.resolve() if args.data_root is not None else None
    args.source = args.source.resolve() if args.source is not None else None
    check = Check(args, argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    check.results["environment"] = environment()
    check.results["steps"]["environment"] = {"status": "ok", "seconds": time.monotonic() - started}
    check.write()
    try:
        needs_data = [s for s in ("bench_memory", "bench_device", "train", "bench_compile") if s in args.steps]
        root = step_data(check) if needs_data or "data" in args.steps else None
        if root is None:
            for name in needs_data:
                check.results["steps"][name] = {"status": "skipped", "note": "no dataset (see the data step)"}
        check.write()
        if root is not None:
            if "bench_memory" in args.steps:
                step_benchmark(check, root, "bench_memory", "--cache", "memory", "--naive-baseline", "--naive-workers", "8")
                check.write()
            if "bench_device" in args.steps:
                step_benchmark(check, root, "bench_device", "--cache", "device")
                check.write()
            if "train" in args.steps:
                step_train(check, root)
                check.write()
        if "cuda_tests" in args.steps:
            step_cuda_tests(check)
            check.write()
        if "bench_compile" in args.steps and root is not None:
            step_benchmark(check, root, "bench_compile", "--ceiling-only", "--compile")
            check.write()
    finally:
        if check.temporary is not None:
            shutil.rmtree(check.temporary, ignore_errors=True)
        shutil.rmtree(args.out / "bench_run", ignore_errors=True)
    check.write()
    print((args.out / "gpu_check.md").read_text())
    steps_ok = all(s.get("status") == "ok" for s in check.results["steps"].values())
    goals_ok = all(g["status"] == "pass" for g in check.results["goals"])
    tests = check.results["cuda_tests"]
    tests_ok = "cuda_tests" not in args.steps or (tests.get("passed", 0) > 0 and tests.get("failed", 0) == 0 and tests.get("error", 0) == 0)
    print(
        f"gpu_check: written to {args.out}/gpu_check.json and gpu_check.md in {time.monotonic() - started:.0f} s; "
        f"steps {'all ok' if steps_ok else 'NOT all ok'}, CUDA tests {'passed' if tests_ok else 'NOT all passed'}, "
        f"goals {'all passed' if goals_ok else 'NOT all passed'}"
    )
    return 0 if steps_ok and goals_ok and tests_ok else 1


if __name__ == "__main__":
    sys.exit(main())
