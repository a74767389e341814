"""The `predict` command's work: every input image -> mask PNG (+ overlay, probabilities), predictions.csv.

    OUT/masks/KEY.png            the mask (--format index | trimap | color)
    OUT/overlays/KEY.png         with --overlay: 0.6 x image + 0.4 x class colour (seg_pet.viz.overlay)
    OUT/probabilities/KEY.npz    with --probabilities: `probabilities` (C, H, W) float32 softmax, `class_names`
    OUT/predictions.csv          one row per input: path, mask, width, height, share_<class>..., seconds, status, error

KEY is the input's name without extension, with the sub-folders of a folder input mirrored
(seg_pet.predict.inputs). Unreadable images are reported on one line each and listed as `failed`;
the rest are still predicted. Every file is written atomically; predictions.csv is rewritten every
few seconds and at the end, also when interrupted, and keeps the rows of earlier calls for inputs
this call does not predict again. Every output path is planned through runtime.paths.OutputRoot
(inside --out, never a run's own file, never a folder in the way) before anything is written.
"""

from __future__ import annotations

import concurrent.futures
import csv
import io
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple, Optional

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from seg_pet.labels import LabelSpec
from seg_pet.predict.images import ImageReadError, load_rgb
from seg_pet.predict.inputs import InputImage
from seg_pet.predict.predictor import Predictor
from seg_pet.runtime.errors import ConfigError, SegPetError
from seg_pet.runtime.fileio import atomic_path, atomic_write, remove_partial_files
from seg_pet.runtime.paths import OutputRoot
from seg_pet.viz import colorize, save_overlay

FORMATS = ("index", "trimap", "color")
EXISTING = ("refuse", "skip", "overwrite")
CSV_NAME = "predictions.csv"
CSV_FLUSH_SECONDS = 10.0  # predictions.csv is rewritten (atomically) at most this often, and at the end


@dataclass
class PredictOptions:
    fmt: str = "index"
    overlay: bool = False
    probabilities: bool = False
    batch_size: Optional[int] = None  # None: the run's data.batch_size
    existing: str = "refuse"  # refuse | skip | overwrite


@dataclass
class PredictSummary:
    out_dir: Path
    csv_path: Path
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)


class Decoded(NamedTuple):
    index: int
    rgb: Optional[np.ndarray]
    tensor: Optional[torch.Tensor]
    error: Optional[str]
    seconds: float


def output_paths(out_dir: Path, key: PurePosixPath, options: PredictOptions, root: Optional[OutputRoot] = None) -> dict[str, Path]:
    """Where one input's files go: masks/KEY.png, overlays/KEY.png, probabilities/KEY.npz (checked by `root` when given)."""
    relative = {"mask": f"masks/{key}.png"}
    if options.overlay:
        relative["overlay"] = f"overlays/{key}.png"
    if options.probabilities:
        relative["probabilities"] = f"probabilities/{key}.npz"
    if root is None:
        return {kind: out_dir / rel for kind, rel in relative.items()}
    return {kind: root.file(rel) for kind, rel in relative.items()}


def csv_fields(class_names: Sequence[str]) -> list[str]:
    return ["path", "mask", "width", "height", *[f"share_{name}" for name in class_names], "seconds", "status", "error"]


def check_format(fmt: str, spec: LabelSpec) -> None:
    """`trimap` writes the Oxford-IIIT Pet trimap codes: only a run trained on Pet trimaps has them."""
    if fmt == "trimap" and spec.coding != "trimap":
        raise SegPetError(
            f"--format trimap: this run's masks are not Pet trimaps (classes {list(spec.names)}); use --format index or color"
        )


def encode_mask(mask: np.ndarray, fmt: str, spec: LabelSpec) -> Image.Image:
    """index: class ids (mode L); trimap: the Pet dataset's own trimap codes (mode L); color: the spec's palette (RGB)."""
    if fmt == "index":
        return Image.fromarray(mask, "L")
    if fmt == "trimap":
        check_format(fmt, spec)
        return Image.fromarray(spec.class_to_code()[mask], "L")
    if fmt == "color":
        return Image.fromarray(colorize(mask, spec.num_classes, spec.palette_array()), "RGB")
    raise ValueError(f"unknown mask format {fmt!r}")


def _save_png(path: Path, image: Image.Image) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def _save_npz(path: Path, probabilities: np.ndarray, class_names: Sequence[str]) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, probabilities=probabilities, class_names=np.array(list(class_names)))
    with atomic_write(path, "wb") as f:
        f.write(buffer.getvalue())


