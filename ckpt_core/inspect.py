"""Reading what a checkpoint directory holds without loading a payload: runs, steps, array trees.

Everything here reads manifests and pointers only; the tree of a step is described by its
format (`DescribableFormat.describe`), from payload headers, never loading an array or
running code from a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import layout
from .errors import CheckpointError, CorruptCheckpointError
from .formats import DescribableFormat, StepReader, get_format
from .formats import TreeEntry as TreeEntry  # for the CLI: what `list_tree` lists
from .formats import TreeListing as TreeListing
from .info import CheckpointInfo
from .manifest import Manifest
from .options import human_bytes as human_bytes  # for the CLI
from .retention import StepFiles
from .storage import Storage, open_storage, step_files

MAX_RUN_DEPTH = 8  # how deep `find_runs` looks for nested runs below the directory it is given


# ---------------------------------------------------------------- runs and steps


@dataclass(frozen=True)
class OtherEntry:
    """A library-owned entry of a run directory that is not a committed step.

    Attributes:
        name: the entry's name in the run directory.
        kind: "temporary" (a step being written, or left by a killed writer), "replaced"
            (an old copy kept until its replacement is committed), "quarantined" (a damaged
            step moved aside on resume) or "invalid" (a `step_*` directory without a valid
            manifest).
        step: the step the entry belongs to, when its name says.
        detail: a human sentence: what it is and what happens to it.
        mtime: its modification time (local directories only).
        bytes: the size of every file in it (local directories only; None when unknown).
    """

    name: str
    kind: str
    step: int | None
    detail: str
    mtime: float | None = None
    bytes: int | None = None


@dataclass
class RunListing:
    """Everything `ckpt ls` shows about one run, read from manifests and pointers only."""

    directory: str
    steps: list[CheckpointInfo]
    others: list[OtherEntry]
    latest_pointer: int | None
    best_pointer: int | None
    run_doc: dict[str, Any] = field(default_factory=dict)
    run_doc_error: str | None = None  # why run.json could not be read (None: fine or absent)
    files: dict[int, StepFiles] = field(default_factory=dict)  # per step: identity -> size

    @property
    def complete(self) -> bool:
        return bool(self.run_doc.get("complete", False))


def open_directory(directory: str | os.PathLike[str]) -> Storage:
    """The storage of a local path or fsspec URL (no lock taken, nothing written)."""
    return open_storage(directory, None)


def read_manifest(storage: Storage, name: str) -> Manifest:
    """The validated manifest of the step directory `name`.

    Raises:
        CorruptCheckpointError: it is missing or invalid, or names another step.
    """
    return _ManifestReader(storage).read(name)


class _ManifestReader:
    """Reads manifests; on local disks with plain `open` (pathlib costs half of a 10k-step scan)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.local_root = storage.root if storage.is_local else None

    def join(self, *parts: str) -> str:
        if self.local_root is not None:
            return "/".join((self.local_root, *parts))
        return self.storage.join(*parts)

    def read(self, name: str) -> Manifest:
        where = self.join(name, layout.MANIFEST)
        try:
            if self.local_root is not None:
                with open(where, "rb") as f:
                    raw = f.read()
            else:
                raw = self.storage.read_bytes(f"{name}/{layout.MANIFEST}")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise CorruptCheckpointError(f"{where} is missing", path=where) from None
        except OSError as e:  # e.g. permissions: this step cannot be used either
            raise CorruptCheckpointError(f"{where} is unreadable: {e}", path=where) from None
        manifest = Manifest.from_json(raw, where)
        expected = layout.parse_step(name)
        if expected is not None and manifest.step != expected:
            raise CorruptCheckpointError(
                f"{where} records step {manifest.step}, but its directory is step {expected}",
                path=where,
            )
        return manifest


def _read_pointer(storage: Storage, pointer: str) -> int | None:
    try:
        text = storage.read_bytes(pointer).decode("utf-8", "replace").strip()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    return layout.parse_step(text)


def read_run_doc(storage: Storage) -> dict[str, Any]:
    """`run.json` (run metadata, completion mark), or {} when absent or unreadable."""
    return read_run_doc_checked(storage)[0]


