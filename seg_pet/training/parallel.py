"""The model under torchrun: DistributedDataParallel, and batch norm over the global batch (train.sync_bn).

DDP keeps one copy of the model per process. Each process runs forward and backward on its own
share of the batch; during backward DDP averages the gradients of all processes (all_reduce, in
buckets, overlapped with the rest of backward), so every optimiser step sees the same gradient and
every copy stays identical. The checkpoint holds the unwrapped model (`Setup.model`), so its keys
are those of a single-process run and either loads into the other.

Batch norm normally computes its statistics over each process's own images. `train.sync_bn: true`
computes them over the global batch: nn.SyncBatchNorm on CUDA, and on the CPU (which SyncBatchNorm
refuses) `GlobalBatchNorm2d` below, the same mathematics with two all_reduce calls per layer.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from seg_pet.runtime.device import Runtime
from seg_pet.runtime.distributed import is_distributed


class SumOverProcesses(torch.autograd.Function):
    """all_reduce(SUM) that autograd differentiates: every process uses the sum, so the gradient of each
    process's input is the sum of all processes' gradients of it (an all_reduce again)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span every process's batch: SyncBatchNorm for the CPU (gloo).

    Mean first, then the variance around it (two passes, as steady as BatchNorm's own), each summed
    over processes with an all_reduce that autograd differentiates (its backward sums the gradients
    again), so the gradients equal those of BatchNorm2d on the concatenated batch. In eval mode, or
    without a process group, it is plain BatchNorm2d. Same parameters and buffers as BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        dims = (0, 2, 3)
        count = torch.tensor([float(x.numel() // x.shape[1])], dtype=x.dtype, device=x.device)
        dist.all_reduce(count)
        mean = SumOverProcesses.apply(x.sum(dims)) / count
        centred = x - mean[None, :, None, None]
        var = SumOverProcesses.apply(centred.square().sum(dims)) / count  # biased, as BatchNorm normalises with
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (count / (count - 1).clamp(min=1))
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(unbiased.detach(), factor)
        out = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out


def global_batch_norm(model: nn.Module, runtime: Runtime) -> nn.Module:
    """Every BatchNorm of `model` made to compute its statistics over the global batch (train.sync_bn)."""
    if runtime.cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_global(model)


def _to_global(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        like = next(module.parameters(), None) if module.affine else module.running_mean
        placed = {"device": like.device, "dtype": like.dtype} if like is not None else {}
        converted = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats, **placed)
        converted.load_state_dict(module.state_dict())
        return converted.train(module.training)
    for name, child in module.named_children():
        module.add_module(name, _to_global(child))
    return module


def data_parallel(model: nn.Module, runtime: Runtime) -> nn.Module:
    """`model` wrapped in DistributedDataParallel on this process's device (CUDA: its own GPU)."""
    return DistributedDataParallel(model, device_ids=[runtime.device.index] if runtime.cuda else None)


def unwrapped(step_model: nn.Module) -> nn.Module:
    """The module inside torch.compile and DistributedDataParallel wrappers (what is saved and loaded)."""
    module = getattr(step_model, "_orig_mod", step_model)  # torch.compile's OptimizedModule
    return module.module if isinstance(module, DistributedDataParallel) else module