def _read_existing_rows(csv_path: Path) -> dict[str, dict[str, str]]:
    if not csv_path.is_file():
        return {}
    try:
        with open(csv_path, newline="") as f:
            return {row["path"]: row for row in csv.DictReader(f) if "path" in row}
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}


def _read_ahead(indices: Sequence[int], read: Callable[[int], Decoded], depth: int, workers: int) -> Iterator[Decoded]:
    """read(i) for each index, in order; up to `depth` reads run ahead in `workers` threads (decoding overlaps the model)."""
    if workers <= 0:
        yield from map(read, indices)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for index in indices:
            pending.append(pool.submit(read, index))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def check_outputs(planned: Sequence[tuple[InputImage, dict[str, Path]]], out_dir: Path, options: PredictOptions) -> None:
    """Flags and existing outputs, before anything is written (SegPetError, exit code 2)."""
    if options.fmt not in FORMATS:
        raise ConfigError(f"--format: must be one of {', '.join(FORMATS)}; got {options.fmt!r}")
    if options.existing not in EXISTING:
        raise ValueError(f"existing must be one of {EXISTING}")
    if out_dir.exists() and not out_dir.is_dir():
        raise SegPetError(f"--out {out_dir}: exists and is not a folder")
    outputs = [p for _, paths in planned for p in paths.values()]
    if len({p.resolve() for p in outputs}) != len(outputs):  # two inputs, one file (e.g. through a symbolic link)
        raise SegPetError(f"--out {out_dir}: two inputs would write the same output file; predict them into different --out folders")
    if options.existing == "refuse":
        csv_path = out_dir / CSV_NAME
        clashes = [p for _, paths in planned for p in paths.values() if p.exists()] + ([csv_path] if csv_path.exists() else [])
        if clashes:
            raise SegPetError(
                f"--out {out_dir} already holds {len(clashes)} of this call's outputs (e.g. {clashes[0]}); "
                "pass --skip-existing to predict only what is missing, or --overwrite to replace them"
            )


class _Job:
    """One `predict` call: the planned outputs, the rows of predictions.csv so far, the counts."""

    def __init__(self, predictor: Predictor, inputs: Sequence[InputImage], out_dir: Path, options: PredictOptions):
        self.predictor, self.out_dir, self.options = predictor, out_dir, options
        root = OutputRoot(out_dir, "--out")
        self.planned = [(item, output_paths(out_dir, item.key, options, root)) for item in inputs]
        csv_path = root.file(CSV_NAME)
        check_outputs(self.planned, out_dir, options)
        self.summary = PredictSummary(out_dir, csv_path)
        self.rows: list[Optional[dict[str, Any]]] = [None] * len(self.planned)
        self.fields = csv_fields(predictor.class_names)
        # Rows of earlier calls for inputs this call does not predict again stay in predictions.csv.
        mine = {str(item.path) for item, _ in self.planned}
        self.kept = [row for path, row in _read_existing_rows(csv_path).items() if path not in mine]
        self.todo = self._skip_done() if options.existing == "skip" else list(range(len(self.planned)))
        self.last_flush = time.perf_counter()

    def _skip_done(self) -> list[int]:
        """--skip-existing: inputs whose outputs all exist keep their old predictions.csv row; the rest are to do."""
        old_rows, todo = _read_existing_rows(self.summary.csv_path), []
        for index, (item, paths) in enumerate(self.planned):
            if all(p.exists() for p in paths.values()):
                mask = paths["mask"].relative_to(self.out_dir).as_posix()
                self.rows[index] = dict(old_rows.get(str(item.path)) or {"path": str(item.path), "mask": mask, "status": "skipped"})
                self.summary.skipped += 1
            else:
                todo.append(index)
        return todo

    def read(self, index: int) -> Decoded:
        started = time.perf_counter()
        try:
            rgb = load_rgb(self.planned[index][0].path)
            return Decoded(index, rgb, self.predictor.preprocess(rgb), None, time.perf_counter() - started)
        except ImageReadError as exc:
            return Decoded(index, None, None, str(exc), time.perf_counter() - started)

    def fail(self, decoded: Decoded) -> None:
        tqdm.write(f"failed: {decoded.error}", file=sys.stderr)
        path = str(self.planned[decoded.index][0].path)
        self.rows[decoded.index] = {
            "path": path,
            "mask": "",
            "seconds": f"{decoded.seconds:.4f}",
            "status": "failed",
            "error": decoded.error,
        }
        self.summary.failed += 1

    def run_batch(self, batch: list[Decoded]) -> None:
        started = time.perf_counter()
        sizes = [d.rgb.shape[:2] for d in batch]
        all_logits = self.predictor.logits_of_batch(torch.stack([d.tensor for d in batch]), sizes)
        model_share = (time.perf_counter() - started) / len(batch)
        for decoded, logits in zip(batch, all_logits):
            self.write(decoded, logits, decoded.seconds + model_share)

    def write(self, decoded: Decoded, logits: torch.Tensor, seconds: float) -> None:
        """One image's outputs and its predictions.csv row."""
        started = time.perf_counter()
        item, paths = self.planned[decoded.index]
        names, num_classes = self.predictor.class_names, self.predictor.num_classes
        mask = logits.argmax(0).to(torch.uint8).cpu().numpy()
        _save_png(paths["mask"], encode_mask(mask, self.options.fmt, self.predictor.spec))
        if self.options.overlay:
            save_overlay(paths["overlay"], decoded.rgb, mask, num_classes, self.predictor.spec.palette_array())
        if self.options.probabilities:
            _save_npz(paths["probabilities"], torch.softmax(logits, dim=0).cpu().numpy().astype(np.float32), names)
        counts = np.bincount(mask.ravel(), minlength=num_classes)
        shares = {f"share_{name}": f"{counts[c] / mask.size:.6f}" for c, name in enumerate(names)}
        seconds += time.perf_counter() - started
        mask_name = paths["mask"].relative_to(self.out_dir).as_posix()
        row = {"path": str(item.path), "mask": mask_name, "width": mask.shape[1], "height": mask.shape[0], **shares}
        self.rows[decoded.index] = {**row, "seconds": f"{seconds:.4f}", "status": "ok", "error": ""}
        self.summary.ok += 1

    def flush(self, force: bool = True) -> None:
        """Rewrite predictions.csv (atomically) with the rows so far; without `force` at most every CSV_FLUSH_SECONDS."""
        if not force and time.perf_counter() - self.last_flush < CSV_FLUSH_SECONDS:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.summary.csv_path, "w") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.kept)
            writer.writerows(row for row in self.rows if row is not None)
        self.last_flush = time.perf_counter()


