"""Where checkpoint bytes live: one interface, for local disks and fsspec object stores.

    base.py          the interface: `Storage` (a checkpoint directory) and `StepWriter` (one
                     step being written, committed as a whole)
    atomicity.py     how a step becomes visible at once and how a crash is undone: the rename
                     commit (local disks) and the manifest-last commit (object stores)
    local.py         `LocalStorage`: a directory on a local filesystem
    object_store.py  `FsspecStorage`: any fsspec URL (s3://, gs://, memory://)
    factory.py       `open_storage`: picks the backend for a path or URL
    checksums.py     checksummed streams (xxh3-64) for writing and verifying payload files
    os_errors.py     operating-system errors re-raised as messages that say what to do

Either way a step directory without a valid manifest is not a step, so readers need no
special case.
"""

from __future__ import annotations

from .atomicity import new_token
from .base import StepWriter, Storage, step_files
from .checksums import CHUNK, HashingWriter, VerifyingReader, check_record, hash_stream
from .factory import open_storage
from .local import LocalStorage
from .object_store import FsspecStorage
from .os_errors import directory_errors_explained, disk_full_error

__all__ = [
    "CHUNK",
    "FsspecStorage",
    "HashingWriter",
    "LocalStorage",
    "StepWriter",
    "Storage",
    "VerifyingReader",
    "check_record",
    "directory_errors_explained",
    "disk_full_error",
    "hash_stream",
    "new_token",
    "open_storage",
    "step_files",
]
