"""Reading what a step holds without loading a payload: its tree of arrays.

Runs, steps, pointers and `run.json` are read by `ckpt_core.run` (and `ckpt_core.listing` for
`ckpt ls`); the tree of a step is described by its format (`DescribableFormat.describe`), from
payload headers, never loading an array or running code from a file.
"""

from __future__ import annotations

import time

from . import layout
from .errors import CheckpointError
from .formats import DescribableFormat, StepReader, get_format
from .formats import TreeEntry as TreeEntry  # for the CLI: what `list_tree` lists
from .formats import TreeListing as TreeListing
from .manifest import Manifest
from .storage import Storage

# ---------------------------------------------------------------- array trees


def list_tree(storage: Storage, manifest: Manifest, step_dir: str | None = None) -> TreeListing:
    """Describe every leaf of a committed step from its headers; no array is loaded.

    The step's format describes it (`DescribableFormat.describe`); a format without
    `describe`, or one not registered in this process, is shown as its files only.

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
        fmt = None
    if not isinstance(fmt, DescribableFormat):
        note = f"format {manifest.format!r} has no header reader; files only"
        return TreeListing([], "nothing", [note])
    return fmt.describe(reader)


# ---------------------------------------------------------------- small helpers for callers


def age(seconds_since_epoch: float, now: float | None = None) -> str:
    """`3s`, `5m`, `2h`, `4d`: how long ago."""
    delta = max(0.0, (time.time() if now is None else now) - seconds_since_epoch)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{int(delta // size)}{unit}"
    return f"{int(delta)}s"


def human_bytes(n: int | None) -> str:
    """`1.2 MB`: decimal units, as `ls -h --si` and disk vendors count."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
