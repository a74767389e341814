"""The pieces of data-parallel training that need no second process: shards, seeds, launch info, error reporting."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from seg_pet.cli import report
from seg_pet.data.loaders import ShardSampler
from seg_pet.runtime.device import Runtime, resolve_device
from seg_pet.runtime.distributed import launch, launch_command, shard
from seg_pet.runtime.seeding import process_seed
from seg_pet.training.parallel import GlobalBatchNorm2d, global_batch_norm
from seg_pet.training.rundir import resume_command

TORCHRUN = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_WORLD_SIZE": "1"}


def test_shards_are_disjoint_and_training_shares_equal():
    order = torch.randperm(11, generator=torch.Generator().manual_seed(3))
    train = [shard(order, r, 2, equal=True).tolist() for r in range(2)]
    assert len(train[0]) == len(train[1]) == 5 and not set(train[0]) & set(train[1])
    evaluation = [shard(order, r, 2, equal=False).tolist() for r in range(2)]
    assert sorted(evaluation[0] + evaluation[1]) == list(range(11))  # every image once: no padding duplicates


def test_one_process_shuffles_exactly_as_shuffle_true():
    """ShardSampler with world 1 draws the DataLoader's order, so a single-process run is unchanged."""
    data = list(range(13))
    plain = [b.tolist() for b in DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(7))]
    generator = torch.Generator().manual_seed(7)
    sharded = [
        b.tolist()
        for b in DataLoader(data, batch_size=4, generator=generator, sampler=ShardSampler(13, 0, 1, generator=generator, equal=False))
    ]
    assert sharded == plain


def test_rank_0_keeps_the_seed_other_ranks_get_their_own():
    assert process_seed(1234, 0) == 1234
    seeds = {process_seed(1234, r) for r in range(8)}
    assert len(seeds) == 8 and all(0 <= s < 2**63 for s in seeds)


def test_launch_reads_torchrun_variables(monkeypatch):
    for key in TORCHRUN:
        monkeypatch.delenv(key, raising=False)
    assert launch().by_torchrun is False and launch_command() == "python"
    for key, value in TORCHRUN.items():
        monkeypatch.setenv(key, value)
    job = launch()
    assert (job.rank, job.local_rank, job.world_size, job.local_world_size, job.by_torchrun) == (1, 1, 2, 2, True)
    assert resume_command("runs/r") == "torchrun --standalone --nproc-per-node 2 -m seg_pet train --resume runs/r"
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")
    assert launch_command().startswith("torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d")


def test_report_prints_shared_outcomes_once_and_own_failures_with_the_rank(monkeypatch, capsys):
    for key, value in TORCHRUN.items():
        monkeypatch.setenv(key, value)
    report("error: bad config", shared=True)  # rank 1: rank 0 prints it
    report("error: cannot read image x.jpg", shared=False)
    assert capsys.readouterr().err == "error: rank 1: cannot read image x.jpg\n"
    monkeypatch.setenv("RANK", "0")
    report("error: bad config", shared=True)
    assert capsys.readouterr().err == "error: bad config\n"


def test_global_batch_norm_is_batch_norm_in_one_process():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).double()
    reference = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).double()
    reference.load_state_dict(model.state_dict())
    converted = global_batch_norm(model, Runtime(torch.device("cpu")))
    assert isinstance(converted[1], GlobalBatchNorm2d) and converted[1].weight.dtype == torch.float64
    assert converted.state_dict().keys() == reference.state_dict().keys()  # checkpoints load either way
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    assert torch.allclose(converted(x), reference(x)) and torch.allclose(converted[1].running_var, reference[1].running_var)


@pytest.mark.parametrize("setting", ["auto", "cpu"])
def test_the_device_under_torchrun_on_a_cpu_machine(monkeypatch, setting):
    for key, value in TORCHRUN.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(setting) == torch.device("cpu")