def read_run_doc_checked(storage: Storage) -> tuple[dict[str, Any], str | None]:
    """`run.json` and, when it exists but cannot be used, why: ({}, "<path> is ...").

    A damaged `run.json` must be told apart from an absent one: its recorded retention is
    what protects steps from `ckpt prune`, and defaults in its place could delete them.
    """
    where = storage.join(layout.RUN_FILE)
    try:
        raw = storage.read_bytes(layout.RUN_FILE)
    except (FileNotFoundError, NotADirectoryError):
        return {}, None
    except OSError as e:  # e.g. permissions
        return {}, f"{where} is unreadable ({e.strerror or e})"
    try:
        doc = json.loads(raw)
    except ValueError as e:
        return {}, f"{where} is damaged (not JSON: {e})"
    if not isinstance(doc, dict):
        return {}, f"{where} is damaged (a JSON {type(doc).__name__}, not an object)"
    return doc, None


def entry_bytes(storage: Storage, name: str) -> int | None:
    """The size of every file under the entry `name` (local directories only, else None)."""
    try:
        root = storage.local_path(name)
    except (OSError, CheckpointError):
        return None
    if root is None:
        return None
    total = 0
    try:
        if not root.is_dir():
            return root.stat().st_size
        for parent, _, files in os.walk(root):
            for file in files:
                with contextlib.suppress(OSError):  # a writer may be deleting it right now
                    total += os.lstat(os.path.join(parent, file)).st_size
    except OSError:
        return None
    return total


def _mtime(storage: Storage, name: str) -> float | None:
    try:
        path = storage.local_path(name)
        return None if path is None else path.stat().st_mtime
    except (OSError, CheckpointError):
        return None


_STEP_IN_NAME = re.compile(r"step_(\d+)")


def _step_in(name: str) -> int | None:
    m = _STEP_IN_NAME.search(name)
    return int(m.group(1)) if m else None


def scan_run(storage: Storage) -> RunListing:
    """Read every manifest of one run directory (never a payload) and classify every entry.

    A `step_*` directory is a committed step exactly when the manager would say so: its
    manifest exists, is valid and names the same step. Any other `step_*` directory is
    reported as "invalid" with the reason.
    """
    steps: list[CheckpointInfo] = []
    others: list[OtherEntry] = []
    files: dict[int, StepFiles] = {}
    manifests = _ManifestReader(storage)
    for name in storage.list_names():
        step = layout.parse_step(name)
        if step is not None:
            try:
                manifest = manifests.read(name)
            except CorruptCheckpointError as e:
                # relative to the step: the listing row names the directory already
                detail = str(e).split(". HINT")[0].split(". The step")[0]
                detail = detail.replace(manifests.join(name) + "/", "")
                others.append(OtherEntry(name, "invalid", step, detail, _mtime(storage, name)))
                continue
            files[step] = step_files(storage, manifest)
            steps.append(
                CheckpointInfo(
                    step=step,
                    time=manifest.time,
                    metrics=manifest.metrics,
                    metadata=manifest.metadata,
                    path=manifests.join(name),
                    bytes=manifest.nbytes,
                    format=manifest.format,
                )
            )
        elif layout.is_temporary(name):
            others.append(
                OtherEntry(
                    name,
                    "temporary",
                    _step_in(name),
                    "a step being written or deleted, or left by a killed writer "
                    "(the next writer sweeps it)",
                    _mtime(storage, name),
                    entry_bytes(storage, name),
                )
            )
        elif layout.parse_step(target := layout.replaced_entry_of(name) or "") is not None:
            others.append(
                OtherEntry(
                    name,
                    "replaced",
                    layout.parse_step(target),
                    f"an old copy of {target}, kept until its replacement is committed "
                    "(the next writer sweeps it)",
                    _mtime(storage, name),
                    entry_bytes(storage, name),
                )
            )
        elif layout.is_quarantined(name):
            others.append(
                OtherEntry(
                    name,
                    "quarantined",
                    _step_in(name),
                    "a damaged step moved aside on resume; removed only by overwrite or clear()",
                    _mtime(storage, name),
                    entry_bytes(storage, name),
                )
            )
    steps.sort(key=lambda i: i.step)
    others.sort(key=lambda o: (o.step if o.step is not None else -1, o.name))
    run_doc, run_doc_error = read_run_doc_checked(storage)
    return RunListing(
        directory=storage.root,
        steps=steps,
        others=others,
        latest_pointer=_read_pointer(storage, layout.LATEST_POINTER),
        best_pointer=_read_pointer(storage, layout.BEST_POINTER),
        run_doc=run_doc,
        run_doc_error=run_doc_error,
        files=files,
    )


