"""The run directory: its committed steps, its run document, its pointers and retention applied to it.

Every reader and writer of a run goes through here: the manager, the one-shot functions and
`ckpt ls/prune/best` (`listing.py` builds on it for `ckpt ls`; `run_doc.py` holds `run.json`).
A `step_*` directory is a committed step exactly when its manifest exists, is valid and names
the same step.

"Best" has one meaning everywhere (manager, one-shot functions, `ckpt`): the committed step
ranked first by the run's `best_fn` (the one given to this process, else the one the run
recorded in `run.json`; ties go to the newer step, NaN and infinities never rank). A run ranked
by a function this process does not have (a callable `best_fn` is recorded by name only), or
whose `run.json` is unreadable or records no retention, was ranked by its writer: there the `best` pointer the writer
kept stands in, when it names a committed step. A run with no `best_fn` has no best step
(None; a writer without `best_fn` keeps no old best), and neither has one whose steps are all
unranked. A policy applied without `best_fn` (`ckpt prune --metric none`) still keeps the
run's best. Adapters map their own conventions onto this (Lightning's `best_model_path`
without `monitor` is the latest checkpoint, as `ModelCheckpoint`'s is).

Retention is recorded in `run.json` when a writer opens the run with settings that differ from
the recorded ones (or none were recorded), never by a reader and never by `ckpt prune`, which
applies a policy once. The single writer holding the lock is the one that applies retention,
after each of its commits (`Run.committed`, called by `saver.Saver`), and the only one that
repairs the pointers.
"""

from __future__ import annotations

import dataclasses
import operator
import os
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from . import layout
from .errors import CheckpointExistsError, CheckpointNotFoundError, CorruptCheckpointError
from .formats import StepReader, get_format
from .info import CheckpointInfo
from .lock import Lock
from .manifest import Manifest
from .options import OnExisting, describe
from .processes import Meeting
from .retention import KEEP_REASONS, RetentionPolicy, StepFiles
from .run_doc import RunDocument, ranking_unknown, read_run_doc_checked, recorded_policy
from .storage import Storage, new_token, open_storage, step_files

StepSpec = int | Literal["latest", "best"] | None


def open_directory(directory: str | os.PathLike[str]) -> Storage:
    """The storage of a local path or fsspec URL (no lock taken, nothing written)."""
    return open_storage(directory, None)


def acquire_writer_lock(storage: Storage) -> Lock:
    """Take the run's single-writer lock for this process (CheckpointLockedError names a holder)."""
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    return storage.acquire_lock({**owner, "token": new_token()})


# ---------------------------------------------------------------- manifests, pointers, run.json


def read_manifest(storage: Storage, name: str) -> Manifest:
    """The validated manifest of the step directory `name`.

    Raises:
        CorruptCheckpointError: it is missing, unreadable or invalid, or names another step.
    """
    return ManifestReader(storage).read(name)


class ManifestReader:
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


def read_pointer(storage: Storage, pointer: str) -> int | None:
    """The step a `latest` or `best` pointer names, or None (absent or not a step name)."""
    try:
        text = storage.read_bytes(pointer).decode("utf-8", "replace").strip()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    return layout.parse_step(text)


def _stand_in(
    policy: RetentionPolicy, steps: list[CheckpointInfo], run_best: int | None
) -> int | None:
    if policy.best_fn is not None or run_best not in {i.step for i in steps}:
        return None
    return run_best


def best_step(
    policy: RetentionPolicy, steps: list[CheckpointInfo], run_best: int | None = None
) -> int | None:
    """The best step under `policy`, in the one meaning this module's docstring gives.

    Args:
        policy: the retention in force: the caller's, else the run's recorded one.
        steps: the committed steps.
        run_best: the run's own best step, for a `policy` without `best_fn`: the `best`
            pointer where the run's ranking is unknown to this process (`ranking_unknown`),
            or the step the run's recorded `best_fn` ranks first (e.g. `ckpt prune --metric
            none` still keeps it). A writer without `best_fn` passes None: it has no best.
    """
    if policy.best_fn is not None:
        return policy.best_step(steps)
    return _stand_in(policy, steps, run_best)


