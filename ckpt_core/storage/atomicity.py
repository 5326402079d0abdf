"""How a step becomes visible all at once, and how a crash at any point of a write is undone.

Everything that decides crash safety is in this module: the two commit strategies, deleting a
committed step, replacing a small file, and the sweep that cleans up after a killed writer.
The backends (`local.py`, `object_store.py`) only choose the strategy and provide the I/O.

Rename, on local disks (`RenamingStepWriter`):

1. payload files are written under `.tmp-<step>-<token>/`, each fsynced as it closes (files a
   format wrote itself are fsynced at `seal`);
2. the manifest is written there and fsynced, then every directory of the step, deepest first;
3. one rename makes it `<step>/`. A committed step of that name is swapped out with
   `renameat2(RENAME_EXCHANGE)` where the filesystem can; elsewhere it is first moved aside
   to `.old-<step>-<token>/` (and moved back if the second rename fails);
4. the run directory is fsynced.

Killed before 3: a `.tmp-` entry, never read as a step, removed by the next `sweep_leftovers`.
Killed between the two renames of a replacement: `repair_replacement` keeps whichever step has
a manifest in place. Deleting a step is one rename to a `.tmp-` name, then the removal. A
small file (pointer, `run.json`) is written to `.<name>.partial`, fsynced, and `os.replace`d.

Manifest last, on object stores, where nothing renames (`ManifestLastStepWriter`):

1. payload objects are uploaded under `<step>/` for a new step, or under `<step>/rev-<token>/`
   when a committed step is replaced (never over the committed payload);
2. the manifest is written with one PUT, which replaces an object atomically: that PUT is
   the commit, and readers see the old step or the new one;
3. the replaced payload is deleted, as housekeeping.

Killed before 2: objects under a step prefix without a manifest, invisible and removed by
`sweep_unreferenced_objects`, as is a `rev-` prefix no manifest names (killed during 3 too).
Deleting a step deletes its manifest first, so a half-deleted step is never visible.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from .. import layout
from ..directio import DirectFile
from ..errors import CorruptCheckpointError
from ..layout import MANIFEST
from ..manifest import FileRecord, Manifest
from .base import StepWriter, Storage
from .checksums import CHUNK, HashingWriter, hash_stream

# The temporary names. Those beside the steps are spelled by layout.py, which names everything
# in a run directory; the directories end in a fresh `new_token()`:
#   .tmp-<step>-<token>/   a step being written, or a deleted one being removed (local disks):
#                          layout.tmp_dirname
#   .old-<step>-<token>/   a replaced step moved aside where exchange is missing (local disks):
#                          layout.old_dirname
#   .<name>.partial        a small file (pointer, run.json) being replaced (local disks):
#                          layout.partial_name
REVISION_PREFIX = "rev-"  # <step>/rev-<token>/: a replacement's payload (object stores)
STAGING_PREFIX = "ckpt-stage-"  # a local scratch directory for a format that writes files itself

_RENAME_EXCHANGE = 2  # linux/fs.h


def new_token() -> str:
    """A fresh token for a temporary name (12 hex digits)."""
    return uuid.uuid4().hex[:12]


# ---------------------------------------------------------------- rename (local disks)


def fsync_dir(path: Path) -> None:
    """Make the entries of directory `path` (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


class RenamingStepWriter(StepWriter):
    """A step staged in a temporary directory beside the steps, renamed into place at commit."""

    def __init__(
        self,
        root: Path,
        name: str,
        token: str,
        reap: Callable[[Path], None],
        *,
        joined: bool = False,
    ) -> None:
        """`reap` removes a directory no reader can see any more (perhaps in the background);
        `joined`: another process of the job made the directory and commits it."""
        super().__init__()
        self.token = token
        self._root = root
        self._name = name
        self._reap = reap
        self._final = root / name
        self._tmp = root / layout.tmp_dirname(name, token)
        self._joined = joined
        if not joined:
            self._tmp.mkdir()
        self._dirs: set[Path] = {self._tmp}
        self._committed = False

    @property
    def payload_dir(self) -> str:
        return ""

    def _target(self, name: str) -> Path:
        target = self._tmp / name
        if target.parent != self._tmp:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(target.parent)
        return target

    def open(self, name: str) -> BinaryIO:
        target = self._target(name)
        raw = DirectFile(target)  # closed, and so fsynced, by the HashingWriter

        def done(f: Any, record: FileRecord) -> None:
            f.close()
            self.files[name] = record

        return HashingWriter(raw, str(target), done)  # type: ignore[return-value]

    def _share(self, source: str, name: str) -> bool:
        target = self._target(name)
        try:
            # The base is committed and never written again, only unlinked: both steps hold
            # the same bytes, and deleting either leaves the other whole.
            os.link(self._root / source, target)
        except OSError as e:
            if e.errno in (errno.EMLINK, errno.EPERM, errno.EXDEV, errno.EOPNOTSUPP, errno.ENOENT):
                return False  # too many links, or a filesystem without them: write a copy
            raise
        return True

    def local_dir(self) -> Path:
        return self._tmp

    def seal(self, mine: Callable[[str], bool] | None = None) -> dict[str, FileRecord]:
        for dirpath, _, filenames in os.walk(self._tmp):
            d = Path(dirpath)
            self._dirs.add(d)
            for fn in filenames:
                name = (d / fn).relative_to(self._tmp).as_posix()
                if name in self.files or (mine is not None and not mine(name)):
                    continue
                with open(d / fn, "rb", buffering=0) as f:  # written by a format itself
                    os.fsync(f.fileno())
                    self.files[name] = hash_stream(f)
        return dict(self.files)

    def commit(self, manifest: bytes) -> None:
        assert not self._joined, "only the process that began a step commits it"
        path = self._tmp / MANIFEST
        with open(path, "wb") as f:
            f.write(manifest)
            f.flush()
            os.fsync(f.fileno())
        for d in sorted(self._dirs, key=lambda p: len(p.parts), reverse=True):
            fsync_dir(d)
        if self._final.exists():
            self._replace_existing()
        else:
            os.rename(self._tmp, self._final)
        self._committed = True
        fsync_dir(self._root)

    def _replace_existing(self) -> None:
        """Swap the new step in for the old one; the old one is gone only after the swap."""
        if _exchange(self._tmp, self._final):
            self._reap(self._tmp)  # now holds the old step
            return
        # No atomic exchange on this filesystem: move the old step aside, then the new one
        # in. A kill between the two renames is repaired by `repair_replacement`; a failure
        # of the second rename puts the old step back at once.
        old = self._root / layout.old_dirname(self._name, new_token())
        os.rename(self._final, old)
        try:
            os.rename(self._tmp, self._final)
        except BaseException:
            os.rename(old, self._final)
            raise
        shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        if not (self._committed or self._joined):  # a joined step is the beginner's to remove
            shutil.rmtree(self._tmp, ignore_errors=True)


def delete_step_dir(root: Path, name: str, reap: Callable[[Path], None]) -> None:
    """Hide the committed step `root/name` with one rename, then remove its files through `reap`.
    A kill during the removal leaves a temporary that the next sweep removes."""
    doomed = root / layout.tmp_dirname(name, new_token())
    try:
        os.rename(root / name, doomed)
    except FileNotFoundError:
        return
    fsync_dir(root)
    reap(doomed)


def replace_small_file(root: Path, rel: str, data: bytes, *, durable: bool) -> None:
    """Replace `root/rel` with `data` at once: readers see the old contents or the new."""
    target = root / rel
    tmp = target.with_name(layout.partial_name(target.name))
    with open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, target)
    if durable:
        fsync_dir(root)


