"""Where checkpoint bytes live: one small interface, for local disks and fsspec object stores.

The manager and the formats only ever talk to `Storage` (list, read, write, delete) and to a
`StepWriter` (the staging area of one step, committed as a whole). The commit protocol of
each backend lives here and nowhere else:

* local disk: payload and manifest are written under a temporary directory beside the steps,
  every file and directory is fsynced, then the directory is renamed into place;
* object stores, where nothing renames atomically: payload objects are uploaded first and
  the manifest object, written last with a single PUT, is the commit.

Either way a step directory without a valid manifest is not a step, so readers need no
special case.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import errno
import io
import mmap
import os
import shutil
import sys
import uuid
from abc import ABC, abstractmethod
from collections.abc import Collection, Hashable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import xxhash

from . import layout
from .directio import DirectFile
from .errors import CheckpointNotFoundError, CorruptCheckpointError, DiskFullError
from .lock import FileLock, Lock
from .manifest import FileRecord, Manifest
from .options import describe

CHUNK = 8 << 20  # bytes per read/write call when copying streams
OVERLAP_BYTES = 4 << 20  # writes at least this large are hashed on another thread meanwhile
_HASHER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-hash")
_REAPER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-reap")


def new_token() -> str:
    return uuid.uuid4().hex[:12]


# ---------------------------------------------------------------- checksummed streams


class HashingWriter(io.RawIOBase):
    """A write-only stream that counts and checksums what passes through it."""

    def __init__(self, raw: Any, name: str, on_close: Any) -> None:
        self._raw = raw
        self.name = name
        self._hash = xxhash.xxh3_64()
        self.size = 0
        self._on_close = on_close

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        # xxhash releases the GIL: hash a large buffer on another core while it is written.
        hashing = _submit_hash(self._hash, view) if total >= OVERLAP_BYTES else None
        if hashing is None:
            self._hash.update(view)
        try:
            done = 0
            while done < total:
                n = self._raw.write(view[done:])
                done += total - done if n is None else n
        finally:
            if hashing is not None:
                hashing.result()  # the caller may reuse `data` once write returns
        self.size += total
        return total

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._on_close(self._raw, FileRecord(self.size, self._hash.hexdigest()))
        finally:
            super().close()


def _submit_hash(hasher: Any, view: memoryview) -> concurrent.futures.Future[None] | None:
    try:
        return _HASHER.submit(hasher.update, view)
    except RuntimeError:  # the interpreter is exiting (a pending async save): hash inline
        return None


class VerifyingReader(io.RawIOBase):
    """A read-only stream that checksums what it yields; `verify()` checks it against the manifest."""

    def __init__(self, raw: Any, display: str, expected: FileRecord) -> None:
        self._raw = raw
        self.name = display
        self._expected = expected
        self._hash = xxhash.xxh3_64()
        self.size = 0

    def readable(self) -> bool:
        return True

    @property
    def expected_size(self) -> int:
        """The size the manifest records for this file."""
        return self._expected.size

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = self._raw.readinto(view)
        if n:
            self._hash.update(view[:n])
            self.size += n
        return n or 0

    def read_exactly(self, buffer: Any) -> None:
        """Fill `buffer` completely, or raise CorruptCheckpointError if the file ends first."""
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view):
            n = self.readinto(view[filled:])
            if n == 0:
                raise CorruptCheckpointError(
                    f"{self.name} ended after {self.size} bytes; the manifest records "
                    f"{self._expected.size}. The file is truncated.",
                    path=self.name,
                )
            filled += n

    def verify(self) -> None:
        """Read whatever is left, then compare size and checksum with the manifest."""
        # No bigger than what is left (plus a byte to see the end): a fully read file, as
        # the shards of an incremental step are, must not cost an 8 MiB allocation each.
        sink = bytearray(max(1, min(CHUNK, self._expected.size - self.size + 1)))
        while self.readinto(sink):
            pass
        check_record(self.name, FileRecord(self.size, self._hash.hexdigest()), self._expected)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def check_record(display: str, found: FileRecord, expected: FileRecord) -> None:
    if found.size != expected.size:
        raise CorruptCheckpointError(
            f"{display} is {found.size} bytes, the manifest records {expected.size}: "
            "the file was truncated or changed after the checkpoint was committed.",
            path=display,
        )
    if found.checksum != expected.checksum:
        raise CorruptCheckpointError(
            f"{display} has checksum {found.checksum}, the manifest records "
            f"{expected.checksum}: its contents were damaged after the checkpoint was committed.",
            path=display,
        )


def hash_stream(stream: Any) -> FileRecord:
    h = xxhash.xxh3_64()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while n := stream.readinto(view):
        h.update(view[:n])
        size += n
    return FileRecord(size, h.hexdigest())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # no libc symbol (old glibc, musl)
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # this filesystem cannot exchange: use the fallback
    raise OSError(err, os.strerror(err), str(b))


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


def step_files(storage: Storage, manifest: Manifest) -> Mapping[Hashable, int]:
    """A committed step's payload files by identity (hard links share one), for the budget."""
    base = "/".join(p for p in (layout.step_dirname(manifest.step), manifest.payload_dir) if p)
    return {
        storage.file_identity(f"{base}/{name}"): rec.size for name, rec in manifest.files.items()
    }


