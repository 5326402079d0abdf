"""One-shot functions for code without a manager: save and load a single checkpoint directory.

The directory has the same shape as a manager's step (payload + manifest, committed
atomically), so `load_checkpoint(mgr.path(step))` reads a managed step too.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

from . import layout
from .commit import write_step
from .errors import CheckpointNotFoundError, CorruptCheckpointError
from .formats.base import Format, StepReader, get_format, resolve_format
from .manifest import Manifest
from .storage import Storage, open_storage


def _split(path: str | os.PathLike[str]) -> tuple[Storage, str]:
    text = os.fspath(path).rstrip("/")
    parent, name = posixpath.split(text) if "://" in text else os.path.split(text)
    if not name:
        raise ValueError(f"{path!r} does not name a checkpoint directory")
    return open_storage(parent or ".", None), name


def save_checkpoint(
    path: str | os.PathLike[str],
    state: Any,
    *,
    metadata: Any = None,
    format: str | Format = "auto",
) -> None:
    """Save `state` atomically as the checkpoint directory `path` (replacing an existing one).

    Args:
        path: the checkpoint directory to create (local path or fsspec URL).
        state: the tree to save.
        metadata: JSON-serialisable metadata, read back by `load_metadata`.
        format: "auto", "tree", "torch", "orbax", "pickle" or a `Format`.
    """
    storage, name = _split(path)
    fmt = resolve_format(format, state)
    write_step(storage, name, fmt, state, step=0, metadata=metadata)


def _manifest(storage: Storage, name: str) -> Manifest:
    where = storage.join(name, layout.MANIFEST)
    try:
        raw = storage.read_bytes(f"{name}/{layout.MANIFEST}")
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointNotFoundError(
            f"no checkpoint at {storage.join(name)}: {layout.MANIFEST} is missing (a save that "
            "never committed leaves none)."
        ) from None
    return Manifest.from_json(raw, where)


def load_checkpoint(
    path: str | os.PathLike[str], *, like: Any = None, allow_pickle: bool = False
) -> Any:
    """Load the checkpoint directory `path`, verifying every file.

    Args:
        path: a directory written by `save_checkpoint`, or a manager's step directory.
        like: a tree whose structure and leaf types the result takes.
        allow_pickle: allow loading a `pickle` checkpoint (unpickling can run code).
    """
    storage, name = _split(path)
    manifest = _manifest(storage, name)
    reader = StepReader(storage, name, manifest, allow_pickle=allow_pickle)
    return get_format(manifest.format).read(reader, like)


def load_metadata(path: str | os.PathLike[str]) -> Any:
    """The metadata saved with a checkpoint directory, read from its manifest only."""
    storage, name = _split(path)
    return _manifest(storage, name).metadata


def checkpoint_exists(path: str | os.PathLike[str]) -> bool:
    """Whether `path` holds a committed checkpoint (a valid manifest)."""
    storage, name = _split(path)
    try:
        _manifest(storage, name)
    except (CheckpointNotFoundError, CorruptCheckpointError):
        return False
    return True
