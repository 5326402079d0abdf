"""What `ckpt ls` shows of runs: every entry of a run directory classified, nested runs found.

Read from manifests, pointers and `run.json` through the run model (`ckpt_core.run`), never a
payload. A `step_*` directory is a committed step exactly when the manager would say so; every
other entry the library owns is explained as an `OtherEntry`.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import layout
from .errors import CheckpointError, CorruptCheckpointError
from .info import CheckpointInfo
from .retention import DEFAULT_POLICY, RetentionPolicy, StepFiles
from .run import (
    ManifestReader,
    best_step,
    info_of,
    kept_because,
    ranked_steps,
    read_pointer,
    step_manifests,
)
from .run_doc import ranking_unknown, read_run_doc_checked, recorded_policy
from .storage import Storage, step_files

MAX_RUN_DEPTH = 8  # how deep `find_runs` looks for nested runs below the directory it is given


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

    @property
    def recorded_policy(self) -> RetentionPolicy | None:
        """The retention the run recorded (None: none, or run.json unusable)."""
        return recorded_policy(self.run_doc)

    def run_best(self) -> int | None:
        """The run's own best step: by its recorded ranking, else the pointer standing in."""
        unknown = ranking_unknown(self.run_doc, self.run_doc_error)
        policy = self.recorded_policy or DEFAULT_POLICY
        return best_step(policy, self.steps, self.best_pointer if unknown else None)

    def best_step(self, policy: RetentionPolicy) -> int | None:
        """The best step under `policy` (see `ckpt_core.run` for the one meaning of best)."""
        return best_step(policy, self.steps, self.run_best())

    def ranked_steps(self, policy: RetentionPolicy) -> list[int]:
        """The ranked steps under `policy`, best first."""
        return ranked_steps(policy, self.steps, self.run_best())

    def kept_because(self, policy: RetentionPolicy) -> dict[int, tuple[str, ...]]:
        """Why `policy` keeps each committed step (empty: it would delete it)."""
        return kept_because(policy, self.steps, self.run_best())


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


def _other_entry(storage: Storage, name: str) -> OtherEntry | None:
    """How `ckpt ls` explains a library entry that is not a `step_*` directory (None: not one)."""
    if layout.is_temporary(name):
        kind, step = "temporary", _step_in(name)
        detail = (
            "a step being written or deleted, or left by a killed writer (the next writer "
            "sweeps it)"
        )
    elif layout.parse_step(target := layout.replaced_entry_of(name) or "") is not None:
        kind, step = "replaced", layout.parse_step(target)
        detail = (
            f"an old copy of {target}, kept until its replacement is committed (the next "
            "writer sweeps it)"
        )
    elif layout.is_quarantined(name):
        kind, step = "quarantined", _step_in(name)
        detail = "a damaged step moved aside on resume; removed only by overwrite or clear()"
    else:
        return None
    return OtherEntry(name, kind, step, detail, _mtime(storage, name), entry_bytes(storage, name))


def scan_run(storage: Storage) -> RunListing:
    """Read every manifest of one run directory (never a payload) and classify every entry.

    A `step_*` directory is a committed step exactly when the manager would say so: its
    manifest exists, is valid and names the same step. Any other `step_*` directory is
    reported as "invalid" with the reason.
    """
    steps: list[CheckpointInfo] = []
    others: list[OtherEntry] = []
    files: dict[int, StepFiles] = {}
    manifests = ManifestReader(storage)
    for name, step, manifest in step_manifests(storage, manifests):
        if isinstance(manifest, CorruptCheckpointError):
            # relative to the step: the listing row names the directory already
            detail = str(manifest).split(". HINT")[0].split(". The step")[0]
            detail = detail.replace(manifests.join(name) + "/", "")
            others.append(OtherEntry(name, "invalid", step, detail, _mtime(storage, name)))
            continue
        files[step] = step_files(storage, manifest)
        steps.append(info_of(manifest, manifests.join(name)))
    for name in storage.list_names():
        if layout.parse_step(name) is None and (other := _other_entry(storage, name)):
            others.append(other)
    steps.sort(key=lambda i: i.step)
    others.sort(key=lambda o: (o.step if o.step is not None else -1, o.name))
    run_doc, run_doc_error = read_run_doc_checked(storage)
    return RunListing(
        directory=storage.root,
        steps=steps,
        others=others,
        latest_pointer=read_pointer(storage, layout.LATEST_POINTER),
        best_pointer=read_pointer(storage, layout.BEST_POINTER),
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
    return find_runs_and_checkpoints(directory)[0]


def find_runs_and_checkpoints(directory: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """`(runs, checkpoints)` at or below a local `directory`: the runs `find_runs` finds, and
    the single checkpoints (a directory holding a manifest itself, as `save_checkpoint` without
    `step=` writes) that are not a run's steps. Neither kind is entered.

    Raises:
        FileNotFoundError, NotADirectoryError: `directory` is not a directory.
    """
    root = Path(directory)
    if not root.is_dir():
        if root.exists():
            raise NotADirectoryError(f"{directory} is a file, not a checkpoint directory")
        raise FileNotFoundError(f"{directory} does not exist")
    runs: list[str] = []
    checkpoints: list[str] = []

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
        if not is_run and any(e.name == layout.MANIFEST for e in entries):
            checkpoints.append(str(d))  # a payload holds no runs: never entered
            return
        if is_run:
            runs.append(str(d))
        for name in sorted(subdirs, key=_natural_key):
            walk(d / name, depth + 1)

    walk(root, 0)
    return runs, checkpoints
