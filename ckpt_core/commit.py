"""Writing one step: the format's payload through a `StepWriter`, then the manifest that commits it.

How the commit is made atomic on each kind of storage is in `storage/atomicity.py`; how the
processes of a multi-process job meet is in `processes.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from . import layout
from .errors import CheckpointError, ProcessGroupError
from .formats import Format
from .manifest import FileRecord, Manifest, library_versions
from .processes import Meeting
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
    meeting: Meeting | None = None,
    mark: int | None = None,
) -> Manifest:
    """Write `state` as the step directory `name` and commit it atomically.

    With `incremental`, a format that supports it (`tree`) writes its payload in parts and
    takes the parts that are unchanged since `base` (the previous committed step: its
    directory name and manifest) from it instead of writing them.

    With `meeting`, every process of a multi-process job calls this with its own shards: the
    primary checks that all of them save the same step, begins the step and the others join
    its staging area; each process writes (a
    format that is not `collective`, the primary alone) and checksums the files it wrote;
    the primary gathers every process's records, writes the manifest and commits; the others
    return the primary's manifest once it is committed. Having gathered them, the primary
    deletes the keys shared before this save (every process has read them): before `mark`
    (`meeting.mark()` taken where save was called, for a save written in the background).

    On any failure everything this write produced is removed and the error is raised (a full
    disk as `DiskFullError`); the directory is as it was, earlier steps untouched.
    """
    writer = None
    topic = meeting.topic("save") if meeting is not None else ""
    primary = meeting is None or meeting.group.is_primary
    if meeting is not None and mark is None:
        mark = meeting.mark()
    try:
        token = None  # the primary's: every process writes into its temporary location
        if meeting is not None:
            _agree_on_step(meeting, topic, step)
        if meeting is not None and not primary:
            token = meeting.share(
                f"{topic}/begin", None, what=f"in beginning step {step}", hint=_RESTART
            )
        writer = storage.begin_step(name, token)
        if meeting is not None and primary:
            meeting.share(f"{topic}/begin", writer.token, what="", hint="")
        writer.incremental = incremental and meeting is None
        if writer.incremental and base is not None:
            writer.base_files = dict(base[1].files)
            writer.base_dir = "/".join(p for p in (base[0], base[1].payload_dir) if p)
        if meeting is None:
            fmt.write(state, writer)
        elif getattr(fmt, "collective", False):
            _write_together(fmt, state, writer, meeting, step)
        elif primary:  # a state every process holds whole (replicated): the primary writes it
            fmt.write(state, writer)
        sealed = writer.seal(_written_here(fmt, meeting))
        files = sealed if meeting is None else _gather_records(meeting, topic, sealed, step)
        if meeting is not None and files is not None and mark is not None:
            meeting.release(mark)  # every process returned from the saves before this one
        if files is None:  # not the primary: it commits, this process waits for it
            assert meeting is not None
            committed = meeting.share(
                f"{topic}/commit", None, what=f"in committing step {step}", hint=_RESTART
            )
            return Manifest.from_json(committed.encode(), storage.join(name, layout.MANIFEST))
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
        if meeting is not None:  # the others fail at once with this error, not at the timeout
            for stage in ("begin", "commit") if primary else ("files",):
                meeting.fail(f"{topic}/{stage}", e)
        if writer is not None:
            writer.abort()
        full = disk_full_error(e, storage.join(name))
        if full is not None:
            raise full from e
        raise
    if meeting is not None:
        meeting.share(f"{topic}/commit", manifest.to_json().decode(), what="", hint="")
    return manifest


_RESTART = (
    "nothing of this step was committed and earlier steps are intact; restart the job (with "
    "on_existing='resume' it continues from the newest committed step). Every process must "
    "call save() with the same step (where one process alone saves, as under DDP, open its "
    "manager with multiprocess=False); raise barrier_timeout_secs if a shard takes longer."
)


_SAME_CALL = (
    "every process must call save() with the same step; where one process alone saves (as "
    "under DDP), open its manager with multiprocess=False."
)


def _agree_on_step(meeting: Meeting, topic: str, step: int) -> None:
    """Refuse, in every process, a save the processes called with different steps, before
    any of them writes (a collective write that one process never joins would wait for the
    framework's own timeout)."""
    what = f"in beginning step {step}"
    steps = meeting.gather(f"{topic}/step", step, what=what, hint=_RESTART, impatient=_SAME_CALL)
    if steps is not None and len(set(steps)) > 1:
        others = "; ".join(f"process {i}: step {s}" for i, s in enumerate(steps) if s != step)
        raise ValueError(
            f"the processes called save() with different steps (the primary, process 0: step "
            f"{step}; {others}); nothing was committed. HINT: every process must call save() "
            "with the same step."
        )


def _write_together(fmt: Format, state: Any, writer: Any, meeting: Meeting, step: int) -> None:
    """`fmt.write` as the collective call of every process; a failure of the framework's
    collectives (a peer died mid-write) becomes a ProcessGroupError saying what to do."""
    try:
        fmt.write(state, writer)
    except BaseException as e:
        # What collectives raise when a peer is gone: gloo's RuntimeError (torch's DistError
        # is one), DCP's CheckpointException (named, not imported: no framework here).
        peer_failed = isinstance(e, RuntimeError) or type(e).__name__ == "CheckpointException"
        if isinstance(e, CheckpointError) or not peer_failed:
            raise
        group = meeting.group
        raise ProcessGroupError(
            f"process {group.index} of {group.count} failed writing its shards of step {step} "
            f"together with the others ({type(e).__name__}: {str(e)[:300]}); another process "
            f"probably died or failed (see its log). HINT: {_RESTART}"
        ) from e


def _written_here(fmt: Format, meeting: Meeting | None) -> Callable[[str], bool] | None:
    """Which payload files this process checksums: those it wrote (`Format.process_of`)."""
    if meeting is None:
        return None
    process_of = getattr(fmt, "process_of", None)
    index = meeting.group.index
    if process_of is None:  # written by the primary alone
        return lambda name: index == 0
    return lambda name: process_of(name) == index


def _gather_records(
    meeting: Meeting, topic: str, files: dict[str, FileRecord], step: int
) -> dict[str, FileRecord] | None:
    """Every process's file records, merged, in the primary (None in the others)."""
    mine = {name: [rec.size, rec.checksum] for name, rec in files.items()}
    what = f"in writing its shards of step {step}"
    gathered = meeting.gather(f"{topic}/files", mine, what=what, hint=_RESTART)
    if gathered is None:
        return None
    merged: dict[str, FileRecord] = {}
    for index, records in enumerate(gathered):
        for name, (size, checksum) in records.items():
            if name in merged and merged[name] != FileRecord(size, checksum):
                raise ValueError(
                    f"processes wrote different contents to the payload file {name!r} of step "
                    f"{step} (process {index} among them); a file must have one writer. HINT: "
                    "a format's `process_of` must name the process that writes each file."
                )
            merged[name] = FileRecord(size, checksum)
    return merged