def predict_files(
    predictor: Predictor,
    inputs: Sequence[InputImage],
    out_dir: str | os.PathLike,
    options: PredictOptions = PredictOptions(),
    *,
    log: Callable[[str], None] = print,
    read_workers: Optional[int] = None,
) -> PredictSummary:
    """Predict every input into `out_dir`; unreadable images are reported (one line each) and listed as failed.

    Existing outputs: `refuse` (default) raises SegPetError before anything is written when any
    output of this call (a mask, overlay, probabilities file or predictions.csv) is already there;
    `skip` leaves inputs whose outputs all exist alone (their rows in predictions.csv are kept) and
    predicts the rest, earlier failures included; `overwrite` replaces them.
    """
    out_dir = Path(out_dir)
    check_format(options.fmt, predictor.spec)
    job = _Job(predictor, inputs, out_dir, options)
    if out_dir.is_dir():
        remove_partial_files(out_dir)  # temporary files of a killed earlier call (never of a process still running)
    batch_size = options.batch_size or predictor.cfg.data.batch_size
    workers = min(4, max(1, (os.cpu_count() or 1) - 1)) if read_workers is None else read_workers
    skipped = f" ({job.summary.skipped} skipped: outputs already there)" if job.summary.skipped else ""
    log(f"predicting {len(job.todo)} images{skipped} with {predictor.describe()}, batch {batch_size}")
    started = time.perf_counter()
    bar = tqdm(total=len(job.planned), initial=job.summary.skipped, unit="img", desc="predict", dynamic_ncols=True, disable=None)
    batch: list[Decoded] = []
    try:
        for decoded in _read_ahead(job.todo, job.read, depth=2 * batch_size, workers=workers):
            if decoded.error is not None:
                job.fail(decoded)
                bar.update(1)
                continue
            batch.append(decoded)
            if len(batch) >= batch_size:
                job.run_batch(batch)
                bar.update(len(batch))
                batch = []
                job.flush(force=False)
        if batch:
            job.run_batch(batch)
            bar.update(len(batch))
    finally:
        bar.close()
        job.flush()
    job.summary.seconds = time.perf_counter() - started
    job.summary.rows = [row for row in job.rows if row is not None]
    return job.summary
