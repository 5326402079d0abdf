"""`Storage` on any fsspec filesystem (s3://, gs://, memory://, ...), where nothing renames atomically.

A step is committed by writing its manifest last, in one PUT. Payload objects without a
manifest are invisible and are swept by the next writer. Replacing a committed step writes the
new payload under `step_X/rev-<token>/`, then overwrites the manifest (one atomic PUT: readers
see the old step or the new one), then deletes the old payload. Deleting a step deletes its
manifest first, so a half-deleted step is never visible.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from . import layout
from .errors import CorruptCheckpointError
from .lock import LeaseLock, Lock
from .manifest import FileRecord, Manifest
from .storage import CHUNK, HashingWriter, StepWriter, Storage, new_token


def _fsspec() -> Any:
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec is a core dependency
        raise ImportError("fsspec is required for URL directories: pip install fsspec") from None
    return fsspec


class FsspecStorage(Storage):
    is_local = False

    def __init__(self, url: str, storage_options: dict[str, Any]) -> None:
        try:
            self.fs, path = _fsspec().core.url_to_fs(url, **storage_options)
        except ValueError as e:
            raise ValueError(f"{url!r} is not a directory fsspec can open: {e}") from None
        except ImportError as e:
            protocol = url.split("://", 1)[0]
            extra = {"s3": "s3", "gs": "gcs", "gcs": "gcs"}.get(protocol, protocol)
            raise ImportError(
                f"{url!r} needs the fsspec backend for {protocol}://, which is not installed "
                f"({e}). HINT: pip install 'ckpt-core[{extra}]'"
                if extra in ("s3", "gcs")
                else f"{url!r} needs the fsspec backend for {protocol}:// ({e})."
            ) from None
        self._path = path.rstrip("/")
        self.root = url.rstrip("/")

    def acquire_lock(self, owner: dict[str, Any]) -> Lock:
        try:
            return LeaseLock(self.fs, self._p(layout.LOCK_FILE), owner, display=self.root)
        except FileNotFoundError as e:  # the bucket (or container) itself is missing
            raise FileNotFoundError(
                f"cannot write checkpoints to {self.root}: {e}. HINT: create the bucket first, "
                "or check the URL and the endpoint in storage_options."
            ) from None

    def _p(self, rel: str) -> str:
        return f"{self._path}/{rel}" if rel else self._path

    def join(self, *parts: str) -> str:
        return "/".join([self.root, *[p for p in parts if p]])

    def list_names(self) -> list[str]:
        self.fs.invalidate_cache(self._path)
        try:
            entries = self.fs.ls(self._path, detail=False)
        except FileNotFoundError:
            return []
        return [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]

    def read_bytes(self, rel: str) -> bytes:
        return bytes(self.fs.cat_file(self._p(rel)))

    def write_small(self, rel: str, data: bytes, *, durable: bool = True) -> None:
        self.fs.pipe_file(self._p(rel), data)  # a single PUT replaces an object atomically

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self._p(rel)))

    def remove(self, rel: str) -> None:
        path = self._p(rel)
        with contextlib.suppress(FileNotFoundError):
            if self.fs.isdir(path):
                self.fs.rm(path, recursive=True)
            else:
                self.fs.rm_file(path)
        self.fs.invalidate_cache(path)

    def rename(self, src: str, dst: str) -> None:
        # Object stores have no rename: copy every object, then delete the source the way a
        # step is deleted (manifest first). fs.mv of a prefix is not portable (s3fs fails).
        source = self._p(src)
        files = self.fs.find(source)
        self.fs.copy(files, [self._p(dst) + f[len(source) :] for f in files])
        self.delete_step(src)

    def open_read(self, rel: str) -> BinaryIO:
        return self.fs.open(self._p(rel), "rb", block_size=CHUNK)

    def local_path(self, rel: str) -> Path | None:
        return None

    def url(self, rel: str, schemes: Collection[str]) -> str | None:
        return self.join(rel) if self.root.partition("://")[0] in schemes else None

    @contextlib.contextmanager
    def fetch_dir(self, rel: str) -> Iterator[Path]:
        tmp = Path(tempfile.mkdtemp(prefix="ckpt-fetch-"))
        try:
            self.fs.get(self._p(rel) + "/", str(tmp) + "/", recursive=True)
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def begin_step(self, name: str) -> StepWriter:
        return _ObjectStepWriter(self, name)

    def delete_step(self, name: str) -> None:
        self.remove(f"{name}/{layout.MANIFEST}")  # invisible first
        self.remove(name)

    def sweep(self) -> list[str]:
        """Also remove uploads that never wrote a manifest, and payload objects a committed
        step's manifest does not reference (left by a replacement killed mid-way)."""
        swept = super().sweep()
        objects = self._step_objects()
        for name, files in sorted(objects.items()):
            if layout.MANIFEST not in files:
                self.remove(name)  # an upload that never committed: never visible
                swept.append(name)
                continue
            if not any(f.startswith("rev-") for f in files) and len(files) == 1:
                continue
            try:
                manifest = Manifest.from_json(
                    self.read_bytes(f"{name}/{layout.MANIFEST}"), self.join(name)
                )
            except (FileNotFoundError, CorruptCheckpointError):
                continue  # damaged: left for resume to move aside, never deleted here
            wanted = {"/".join(p for p in (manifest.payload_dir, f) if p) for f in manifest.files}
            for file in sorted(files - wanted - {layout.MANIFEST}):
                self.remove(f"{name}/{file}")
                swept.append(f"{name}/{file}")
        return swept

    def find(self, rel: str) -> list[str]:
        """Every object below `rel`, as paths relative to the directory ([] if none)."""
        path = self._p(rel)
        self.fs.invalidate_cache(path)
        try:
            found = self.fs.find(path)
        except FileNotFoundError:
            return []
        return sorted(p[len(self._path) + 1 :] for p in found)

    def _step_objects(self) -> dict[str, set[str]]:
        """Every object below a `step_*` prefix, by step directory, from one listing."""
        self.fs.invalidate_cache(self._path)
        try:
            found = self.fs.find(self._path)
        except FileNotFoundError:
            return {}
        out: dict[str, set[str]] = {}
        prefix = len(self._path) + 1
        for path in found:
            name, _, rest = path[prefix:].partition("/")
            if rest and layout.parse_step(name) is not None:
                out.setdefault(name, set()).add(rest)
        return out


