"""The storage interface: what the manager and the formats may ask of a checkpoint directory.

They only ever talk to a `Storage` (list, read, write small files, delete steps) and to a
`StepWriter` (the staging area of one step, committed as a whole). The backends implement
them (`local.py`, `object_store.py`); how a step becomes visible at once, and how a crash at
any point is undone, is in `atomicity.py`.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Hashable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from .. import layout
from ..lock import Lock
from ..manifest import FileRecord, Manifest
from .checksums import hash_stream


class StepWriter(ABC):
    """The staging area of one step: payload files go in, `commit` makes them a step at once.

    The protocol: `open`/`share` payload files (a format may also fill `local_dir()` or write
    under `url()` itself), `seal` to take in and hash everything written, then `commit` with
    the manifest; `abort` on any failure. `token` names this write's temporaries.
    """

    token: str

    def __init__(self) -> None:
        self.files: dict[str, FileRecord] = {}
        # Incremental saves: the payload files of the previous committed step, and where its
        # payload lies (relative to the run directory). Empty: nothing to share with.
        self.incremental = False
        self.base_files: dict[str, FileRecord] = {}
        self.base_dir = ""
        self.shared: list[str] = []  # payload files taken from the base instead of written

    @abstractmethod
    def open(self, name: str) -> BinaryIO:
        """A new payload file `name` (may contain `/`); closing it makes it durable."""

    def share(self, name: str, record: FileRecord) -> bool:
        """Take payload file `name` from the base step instead of writing it, if the base holds
        a file of that name with the same size and checksum (a hard link on a local disk, a
        server-side copy on an object store). False: the caller writes it."""
        if self.base_files.get(name) != record:
            return False
        if not self._share(f"{self.base_dir}/{name}" if self.base_dir else name, name):
            return False
        self.files[name] = record
        self.shared.append(name)
        return True

    def _share(self, source: str, name: str) -> bool:
        """Make `name` a copy of the committed file `source` without writing its bytes."""
        return False

    @abstractmethod
    def local_dir(self) -> Path:
        """A local directory a format may fill with files itself (orbax); taken in at commit."""

    def url(self, name: str, schemes: Collection[str]) -> str | None:
        """The URL of payload path `name` if the store's scheme is one of `schemes` (the stores
        a format's own library reaches by itself, e.g. orbax and gs://); what the library
        writes there is taken in at commit. None otherwise, and always on a local disk."""
        return None

    @abstractmethod
    def seal(self, mine: Callable[[str], bool] | None = None) -> dict[str, FileRecord]:
        """Take in the files a format wrote itself (to `local_dir()` or under `url()`) and
        return every payload file's record; with `mine`, only of the files it accepts (those
        this process wrote, where several processes write one step)."""

    @abstractmethod
    def commit(self, manifest: bytes) -> None:
        """Write the manifest last, making the step visible atomically."""

    @abstractmethod
    def abort(self) -> None:
        """Remove everything this writer wrote; the directory is as before."""

    @property
    @abstractmethod
    def payload_dir(self) -> str:
        """Where, inside the step directory, the payload goes ('' for the step directory itself)."""


class Storage(ABC):
    """A checkpoint directory: a local path or an fsspec URL."""

    root: str
    is_local: bool

    @abstractmethod
    def join(self, *parts: str) -> str:
        """The full path or URL of an entry, for messages and users."""

    @abstractmethod
    def list_names(self) -> list[str]:
        """Names of the entries directly in the directory ([] if it does not exist)."""

    @abstractmethod
    def read_bytes(self, rel: str) -> bytes:
        """Raises FileNotFoundError if missing."""

    @abstractmethod
    def write_small(self, rel: str, data: bytes, *, durable: bool = True) -> None:
        """Replace a small file (pointer, run.json) atomically; fsynced if `durable`."""

    @abstractmethod
    def exists(self, rel: str) -> bool: ...

    @abstractmethod
    def remove(self, rel: str) -> None:
        """Remove a file or a whole tree; missing is fine."""

    @abstractmethod
    def rename(self, src: str, dst: str) -> None:
        """Move an entry (used only to move a damaged step aside)."""

    @abstractmethod
    def open_read(self, rel: str) -> BinaryIO: ...

    def hash_file(self, rel: str) -> FileRecord:
        """Size and checksum of a file, streamed through a buffer."""
        with self.open_read(rel) as f:
            return hash_stream(f)

    def file_identity(self, rel: str) -> Hashable:
        """What identifies the file's bytes on the storage, so files shared between steps
        (hard links) are counted once; here, where the storage cannot tell, its path."""
        return rel

    @abstractmethod
    def local_path(self, rel: str) -> Path | None:
        """A local filesystem path for `rel`, or None on object stores."""

    @abstractmethod
    def fetch_dir(self, rel: str) -> contextlib.AbstractContextManager[Path]:
        """A local directory with the contents of `rel` (downloaded on object stores)."""

    def url(self, rel: str, schemes: Collection[str]) -> str | None:
        """The URL of `rel` if this store's scheme is one of `schemes`; None otherwise, and
        always on a local disk."""
        return None

    @abstractmethod
    def begin_step(self, name: str, token: str | None = None) -> StepWriter:
        """Start writing the step directory `name` (which may already hold a committed step).

        With `token` (the `StepWriter.token` of another process of the job), join that
        process's write instead: files go in beside its files; it alone commits or aborts.
        """

    @abstractmethod
    def delete_step(self, name: str) -> None:
        """Remove a committed step so that it is invisible at once, then its files."""

    @abstractmethod
    def acquire_lock(self, owner: dict[str, Any]) -> Lock:
        """Take the single-writer lock; raises CheckpointLockedError naming the holder."""

    def drain(self) -> None:  # noqa: B027 - a no-op where deletion is synchronous
        """Wait until files of deleted steps are gone (removal may finish in the background)."""

    @abstractmethod
    def sweep(self) -> list[str]:
        """Remove stale temporaries left by a killed writer; restore interrupted replacements.
        Returns the names of the entries it removed or repaired."""

    @abstractmethod
    def repair_replacement(self, old: str) -> None:
        """Finish or undo a replacement killed between its two renames (`.old-<name>-<tok>`)."""


def step_files(storage: Storage, manifest: Manifest) -> Mapping[Hashable, int]:
    """A committed step's payload files by identity (hard links share one), for the budget."""
    base = "/".join(p for p in (layout.step_dirname(manifest.step), manifest.payload_dir) if p)
    return {
        storage.file_identity(f"{base}/{name}"): rec.size for name, rec in manifest.files.items()
    }
