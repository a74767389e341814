"""Known errors raised inside a DataLoader worker reach the CLI with their own type.

torch re-raises a worker's exception as `exc_type(message)` (torch/_utils.py, ExceptionWrapper.reraise) and
falls back to a plain RuntimeError only for a type it cannot build from one message. So every error type
seg_pet declares must take one message, and `is_input_error` needs nothing but its type.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import seg_pet.export  # noqa: F401 - declares ExportError
import seg_pet.predict.images  # noqa: F401 - declares ImageReadError
from seg_pet.cli import one_line
from seg_pet.runtime.errors import SegPetError, is_input_error


def all_subclasses(cls: type) -> list[type]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *all_subclasses(direct))]


ERROR_TYPES = [SegPetError, *all_subclasses(SegPetError)]


class Raises(Dataset):
    def __init__(self, error: type[BaseException]):
        self.error = error

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> torch.Tensor:
        raise self.error("trimap x.png has values [1, 7]")


@pytest.mark.parametrize("error", ERROR_TYPES, ids=lambda t: t.__name__)
def test_a_worker_reraises_every_seg_pet_error_with_its_type(error):
    with pytest.raises(BaseException) as caught:
        next(iter(DataLoader(Raises(error), batch_size=1, num_workers=1)))
    assert type(caught.value) is error
    assert is_input_error(caught.value)
    assert one_line(caught.value) == "trimap x.png has values [1, 7]"


def test_other_errors_from_a_worker_are_not_input_errors():
    with pytest.raises(RuntimeError) as caught:
        next(iter(DataLoader(Raises(RuntimeError), batch_size=1, num_workers=1)))
    assert not is_input_error(caught.value)