def sweep_leftovers(storage: Storage) -> list[str]:
    """Remove the temporaries of a killed writer and repair replacements it left half done.
    Returns the names removed or repaired. Only for a directory whose lock this process holds."""
    swept = []
    for name in sorted(set(storage.list_names())):
        if layout.is_temporary(name) or layout.is_partial(name):
            storage.remove(name)
            swept.append(name)
        elif layout.parse_step(layout.replaced_entry_of(name) or "") is not None:
            repair_replacement(storage, name)
            swept.append(name)
    return swept


def repair_replacement(storage: Storage, old: str) -> None:
    """Finish or undo a replacement killed between its two renames (`.old-<name>-<tok>`)."""
    target = layout.replaced_entry_of(old)
    assert target is not None
    if storage.exists(f"{target}/{MANIFEST}"):
        storage.remove(old)  # the replacement was committed: the old one can go
    else:
        storage.remove(target)  # killed between the two renames: put the old one back
        storage.rename(old, target)


# ---------------------------------------------------------------- manifest last (object stores)


class ObjectStore(Protocol):
    """What the manifest-last commit needs of an object store (`FsspecStorage` provides it);
    paths are relative to the checkpoint directory."""

    def join(self, *parts: str) -> str: ...
    def read_bytes(self, rel: str) -> bytes: ...
    def write_small(self, rel: str, data: bytes, *, durable: bool = True) -> None: ...
    def remove(self, rel: str) -> None: ...
    def url(self, rel: str, schemes: Collection[str]) -> str | None: ...
    def hash_file(self, rel: str) -> FileRecord: ...

    def open_write(self, rel: str) -> BinaryIO:
        """A new object; closing the stream completes the upload."""

    def copy(self, source: str, target: str) -> None:
        """A server-side copy of one object; FileNotFoundError if `source` is missing."""

    def find(self, rel: str) -> list[str]:
        """Every object below `rel` ([] if none)."""

    def objects_by_step(self) -> dict[str, set[str]]:
        """Every object below a step prefix, relative to it, by step directory."""


