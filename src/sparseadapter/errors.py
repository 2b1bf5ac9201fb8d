"""Every error sparseadapter raises on bad input.

Each one is a ``ValueError`` subclass whose message names the problem and the fix. The CLI turns
any :class:`SparseAdapterError` into a one-line message and exit code 2.
"""


class SparseAdapterError(ValueError):
    """Base class: bad input that the user can fix."""


class ConfigError(SparseAdapterError):
    """An invalid option value (sparsity, method, scope, factor, ...)."""


class NoPrunableWeightsError(SparseAdapterError):
    """The model has no trainable adapter weights to prune."""


class ScoringDataError(SparseAdapterError):
    """The scoring batches are empty, exhausted, or lack what the pruner needs."""


class ScoreError(SparseAdapterError):
    """The pruning scores are unusable (all zero or not finite)."""


class CheckpointError(SparseAdapterError):
    """A checkpoint is missing, truncated, tampered with, or does not match the model."""


class DataError(SparseAdapterError):
    """A task's data files are missing or malformed."""


def not_utf8_message(path: object, err: UnicodeDecodeError) -> str:
    """The message for a text file that cannot be decoded as UTF-8, naming the first bad byte."""
    return (
        f"{path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start} "
        "cannot be decoded); save it as UTF-8"
    )


SHOWN_CHARS = 80


def shown(value: object) -> str:
    """``repr(value)`` for an error message, cut to about 80 characters: a message names the
    bad value, it never echoes a whole (possibly huge) one."""
    text = repr(value) if not isinstance(value, (list, dict, tuple, set)) else _short_repr(value)
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[: SHOWN_CHARS - 1]}… ({type(value).__name__})"


def _short_repr(value: object) -> str:
    # a container's repr could be huge (YAML aliases share one object many times): render at
    # most SHOWN_CHARS + 1 characters of it
    import reprlib

    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict, short.maxstring, short.maxother = 3, 6, 6, 40, 40
    return short.repr(value)
