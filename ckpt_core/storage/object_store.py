"""`Storage` on any fsspec filesystem (s3://, gs://, memory://, ...): objects under a prefix.

Nothing renames atomically there: a step is committed by writing its manifest last, in one
PUT (see atomicity.py). fsspec and its backend (s3fs, gcsfs) are imported on first use.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .. import layout
from ..lock import LeaseLock, Lock
from . import atomicity
from .base import StepWriter, Storage
from .checksums import CHUNK


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

    def open_write(self, rel: str) -> BinaryIO:
        """A new object; closing the stream completes the upload."""
        return self.fs.open(self._p(rel), "wb")

    def copy(self, source: str, target: str) -> None:
        """A server-side copy of one object; FileNotFoundError if `source` is missing."""
        self.fs.copy(self._p(source), self._p(target))

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

    def begin_step(self, name: str, token: str | None = None) -> StepWriter:
        joined = token is not None
        return atomicity.ManifestLastStepWriter(
            self, name, token or atomicity.new_token(), joined=joined
        )

    def delete_step(self, name: str) -> None:
        atomicity.delete_manifest_first(self, name)

    def sweep(self) -> list[str]:
        """Also remove uploads that never wrote a manifest, and payload objects a committed
        step's manifest does not reference (left by a replacement killed mid-way)."""
        return atomicity.sweep_leftovers(self) + atomicity.sweep_unreferenced_objects(self)

    def repair_replacement(self, old: str) -> None:
        atomicity.repair_replacement(self, old)

    def find(self, rel: str) -> list[str]:
        """Every object below `rel`, as paths relative to the directory ([] if none)."""
        path = self._p(rel)
        self.fs.invalidate_cache(path)
        try:
            found = self.fs.find(path)
        except FileNotFoundError:
            return []
        return sorted(p[len(self._path) + 1 :] for p in found)

    def objects_by_step(self) -> dict[str, set[str]]:
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