# ---------------------------------------------------------------- the interface


class StepWriter(ABC):
    """The staging area of one step: payload files go in, `commit` makes them a step at once."""

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
    def seal(self) -> dict[str, FileRecord]:
        """Take in the files a format wrote itself (to `local_dir()` or under `url()`) and
        return every payload file's record."""

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
    def begin_step(self, name: str) -> StepWriter:
        """Start writing the step directory `name` (which may already hold a committed step)."""

    @abstractmethod
    def delete_step(self, name: str) -> None:
        """Remove a committed step so that it is invisible at once, then its files."""

    @abstractmethod
    def acquire_lock(self, owner: dict[str, Any]) -> Lock:
        """Take the single-writer lock; raises CheckpointLockedError naming the holder."""

    def drain(self) -> None:  # noqa: B027 - a no-op where deletion is synchronous
        """Wait until files of deleted steps are gone (removal may finish in the background)."""

    def sweep(self) -> list[str]:
        """Remove stale temporaries left by a killed writer; restore interrupted replacements."""
        names = set(self.list_names())
        swept = []
        for name in sorted(names):
            if layout.is_temporary(name) or layout.is_partial(name):
                self.remove(name)
                swept.append(name)
            elif layout.parse_step(layout.replaced_entry_of(name) or "") is not None:
                self.repair_replacement(name)
                swept.append(name)
        return swept

    def repair_replacement(self, old: str) -> None:
        """Finish or undo a replacement killed between its two renames (`.old-<name>-<tok>`)."""
        target = layout.replaced_entry_of(old)
        assert target is not None
        if self.exists(f"{target}/{layout.MANIFEST}"):
            self.remove(old)  # the replacement was committed: the old one can go
        else:
            self.remove(target)  # killed between the two renames: put the old one back
            self.rename(old, target)


def open_storage(
    directory: str | os.PathLike[str], storage_options: dict[str, Any] | None
) -> Storage:
    """A `Storage` for a local path, a `file://` URL, or any other fsspec URL."""
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
        from .fsspec_storage import FsspecStorage

        return FsspecStorage(text, storage_options or {})
    if storage_options:
        raise ValueError(
            f"storage_options were given for the local directory {text!r}; they apply only to "
            "fsspec URLs such as 's3://bucket/run'."
        )
    return LocalStorage(Path(text.removeprefix("file://")))


