"""User-facing errors.

Every mistake a user can make (a bad path, a malformed file, a checkpoint from another config)
raises :class:`NerfmineError` with a message that names the file or field, says what was
expected and what to try. The command line prints the message and exits with status 2; it never
shows a traceback for these.
"""

from __future__ import annotations


class NerfmineError(Exception):
    """A problem with the user's input or environment, explained in words."""


class DataError(NerfmineError):
    """A data set on disk is missing, unreadable or malformed."""


class ConfigError(NerfmineError):
    """A configuration value or a checkpoint does not fit."""


class OutputError(NerfmineError):
    """A result could not be written (a full disk, a read-only folder, a folder in use by
    another run); what was written before is intact."""


class TrainingStopped(NerfmineError):
    """Raised after a checkpoint was written because training cannot go on (e.g. too many
    steps in a row with non-finite values)."""


class TrainingInterrupted(NerfmineError):
    """Raised after a checkpoint was written because the run got SIGINT or SIGTERM."""