class ManifestLastStepWriter(StepWriter):
    """A step uploaded object by object, committed by the one PUT of its manifest."""

    def __init__(self, store: ObjectStore, name: str, token: str, *, joined: bool = False) -> None:
        """`joined`: another process of the job began this write and commits it."""
        super().__init__()
        self.token = token
        self._s = store
        self._name = name
        self._old: Manifest | None = None
        self._staging: Path | None = None
        self._direct: list[str] = []  # payload paths handed out by url(): a format writes there
        self._committed = False
        self._joined = joined
        try:
            raw = store.read_bytes(f"{name}/{MANIFEST}")
            self._old = Manifest.from_json(raw, store.join(name, MANIFEST))
        except (FileNotFoundError, CorruptCheckpointError):
            if not joined:  # the beginner's uploads may be there already
                store.remove(name)  # leftovers of a step that never committed
        # A replacement goes beside the committed payload, never over it.
        self._payload_dir = f"{REVISION_PREFIX}{token}" if self._old is not None else ""

    @property
    def payload_dir(self) -> str:
        return self._payload_dir

    def _rel(self, file: str) -> str:
        return "/".join(p for p in (self._name, self._payload_dir, file) if p)

    def open(self, name: str) -> BinaryIO:
        raw = self._s.open_write(self._rel(name))

        def done(f: Any, record: FileRecord) -> None:
            f.close()  # completes the upload
            self.files[name] = record

        return HashingWriter(raw, self._s.join(self._rel(name)), done)  # type: ignore[return-value]

    def _share(self, source: str, name: str) -> bool:
        try:
            # A server-side copy: an independent object, no upload of unchanged bytes.
            self._s.copy(source, self._rel(name))
        except FileNotFoundError:
            return False
        return True

    def local_dir(self) -> Path:
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX))
        return self._staging

    def url(self, name: str, schemes: Collection[str]) -> str | None:
        url = self._s.url(self._rel(name), schemes)
        if url is not None:
            self._direct.append(name)
        return url

    def seal(self, mine: Callable[[str], bool] | None = None) -> dict[str, FileRecord]:
        # Staged files are this process's own: each process stages on its own disk.
        if self._staging is not None:
            for dirpath, _, filenames in os.walk(self._staging):
                for fn in filenames:
                    local = Path(dirpath) / fn
                    name = local.relative_to(self._staging).as_posix()
                    with open(local, "rb") as src, self.open(name) as dst:
                        while chunk := src.read(CHUNK):
                            dst.write(chunk)
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
        root = len(self._rel(""))
        for sub in self._direct:  # objects a format uploaded itself: listed, then read to hash
            for rel in self._s.find(self._rel(sub)):
                name = rel[root:].lstrip("/")
                if name not in self.files and (mine is None or mine(name)):
                    self.files[name] = self._s.hash_file(rel)
        self._direct = []
        return dict(self.files)

    def commit(self, manifest: bytes) -> None:
        assert not self._joined, "only the process that began a step commits it"
        self._s.write_small(f"{self._name}/{MANIFEST}", manifest)
        self._committed = True
        # The new step is live. Deleting the old payload is housekeeping: if it fails, the
        # next writer's sweep removes what no manifest references.
        with contextlib.suppress(Exception):
            if self._old is not None and self._old.payload_dir:
                self._s.remove(f"{self._name}/{self._old.payload_dir}")
            elif self._old is not None:
                for file in self._old.files:
                    self._s.remove(f"{self._name}/{file}")

    def abort(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
        if self._committed or self._joined:
            return  # never remove a committed step's payload; a joined step is the beginner's
        self._s.remove(f"{self._name}/{self._payload_dir}" if self._payload_dir else self._name)


def delete_manifest_first(store: ObjectStore, name: str) -> None:
    """Remove the committed step `name`: its manifest first (invisible at once), then the rest."""
    store.remove(f"{name}/{MANIFEST}")
    store.remove(name)


def sweep_unreferenced_objects(store: ObjectStore) -> list[str]:
    """Remove uploads that never wrote a manifest, and payload objects a committed step's
    manifest does not reference (left by a replacement killed mid-way). Returns what went."""
    swept = []
    for name, files in sorted(store.objects_by_step().items()):
        if MANIFEST not in files:
            store.remove(name)  # an upload that never committed: never visible
            swept.append(name)
            continue
        if not any(f.startswith(REVISION_PREFIX) for f in files) and len(files) == 1:
            continue
        try:
            manifest = Manifest.from_json(store.read_bytes(f"{name}/{MANIFEST}"), store.join(name))
        except (FileNotFoundError, CorruptCheckpointError):
            continue  # damaged: left for resume to move aside, never deleted here
        wanted = {"/".join(p for p in (manifest.payload_dir, f) if p) for f in manifest.files}
        for file in sorted(files - wanted - {MANIFEST}):
            store.remove(f"{name}/{file}")
            swept.append(f"{name}/{file}")
    return swept