# ---------------------------------------------------------------- local disk


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
        target = self.path / rel
        tmp = target.with_name(layout.partial_name(target.name))
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, target)
        if durable:
            _fsync_dir(self.path)

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
        _fsync_dir(self.path)

    def open_read(self, rel: str) -> BinaryIO:
        return open(self._inside(rel), "rb", buffering=0)

    def hash_file(self, rel: str) -> FileRecord:
        # Hashing the page cache through a populated mapping copies nothing.
        with open(self._inside(rel), "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return FileRecord(0, xxhash.xxh3_64(b"").hexdigest())
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            with mmap.mmap(f.fileno(), size, flags=flags, prot=mmap.PROT_READ) as view:
                return FileRecord(size, xxhash.xxh3_64(view).hexdigest())

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

    def begin_step(self, name: str) -> StepWriter:
        self.drain()  # the space of deleted steps is free before a new one is written
        with directory_errors_explained(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            return _LocalStepWriter(self, name)

    def delete_step(self, name: str) -> None:
        # One rename hides the whole step; a kill during the rmtree leaves a swept temporary.
        doomed = self.path / layout.tmp_dirname(name, new_token())
        try:
            os.rename(self.path / name, doomed)
        except FileNotFoundError:
            return
        _fsync_dir(self.path)
        self.reap(doomed)

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

    def acquire_lock(self, owner: dict[str, Any]) -> Lock:
        with directory_errors_explained(self.path):  # a file in the way, a read-only disk, ...
            self.path.mkdir(parents=True, exist_ok=True)
            return FileLock(self.path / layout.LOCK_FILE, owner)


class _LocalStepWriter(StepWriter):
    def __init__(self, storage: LocalStorage, name: str) -> None:
        super().__init__()
        self._storage = storage
        self._name = name
        self._final = storage.path / name
        self._tmp = storage.path / layout.tmp_dirname(name, new_token())
        self._tmp.mkdir()
        self._dirs: set[Path] = {self._tmp}
        self._committed = False

    @property
    def payload_dir(self) -> str:
        return ""

    def open(self, name: str) -> BinaryIO:
        target = self._tmp / name
        if target.parent != self._tmp:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(target.parent)
        raw = DirectFile(target)  # closed, and so fsynced, by the HashingWriter

        def done(f: Any, record: FileRecord) -> None:
            f.close()
            self.files[name] = record

        return HashingWriter(raw, str(target), done)  # type: ignore[return-value]

    def _share(self, source: str, name: str) -> bool:
        target = self._tmp / name
        if target.parent != self._tmp:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(target.parent)
        try:
            # The base is committed and never written again, only unlinked: both steps hold
            # the same bytes, and deleting either leaves the other whole.
            os.link(self._storage.path / source, target)
        except OSError as e:
            if e.errno in (errno.EMLINK, errno.EPERM, errno.EXDEV, errno.EOPNOTSUPP, errno.ENOENT):
                return False  # too many links, or a filesystem without them: write a copy
            raise
        return True

    def local_dir(self) -> Path:
        return self._tmp

    def seal(self) -> dict[str, FileRecord]:
        for dirpath, _, filenames in os.walk(self._tmp):
            d = Path(dirpath)
            self._dirs.add(d)
            for fn in filenames:
                name = (d / fn).relative_to(self._tmp).as_posix()
                if name in self.files:
                    continue
                with open(d / fn, "rb", buffering=0) as f:  # written by a format itself
                    os.fsync(f.fileno())
                    self.files[name] = hash_stream(f)
        return dict(self.files)

    def commit(self, manifest: bytes) -> None:
        path = self._tmp / layout.MANIFEST
        with open(path, "wb") as f:
            f.write(manifest)
            f.flush()
            os.fsync(f.fileno())
        for d in sorted(self._dirs, key=lambda p: len(p.parts), reverse=True):
            _fsync_dir(d)
        if self._final.exists():
            self._replace_existing()
        else:
            os.rename(self._tmp, self._final)
        self._committed = True
        _fsync_dir(self._storage.path)

    def _replace_existing(self) -> None:
        """Swap the new step in for the old one; the old one is gone only after the swap."""
        if _exchange(self._tmp, self._final):
            self._storage.reap(self._tmp)  # now holds the old step
            return
        # No atomic exchange on this filesystem: move the old step aside, then the new one
        # in. A kill between the two renames is repaired by `Storage.sweep`; a failure of
        # the second rename puts the old step back at once.
        old = self._storage.path / layout.old_dirname(self._name, new_token())
        os.rename(self._final, old)
        try:
            os.rename(self._tmp, self._final)
        except BaseException:
            os.rename(old, self._final)
            raise
        shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        if not self._committed:
            shutil.rmtree(self._tmp, ignore_errors=True)
