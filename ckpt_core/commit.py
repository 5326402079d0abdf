"""Writing one step: the format's payload through a `StepWriter`, then the manifest that commits it.

How the commit is made atomic on each kind of storage is in `storage/atomicity.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import layout
from .formats import Format
from .manifest import Manifest, library_versions
from .storage import Storage, disk_full_error


def write_step(
    storage: Storage,
    name: str,
    fmt: Format,
    state: Any,
    *,
    step: int,
    metrics: Mapping[str, float] | None = None,
    metadata: Any = None,
    incremental: bool = False,
    base: tuple[str, Manifest] | None = None,
) -> Manifest:
    """Write `state` as the step directory `name` and commit it atomically.

    With `incremental`, a format that supports it (`tree`) writes its payload in parts and
    takes the parts that are unchanged since `base` (the previous committed step: its
    directory name and manifest) from it instead of writing them.

    On any failure everything this write produced is removed and the error is raised (a full
    disk as `DiskFullError`); the directory is as it was, earlier steps untouched.
    """
    writer = None
    try:
        writer = storage.begin_step(name)
        writer.incremental = incremental
        if incremental and base is not None:
            writer.base_files = dict(base[1].files)
            writer.base_dir = "/".join(p for p in (base[0], base[1].payload_dir) if p)
        fmt.write(state, writer)
        files = writer.seal()
        if layout.MANIFEST in files:
            raise ValueError(
                f"format {fmt.name!r} wrote a payload file named {layout.MANIFEST!r}, which is "
                "reserved for the manifest; HINT: give the format's file another name."
            )
        manifest = Manifest(
            step=step,
            format=fmt.name,
            files=files,
            metrics=dict(metrics or {}),
            metadata=metadata,
            versions=library_versions(),
            payload_dir=writer.payload_dir,
        )
        writer.commit(manifest.to_json())
    except BaseException as e:
        if writer is not None:
            writer.abort()
        full = disk_full_error(e, storage.join(name))
        if full is not None:
            raise full from e
        raise
    return manifest
