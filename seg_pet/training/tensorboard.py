"""TensorBoard logging (the optional extra `pip install -e ".[tensorboard]"`), turned on by train.tensorboard;
train() opens it (training/epoch.py `open_board`) and logs each saved epoch and the final test.

One event stream per run, in <run>/tensorboard/, written by rank 0 only; the step is the epoch.
Per epoch: losses, lr, gradient norms, val mIoU, per-class IoU, boundary IoU, pixel accuracy, the
monitors' warnings as text, and the epoch's overlay panels as images. After the test: the test
confusion matrix (the plot the run saved) and the config as hparams with the final metrics.
A resumed run opens the stream with purge_step = its first new epoch, so readers drop anything a
killed process logged past its last checkpoint: no step appears twice.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from seg_pet.config import flat_keys
from seg_pet.runtime.errors import SegPetError

INSTALL = 'pip install -e ".[tensorboard]"'
FOLDER = "tensorboard"


def require_tensorboard(enabled: bool) -> None:
    """Before any work: train.tensorboard needs the tensorboard package."""
    if enabled and importlib.util.find_spec("tensorboard") is None:
        raise SegPetError(f"train.tensorboard: true needs the tensorboard package; install it with: {INSTALL}")


def _hparams(config: dict[str, Any]) -> dict[str, Any]:
    """The config as hparams: dotted keys, values TensorBoard accepts (numbers, text, bools)."""
    return {k: str(v) if v is None or isinstance(v, (list, tuple)) else v for k, v in flat_keys(config).items()}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class TensorBoardLog:
    """Rank 0's writer for one run; `start_epoch` > 1 continues the run's stream (resume)."""

    def __init__(self, run_dir: Path, start_epoch: int = 1) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / FOLDER), purge_step=start_epoch if start_epoch > 1 else None)

    def epoch(self, row: dict[str, Any], panels: list[Path] = ()) -> None:
        step = int(row["epoch"])
        scalars = {
            "loss/train": row.get("train_loss"),
            "loss/val": row.get("val_loss"),
            "lr": row.get("lr"),
            "grad_norm/mean": row.get("grad_norm_mean"),
            "grad_norm/max": row.get("grad_norm_max"),
            "val/miou": row.get("val_miou"),
            "val/pixel_acc": row.get("val_pixel_acc"),
            "val/mboundary_iou": row.get("val_mboundary_iou"),
        }
        for name, value in (row.get("val_iou") or {}).items():
            scalars[f"val_iou/{name}"] = value
        for name, value in (row.get("val_boundary_iou") or {}).items():
            scalars[f"val_boundary_iou/{name}"] = value
        for tag, value in scalars.items():
            if _finite(value):
                self.writer.add_scalar(tag, value, step)
        if row.get("warnings"):
            self.writer.add_text("warnings", "\n\n".join(row["warnings"]), step)
        for path in panels:
            self.writer.add_image(f"panels/{path.stem}", _read_png(path), step, dataformats="HWC")
        self.writer.flush()

    def test(self, metrics: dict[str, Any], config: dict[str, Any], confusion_png: Optional[Path], best_val_miou: float, step: int) -> None:
        if confusion_png is not None and confusion_png.is_file():
            self.writer.add_image("test/confusion", _read_png(confusion_png), step, dataformats="HWC")
        final = {
            "hparam/test_miou": metrics.get("miou"),
            "hparam/test_mboundary_iou": metrics.get("mboundary_iou"),
            "hparam/best_val_miou": best_val_miou,
        }
        final = {k: float(v) for k, v in final.items() if _finite(v)}
        self.writer.add_hparams(_hparams(config), final, run_name=".", global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
