"""The contract between the core and a payload format: `Format`, and the plain data it hands back.

A format turns a state into the payload files of one step and back (`Format`); it may also say
what a step holds without loading it (`DescribableFormat.describe`, used by `ckpt show`).
Nothing here knows any built-in format: they implement this module, the registry collects them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..storage import StepWriter
from .reader import StepReader


@runtime_checkable
class Format(Protocol):
    """How a state becomes payload files of a step, and back.

    A format never commits or names steps: the manager hands it a `StepWriter` (files go in,
    the manager commits) and a `StepReader` (verified access to a committed step's files).
    A format may also implement `describe` (see `DescribableFormat`); one that does not is
    shown by `ckpt show` as its files only.
    """

    name: str

    def accepts(self, state: Any) -> bool:
        """Whether `format="auto"` may pick this format for `state`."""
        ...

    def snapshot(self, state: Any) -> Any:
        """A host copy of `state` that later mutation of `state` cannot change (for async saves).

        Called on the training thread: it should cost no more than a memory copy.
        """
        ...

    def write(self, state: Any, writer: StepWriter) -> None:
        """Write `state` (or a `snapshot` of it) as payload files through `writer`."""
        ...

    def read(self, reader: StepReader, like: Any = None) -> Any:
        """Read the step back, verifying every byte against the manifest.

        With `like`, the result has `like`'s structure and leaf types, or
        StructureMismatchError names every difference.
        """
        ...


@runtime_checkable
class DescribableFormat(Format, Protocol):
    """A `Format` that can also say what a step holds without loading its arrays."""

    def describe(self, reader: StepReader) -> TreeListing:
        """Every leaf of the step (path, kind, dtype, shape, bytes), read from headers only.

        Must never load array data, and never run code found in the payload: `ckpt show`
        calls it on any directory a user points it at.

        Raises:
            CorruptCheckpointError: a header the listing needs is missing or damaged.
        """
        ...


@dataclass(frozen=True)
class TreeEntry:
    """One leaf of a saved state, described without loading it.

    Attributes:
        path: the leaf's path, keys joined by "/" (as in `StructureMismatchError` messages).
        kind: what it was saved as: "numpy", "torch", "jax", "jax_key", "parameter",
            "array", or a scalar type ("int", "float", "str", ...) or "object".
        dtype: the array's dtype name (None for scalars and objects).
        shape: the array's shape (None for scalars and objects).
        nbytes: the array's size in bytes (None when unknown).
        value: a scalar's value, or a short description of an object.
    """

    path: str
    kind: str
    dtype: str | None = None
    shape: tuple[int, ...] | None = None
    nbytes: int | None = None
    value: Any = None


@dataclass
class TreeListing:
    """The leaves of a step, how they were read, and what could not be shown.

    Attributes:
        entries: the leaves, in the order the payload holds them.
        source: how they were read (e.g. "the safetensors header of arrays.safetensors"),
            or "nothing" when no tree could be read.
        notes: what could not be shown, and why.
        records: (name, size) of the records inside a payload archive (torch's zip), if any.
        summary: one line on the payload as a whole that `ckpt show` prints under the tree
            (e.g. "state.pt: 13 zip records, 7 tensor storages (15.2 kB)"), or None.
    """

    entries: list[TreeEntry]
    source: str
    notes: list[str] = field(default_factory=list)
    records: list[tuple[str, int]] = field(default_factory=list)
    summary: str | None = None
