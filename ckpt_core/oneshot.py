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
from .errors import CheckpointExistsError, CheckpointNotFoundError, CorruptCheckpointError
from .formats.base import Format, StepReader, get_format, resolve_format
from .manifest import Manifest, check_metadata
from .storage import Storage, open_storage


def _split(path: str | os.PathLike[str]) -> tuple[Storage, str]:
    """The storage of `path`'s parent and `path`'s name; interrupted replacements repaired."""
    text = os.fspath(path).rstrip("/")
    if "://" in text:
        protocol, rest = text.split("://", 1)
        inside, name = posixpath.split(rest)
        parent = f"{protocol}://{inside}" if inside or protocol == "memory" else ""
    else:
        parent, name = os.path.split(text)
        parent = parent or "."
    if not name or not parent:
        raise ValueError(
            f"{path!r} does not name a checkpoint directory inside a directory or bucket; "
            "HINT: e.g. 'runs/model' or 's3://bucket/model'."
        )
    storage = open_storage(parent, None)
    for entry in storage.list_names():
        if layout.replaced_entry_of(entry) == name:  # a save killed between its two renames
            storage.repair_replacement(entry)
    return storage, name


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
    check_metadata(metadata)
    storage, name = _split(path)
    if storage.exists(name) and not storage.exists(f"{name}/{layout.MANIFEST}"):
        raise CheckpointExistsError(
            f"{storage.join(name)} exists and is not a checkpoint; save_checkpoint replaces "
            "only an earlier checkpoint. HINT: choose another path, or remove it yourself."
        )
    fmt = resolve_format(format, state)
    try:
        write_step(storage, name, fmt, state, step=0, metadata=metadata)
    finally:
        storage.drain()  # a replaced checkpoint's files are gone when this returns


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
    try:
        storage, name = _split(path)
        _manifest(storage, name)
    except (CheckpointNotFoundError, CorruptCheckpointError, NotADirectoryError):
        return False
    return True
