"""Checksummed streams: every payload byte is counted and hashed (xxh3-64) as it is written or read.

A write goes through `HashingWriter`, whose record (size and checksum) the manifest keeps; a
read goes through `VerifyingReader`, which compares what it yielded with that record.
"""

from __future__ import annotations

import concurrent.futures
import io
from typing import Any

import xxhash

from ..errors import CorruptCheckpointError
from ..manifest import FileRecord

CHUNK = 8 << 20  # bytes per read/write call when copying streams
OVERLAP_BYTES = 4 << 20  # writes at least this large are hashed on another thread meanwhile
_HASHER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-hash")


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
    """Raise CorruptCheckpointError naming `display` if `found` differs from the manifest's record."""
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
    """Size and checksum of everything left in a readable binary stream."""
    h = xxhash.xxh3_64()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while n := stream.readinto(view):
        h.update(view[:n])
        size += n
    return FileRecord(size, h.hexdigest())


def hash_bytes(data: Any) -> FileRecord:
    """Size and checksum of a buffer in memory (bytes, a memoryview, a mapped file)."""
    return FileRecord(len(data), xxhash.xxh3_64(data).hexdigest())
