"""ONNX export of a trained run, verified against torch on real images before it is written.

    export_onnx   run folder -> model.onnx + model.json (sidecar), or VerificationFailed

The ONNX model (opset 18, torch.export-based exporter `torch.onnx.export(dynamo=True)`; the
TorchScript exporter, opset 17, is the fallback when that fails for an architecture):

    input   `image`   float32 (N, 3, H, W), RGB scaled to 0..1 (uint8 / 255), NOT normalised:
                      the ImageNet normalisation (x - mean) / std is baked into the graph
    output  `logits`  float32 (N, C, H, W), class order as in the sidecar's class_names
    N, H and W are dynamic; H and W must be multiples of 32 (the U-Net downsamples 5 times).
    To reproduce `predict`: resize the uint8 image to image_size x image_size (antialiased bilinear),
    divide by 255, run, resize the logits back to the image size (bilinear), argmax over C.

Verification (before anything is written): onnxruntime (CPUExecutionProvider) and torch run the
same images at three input sizes plus a batch of one. It fails (exit code 1, nothing written) when the
largest absolute logit difference exceeds ATOL x max(1, largest |logit|) (float32 rounding grows with
the logits), or when the argmax differs on more than MAX_MISMATCH of the pixels. The measured numbers
go into the sidecar; docs/use_your_model.md, ONNX export, has the details.

Before any work: the flags are in range (check_flags), and the model file and its sidecar are
planned through runtime.paths.OutputRoot (no folder in the way, never a run's own file, the sidecar
really beside the model). Both are then written to temporary files and put in place together at the
end, so --overwrite keeps the old pair until the new one is complete and verified.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import platform
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2

from seg_pet.config import label_spec
from seg_pet.data.sources import build_datasets
from seg_pet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from seg_pet.evaluation import LoadedRun, load_run
from seg_pet.predict import load_rgb
from seg_pet.runtime.errors import SegPetError, first_line
from seg_pet.runtime.fileio import atomic_path, storage_error_of, to_jsonable
from seg_pet.runtime.paths import OutputRoot, check_output
from seg_pet.tta import SIZE_MULTIPLE, scaled_size

ONNX_OPSET = 18  # the torch.export-based exporter's
LEGACY_OPSET = 17  # the TorchScript exporter's, used only when the first fails
ATOL = 1e-3  # largest allowed |logit_onnx - logit_torch|, as a share of max(1, largest |logit|)
MAX_MISMATCH = 1e-4  # largest allowed share of pixels whose argmax differs
VERIFY_IMAGES = 3
MIN_OPSET = 9  # the oldest opset both exporters still write for these models' operators (Resize, Upsample)
MAX_ATOL = 1e3  # --atol: a share of the logits' magnitude; beyond this nothing is being checked
INSTALL_HINT = 'pip install -e ".[export]"'


class ExportError(SegPetError):
    """Export cannot start or the exporter failed (exit code 2)."""


class VerificationFailed(Exception):
    """onnxruntime and torch disagree beyond the tolerances (exit code 1); nothing was written."""


def require_onnx() -> tuple[Any, Any]:
    """(onnx, onnxruntime), or an ExportError saying how to install them."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or "onnx"
        raise ExportError(f"ONNX export needs onnx, onnxruntime and onnxscript ({missing} is not installed): {INSTALL_HINT}") from None
    return onnx, onnxruntime


class NormalisedModel(nn.Module):
    """The run's model with ImageNet normalisation in front: takes RGB in 0..1, returns logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model((image - self.mean) / self.std)


def verify_sizes(image_size: int) -> list[tuple[int, int]]:
    return [(image_size, image_size), (scaled_size(image_size, 1.5),) * 2, (image_size, 2 * image_size)]


def unit_batch(rgbs: Sequence[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
    """RGB uint8 images -> (N, 3, h, w) float in 0..1, resized as evaluation resizes (antialiased, on uint8)."""
    resize = v2.Resize(list(size), antialias=True)
    out = [resize(tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1))).as_subclass(torch.Tensor) for rgb in rgbs]
    return torch.stack(out).float().div(255)


def default_verify_images(cfg, count: int) -> tuple[list[np.ndarray], list[str]]:
    """The first `count` validation images of the run's data, or random ones (named 'random') when it is not there."""
    try:
        datasets = build_datasets(cfg, check_files=False)
        # A run trained without a validation split (data.val_fraction: 0): its training images. Never the test split.
        paths = list(datasets["val"].images[:count]) or list(datasets["train"].images[:count])
        if not paths:
            raise SegPetError("no images")
        return [load_rgb(p) for p in paths], [str(p) for p in paths]
    except SegPetError:
        rng = np.random.default_rng(0)
        size = cfg.data.image_size
        return [rng.integers(0, 256, (size + 37 * i, size + 23 * i, 3), dtype=np.uint8) for i in range(count)], ["random"] * count


def max_opset() -> int:
    import onnx.defs

    return onnx.defs.onnx_opset_version()