def _is_step_entry(name: str) -> bool:
    return (
        layout.parse_step(name) is not None
        or layout.is_temporary(name)
        or layout.is_quarantined(name)
        or layout.parse_step(layout.replaced_entry_of(name) or "") is not None
    )


def _natural_key(name: str) -> list[Any]:
    """`trial_2` before `trial_10`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def find_runs(directory: str | os.PathLike[str]) -> list[str]:
    """Every run at or below a local `directory`: each directory holding `step_*` entries.

    The directory itself also counts when it holds any file the library writes (an emptied
    run). Step directories, hidden directories and symlinks are never entered.

    Raises:
        FileNotFoundError, NotADirectoryError: `directory` is not a directory.
    """
    root = Path(directory)
    if not root.is_dir():
        if root.exists():
            raise NotADirectoryError(f"{directory} is a file, not a checkpoint directory")
        raise FileNotFoundError(f"{directory} does not exist")
    runs: list[str] = []

    def walk(d: Path, depth: int) -> None:
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError:
            return
        is_run = False
        subdirs = []
        for e in entries:
            if _is_step_entry(e.name):
                is_run = True  # a run's steps are never entered: payloads hold no runs
            elif depth == 0 and (layout.is_owned(e.name) or e.name == layout.LOCK_FILE):
                is_run = True
            elif not e.name.startswith(".") and depth < MAX_RUN_DEPTH:
                try:
                    if e.is_dir(follow_symlinks=False):
                        subdirs.append(e.name)
                except OSError:
                    pass
        if is_run:
            runs.append(str(d))
        for name in sorted(subdirs, key=_natural_key):
            walk(d / name, depth + 1)

    walk(root, 0)
    return runs


# ---------------------------------------------------------------- array trees


def list_tree(storage: Storage, manifest: Manifest, step_dir: str | None = None) -> TreeListing:
    """Describe every leaf of a committed step from its headers; no array is loaded.

    The step's format describes it (`DescribableFormat.describe`). A format not registered in
    this process, one without `describe`, or one whose `describe` fails with anything but
    `CorruptCheckpointError` gives no entries and a note saying which.

    Args:
        storage: the run directory.
        manifest: the step's manifest.
        step_dir: the step's directory name (default: the managed name of `manifest.step`;
            a `save_checkpoint` directory has its own name).

    Raises:
        CorruptCheckpointError: a header the listing needs is missing or damaged.
    """
    reader = StepReader(storage, step_dir or layout.step_dirname(manifest.step), manifest)
    try:
        fmt = get_format(manifest.format)
    except CheckpointError:
        note = f"format {manifest.format!r} is not registered in this process; files only"
        return TreeListing([], "nothing", [note])
    if not isinstance(fmt, DescribableFormat):
        note = f"format {manifest.format!r} has no header reader; files only"
        return TreeListing([], "nothing", [note])
    try:
        return fmt.describe(reader)
    except CorruptCheckpointError:
        raise
    except Exception as e:  # a user format's describe failing must not hide the step's files
        note = f"format {manifest.format!r} failed to describe the step ({type(e).__name__}: {e})"
        return TreeListing([], "nothing", [f"{note}; files only"])


# ---------------------------------------------------------------- small helpers for callers


def age(seconds_since_epoch: float, now: float | None = None) -> str:
    """`3s`, `5m`, `2h`, `4d`: how long ago."""
    delta = max(0.0, (time.time() if now is None else now) - seconds_since_epoch)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{int(delta // size)}{unit}"
    return f"{int(delta)}s"