def ranked_steps(
    policy: RetentionPolicy, steps: list[CheckpointInfo], run_best: int | None = None
) -> list[int]:
    """Every ranked committed step, best first (`best_step` is the first; same arguments)."""
    if policy.best_fn is not None:
        return policy.ranked(steps)
    stand_in = _stand_in(policy, steps, run_best)
    return [] if stand_in is None else [stand_in]


def kept_because(
    policy: RetentionPolicy, steps: list[CheckpointInfo], run_best: int | None = None
) -> dict[int, tuple[str, ...]]:
    """Why `policy` keeps each step (empty: it deletes it). Same arguments as `best_step`:
    without `best_fn`, `run_best` is kept as "best" (unless `keep_best=0`)."""
    why = policy.reasons(steps)
    stand_in = _stand_in(policy, steps, run_best)
    if stand_in is not None and policy.keep_best != 0:
        why[stand_in] = tuple(r for r in KEEP_REASONS if r in (*why[stand_in], "best"))
    return why


def to_delete(
    policy: RetentionPolicy,
    steps: list[CheckpointInfo],
    files: dict[int, StepFiles] | None,
    run_best: int | None = None,
) -> list[int]:
    """The steps `policy` deletes: those no rule keeps, then those over its byte budget."""
    why = kept_because(policy, steps, run_best)
    return sorted([s for s, r in why.items() if not r] + policy.over_budget(steps, files))


def info_of(manifest: Manifest, path: Path | str) -> CheckpointInfo:
    """A committed step's record, from its manifest alone."""
    return CheckpointInfo(
        step=manifest.step,
        time=manifest.time,
        metrics=manifest.metrics,
        metadata=manifest.metadata,
        path=path,
        bytes=manifest.nbytes,
        format=manifest.format,
    )


def step_manifests(
    storage: Storage, reader: ManifestReader
) -> Iterator[tuple[str, int, Manifest | CorruptCheckpointError]]:
    """Each `step_*` entry, its step, and its manifest or why it is not a committed step."""
    for name in storage.list_names():
        step = layout.parse_step(name)
        if step is None:
            continue
        try:
            yield name, step, reader.read(name)
        except CorruptCheckpointError as e:
            yield name, step, e


def as_step(step: Any, *, reading: bool = False) -> int:
    """A step as an int (numpy and torch integers accepted), or a ValueError saying why.

    `reading`: for restore, info, path...: "latest" and "best" are accepted there too.
    """
    expected = "a non-negative integer" + (", 'latest', 'best' or None" if reading else "")
    try:
        if isinstance(step, bool):
            raise TypeError
        value = operator.index(step)
    except TypeError:
        if isinstance(step, bool | str | bytes | float):
            hint = "HINT: pass the step number, e.g. 100."
        elif reading:  # the state passed where the step goes: restore(state)
            hint = (
                "HINT: the first argument is the step; pass the tree to restore into after "
                "it or as like=, e.g. restore(step, state) or restore(like=state)."
            )
        else:
            hint = "HINT: the step comes first: save(step, state)."
        raise ValueError(f"step must be {expected}; found {describe(step)}. {hint}") from None
    if value < 0:
        hint = " HINT: restore('latest') reads the newest step." if reading else ""
        raise ValueError(f"step must be {expected}; found {value}.{hint}")
    return value


def short_list(steps: list[int]) -> str:
    """Steps for a message: all of a few, else the first and last three and the count."""
    if len(steps) <= 8:
        return str(steps)
    return (
        f"[{', '.join(map(str, steps[:3]))}, ..., {', '.join(map(str, steps[-3:]))}] ({len(steps)})"
    )


# ---------------------------------------------------------------- a run held open