def check_flags(opset: int, atol: float, max_mismatch: float) -> None:
    """The flags' ranges, before any work (ExportError, exit code 2)."""
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= max_opset():
        raise ExportError(f"--opset: must be a whole number from {MIN_OPSET} to {max_opset()} (this onnx's newest), got {opset!r}")
    if not (isinstance(atol, (int, float)) and math.isfinite(atol) and 0 < atol <= MAX_ATOL):
        raise ExportError(f"--atol: must be a number > 0 and <= {MAX_ATOL:g}, got {atol!r}")
    if not (isinstance(max_mismatch, (int, float)) and math.isfinite(max_mismatch) and 0 <= max_mismatch <= 1):
        raise ExportError(f"--max-mismatch: must be a share from 0 to 1, got {max_mismatch!r}")


@contextlib.contextmanager
def _quiet():
    """Exporter chatter (print, warnings, logging: onnxscript logs tracebacks of what it retries) kept off the console."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def model_opset(onnx, path: Path) -> int:
    """The default-domain opset the model file declares."""
    model = onnx.load(str(path), load_external_data=False)
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), -1)


def _export(wrapper: nn.Module, path: Path, image_size: int, opset: int) -> tuple[str, int]:
    """Write the ONNX file; returns (exporter, opset asked of it). Exporter chatter is kept off the console unless it fails."""
    example = torch.rand(2, 3, image_size, image_size)
    errors = []
    axes = {0: "batch", 2: "height", 3: "width"}
    attempts = [
        (
            "torch.export (dynamo=True)",
            opset,
            dict(
                dynamo=True,
                external_data=False,
                dynamic_shapes=({0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")},),
                verbose=False,
            ),
        ),
        ("TorchScript (dynamo=False)", min(opset, LEGACY_OPSET), dict(dynamo=False, dynamic_axes={"image": axes, "logits": axes})),
    ]
    if opset <= LEGACY_OPSET:  # the torch.export-based exporter writes opset 18 and newer only
        attempts = attempts[1:]
    for name, version, kwargs in attempts:
        try:
            with _quiet():
                torch.onnx.export(
                    wrapper, (example,), str(path), input_names=["image"], output_names=["logits"], opset_version=version, **kwargs
                )
            return name, version
        except Exception as exc:  # noqa: BLE001 - any exporter failure: try the next exporter
            if storage_error_of(exc) is not None:  # a full disk: atomic_path names the model file (exit code 3)
                raise
            errors.append(f"{name}: {first_line(exc)}")
    raise ExportError("ONNX export failed: " + "; ".join(errors))


def logit_tolerance(max_abs_logit: float, atol: float = ATOL) -> float:
    """The largest allowed |logit difference|: atol, scaled up by the logits' magnitude when that exceeds 1."""
    return atol * max(1.0, max_abs_logit)


@dataclasses.dataclass
class Verification:
    sizes: list[tuple[int, int]]
    images: list[str]
    max_abs_diff: float
    max_abs_logit: float
    argmax_mismatch: float  # share of pixels
    pixels: int
    atol: float
    max_mismatch: float

    @property
    def tolerance(self) -> float:
        return logit_tolerance(self.max_abs_logit, self.atol)

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.argmax_mismatch <= self.max_mismatch

    def describe(self) -> str:
        sizes = ", ".join(f"{h}x{w}" for h, w in self.sizes)
        return (
            f"max |logit difference| {self.max_abs_diff:.2e} (tolerance {self.tolerance:.2e} = {self.atol:g} x max(1, "
            f"max |logit| {self.max_abs_logit:.3g})), argmax differs on "
            f"{self.argmax_mismatch:.2e} of {self.pixels} pixels (tolerance {self.max_mismatch:g}); {len(self.images)} images at {sizes}"
        )


def verify(
    session,
    model: nn.Module,
    rgbs: Sequence[np.ndarray],
    names: Sequence[str],
    image_size: int,
    *,
    atol: float = ATOL,
    max_mismatch: float = MAX_MISMATCH,
    sizes: Optional[list[tuple[int, int]]] = None,
) -> Verification:
    """onnxruntime vs torch (float32, CPU) on the images at each size; batches of all images and of one."""
    sizes = sizes or verify_sizes(image_size)
    worst, largest, mismatched, pixels = 0.0, 0.0, 0, 0
    input_name = session.get_inputs()[0].name
    batches = [(size, unit_batch(rgbs, size)) for size in sizes] + [(sizes[0], unit_batch(rgbs[:1], sizes[0]))]
    for _, batch in batches:
        with torch.inference_mode():
            reference = model(batch).float().numpy()
        onnx_logits = session.run(None, {input_name: batch.numpy()})[0]
        if onnx_logits.shape != reference.shape:
            raise VerificationFailed(f"onnxruntime returned logits of shape {onnx_logits.shape}, torch {reference.shape}")
        worst = max(worst, float(np.abs(onnx_logits - reference).max()))
        largest = max(largest, float(np.abs(reference).max()))
        mismatched += int((onnx_logits.argmax(1) != reference.argmax(1)).sum())
        pixels += reference.shape[0] * reference.shape[2] * reference.shape[3]
    return Verification(sizes, list(names), worst, largest, mismatched / pixels, pixels, atol, max_mismatch)


