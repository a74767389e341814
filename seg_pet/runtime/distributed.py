"""Data-parallel training under torchrun: this process's place in the job, the process group, collectives.

seg_pet never starts processes itself. `torchrun --nproc-per-node N -m seg_pet train ...` starts N
copies of the same command and tells each one its place in environment variables (RANK,
LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT); `launch()` reads them.
`join_process_group` then starts torch.distributed, NCCL on CUDA and gloo on the CPU, with a
timeout on every collective, so that a process that stops answering stops the job instead of
hanging it.

Without torchrun (a plain `python -m seg_pet ...`) nothing here starts anything and every helper
is a no-op: rank 0 of a world of 1, which is the main process and writes every file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Launch:
    """Where torchrun put this process; the defaults are a plain single-process run."""

    rank: int = 0
    local_rank: int = 0  # the process's index on its machine: it picks GPU cuda:<local_rank>
    world_size: int = 1
    local_world_size: int = 1
    nodes: int = 1
    by_torchrun: bool = False


def launch() -> Launch:
    """This process's place in the job, from torchrun's environment variables (read, never set, here)."""
    env = os.environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return Launch()
    world, local_world = int(env["WORLD_SIZE"]), int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"]))
    return Launch(
        int(env["RANK"]),
        int(env.get("LOCAL_RANK", 0)),
        world,
        local_world,
        int(env.get("GROUP_WORLD_SIZE", max(world // max(local_world, 1), 1))),
        True,
    )


def launch_command() -> str:
    """How this job was started, for the messages that say how to continue it (`... -m seg_pet train --resume RUN`)."""
    job = launch()
    if not job.by_torchrun:
        return "python"
    if job.nodes == 1:
        return f"torchrun --standalone --nproc-per-node {job.local_world_size}"
    return f"torchrun --nnodes {job.nodes} --nproc-per-node {job.local_world_size} --rdzv-backend c10d --rdzv-endpoint HOST:PORT"


_joined = False  # whether this process has joined a process group (errors found before then are every process's)


def join_process_group(device: torch.device, timeout_s: float) -> None:
    """Under torchrun: join the job's process group (NCCL on CUDA, gloo on the CPU); otherwise nothing.

    Every collective (all_reduce, broadcast, DDP's gradient buckets) then fails after `timeout_s`
    seconds without an answer instead of waiting forever; gloo also fails at once when another
    process's connection closes (it crashed or was killed).
    """
    global _joined
    if not launch().by_torchrun or is_distributed():
        return
    _joined = True
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=timedelta(seconds=timeout_s), device_id=device)
    else:
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))


def leave_process_group() -> None:
    if is_distributed():
        dist.destroy_process_group()


def has_joined() -> bool:
    """True once this process has joined (or tried to join) a process group, also after leaving it."""
    return _joined


def lost_contact(exc: BaseException) -> Optional[str]:
    """When `exc` says a collective failed (another process crashed, was killed or stopped answering
    for train.dist_timeout seconds): the gist, in one line; otherwise None."""
    text = str(exc).strip()
    marks = ("Connection closed by peer", "Connection reset by peer", "Timed out", "timed out", "NCCL", "gloo")
    if not has_joined() or not (isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and any(m in text for m in marks))):
        return None
    line = text.splitlines()[0] if text else type(exc).__name__
    if line.startswith("[") and "] " in line:  # gloo's "[/path/to/pair.cc:561] Connection closed by peer ..."
        line = line.split("] ", 1)[1]
    return line.split(". ")[0]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """The one process that writes files and prints summaries."""
    return rank() == 0


# --------------------------------------------------------------------------- collectives (identities with one process)


def _on_backend(tensor: torch.Tensor) -> torch.Tensor:
    """NCCL reduces CUDA tensors only: a CPU tensor travels through this process's GPU."""
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        return tensor.to(torch.device("cuda", torch.cuda.current_device()))
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all processes in place (identity with one process)."""
    if is_distributed():
        moved = _on_backend(tensor)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        if moved is not tensor:
            tensor.copy_(moved)
    return tensor


def agreed_signal(signum: Optional[int]) -> int:
    """The stop signal any process received (0: none), the same answer in every process.

    A signal may reach one process, or reach them at slightly different steps; deciding on the
    largest signal number over all of them makes every process stop at the same point.
    """
    flag = torch.tensor([float(signum or 0)])
    if is_distributed():
        moved = _on_backend(flag)
        dist.all_reduce(moved, op=dist.ReduceOp.MAX)
        flag = moved.cpu()
    return int(flag.item())


def decided_by_main(value: Any) -> Any:
    """Rank 0's `value` in every process (e.g. a fact about the run folder, which only rank 0 writes)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gathered(value: Any) -> list[Any]:
    """Every process's `value`, in rank order (e.g. each process's RNG state for the checkpoint)."""
    if not is_distributed():
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def broadcast_from_main(tensors: Iterable[torch.Tensor]) -> None:
    """Rank 0's values copied, in place, into every process's tensors of the same shapes
    (e.g. `model.buffers()`, or every weight of `model.state_dict().values()`)."""
    if is_distributed():
        for tensor in tensors:
            dist.broadcast(tensor, src=0)


@contextlib.contextmanager
def main_first(when: bool = True) -> Iterator[None]:
    """Rank 0 runs the block first, the other processes once it is done (e.g. rank 0 writes a file they then read)."""
    wait = when and is_distributed()
    if wait and not is_main():
        dist.barrier()
    yield
    if wait and is_main():
        dist.barrier()


def shard(order: torch.Tensor, rank: int, world: int, *, equal: bool) -> torch.Tensor:
    """Process `rank`'s share of `order`: every world-th item from position `rank`, as DistributedSampler.

    equal=True (training): the tail that does not divide by `world` is dropped first, so every process
    gets as many items, and takes as many steps. equal=False (evaluation): every item is used exactly
    once, with no padding duplicates (DistributedSampler repeats items to even the shares out, which
    would count them twice in a confusion matrix); shares then differ by one item at most.
    """
    if equal:
        order = order[: len(order) - len(order) % world]
    return order[rank::world]
