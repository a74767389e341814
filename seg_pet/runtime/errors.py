"""The error types the CLI knows: each prints as one line and exits with code 2."""


class SegPetError(Exception):
    """A user-facing error (bad config, data, checkpoint, flag). The message is one line."""


class ConfigError(SegPetError):
    """The config file, a key in it, or a --set override is invalid."""


class DataError(SegPetError):
    """The dataset is missing, or a data file is unreadable or malformed."""


class CheckpointError(SegPetError):
    """A checkpoint is missing, truncated, not a checkpoint, or does not fit the model."""


def is_input_error(exc: BaseException) -> bool:
    """A SegPetError, also one a DataLoader worker re-raised wrapped (its text names the seg_pet type)."""
    return isinstance(exc, SegPetError) or (isinstance(exc, RuntimeError) and "seg_pet.errors." in str(exc))


class TrainingDiverged(Exception):
    """The loss became NaN or Inf; training stopped (exit code 1, not a user-input error)."""
