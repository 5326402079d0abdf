"""`open_storage`: the one place that picks a backend for a checkpoint directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..options import describe
from .base import Storage
from .local import LocalStorage
from .object_store import FsspecStorage


def open_storage(
    directory: str | os.PathLike[str], storage_options: dict[str, Any] | None
) -> Storage:
    """A `Storage` for a local path, a `file://` URL, or any other fsspec URL.

    Args:
        directory: a local path, or a URL such as `s3://bucket/run` or `memory://run`.
        storage_options: passed to fsspec for URLs (endpoint, credentials); None otherwise.

    Raises:
        TypeError: `directory` is neither a path nor a string.
        ValueError: `directory` is empty, fsspec cannot open the URL, or `storage_options`
            were given for a local directory.
        ImportError: the fsspec backend of the URL's scheme is not installed.
    """
    if not isinstance(directory, str | os.PathLike):
        raise TypeError(
            f"the checkpoint directory must be a path or a URL; found {describe(directory)}. "
            "HINT: e.g. 'runs/exp' or 's3://bucket/exp'."
        )
    text = os.fspath(directory)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(
            f"the checkpoint directory is {text!r}: it names no directory (an unset variable?). "
            "HINT: pass a path such as 'runs/exp'; '.' if you mean the current directory."
        )
    if "://" in text and not text.startswith("file://"):
        return FsspecStorage(text, storage_options or {})
    if storage_options:
        raise ValueError(
            f"storage_options were given for the local directory {text!r}; they apply only to "
            "fsspec URLs such as 's3://bucket/run'."
        )
    return LocalStorage(Path(text.removeprefix("file://")))
