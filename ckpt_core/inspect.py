"""Reading what a step holds without loading a payload: its tree of arrays.

Runs, steps, pointers and `run.json` are read by `ckpt_core.run` (and `ckpt_core.listing` for
`ckpt ls`); the tree of a step is described by its format (`DescribableFormat.describe`), from
payload headers, never loading an array or running code from a file.
"""

from __future__ import annotations

import time

from . import layout
from .errors import CheckpointError, CorruptCheckpointError
from .formats import DescribableFormat, StepReader, TreeListing, get_format
from .manifest import Manifest
from .storage import Storage

# ---------------------------------------------------------------- array trees


def list_tree(storage: Storage, manifest: Manifest, step_dir: str | None = None) -> TreeListing:
    """Describe every leaf of a committed step from its headers; no array is loaded.

    The step's format describes it (`DescribableFormat.describe`). A format not registered in
    this process, one without `describe`, or one whose `describe` fails with anything but
    `CorruptCheckpointError` gives no entries and a note saying which.

    Args:
        storage: the run directory.
        manifest: the step's manifest.
        step_dir: the step's directory name (default: the managed name of `manifest.step`;
            a `save_checkpoint` directory has its own name).

    Raises:
        CorruptCheckpointError: a header the listing needs is missing or damaged.
    """
    reader = StepReader(storage, step_dir or layout.step_dirname(manifest.step), manifest)
    try:
        fmt = get_format(manifest.format)
    except CheckpointError:
        note = f"format {manifest.format!r} is not registered in this process; files only"
        return TreeListing([], "nothing", [note])
    if not isinstance(fmt, DescribableFormat):
        note = f"format {manifest.format!r} has no header reader; files only"
        return TreeListing([], "nothing", [note])
    try:
        return fmt.describe(reader)
    except CorruptCheckpointError:
        raise
    except Exception as e:  # a user format's describe failing must not hide the step's files
        note = f"format {manifest.format!r} failed to describe the step ({type(e).__name__}: {e})"
        return TreeListing([], "nothing", [f"{note}; files only"])


# ---------------------------------------------------------------- small helpers for callers


def age(seconds_since_epoch: float, now: float | None = None) -> str:
    """`3s`, `5m`, `2h`, `4d`: how long ago."""
    delta = max(0.0, (time.time() if now is None else now) - seconds_since_epoch)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{int(delta // size)}{unit}"
    return f"{int(delta)}s"
