"""Prediction with a trained run: the `Predictor` API and the `predict` command's batch over files.

    Predictor            a run's model, ready to segment images of any size and mode
      .from_run(run_dir, checkpoint="best", device="auto", tta="none")
      .predict(image)         -> (H, W) uint8 class ids at the image's own size
      .predict_logits(image)  -> (C, H, W) float32 logits at the image's own size
      .predict_batch(images)  -> a list of label maps, one forward pass per batch
    load_rgb / to_rgb    any image file or PIL image -> RGB uint8 (H, W, 3): the conversions below
    collect_inputs       --input files, folders and glob patterns -> images and their output names
    predict_files        the `predict` command: masks (+ overlays, probabilities), predictions.csv

Prediction mirrors evaluation exactly (seg_pet.evaluation with eval.native_resolution): the image
is resized to the run's image_size x image_size (data.transforms.eval_transforms: antialiased
bilinear on uint8, then ImageNet normalisation), the model runs there (seg_pet.tta for TTA), and
the LOGITS are resized back to the image's original size (bilinear, align_corners=False) before
the argmax. The label map is never resized.

Image conversions (everything becomes 8-bit RGB, as training saw it):
    EXIF orientation  applied first (PIL.ImageOps.exif_transpose): the mask matches the image as
                      viewers show it, and width/height are those of the rotated image
    RGB               used as is
    P (GIF, palette)  the first frame, palette expanded to RGB
    RGBA, LA, PA      alpha dropped (the colour under transparent pixels is kept), as training's
                      reader does for the dataset's RGBA file
    L, 1 (grayscale)  the gray value copied to R, G and B
    CMYK, YCbCr       PIL's convert("RGB") (no colour management; ICC profiles are ignored)
    I;16 (16-bit)     scaled to 8 bits (value / 257, rounded), then gray -> RGB. PIL's own
                      convert("RGB") would clip every value above 255 to white
    I (32-bit int)    as 16-bit when the maximum exceeds 255, else taken as 8-bit
    F (float)         taken as 0..1 when the maximum is <= 1, else as 0..255 (clipped)
    16-bit RGB PNG    PIL already reads it as 8-bit RGB
Multi-frame files (animated GIF, multi-page TIFF) are predicted on their first frame.
"""

from __future__ import annotations

import concurrent.futures
import csv
import glob
import io
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn
from torchvision import tv_tensors
from tqdm import tqdm

from seg_pet.config import Config
from seg_pet.data.transforms import eval_transforms
from seg_pet.evaluation import load_run
from seg_pet.labels import class_to_trimap
from seg_pet.runtime.device import Runtime
from seg_pet.runtime.errors import ConfigError, SegPetError
from seg_pet.runtime.fileio import atomic_path, atomic_write, remove_partial_files
from seg_pet.tta import TTA_MODES, tta_logits
from seg_pet.viz import colorize, save_overlay

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")
FORMATS = ("index", "trimap", "color")
EXISTING = ("refuse", "skip", "overwrite")
CSV_NAME = "predictions.csv"
CSV_FLUSH_SECONDS = 10.0  # predictions.csv is rewritten (atomically) at most this often, and at the end

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]


class ImageReadError(SegPetError):
    """One input image cannot be read (missing, corrupt, truncated, not an image)."""


# --------------------------------------------------------------------------- reading images