class _ObjectStepWriter(StepWriter):
    def __init__(self, storage: FsspecStorage, name: str) -> None:
        super().__init__()
        self._s = storage
        self._name = name
        self._old: Manifest | None = None
        self._staging: Path | None = None
        self._direct: list[str] = []  # payload paths handed out by url(): a format writes there
        self._committed = False
        try:
            raw = storage.read_bytes(f"{name}/{layout.MANIFEST}")
            self._old = Manifest.from_json(raw, storage.join(name, layout.MANIFEST))
        except (FileNotFoundError, CorruptCheckpointError):
            storage.remove(name)  # leftovers of a step that never committed
        # A replacement goes beside the committed payload, never over it.
        self._payload_dir = f"rev-{new_token()}" if self._old is not None else ""

    @property
    def payload_dir(self) -> str:
        return self._payload_dir

    def _rel(self, file: str) -> str:
        return "/".join(p for p in (self._name, self._payload_dir, file) if p)

    def open(self, name: str) -> BinaryIO:
        raw = self._s.fs.open(self._s._p(self._rel(name)), "wb")

        def done(f: Any, record: FileRecord) -> None:
            f.close()  # completes the upload
            self.files[name] = record

        return HashingWriter(raw, self._s.join(self._rel(name)), done)  # type: ignore[return-value]

    def _share(self, source: str, name: str) -> bool:
        try:
            # A server-side copy: an independent object, no upload of unchanged bytes.
            self._s.fs.copy(self._s._p(source), self._s._p(self._rel(name)))
        except FileNotFoundError:
            return False
        return True

    def local_dir(self) -> Path:
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix="ckpt-stage-"))
        return self._staging

    def url(self, name: str, schemes: Collection[str]) -> str | None:
        url = self._s.url(self._rel(name), schemes)
        if url is not None:
            self._direct.append(name)
        return url

    def seal(self) -> dict[str, FileRecord]:
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
                if name not in self.files:
                    self.files[name] = self._s.hash_file(rel)
        self._direct = []
        return dict(self.files)

    def commit(self, manifest: bytes) -> None:
        self._s.write_small(f"{self._name}/{layout.MANIFEST}", manifest)
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
        if self._committed:
            return  # never remove a committed step's payload
        self._s.remove(f"{self._name}/{self._payload_dir}" if self._payload_dir else self._name)
