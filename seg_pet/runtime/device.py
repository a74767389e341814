"""`Runtime`: every decision that depends on the device, made once.

Which device, whether autocast runs and in which dtype, channels_last, pinned host memory and the
cudnn flags are all derived here from the config's device setting; the rest of the code asks the
`Runtime` instead of testing `device.type` itself.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from seg_pet.runtime.distributed import launch
from seg_pet.runtime.errors import ConfigError


def resolve_device(setting: str, key: str = "train.device") -> torch.device:
    """auto | cpu | cuda | cuda:N -> a device that exists here; `key` names the setting in errors.

    Under torchrun, `auto` and `cuda` mean this process's own GPU, cuda:<LOCAL_RANK>; `cuda:N` would put
    every process of a machine on one GPU, so it is refused when a machine runs more than one.
    """
    job = launch()
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{key}: {setting!r} requested but CUDA is not available here (torch {torch.__version__}); use {key}: cpu or auto"
            )
        if ":" in setting and job.local_world_size > 1:
            raise ConfigError(
                f"{key}: {setting!r} would put all {job.local_world_size} processes of this machine on one GPU; "
                f"use {key}: auto or cuda under torchrun (each process takes cuda:LOCAL_RANK)"
            )
        index = int(setting.split(":")[1]) if ":" in setting else job.local_rank
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"{key}: {setting!r} needs cuda:{index} but only {torch.cuda.device_count()} CUDA device(s) are visible"
                + (f" (torchrun started {job.local_world_size} processes on this machine)" if job.by_torchrun else "")
            )
        setting = f"cuda:{index}" if job.by_torchrun else setting
    return torch.device(setting)


@dataclass(frozen=True)
class Runtime:
    """How tensors and models are placed and computed on this process's device."""

    device: torch.device
    amp_dtype: Optional[torch.dtype] = None  # autocast dtype, None = fp32
    deterministic: bool = False
    layout: Optional[bool] = None  # train.channels_last: None = channels_last on CUDA only

    @classmethod
    def create(
        cls,
        setting: str,
        *,
        amp: bool = True,
        deterministic: bool = False,
        channels_last: Optional[bool] = None,
        key: str = "train.device",
    ) -> Runtime:
        """bf16 autocast on CUDA where supported (no loss scaling needed), fp16 otherwise; none on CPU."""
        device = resolve_device(setting, key)
        amp_dtype = None
        if amp and device.type == "cuda":
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return cls(device, amp_dtype, deterministic, channels_last)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def channels_last(self) -> bool:
        """NHWC activations: faster convolutions with tensor cores; on CPU faster for some models and slower
        for others (docs/performance.md), so there only when train.channels_last asks for it."""
        return self.cuda if self.layout is None else self.layout

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.preserve_format

    @property
    def pin_memory(self) -> bool:
        return self.cuda

    def apply_backend_flags(self) -> None:
        """cudnn autotuning unless results must be reproducible; deterministic kernels when asked."""
        if self.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = self.cuda and not self.deterministic

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> Optional[torch.amp.GradScaler]:
        """fp16 needs loss scaling; bf16 and fp32 do not."""
        return torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

    def place(self, model: nn.Module) -> nn.Module:
        """The model on this device, in channels_last layout where that is faster."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device, non_blocking=True, memory_format=self.memory_format)

    def describe(self) -> str:
        autocast = f", autocast {str(self.amp_dtype).replace('torch.', '')}" if self.amp_dtype else ""
        layout = ", channels_last" if self.channels_last else ""
        return f"device {self.device}{autocast}{layout}"
