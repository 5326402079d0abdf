"""The one error hierarchy of ckpt_core; each error subclasses the builtin a user would catch."""

from __future__ import annotations

import re
from typing import Any

# Terminal escape sequences (colours, bold) and other control characters that third-party
# messages (torch's, for one) carry; newlines and tabs stay.
_TERMINAL_CODES = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])|[\x00-\x08\x0b-\x1f\x7f]")


def plain_text(text: str) -> str:
    """`text` without terminal escape codes, for messages that quote another library."""
    return _TERMINAL_CODES.sub("", text)


class CheckpointError(Exception):
    """Base class of every error this library raises on purpose."""

    def __str__(self) -> str:
        # A message may quote a framework's error; it reads the same in a log as in a terminal.
        return plain_text(super().__str__())


class CheckpointExistsError(CheckpointError, FileExistsError):
    """A directory already holds committed steps and the caller did not say what to do."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A step, directory or file that was asked for does not exist."""


class StructureMismatchError(CheckpointError, ValueError):
    """A restored tree differs from `like` in its paths, shapes or dtypes."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file's size or checksum differs from its manifest, or the manifest is invalid."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class CheckpointLockedError(CheckpointError):
    """Another live process holds the write lock of the directory."""


class ProcessGroupError(CheckpointError):
    """Another process of a multi-process job did not do its part of a save in time, or failed."""


class UnsafeFormatError(CheckpointError):
    """Restoring this step would unpickle data, which can run arbitrary code."""


class DiskFullError(CheckpointError, OSError):
    """The storage ran out of space during a save; nothing was committed."""


class ResumeNotExactError(CheckpointError, AssertionError):
    """An interrupted and resumed run ended with other values than an uninterrupted one.

    An `AssertionError`, so a failing `check_resume_is_exact` reads as a failed test;
    `report` (a `ckpt_core.exactness.ResumeReport`) names every leaf that differs.
    """

    def __init__(self, message: str, report: Any) -> None:
        super().__init__(message)
        self.report = report


class UnrankedStepWarning(RuntimeWarning):
    """A step was saved without the metric `best_fn` needs; it is kept by the other rules only."""


class ProcessGroupWarning(RuntimeWarning):
    """A process of a multi-process job has waited unusually long for the others to come."""


class OverBudgetWarning(RuntimeWarning):
    """The latest and the best step alone exceed `max_bytes`, which never deletes them."""