def sidecar_for(loaded: LoadedRun, out: Path, exporter: str, opset: int, result: Verification) -> dict[str, Any]:
    """model.json: what a user of the ONNX file needs (classes, palette, input contract) and how it was verified."""
    import onnx
    import onnxruntime

    cfg, names = loaded.cfg, loaded.class_names
    spec = label_spec(cfg.data)
    verification = {
        "images": result.images,
        "sizes": [list(s) for s in result.sizes],
        "max_abs_logit_diff": result.max_abs_diff,
        "max_abs_logit": result.max_abs_logit,
        "argmax_mismatch_share": result.argmax_mismatch,
        "pixels": result.pixels,
        "atol": result.atol,
        "logit_tolerance": result.tolerance,
        "max_mismatch": result.max_mismatch,
        "onnxruntime": onnxruntime.__version__,
    }
    return {
        "model_file": out.name,
        "format": "onnx",
        "opset": opset,
        "exporter": exporter,
        "input": {
            "name": "image",
            "dtype": "float32",
            "shape": ["batch", 3, "height", "width"],
            "color": "RGB",
            "range": [0.0, 1.0],
            "normalisation": "baked into the model: (image - mean) / std",
            "height_width_multiple_of": SIZE_MULTIPLE,
        },
        "output": {"name": "logits", "dtype": "float32", "shape": ["batch", len(names), "height", "width"]},
        "class_names": names,
        "palette": spec.palette_array().tolist(),
        **({"trimap_codes": spec.class_to_code().tolist()} if spec.coding == "trimap" else {}),
        "labels": spec.to_dict(),  # the mask coding: file value (or colour) -> class id, ignore values, background
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "image_size": cfg.data.image_size,
        **({"border": spec.border} if spec.coding == "trimap" else {}),
        "arch": cfg.model.arch,
        "encoder": cfg.model.encoder,
        "checkpoint": str(loaded.checkpoint_path),
        "checkpoint_epoch": loaded.state.get("epoch"),
        "verification": verification,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "python": platform.python_version(),
    }


def check_destination(out: Path, overwrite: bool) -> Path:
    """The model file and its sidecar may be written (OutputRoot's rules; existing ones only with --overwrite); returns the sidecar."""
    if out.suffix != ".onnx":
        raise ExportError(f"--out {out}: the file name must end in .onnx (the sidecar goes beside it as NAME.json)")
    check_output(out, "--out", "file")
    sidecar = OutputRoot(out, "--out").sibling(out.with_suffix(".json").name, "the sidecar")
    for path in (out, sidecar):
        if path.exists() and not overwrite:
            raise ExportError(f"{path} already exists; pass --overwrite to replace it")
    return sidecar


def export_onnx(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    checkpoint: str = "best",
    opset: int = ONNX_OPSET,
    atol: float = ATOL,
    max_mismatch: float = MAX_MISMATCH,
    images: Sequence[str | os.PathLike] = (),
    verify_count: int = VERIFY_IMAGES,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Export, verify, then write OUT and its sidecar OUT.json (both atomically); returns the sidecar."""
    onnx, ort = require_onnx()
    check_flags(opset, atol, max_mismatch)
    out = Path(out)
    sidecar_path = check_destination(out, overwrite)
    loaded = load_run(run_dir, checkpoint)
    cfg = loaded.cfg
    wrapper = NormalisedModel(loaded.model.float().cpu()).eval()
    if images:
        rgbs, image_names = [load_rgb(p) for p in images], [str(p) for p in images]
    else:
        rgbs, image_names = default_verify_images(cfg, verify_count)
        if image_names and image_names[0] == "random":
            log(f"note: the run's data is not at {cfg.data.root}; verifying on {len(rgbs)} random images (pass --images to use real ones)")
    # Both files go to temporary names first and are put in place together once the model is verified.
    with atomic_path(out) as tmp:
        exporter, _ = _export(wrapper, tmp, cfg.data.image_size, opset)
        try:
            onnx.checker.check_model(str(tmp))
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"the exported model fails onnx.checker: {str(exc).strip().splitlines()[0]}") from None
        used_opset = model_opset(onnx, tmp)
        if used_opset != opset and not (opset > LEGACY_OPSET and exporter.startswith("TorchScript")):
            raise ExportError(
                f"--opset {opset}: the exporter wrote opset {used_opset} instead; nothing written (the default is {ONNX_OPSET})"
            )
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
        result = verify(session, wrapper, rgbs, image_names, cfg.data.image_size, atol=atol, max_mismatch=max_mismatch)
        if not result.passed:
            raise VerificationFailed(f"ONNX model does not match torch, nothing written: {result.describe()}")
        sidecar = sidecar_for(loaded, out, exporter, used_opset, result)
        with atomic_path(sidecar_path) as tmp_sidecar:  # in place just before the model, whose write ends the block
            tmp_sidecar.write_text(json.dumps(to_jsonable(sidecar), indent=2, allow_nan=False) + "\n")
    log(f"exported {out} (opset {used_opset}, {exporter}) and {sidecar_path}; verified: {result.describe()}")
    return sidecar