class Run:
    """One run directory held open by a manager (or `ckpt prune`): the model every user shares.

    It lists the committed steps once and keeps the list current as steps are committed and
    deleted; payload files are stat'ed only when the byte budget or `size_bytes` needs them,
    so opening a 10,000-step run reads manifests and nothing more. Methods that write assume
    the caller holds the directory's lock; none of them is thread-safe on its own.

    Args:
        storage: the run directory.
        policy: the retention in force (see `adopt_recorded_retention` for readers).
        pointer_ranks: the `best` pointer stands in for a ranking this process does not
            have (see `ranking_unknown`); only ever for readers and `ckpt prune`.
        housekeeping: this process deletes pruned steps and writes the pointers; False in
            the processes of a multi-process job other than the primary, which only follow.
    """

    def __init__(
        self,
        storage: Storage,
        policy: RetentionPolicy,
        *,
        pointer_ranks: bool = False,
        housekeeping: bool = True,
    ) -> None:
        self.storage = storage
        self.policy = policy
        self.pointer_ranks = pointer_ranks
        self.housekeeping = housekeeping
        self.document = RunDocument(storage, writes=housekeeping)
        self.infos: dict[int, CheckpointInfo] = {}
        self._files: dict[int, StepFiles] = {}
        self._unstated: dict[int, Manifest] = {}  # committed, files not stat'ed yet
        self._pointers: dict[str, str | None] = {}  # what this process last wrote
        self.scan()

    # -------------------------------------------------------------- steps

    def scan(self) -> None:
        """(Re-)read every manifest: the committed steps as the directory holds them now."""
        self.infos, self._files, self._unstated = {}, {}, {}
        reader = ManifestReader(self.storage)
        for _, _, manifest in step_manifests(self.storage, reader):
            if isinstance(manifest, Manifest):
                self._add(manifest)

    def path_of(self, name: str) -> Path | str:
        """A run entry's location: a `Path` locally, a URL string on object stores."""
        full = self.storage.join(name)
        return Path(full) if self.storage.is_local else full

    def _add(self, manifest: Manifest) -> None:
        step = manifest.step
        self.infos[step] = info_of(manifest, self.path_of(layout.step_dirname(step)))
        self._unstated[step] = manifest
        self._files.pop(step, None)

    def _forget(self, step: int) -> None:
        self.infos.pop(step, None)
        self._files.pop(step, None)
        self._unstated.pop(step, None)

    def manifest(self, step: int) -> Manifest:
        """The manifest of committed step `step`, read again (CorruptCheckpointError if gone)."""
        return read_manifest(self.storage, layout.step_dirname(step))

    def reader(
        self,
        manifest: Manifest,
        meeting: Meeting | None = None,
        allow_pickle: bool = False,
        *,
        lazy: bool = False,
    ) -> StepReader:
        """Verified read access to the payload of the committed step `manifest` describes;
        with `meeting`, its processes verify it together (`StepReader.verify_all`)."""
        name = layout.step_dirname(manifest.step)
        return StepReader(self.storage, name, manifest, allow_pickle, lazy, meeting)

    def payload_path(self, step: int) -> Path | str:
        """The main payload file of `step` (`state.pt` for the torch format), for other tools."""
        manifest = self.manifest(step)
        main = getattr(get_format(manifest.format), "main_file", None)
        if main and main not in manifest.files and f"{main}.index.json" in manifest.files:
            main = f"{main}.index.json"  # a sharded (incremental) step: its index names the rest
        parts = [layout.step_dirname(step), manifest.payload_dir, main or ""]
        return self.path_of("/".join(p for p in parts if p))

    def info(self, step: int) -> CheckpointInfo:
        """Committed step `step`'s record, with why retention keeps it."""
        return dataclasses.replace(self.infos[step], kept_because=self.reasons().get(step, ()))

    def latest_step(self) -> int | None:
        return max(self.infos, default=None)

    def best_step(self) -> int | None:
        """The best committed step (see the module docstring for the one meaning of best)."""
        pointer = read_pointer(self.storage, layout.BEST_POINTER) if self.pointer_ranks else None
        return best_step(self.policy, list(self.infos.values()), pointer)

    def resolve(self, spec: StepSpec) -> int:
        """The committed step `spec` names: an int, "latest" (also None) or "best".

        Raises:
            CheckpointNotFoundError: there is no such step (the message lists the steps).
            ValueError: `spec` is not a step (e.g. the state passed where the step goes).
        """
        if spec is None or (isinstance(spec, str) and spec == "latest"):
            found, what = self.latest_step(), "latest"
        elif isinstance(spec, str) and spec == "best":
            found, what = self.best_step(), "best"
            if found is None and self.policy.best_fn is None:
                raise CheckpointNotFoundError(
                    f"restore('best') needs a best_fn; {self.storage.root} was opened without "
                    "one, its run.json records no best_fn and no `best` pointer names a "
                    "committed step. HINT: rank steps by a metric: CheckpointManager(..., "
                    "best_fn='val_loss') and save(..., metrics=...); else ask for 'latest' or "
                    "a step number."
                )
        else:
            number = as_step(spec, reading=True)
            found, what = (number if number in self.infos else None), f"step {number}"
        if found is None:
            raise CheckpointNotFoundError(
                f"no {what} checkpoint in {self.storage.root}; committed steps: "
                f"{short_list(sorted(self.infos))}."
            )
        return found

    def reasons(self, policy: RetentionPolicy | None = None) -> dict[int, tuple[str, ...]]:
        """Why `policy` (default: the run's) keeps each step (empty: it would delete it)."""
        return kept_because(policy or self.policy, list(self.infos.values()), self.best_step())

    def to_delete(self, policy: RetentionPolicy | None = None) -> list[int]:
        """The steps `policy` (default: the run's) deletes, ascending."""
        policy = policy or self.policy
        files = self.step_files() if policy.max_bytes is not None else None
        return to_delete(policy, list(self.infos.values()), files, self.best_step())

    def step_files(self) -> dict[int, StepFiles]:
        """Every committed step's payload files by identity (shared bytes count once)."""
        for step, manifest in self._unstated.items():
            if step in self.infos:
                self._files[step] = step_files(self.storage, manifest)
        self._unstated = {}
        return self._files

    def _budget_files(self) -> dict[int, StepFiles] | None:
        """What the retention rules need to know of the files: nothing without a budget."""
        return self.step_files() if self.policy.max_bytes is not None else None

    def refuse_pruned_at_once(self, step: int, metrics: dict[str, float]) -> None:
        """Refuse to save an old `step` that retention would delete as soon as it is committed.

        Raises:
            ValueError: it would be; the message says how to roll a run back instead.
        """
        latest = self.latest_step()
        if latest is None or step >= latest or step in self.infos:
            return
        record = CheckpointInfo(step, 0.0, metrics, None, "", 0, "")
        files = self._budget_files()
        files = None if files is None else {**files, step: {}}
        if step not in to_delete(self.policy, [*self.infos.values(), record], files):
            return
        raise ValueError(
            f"step {step} is older than the latest step {latest} in {self.storage.root} and "
            "retention would delete it as soon as it is written. HINT: to roll a run back, "
            "delete the later steps first (`ckpt prune`, or clear()), or save to a new directory."
        )

    def budget_exceeded(self) -> str | None:
        """A warning when the steps the budget never deletes alone exceed `max_bytes`."""
        return self.policy.budget_exceeded(list(self.infos.values()), self._budget_files())

    # -------------------------------------------------------------- writing (lock held)

    def open_as_reader(self, *, adopt: bool) -> None:
        """Open for inspecting and restoring; `adopt`: rank as the run's writer recorded.

        Raises:
            CheckpointNotFoundError: the directory does not exist (a reader never creates it).
        """
        if not self.infos and not self.storage.exists(""):
            raise CheckpointNotFoundError(
                f"{self.storage.root} does not exist; read_only=True opens an existing run "
                "and never creates one. HINT: check the path for a typo, or open it without "
                "read_only to start a run there."
            )
        if adopt:
            self.adopt_recorded_retention()

    def open_as_writer(self, on_existing: OnExisting) -> bool:
        """Apply the Resume semantics for a writer holding the lock; True when it resumes.

        Args:
            on_existing: "error", "resume" or "overwrite", for a run that has committed steps.

        Raises:
            CheckpointExistsError: steps exist and `on_existing="error"`.
        """
        resuming = False
        if self.infos:
            latest = self.latest_step()
            if on_existing == "error":
                raise CheckpointExistsError(
                    f"{self.storage.root} already holds {len(self.infos)} committed "
                    f"checkpoint(s), the latest at step {latest}. HINT: pass "
                    f"on_existing='resume' to continue from step {latest}, "
                    "on_existing='overwrite' to delete them and start over, or use another "
                    "directory (adapters: resume=True / overwrite=True)."
                )
            if on_existing == "overwrite":
                self.remove_owned()
            else:
                self.quarantine_damaged_newest()
                resuming = bool(self.infos)
        self.document.set_aside_if_damaged()
        self.document.record_retention(self.policy)
        return resuming

    def committed(self, manifest: Manifest) -> list[int]:
        """Record a step just committed by this process, then apply retention.

        Returns:
            The steps retention deleted.
        """
        self._add(manifest)
        return self.apply_retention()

    def apply_retention(self, policy: RetentionPolicy | None = None) -> list[int]:
        """Delete the steps `policy` (default: the run's own) does not keep; repair pointers.

        A step is forgotten before it is deleted: a failed delete leaves a complete step on
        disk, which the next open finds again; never a listed step that is gone. The pointers
        follow the run's own policy, not `policy`: a one-off policy (`ckpt prune --metric acc`)
        decides what is deleted, never what the run calls best.

        Returns:
            The deleted steps, ascending.
        """
        doomed = self.to_delete(policy)
        for step in doomed:
            self._forget(step)
            if self.housekeeping:
                self.storage.delete_step(layout.step_dirname(step))
        self.refresh_pointers()
        return doomed

    def refresh_pointers(self) -> None:
        """Keep the `latest` and `best` pointer files current (for people and tools), by the
        run's own policy.

        Without a `best_fn` the `best` pointer cannot be derived: it is left as a writer
        that ranked left it, and removed only when it names a step that is gone.
        """
        if not self.housekeeping:
            return
        targets = {layout.LATEST_POINTER: self.latest_step()}
        if self.policy.best_fn is not None:
            targets[layout.BEST_POINTER] = best_step(self.policy, list(self.infos.values()))
        elif read_pointer(self.storage, layout.BEST_POINTER) not in self.infos and (
            self.storage.exists(layout.BEST_POINTER)
        ):
            targets[layout.BEST_POINTER] = None  # cannot rank, but must not point at nothing
        for pointer, step in targets.items():
            value = None if step is None else layout.step_dirname(step)
            if self._pointers.get(pointer, "?") == value:
                continue
            if value is None:
                self.storage.remove(pointer)
            else:  # derived from the manifests: no fsync needed, a stale pointer is harmless
                self.storage.write_small(pointer, f"{value}\n".encode(), durable=False)
            self._pointers[pointer] = value

    def remove_owned(self) -> None:
        """Delete every entry the library owns (steps, pointers, run.json); others' files stay."""
        for name in self.storage.list_names() if self.housekeeping else ():
            if layout.parse_step(name) is not None:
                self.storage.delete_step(name)
            elif layout.is_owned(name):
                self.storage.remove(name)
        self.infos, self._files, self._unstated, self._pointers = {}, {}, {}, {}

    def quarantine_damaged_newest(self) -> None:
        """Verify the newest step; move damaged ones aside (never delete) until one is intact."""
        names = self.storage.list_names()
        for step in sorted(s for n in names if (s := layout.parse_step(n)) is not None)[::-1]:
            name = layout.step_dirname(step)
            try:
                self.reader(read_manifest(self.storage, name)).verify_all()
                break
            except CorruptCheckpointError as e:
                aside = layout.corrupt_dirname(step, int(time.time()))
                warnings.warn(
                    f"step {step} in {self.storage.root} is damaged ({e}); moved aside to "
                    f"{aside} and resuming from the newest intact step instead.",
                    RuntimeWarning,
                    stacklevel=4,
                )
                self.storage.rename(name, aside)
                self._forget(step)
        self.refresh_pointers()

    def adopt_recorded_retention(self) -> None:
        """Rank and explain retention as the run's writer did (for a reader given no best_fn)."""
        doc, error = read_run_doc_checked(self.storage)
        self.policy = recorded_policy(doc) or self.policy
        self.pointer_ranks = ranking_unknown(doc, error)
