"""`Predictor`: a trained run's model, segmenting images of any size at their own size.

Prediction mirrors evaluation exactly (seg_pet.evaluation with eval.native_resolution): the image
is resized to the run's image_size x image_size (data.transforms.eval_transforms: antialiased
bilinear on uint8, then ImageNet normalisation), the model runs there (seg_pet.tta for TTA), and
the LOGITS are resized back to the image's original size (bilinear, align_corners=False) before
the argmax. The label map is never resized.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import tv_tensors

from seg_pet.config import Config, label_spec
from seg_pet.data.transforms import eval_transforms
from seg_pet.evaluation import load_run
from seg_pet.labels import LabelSpec
from seg_pet.predict.images import ImageLike, as_rgb
from seg_pet.runtime.device import Runtime
from seg_pet.runtime.errors import ConfigError, first_line
from seg_pet.tta import TTA_MODES, tta_logits


def runtime_for(device: str, amp: bool) -> Runtime:
    """Runtime.create for a --device value; an unknown device name is a one-line ConfigError."""
    try:
        return Runtime.create(device, amp=amp, key="--device")
    except RuntimeError as exc:
        raise ConfigError(f"--device {device!r}: {first_line(exc)} (use auto, cpu, cuda or cuda:N)") from None


def check_tta(tta: str) -> str:
    if tta not in TTA_MODES:
        raise ConfigError(f"--tta: must be one of {', '.join(TTA_MODES)}; got {tta!r}")
    return tta


class Predictor:
    """A trained model that segments images at their own size; the `predict` command runs on it."""

    def __init__(
        self,
        model: nn.Module,
        cfg: Config,
        class_names: Sequence[str],
        runtime: Optional[Runtime] = None,
        *,
        tta: str = "none",
        checkpoint_path: Optional[Path] = None,
        checkpoint_epoch: Optional[int] = None,
    ):
        self.tta = check_tta(tta)
        self.runtime = runtime or Runtime.create("cpu", amp=False)
        self.model = self.runtime.place(model).eval()
        self.cfg = cfg
        self.class_names = list(class_names)
        self.checkpoint_path = checkpoint_path
        self.checkpoint_epoch = checkpoint_epoch
        self.transform = eval_transforms(cfg.data.image_size)

    @classmethod
    def from_run(
        cls, run_dir: str | os.PathLike, checkpoint: str = "best", device: str = "auto", tta: str = "none", overrides: Iterable[str] = ()
    ) -> Predictor:
        """The run's config and checkpoint (best | last | a path); bf16 autocast on CUDA when the run used train.amp."""
        check_tta(tta)
        runtime_for(device, amp=True)  # checks the device before loading anything
        loaded = load_run(run_dir, checkpoint, overrides)
        runtime = runtime_for(device, amp=loaded.cfg.train.amp)
        epoch = loaded.state.get("epoch")
        return cls(
            loaded.model, loaded.cfg, loaded.class_names, runtime, tta=tta, checkpoint_path=loaded.checkpoint_path, checkpoint_epoch=epoch
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return self.cfg.data.image_size

    @property
    def spec(self) -> LabelSpec:
        """The run's classes and mask coding (seg_pet.labels.LabelSpec), from its config."""
        return label_spec(self.cfg.data)

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
        where = f"{self.checkpoint_path} (epoch {self.checkpoint_epoch})"
        return f"{where}, {self.image_size} px, classes {self.class_names}, {self.runtime.describe()}{tta}"
