"""Exceptions users can trigger.

Every message names the argument (in backticks), shows the value that came in and says what
to do. The CLI turns any ``TransferKitError`` into one line on stderr and exit code 2.
"""

from __future__ import annotations


class TransferKitError(Exception):
    """Base class for errors caused by user input (bad data, options, ids or files)."""


class UnknownNameError(TransferKitError, KeyError):
    """A name (source, strategy, scorer, metric) is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataError(TransferKitError, ValueError):
    """The target data cannot be used as given (unreadable files, too few classes, ...)."""


class ConfigError(TransferKitError, ValueError):
    """An option is out of range, unknown or inconsistent with another option."""


class OutputError(ConfigError):
    """An output path (``--out``, ``--output``) cannot or may not be written: a file where a folder
    belongs, a folder transferkit did not make, a full disk, no permission."""


class UnsafeFileError(TransferKitError, ValueError):
    """A model or cache file is malformed or could execute code when loaded."""


class NotFittedError(TransferKitError, AttributeError):
    """A learned attribute (such as ``score_``) was read before ``fit`` was called."""


class NonFiniteLossError(TransferKitError, FloatingPointError):
    """Training produced a NaN or infinite loss."""
