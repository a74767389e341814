"""The error types the CLI knows: each prints as one line and exits with its `exit_code`.

SegPetError      bad input (config, data, checkpoint, flag, path): exit 2
StorageError     the machine refused a write (disk full, read-only, quota): exit 3; what was
                 there before is unchanged (writes are atomic), and a run stays resumable
TrainingDiverged the loss became NaN or Inf: exit 1
"""


class SegPetError(Exception):
    """A user-facing error (bad config, data, checkpoint, flag). The message is one line."""

    exit_code = 2


class ConfigError(SegPetError):
    """The config file, a key in it, or a --set override is invalid."""


class DataError(SegPetError):
    """The dataset is missing, or a data file is unreadable or malformed."""


class CheckpointError(SegPetError):
    """A checkpoint is missing, truncated, not a checkpoint, or does not fit the model."""


class StorageError(SegPetError):
    """A file could not be written (no space left, read-only filesystem, quota): the environment, not the input."""

    exit_code = 3


def is_input_error(exc: BaseException) -> bool:
    """A SegPetError, also one raised in a DataLoader worker: torch re-raises it with its own type, as every
    SegPetError is built from one message (tests/unit/test_errors.py)."""
    return isinstance(exc, SegPetError)


class TrainingDiverged(Exception):
    """The loss became NaN or Inf; training stopped (exit code 1, not a user-input error)."""


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (its type name when it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
