"""Fuzz: one field of a real checkpoint deleted or replaced (a wrong type, a NaN, a tensor of the wrong shape...).

Property: `evaluate` and `train --resume` exit 0 or 2 with no traceback; on 2 one line and the run
folder exactly as it was. (A resume that succeeds trains the last epoch, which may take the field's
odd value in its stride: a checkpoint that loads is a checkpoint seg_pet can continue.)
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given

from tests.fuzz.conftest import check_contract, fuzz_settings, link_copy, run_cli, sandbox, snapshot
from tests.fuzz.strategies import apply_edit, checkpoint_edits

EXAMPLES = 15


@pytest.fixture(scope="module")
def saved_state(stopped_run) -> dict:
    return torch.load(stopped_run / "checkpoints" / "last.pt", weights_only=True)


def test_fuzz_checkpoint(stopped_run, saved_state, tmp_path_factory, offline):
    parent = tmp_path_factory.mktemp("fuzz_checkpoint")

    @fuzz_settings(EXAMPLES)
    @given(edit=checkpoint_edits(saved_state))
    def example(edit) -> None:
        state = copy.deepcopy(saved_state)
        apply_edit(state, edit)
        with sandbox(parent) as box:
            run_dir = link_copy(stopped_run, box / "runs" / "r")
            for name in ("best.pt", "last.pt"):
                path = run_dir / "checkpoints" / name
                path.unlink()  # a hard link to the shared run: replace it, never write through it
                torch.save(state, path)
            before = snapshot(box)
            code, err = run_cli(["evaluate", "--run", str(run_dir)])
            check_contract(code, err, before, snapshot(box), allowed_new=lambda key: False)
            code, err = run_cli(["train", "--resume", str(run_dir)])
            if code == 0:  # it trained: the run changed as a resumed run does
                assert "Traceback" not in err, err
            else:
                check_contract(code, err, before, snapshot(box))

    example()