def to_rgb(im: Image.Image) -> np.ndarray:
    """A PIL image of any mode -> (H, W, 3) uint8 RGB, EXIF orientation applied (see the module docstring)."""
    im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode == "RGB":
        return np.array(im, dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im).astype(np.float64)
        if mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / 257.0
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if mode == "F":
        arr = np.asarray(im).astype(np.float64)
        if arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        gray = np.clip(np.rint(np.nan_to_num(arr)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    return np.array(im.convert("RGB"), dtype=np.uint8)


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to RGB uint8 (H, W, 3); any failure is an ImageReadError naming the reason."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, inside the try
            return to_rgb(im)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path}: is a folder") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file (or a format PIL cannot read)") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{path}: {_first_line(exc)}") from None
    except (OSError, SyntaxError, ValueError, EOFError, TypeError) as exc:
        raise ImageReadError(f"{path}: cannot decode ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def as_rgb(image: ImageLike) -> np.ndarray:
    """A path, PIL image, uint8 array ((H, W), (H, W, 3) or (H, W, 4)) or uint8 tensor ((3, H, W)) -> RGB (H, W, 3)."""
    if isinstance(image, (str, os.PathLike)):
        return load_rgb(image)
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an image tensor of shape (3, H, W), got {tuple(image.shape)}")
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels (0..255), got {arr.dtype}; pass a PIL image or a file path for other depths")
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return np.ascontiguousarray(arr[..., :3])
    raise ValueError(f"expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")


# --------------------------------------------------------------------------- the Predictor


def runtime_for(device: str, amp: bool) -> Runtime:
    """Runtime.create for a --device value; an unknown device name is a one-line ConfigError."""
    try:
        return Runtime.create(device, amp=amp, key="--device")
    except RuntimeError as exc:
        raise ConfigError(f"--device {device!r}: {_first_line(exc)} (use auto, cpu, cuda or cuda:N)") from None


class Predictor:
    """A trained model that segments images at their own size; the `predict` command runs on it."""

    def __init__(self, model: nn.Module, cfg: Config, class_names: Sequence[str], runtime: Optional[Runtime] = None, *,
                 tta: str = "none", checkpoint_path: Optional[Path] = None, checkpoint_epoch: Optional[int] = None):
        if tta not in TTA_MODES:
            raise ConfigError(f"--tta: must be one of {', '.join(TTA_MODES)}; got {tta!r}")
        self.runtime = runtime or Runtime.create("cpu", amp=False)
        self.model = self.runtime.place(model).eval()
        self.cfg = cfg
        self.class_names = list(class_names)
        self.tta = tta
        self.checkpoint_path = checkpoint_path
        self.checkpoint_epoch = checkpoint_epoch
        self.transform = eval_transforms(cfg.data.image_size)

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, checkpoint: str = "best", device: str = "auto", tta: str = "none",
                 overrides: Iterable[str] = ()) -> "Predictor":
        """The run's config and checkpoint (best | last | a path); bf16 autocast on CUDA when the run used train.amp."""
        if tta not in TTA_MODES:
            raise ConfigError(f"--tta: must be one of {', '.join(TTA_MODES)}; got {tta!r}")
        runtime_for(device, amp=True)  # checks the device before loading anything
        loaded = load_run(run_dir, checkpoint, overrides)
        runtime = runtime_for(device, amp=loaded.cfg.train.amp)
        return cls(loaded.model, loaded.cfg, loaded.class_names, runtime, tta=tta, checkpoint_path=loaded.checkpoint_path,
                   checkpoint_epoch=loaded.state.get("epoch"))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return self.cfg.data.image_size

    @property
    def border(self) -> str:
        return self.cfg.data.border

    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """RGB uint8 (H, W, 3) -> the normalised float (3, S, S) the model sees, exactly as evaluation makes it."""
        image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1))
        return self.transform(image).as_subclass(torch.Tensor)

    @torch.inference_mode()
    def logits_of_batch(self, batch: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        """Preprocessed images (B, 3, S, S) -> float32 logits (C, H_i, W_i) per image, on the device.

        One forward pass (or the TTA passes) for the batch; each image's logits are then resized
        to its own size (bilinear, align_corners=False), as evaluation does before its argmax.
        """
        logits = tta_logits(self.model, self.runtime.to_device(batch), self.tta, self.runtime.autocast)
        return [F.interpolate(one[None], size=tuple(hw), mode="bilinear", align_corners=False)[0] for one, hw in zip(logits, sizes)]

    def _logits(self, images: Sequence[ImageLike]) -> list[torch.Tensor]:
        rgbs = [as_rgb(image) for image in images]
        batch = torch.stack([self.preprocess(rgb) for rgb in rgbs])
        return self.logits_of_batch(batch, [rgb.shape[:2] for rgb in rgbs])

    def predict_logits(self, image: ImageLike) -> np.ndarray:
        """(C, H, W) float32 logits at the image's own size (after EXIF rotation)."""
        return self._logits([image])[0].cpu().numpy()

    def predict(self, image: ImageLike) -> np.ndarray:
        """(H, W) uint8 class ids (0 .. C-1, in the order of `class_names`) at the image's own size."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[ImageLike]) -> list[np.ndarray]:
        """Label maps for several images (of any sizes) with one forward pass."""
        return [logits.argmax(0).to(torch.uint8).cpu().numpy() for logits in self._logits(images)]

    def describe(self) -> str:
        tta = "" if self.tta == "none" else f", TTA {self.tta}"
        return f"{self.checkpoint_path} (epoch {self.checkpoint_epoch}), {self.image_size} px, classes {self.class_names}, {self.runtime.describe()}{tta}"


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class InputImage:
    """One image to predict and its output name: `key` is the relative path without extension (mirrors folders)."""

    path: Path
    key: PurePosixPath


def _has_magic(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _inside(path: Path, folder: Optional[Path]) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def _folder_images(folder: Path, base: Path, exclude: Optional[Path]) -> list[InputImage]:
    """Image files under `folder` (recursive, hidden names skipped), keyed relative to `base`."""
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file() or not _is_image_name(path):
            continue
        if _inside(path, exclude):
            continue
        found.append(InputImage(path, PurePosixPath(path.relative_to(base).with_suffix("").as_posix())))
    return sorted(found, key=lambda item: item.key.as_posix())


def collect_inputs(specs: Sequence[str | os.PathLike], exclude: Optional[str | os.PathLike] = None) -> list[InputImage]:
    """--input values -> images to predict, in order, each once.

    A file is taken whatever its extension (a non-image is reported as failed); a folder gives its
    images (extensions IMAGE_EXTENSIONS, any case; recursive; hidden files and folders skipped),
    named by their path relative to the folder; a glob pattern (`*`, `?`, `[...]`, `**` recursive)
    gives the files it matches, named relative to the pattern's folder part. Files under `exclude`
    (the output folder) are never collected. An input that matches nothing, or two inputs that would
    write the same output name, is a SegPetError (exit code 2) before anything is predicted.
    """
    exclude_dir = Path(exclude).resolve() if exclude is not None else None
    items: list[InputImage] = []
    for spec in specs:
        text = os.fspath(spec)
        path = Path(text)
        if path.is_file():
            found = [InputImage(path, PurePosixPath(path.stem))]
        elif path.is_dir():
            found = _folder_images(path, path, exclude_dir)
            if not found:
                raise SegPetError(f"--input {text}: no images in this folder (looked for {', '.join(IMAGE_EXTENSIONS)}, any case, recursively)")
        elif _has_magic(text):
            parts = Path(text).parts
            first_magic = next(i for i, part in enumerate(parts) if _has_magic(part))
            base = Path(*parts[:first_magic]) if first_magic else Path(".")
            found = []
            for match in sorted(glob.glob(text, recursive=True)):
                match_path = Path(match)
                if match_path.is_dir():
                    found.extend(_folder_images(match_path, base, exclude_dir))
                elif match_path.is_file() and not _inside(match_path, exclude_dir):
                    found.append(InputImage(match_path, PurePosixPath(match_path.relative_to(base).with_suffix("").as_posix())))
            if not found:
                raise SegPetError(f"--input {text!r}: the pattern matched no files")
        else:
            raise SegPetError(f"--input {text}: no such file or folder")
        items.extend(found)
    unique: dict[Path, InputImage] = {}
    for item in items:  # the same file given twice (e.g. itself and its folder) is predicted once
        unique.setdefault(item.path.resolve(), item)
    result = list(unique.values())
    by_key: dict[str, InputImage] = {}
    for item in result:
        other = by_key.setdefault(item.key.as_posix().casefold(), item)
        if other is not item:
            raise SegPetError(f"--input: {other.path} and {item.path} would both be written as {item.key}.png; "
                              "rename one, or predict them into different --out folders")
    return result


# --------------------------------------------------------------------------- the predict command


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


def output_paths(out_dir: Path, key: PurePosixPath, options: PredictOptions) -> dict[str, Path]:
    """Where one input's files go: masks/KEY.png, overlays/KEY.png, probabilities/KEY.npz."""
    paths = {"mask": out_dir / "masks" / f"{key}.png"}
    if options.overlay:
        paths["overlay"] = out_dir / "overlays" / f"{key}.png"
    if options.probabilities:
        paths["probabilities"] = out_dir / "probabilities" / f"{key}.npz"
    return paths


def csv_fields(class_names: Sequence[str]) -> list[str]:
    return ["path", "mask", "width", "height", *[f"share_{name}" for name in class_names], "seconds", "status", "error"]


def encode_mask(mask: np.ndarray, fmt: str, border: str, num_classes: int) -> Image.Image:
    """index: class ids (mode L); trimap: the dataset's codes 1 pet, 2 background, 3 border (mode L); color: the palette (RGB)."""
    if fmt == "index":
        return Image.fromarray(mask, "L")
    if fmt == "trimap":
        return Image.fromarray(class_to_trimap(border)[mask], "L")
    if fmt == "color":
        return Image.fromarray(colorize(mask, num_classes), "RGB")
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


def _write_csv(csv_path: Path, rows: list[dict[str, Any]], fields: list[str]) -> None:
    with atomic_write(csv_path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _read_ahead(items: Sequence[InputImage], read: Callable[[InputImage], Any], depth: int, workers: int) -> Iterator[tuple[InputImage, Any]]:
    """(item, read(item)) in order; up to `depth` reads run ahead in `workers` threads (decoding overlaps the model)."""
    if workers <= 0:
        for item in items:
            yield item, read(item)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        iterator = iter(items)
        for item in iterator:
            pending.append((item, pool.submit(read, item)))
            if len(pending) >= depth:
                break
        while pending:
            item, future = pending.popleft()
            next_item = next(iterator, None)
            if next_item is not None:
                pending.append((next_item, pool.submit(read, next_item)))
            yield item, future.result()


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
    predicts the rest, failed ones included; `overwrite` replaces them. Every file is written
    atomically; predictions.csv is rewritten every few seconds and at the end, also when interrupted.
    """
    out_dir = Path(out_dir)
    if options.fmt not in FORMATS:
        raise ConfigError(f"--format: must be one of {', '.join(FORMATS)}; got {options.fmt!r}")
    if options.existing not in EXISTING:
        raise ValueError(f"existing must be one of {EXISTING}")
    if out_dir.exists() and not out_dir.is_dir():
        raise SegPetError(f"--out {out_dir}: exists and is not a folder")
    csv_path = out_dir / CSV_NAME
    planned = [(item, output_paths(out_dir, item.key, options)) for item in inputs]
    if options.existing == "refuse":
        clashes = [p for _, paths in planned for p in paths.values() if p.exists()] + ([csv_path] if csv_path.exists() else [])
        if clashes:
            raise SegPetError(f"--out {out_dir} already holds {len(clashes)} of this call's outputs (e.g. {clashes[0]}); "
                              "pass --skip-existing to predict only what is missing, or --overwrite to replace them")
    if out_dir.is_dir():
        remove_partial_files(out_dir)  # temporary files of a killed earlier call
    old_rows = _read_existing_rows(csv_path) if options.existing == "skip" else {}

    names, border, num_classes = predictor.class_names, predictor.border, predictor.num_classes
    fields = csv_fields(names)
    summary = PredictSummary(out_dir, csv_path)
    rows: list[Optional[dict[str, Any]]] = [None] * len(planned)
    todo: list[int] = []
    for index, (item, paths) in enumerate(planned):
        if options.existing == "skip" and all(p.exists() for p in paths.values()):
            old = old_rows.get(str(item.path))
            rows[index] = dict(old) if old else {"path": str(item.path), "mask": str(paths["mask"].relative_to(out_dir)), "status": "skipped"}
            summary.skipped += 1
        else:
            todo.append(index)

    batch_size = options.batch_size or predictor.cfg.data.batch_size
    skipped = f" ({summary.skipped} skipped: outputs already there)" if summary.skipped else ""
    log(f"predicting {len(todo)} images{skipped} with {predictor.describe()}, batch {batch_size}")
    if read_workers is None:
        read_workers = min(4, max(1, (os.cpu_count() or 1) - 1))
    started = time.perf_counter()

    def read(index: int) -> tuple[Optional[np.ndarray], Optional[torch.Tensor], Optional[str], float]:
        t0 = time.perf_counter()
        try:
            rgb = load_rgb(planned[index][0].path)
            return rgb, predictor.preprocess(rgb), None, time.perf_counter() - t0
        except ImageReadError as exc:
            return None, None, str(exc), time.perf_counter() - t0

    def flush() -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_csv(csv_path, [row for row in rows if row is not None], fields)

    last_flush = time.perf_counter()
    bar = tqdm(total=len(planned), initial=summary.skipped, unit="img", desc="predict", dynamic_ncols=True, disable=None)
    try:
        batch: list[tuple[int, np.ndarray, torch.Tensor, float]] = []

        def run_batch() -> None:
            t0 = time.perf_counter()
            sizes = [rgb.shape[:2] for _, rgb, _, _ in batch]
            all_logits = predictor.logits_of_batch(torch.stack([tensor for _, _, tensor, _ in batch]), sizes)
            model_share = (time.perf_counter() - t0) / len(batch)
            for (index, rgb, _, read_seconds), logits in zip(batch, all_logits):
                t1 = time.perf_counter()
                item, paths = planned[index]
                mask = logits.argmax(0).to(torch.uint8).cpu().numpy()
                _save_png(paths["mask"], encode_mask(mask, options.fmt, border, num_classes))
                if options.overlay:
                    save_overlay(paths["overlay"], rgb, mask, num_classes)
                if options.probabilities:
                    _save_npz(paths["probabilities"], torch.softmax(logits, dim=0).cpu().numpy().astype(np.float32), names)
                counts = np.bincount(mask.ravel(), minlength=num_classes)
                shares = {f"share_{name}": f"{counts[c] / mask.size:.6f}" for c, name in enumerate(names)}
                seconds = read_seconds + model_share + time.perf_counter() - t1
                rows[index] = {"path": str(item.path), "mask": paths["mask"].relative_to(out_dir).as_posix(), "width": mask.shape[1],
                               "height": mask.shape[0], **shares, "seconds": f"{seconds:.4f}", "status": "ok", "error": ""}
                summary.ok += 1
                bar.update(1)
            batch.clear()

        for index, (rgb, tensor, error, read_seconds) in _read_ahead(todo, read, depth=2 * batch_size, workers=read_workers):
            if error is not None:
                item, paths = planned[index]
                tqdm.write(f"failed: {error}", file=sys.stderr)
                rows[index] = {"path": str(item.path), "mask": "", "seconds": f"{read_seconds:.4f}", "status": "failed", "error": error}
                summary.failed += 1
                bar.update(1)
                continue
            batch.append((index, rgb, tensor, read_seconds))
            if len(batch) >= batch_size:
                run_batch()
                if time.perf_counter() - last_flush > CSV_FLUSH_SECONDS:
                    flush()
                    last_flush = time.perf_counter()
        if batch:
            run_batch()
    finally:
        bar.close()
        flush()
    summary.seconds = time.perf_counter() - started
    summary.rows = [row for row in rows if row is not None]
    return summary
