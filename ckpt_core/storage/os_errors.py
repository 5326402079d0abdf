"""Operating-system errors met while writing checkpoints, re-raised as messages that say what to do."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import CheckpointNotFoundError, DiskFullError

_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(
    error: BaseException,
    where: str,
    outcome: str = "nothing was committed and earlier steps are intact",
) -> DiskFullError | None:
    """A DiskFullError if `error` (or what caused it) says the disk is full, else None.

    torch re-raises a failed write as RuntimeError and orbax as ValueError, so the whole
    chain is searched, messages included.
    """
    seen: list[BaseException] = []
    e: BaseException | None = error
    while e is not None and e not in seen:
        if isinstance(e, DiskFullError):
            return e
        code = e.errno if isinstance(e, OSError) else None
        if code in _FULL or any(os.strerror(c) in str(e) for c in _FULL):
            return DiskFullError(
                code or errno.ENOSPC,
                f"the disk is full while writing a checkpoint to {where}: {outcome}. HINT: free "
                "space, lower max_to_keep, or save elsewhere.",
            )
        seen.append(e)
        e = e.__cause__ or e.__context__
    return None


@contextlib.contextmanager
def directory_errors_explained(directory: Path) -> Iterator[None]:
    """Re-raise an OSError met creating or opening the checkpoint directory `directory` as one of
    the same kind (NotADirectoryError, PermissionError, ...) that names the directory, why, and
    what to do. Other errors (EIO, a full disk) pass unchanged."""
    try:
        yield
    except OSError as e:
        if isinstance(e, FileExistsError | NotADirectoryError):
            blocker = directory
            while not blocker.exists() and blocker != blocker.parent:
                blocker = blocker.parent
            code, why = errno.ENOTDIR, f"{blocker} is a file, not a directory"
            hint = (
                "pass a directory path (it is created if missing), not a file or a path below one."
            )
        elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            code, why = e.errno, f"it cannot be written ({e.strerror}: {e.filename})"
            hint = (
                "save to a directory you can write (a manager that only restores: read_only=True)."
            )
        elif e.errno == errno.ENOENT:  # e.g. under /proc, where nothing can be created
            code, why = e.errno, f"{e.strerror}: {e.filename}"
            hint = "pass a directory on a regular filesystem (not under /proc or /sys)."
        else:
            raise
        message = f"cannot keep checkpoints in {directory}: {why}. HINT: {hint}"
        if code == errno.ENOENT:
            raise CheckpointNotFoundError(message) from e
        raise OSError(code, message) from e
