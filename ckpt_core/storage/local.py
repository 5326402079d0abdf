"""`Storage` on a local filesystem: steps are directories, committed by a rename (see atomicity.py)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import mmap
import os
import shutil
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .. import layout
from ..errors import CorruptCheckpointError
from ..lock import FileLock, Lock
from ..manifest import FileRecord
from . import atomicity
from .base import StepWriter, Storage
from .checksums import hash_bytes
from .os_errors import directory_errors_explained

_REAPER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-reap")


class LocalStorage(Storage):
    is_local = True

    def __init__(self, root: Path) -> None:
        self.path = root.expanduser().absolute()
        self.root = str(self.path)
        self._reaping: list[concurrent.futures.Future[None]] = []

    def join(self, *parts: str) -> str:
        # Plain strings: this runs once per step when a run of 10,000 steps is opened.
        return "/".join((self.root, *(p for p in parts if p)))

    def list_names(self) -> list[str]:
        # Symlinks are never ours (the library creates none): a `step_X` link pointing
        # elsewhere is not a step, and overwrite/clear leave it alone.
        try:
            with os.scandir(self.path) as entries:
                return [e.name for e in entries if not e.is_symlink()]
        except FileNotFoundError:
            return []
        except NotADirectoryError:
            with directory_errors_explained(self.path):
                raise  # the same kind of error, naming the file in the way

    def read_bytes(self, rel: str) -> bytes:
        with open(f"{self.root}/{rel}", "rb") as f:
            return f.read()

    def write_small(self, rel: str, data: bytes, *, durable: bool = True) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomicity.replace_small_file(self.path, rel, data, durable=durable)

    def exists(self, rel: str) -> bool:
        return (self.path / rel).exists()

    def remove(self, rel: str) -> None:
        p = self.path / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def rename(self, src: str, dst: str) -> None:
        os.rename(self.path / src, self.path / dst)
        atomicity.fsync_dir(self.path)

    def open_read(self, rel: str) -> BinaryIO:
        return open(self._inside(rel), "rb", buffering=0)

    def hash_file(self, rel: str) -> FileRecord:
        # Hashing the page cache through a populated mapping copies nothing.
        with open(self._inside(rel), "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return hash_bytes(b"")
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            with mmap.mmap(f.fileno(), size, flags=flags, prot=mmap.PROT_READ) as view:
                return hash_bytes(view)

    def file_identity(self, rel: str) -> Hashable:
        try:  # no resolve(): this runs for every file of every step when a run is opened
            st = os.lstat(self.join(rel))
        except OSError:  # gone or unreadable: counted by its path, as on object stores
            return rel
        return (st.st_dev, st.st_ino)

    def local_path(self, rel: str) -> Path:
        return self._inside(rel)

    @contextlib.contextmanager
    def fetch_dir(self, rel: str) -> Iterator[Path]:
        yield self._inside(rel)

    def _inside(self, rel: str) -> Path:
        """`rel` resolved, refusing anything (a symlink, say) that leads out of the directory."""
        p = (self.path / rel).resolve()
        if not p.is_relative_to(self.path.resolve()):
            raise CorruptCheckpointError(
                f"{self.path / rel} resolves to {p}, outside the checkpoint directory "
                f"{self.path}; refusing to read it (a symlink in a step points outside).",
                path=str(self.path / rel),
            )
        return p

    def begin_step(self, name: str, token: str | None = None) -> StepWriter:
        if token is not None:
            return atomicity.RenamingStepWriter(self.path, name, token, self.reap, joined=True)
        self.drain()  # the space of deleted steps is free before a new one is written
        with directory_errors_explained(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            return atomicity.RenamingStepWriter(self.path, name, atomicity.new_token(), self.reap)

    def delete_step(self, name: str) -> None:
        atomicity.delete_step_dir(self.path, name, self.reap)

    def reap(self, hidden: Path) -> None:
        """Remove a directory no reader can see any more, off the caller's thread.

        Unlinking a large step takes about 0.1 s per GB here: time a training step need not
        wait for.
        """
        self._reaping = [f for f in self._reaping if not f.done()]
        try:
            self._reaping.append(_REAPER.submit(shutil.rmtree, hidden, ignore_errors=True))
        except RuntimeError:  # the interpreter is exiting: remove it now
            shutil.rmtree(hidden, ignore_errors=True)

    def drain(self) -> None:
        reaping, self._reaping = self._reaping, []
        concurrent.futures.wait(reaping)

    def sweep(self) -> list[str]:
        return atomicity.sweep_leftovers(self)

    def repair_replacement(self, old: str) -> None:
        atomicity.repair_replacement(self, old)

    def acquire_lock(self, owner: dict[str, Any]) -> Lock:
        with directory_errors_explained(self.path):  # a file in the way, a read-only disk, ...
            self.path.mkdir(parents=True, exist_ok=True)
            return FileLock(self.path / layout.LOCK_FILE, owner)
