"""`CheckpointManager`: saves, retains, tracks best, resumes and restores the steps of one run."""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
import warnings
import weakref
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from . import layout
from .errors import (
    CheckpointError,
    CheckpointLockedError,
    UnrankedStepWarning,
)
from .formats import Format, StepReader, get_format, resolve_format
from .info import CheckpointInfo
from .lock import Lock
from .manifest import Manifest, check_metadata, to_float_metrics
from .options import (
    OnExisting,
    check_bool,
    check_choice,
    check_int,
    check_mapping,
    check_seconds,
    parse_size,
)
from .processes import DEFAULT_TIMEOUT_SECS, Meeting, decided_by, detect
from .retention import DEFAULT_POLICY, BestFn, RetentionPolicy, committed_bytes
from .run import Run, StepSpec, acquire_writer_lock, as_step, short_list
from .saver import Saver
from .signals import SaveSignals, check_save_on_signals
from .storage import Storage, open_storage

_LIVE: weakref.WeakSet[CheckpointManager] = weakref.WeakSet()


class CheckpointManager:
    """Saves the steps of one training run into a directory and brings them back.

    Every save is atomic: a step appears complete, with its manifest, or not at all, and a
    failed or killed save never touches an earlier step. Retention, best tracking and resume
    are derived from the manifests on disk, so nothing is lost with the process.

    Example:
        >>> with CheckpointManager("runs/exp", max_to_keep=3, best_fn="loss",
        ...                        on_existing="resume") as mgr:
        ...     state = mgr.restore(like=state) if mgr.resuming else state
        ...     start = mgr.latest_step() + 1 if mgr.resuming else 0
        ...     for step in range(start, 1000):
        ...         state, loss = train_step(state)
        ...         mgr.save(step, state, metrics={"loss": loss})

    Args:
        directory: a local path or an fsspec URL (`s3://bucket/run`, `memory://x`).
        max_to_keep: keep the N most recent steps (None: keep all).
        keep_period: steps divisible by this are never deleted.
        best_fn: a metric name, or a function of the metrics dict returning a score.
        best_mode: "min" or "max": which scores are better.
        keep_best: with `best_fn`, also keep the K best steps (None: every ranked step).
        save_interval_steps: `save` writes only when `step % save_interval_steps == 0`
            (None: never by step count, only by time, signal or `force`).
        save_interval_secs: also save when this many seconds passed since the last save.
        save_on_signals: signals (e.g. `(signal.SIGTERM,)`, or one signal) after which the
            next `should_save` is True; once that save is committed `preempted` is True, so
            the loop can stop (see `preempted`). SIGINT then no longer raises KeyboardInterrupt.
        on_existing: what to do when `directory` already holds steps: "error", "resume" or
            "overwrite".
        read_only: open only to inspect and restore; any write raises. Given no `best_fn`,
            a reader ranks and explains retention by the retention the run's writer recorded
            in `run.json` (so `restore("best")` and `info().kept_because` match the writer's).
        format: "auto", "tree", "torch", "orbax", "pickle", or a `Format` object.
        async_save: `save` returns once a host copy is taken; a background thread writes.
        allow_pickle: allow restoring `pickle` steps (unpickling can run code); a manager
            that writes with `format="pickle"` needs it, so it can read back what it saves.
        storage_options: passed to fsspec for URL directories; never written to disk.
        max_bytes: a disk budget for all committed steps, an int of bytes or a string such
            as "20GB" (None: none). After each commit steps are deleted until the run fits,
            in the order `ckpt_core.retention` gives; never the latest or the best step (an
            `OverBudgetWarning` says when they alone exceed it).
        incremental: a `tree` save writes its arrays as sharded safetensors files and takes
            every shard unchanged since the previous committed step from it (a hard link
            locally, a server-side copy on object stores). Each step still restores on its
            own. Off by default: a damaged shared file damages every step that holds it.
        multiprocess: join a jax/torch.distributed job (None: if any; False: never, as DDP's rank 0).
        barrier_timeout_secs: how long a process of such a job waits for the others.

    Raises:
        CheckpointExistsError: steps exist and `on_existing="error"`.
        CheckpointLockedError: another live process is writing to `directory`.
        CheckpointNotFoundError: `read_only=True` and `directory` does not exist.
        OSError: `directory` cannot be created or written (a file is in the way, a read-only
            filesystem): a NotADirectoryError, PermissionError, ... saying which path.
        TypeError: an option has the wrong type, e.g. `async_save="no"`.
        ValueError: an option is out of range.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_to_keep: int | None = DEFAULT_POLICY.max_to_keep,
        keep_period: int | None = DEFAULT_POLICY.keep_period,
        best_fn: BestFn | None = DEFAULT_POLICY.best_fn,
        best_mode: Literal["min", "max"] = DEFAULT_POLICY.best_mode,
        keep_best: int | None = DEFAULT_POLICY.keep_best,
        save_interval_steps: int | None = 1,
        save_interval_secs: float | None = None,
        save_on_signals: Iterable[int] | int | None = (),
        on_existing: OnExisting = "error",
        read_only: bool = False,
        format: str | Format = "auto",
        async_save: bool = False,
        allow_pickle: bool = False,
        storage_options: dict[str, Any] | None = None,
        max_bytes: int | str | None = DEFAULT_POLICY.max_bytes,
        incremental: bool = False,
        multiprocess: bool | None = None,
        barrier_timeout_secs: float = DEFAULT_TIMEOUT_SECS,
    ) -> None:
        max_bytes = parse_size("max_bytes", max_bytes)
        policy = RetentionPolicy(max_to_keep, keep_period, best_fn, best_mode, keep_best, max_bytes)
        flags = dict(read_only=read_only, async_save=async_save, allow_pickle=allow_pickle)
        flags["incremental"] = incremental
        _check_options(save_interval_steps, save_interval_secs, on_existing, storage_options, flags)
        _check_format(format, writes=not (read_only or allow_pickle))
        signals = check_save_on_signals(save_on_signals)
        self._format = format
        self._save_interval_steps = save_interval_steps
        self._save_interval_secs = save_interval_secs
        self._allow_pickle = allow_pickle
        self._read_only = read_only
        self._storage: Storage = open_storage(directory, storage_options)
        self._mutex = threading.RLock()
        self._closed = False
        self._signals = SaveSignals(())  # none installed until the directory is open
        self.resuming = False
        meeting = _meet(self._storage, multiprocess, barrier_timeout_secs, read_only)
        self._due_by = meeting if save_interval_secs or signals else None  # see decided_by
        self._lock = _writer_lock(self._storage, meeting, read_only)
        self._on_drop = None if self._lock is None else _release_when_dropped(self, self._lock)
        try:
            self._run, self.resuming = _open_run(
                self._storage, policy, meeting, on_existing, read_only, best_fn is None
            )
            self._saver = Saver(
                self._run, self._mutex, meeting, async_save=async_save, incremental=incremental
            )
            self._signals = SaveSignals(signals)
        except BaseException:
            self._release()
            raise
        self._last_save = time.monotonic()
        _LIVE.add(self)

    # ------------------------------------------------------------------ saving

    def should_save(self, step: int) -> bool:
        """Whether `save(step, ...)` would write: the step interval, time interval or a signal."""
        if self._signals.pending:
            return True
        if self._save_interval_steps is not None and step % self._save_interval_steps == 0:
            return True
        return (
            self._save_interval_secs is not None
            and time.monotonic() - self._last_save >= self._save_interval_secs
        )

    def save(
        self,
        step: int,
        state: Any,
        *,
        metrics: Mapping[str, Any] | None = None,
        metadata: Any = None,
        force: bool = False,
    ) -> bool:
        """Save `state` as step `step` if it is due (or `force`).

        Args:
            step: the training step, a non-negative integer.
            state: the tree to save (see the formats).
            metrics: numbers (Python, numpy, torch or jax scalars), stored as floats and
                used by `best_fn`.
            metadata: anything JSON-serialisable, stored in the manifest.
            force: save even if `should_save(step)` is False.

        Returns:
            True if a checkpoint was written (or, with `async_save`, is being written).

        Raises:
            CheckpointError: the manager is read-only or closed.
            DiskFullError: the disk filled up; nothing was committed.
            TypeError: `metrics` is not a mapping of numbers, or `metadata` is not JSON.
            Exception: an earlier background save failed: its error is raised here, of the
                type a synchronous save raises (a full disk: DiskFullError).
        """
        self._check_writable()
        step = as_step(step)
        if not decided_by(self._due_by, force or self.should_save(step), step):
            return False
        signals = self._signals.count  # a signal arriving during this save is owed the next one
        floats = to_float_metrics(metrics)
        with self._mutex:
            self._run.refuse_pruned_at_once(step, floats)
        check_metadata(metadata)
        fmt = resolve_format(self._format, state)
        # A preemption save is written in this thread, without a snapshot: it is committed
        # when save returns (so `preempted` can stop the loop) and sooner than a copy and a thread.
        preempting = signals > self._signals.saved
        self._saver.save(step, fmt, state, floats, metadata, background=not preempting)
        # Only now: a save that fails on its state must not first say the step is unranked.
        if (problem := self._run.policy.missing_metric(floats)) is not None:
            warnings.warn(f"step {step}: {problem}", UnrankedStepWarning, stacklevel=2)
        self._last_save = time.monotonic()
        self._signals.answered(signals)
        return True

    def wait(self) -> None:
        """Block until the background save is committed and pruned files are gone (or raise)."""
        self._saver.wait()

    # ------------------------------------------------------------------ reading

    def latest_step(self) -> int | None:
        """The newest committed step, or None."""
        with self._mutex:
            return self._run.latest_step()

    def best_step(self) -> int | None:
        """The best committed step, or None (the one meaning of best: see `ckpt_core.run`)."""
        with self._mutex:
            return self._run.best_step()

    def all_steps(self) -> list[int]:
        """Every committed step, ascending."""
        with self._mutex:
            return sorted(self._run.infos)

    def path_of(self, name: str) -> Path | str:
        return self._run.path_of(name)

    def path(self, step: int) -> Path | str:
        """The directory of step `step` (a `Path` locally, a URL string on object stores)."""
        return self.path_of(layout.step_dirname(self._resolve_step(step)))

    def payload_path(self, step: StepSpec = None) -> Path | str:
        """The main payload file of a step (`state.pt` for the torch format), for other tools."""
        return self._run.payload_path(self._resolve_step(step))

    def info(self, step: StepSpec = None) -> CheckpointInfo:
        """What the manifest says about `step`, and why retention keeps it."""
        step = self._resolve_step(step)
        with self._mutex:
            return self._run.info(step)

    def metrics(self, step: StepSpec = None) -> Mapping[str, float]:
        return self.info(step).metrics

    def metadata(self, step: StepSpec = None) -> Any:
        return self.info(step).metadata

    def restore(self, step: StepSpec = None, like: Any = None, *, lazy: bool = False) -> Any:
        """Read a committed step back, verifying every file's size and checksum.

        Example:
            >>> state = mgr.restore(mgr.latest_step(), state)  # orbax / vibe-rl order

        Args:
            step: an int, "latest" (also None) or "best".
            like: a tree to restore into, also positional: the result has its structure and
                leaf types (torch tensors on its devices, jax arrays in its shardings).
            lazy: memory-map payloads where the format can (`torch`), instead of reading them.

        Raises:
            CheckpointNotFoundError: no such step.
            StructureMismatchError: `like` differs; the message names every differing path.
            CorruptCheckpointError: a file is missing or damaged; the message names it.
            UnsafeFormatError: the step is a pickle and `allow_pickle` is False.
        """
        self._saver.join()  # see the save in flight; its error stays for save/wait
        manifest = self._run.manifest(self._resolve_step(step))
        return get_format(manifest.format).read(self._reader(manifest, lazy), like)

    def _reader(self, manifest: Manifest, lazy: bool = False) -> StepReader:  # verified together
        return self._run.reader(manifest, self._saver.meeting, self._allow_pickle, lazy=lazy)

    def verify(self, step: StepSpec = None) -> None:
        """Check every file of `step` against its manifest; raises CorruptCheckpointError."""
        self._run.reader(self._run.manifest(self._resolve_step(step))).verify_all()

    def _resolve_step(self, step: StepSpec) -> int:
        with self._mutex:
            return self._run.resolve(step)

    def reload(self) -> None:
        """Re-read the directory (for read-only managers watching a run that is still writing)."""
        with self._mutex:
            self._run.scan()

    # ------------------------------------------------------------------ run level

    @property
    def run_metadata(self) -> dict[str, Any]:
        """Run-level JSON (config, seed, ...) kept in `run.json` beside the steps."""
        meta = self._run.document.read().get("metadata", {})
        return meta if isinstance(meta, dict) else {}

    def update_run_metadata(self, values: Mapping[str, Any]) -> None:
        """Merge `values` into the run metadata (written atomically)."""
        self._check_writable()
        self._run.document.update_metadata(values)

    def mark_complete(self) -> None:
        """Record that the run finished; adapters treat resuming it as a no-op."""
        self._check_writable()
        self.wait()
        with self._mutex:
            self._run.document.mark_complete(self._run.latest_step())

    @property
    def is_complete(self) -> bool:
        return bool(self._run.document.read().get("complete", False))

    @property
    def directory(self) -> str:
        return self._storage.root

    @property
    def storage(self) -> Storage:
        return self._storage

    @property
    def policy(self) -> RetentionPolicy:
        return self._run.policy

    @property
    def preemption_signal(self) -> int | None:
        """The signal received since the last save, if any (the run should save and stop)."""
        return self._signals.last if self._signals.pending else None

    @property
    def preempted(self) -> bool:
        """True once a signal in `save_on_signals` arrived and the save it triggered returned.

        That save is committed by then, also with `async_save`, so a loop can stop right away;
        it stays True::

            mgr.save(step, state)
            if mgr.preempted:
                break
        """
        return self._signals.saved > 0

    def size_bytes(self) -> int:
        """The payload bytes of all committed steps, a file shared between steps counted once."""
        with self._mutex:
            return committed_bytes(self._run.step_files().values())

    def backup(self, path: str | os.PathLike[str]) -> Path:
        """Write a zip of every committed step (and `run.json`) to `path`; returns its path.

        Every file is verified against its manifest as it is copied, so a backup never
        preserves damage silently (CorruptCheckpointError names the file).
        """
        self.wait()
        readers = [self._run.reader(self._run.manifest(step)) for step in self.all_steps()]
        return _zip_steps(self._storage, readers, Path(path))

    def clear(self) -> None:
        """Delete every step and library file in the directory (files of others stay)."""
        self._check_writable()
        self.wait()
        with self._mutex:
            self._run.remove_owned()
            self._run.document.record_retention(self._run.policy)

    # ------------------------------------------------------------------ lifetime

    def _check_writable(self) -> None:
        if self._closed:
            raise CheckpointError(f"the CheckpointManager of {self._storage.root} is closed.")
        if self._read_only:
            raise CheckpointError(
                f"{self._storage.root} was opened with read_only=True; it cannot be written. "
                "HINT: open it with read_only=False (one writer at a time)."
            )
        if self._saver.error is not None:
            self.wait()
        if self._lock is not None and self._lock.lost:
            raise _lost_lease_error(self._storage.root)

    def _release(self) -> None:
        """Restore the signal handlers and let go of the lock."""
        self._signals.close()
        if self._on_drop is not None:
            self._on_drop.detach()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def close(self) -> None:
        """Finish the pending background save, then release the directory. Idempotent.

        Raises:
            Exception: the pending background save failed: its error, of the type a
                synchronous save raises (a full disk: DiskFullError).
        """
        if self._closed:
            return
        try:
            self._saver.close()  # and the other processes' keys go once all of them closed
        finally:
            self._closed = True
            self._release()
            _LIVE.discard(self)

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        try:  # finish the pending save, but let the user's own error be the one raised
            self.close()
        except Exception as background:
            exc.add_note(f"ckpt_core: while handling it, {background}")

    def __repr__(self) -> str:
        mode = "read_only" if self._read_only else "closed" if self._closed else "open"
        return f"CheckpointManager({self._storage.root!r}, steps={short_list(self.all_steps())}, {mode})"


def _meet(
    storage: Storage, multiprocess: bool | None, timeout: float, read_only: bool
) -> Meeting | None:
    """The meetings with the other processes of a multi-process job (None: a single writer,
    or a reader: each process reads by itself)."""
    if multiprocess is not None:
        check_bool("multiprocess", multiprocess)
    check_seconds("barrier_timeout_secs", timeout)
    group = None if read_only or multiprocess is False else detect()
    if group is None and multiprocess:
        raise CheckpointError(
            "CheckpointManager(multiprocess=True) found no multi-process job: neither "
            "jax.distributed (initialised, more than one process) nor torch.distributed (an "
            "initialised group of world size > 1). HINT: initialise the framework's "
            "distributed runtime before opening the manager, or leave multiprocess=None."
        )
    return None if group is None else Meeting(group, storage.root, timeout)


def _writer_lock(storage: Storage, meeting: Meeting | None, read_only: bool) -> Lock | None:
    """The directory's lock, taken by its one writer: the primary of a multi-process job."""
    if read_only or not (meeting is None or meeting.group.is_primary):
        return None
    try:
        return acquire_writer_lock(storage)
    except BaseException as e:
        if meeting is not None:  # the others fail with this error, not at the timeout
            meeting.fail(meeting.topic("open"), e)  # the topic `_open_run` would have used
        raise


def _open_run(
    storage: Storage,
    policy: RetentionPolicy,
    meeting: Meeting | None,
    on_existing: OnExisting,
    read_only: bool,
    adopt: bool,
) -> tuple[Run, bool]:
    """The run, opened (sweep, `on_existing`), and whether it resumes. In a multi-process job
    the primary opens it, then the others read what it left; an error reaches them all."""
    topic = meeting.topic("open") if meeting is not None else ""
    if meeting is not None and not meeting.group.is_primary:
        what, hint = f"in opening {storage.root}", "open the manager in every process alike."
        resuming = meeting.share(topic, None, what=what, hint=hint)
        return Run(storage, policy, housekeeping=False), resuming
    try:
        if not read_only:
            storage.sweep()
        run = Run(storage, policy)
        if read_only:
            run.open_as_reader(adopt=adopt)
        resuming = False if read_only else run.open_as_writer(on_existing)
    except BaseException as e:
        if meeting is not None:
            meeting.fail(topic, e)
        raise
    if meeting is not None:
        meeting.share(topic, resuming, what="", hint="")
    return run, resuming


def _lost_lease_error(root: str) -> CheckpointLockedError:
    return CheckpointLockedError(
        f"this manager lost its lease on {root} to another writer (its refresh was late); "
        "nothing more is written. HINT: make sure one job writes a directory at a time, then "
        "reopen it with on_existing='resume'."
    )


def _release_when_dropped(manager: CheckpointManager, lock: Lock) -> weakref.finalize[Any, Any]:
    """A manager dropped without close() must not hold the directory until exit. At exit,
    _finish_pending_saves closes live managers (commit first, then unlock)."""
    on_drop = weakref.finalize(manager, lock.release_abandoned)
    on_drop.atexit = False
    return on_drop


def _check_options(
    save_interval_steps: int | None,
    save_interval_secs: float | None,
    on_existing: OnExisting,
    storage_options: dict[str, Any] | None,
    flags: dict[str, bool],
) -> None:
    """The manager's options that are not retention, format or signals: a clear error each."""
    check_int(
        "save_interval_steps", save_interval_steps, minimum=1, none="no step interval", example=100
    )
    check_seconds("save_interval_secs", save_interval_secs)
    check_choice("on_existing", on_existing, ("error", "resume", "overwrite"))
    for name, flag in flags.items():
        check_bool(name, flag)
    check_mapping("storage_options", storage_options)


def _check_format(format: Any, *, writes: bool) -> None:
    """A format name (unknown names fail here, not at save), `"auto"` or a `Format`.

    `writes`: the manager may write pickles it could not read back (no allow_pickle).
    """
    if isinstance(format, str) and format != "auto":
        chosen: Format | None = get_format(format)
    elif isinstance(format, Format):
        chosen = format
    elif format == "auto":
        chosen = None
    else:
        raise TypeError(
            f"format must be a name or a Format object, got {format!r}; a Format needs a "
            "`name` and the methods accepts, snapshot, write and read."
        )
    if chosen is not None and chosen.name == "pickle" and writes:
        # Every step this manager commits must come back with its own options.
        raise ValueError(
            "CheckpointManager(format='pickle') writes steps that only allow_pickle=True can "
            "restore, so this manager could not read back what it saves. HINT: pass "
            "allow_pickle=True if you trust whoever writes this directory, or use "
            "format='tree' or 'torch', which never unpickle."
        )


def _zip_steps(storage: Storage, readers: list[StepReader], target: Path) -> Path:
    """Zip every file of the steps `readers` read, verified as copied, and `run.json`."""
    tmp = target.with_name(target.name + ".partial")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for reader in readers:
                for file in sorted(reader.manifest.files):
                    with reader.open(file) as src, zf.open(reader.rel(file), "w") as dst:
                        while chunk := src.read(8 << 20):
                            dst.write(chunk)
                        src.verify()
                zf.writestr(reader.rel(layout.MANIFEST), reader.manifest.to_json())
            with contextlib.suppress(FileNotFoundError):
                zf.writestr(layout.RUN_FILE, storage.read_bytes(layout.RUN_FILE))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)
    return target


@atexit.register
def _finish_pending_saves() -> None:
    """At interpreter exit, commit pending background saves and release locks."""
    for manager in list(_LIVE):
        try:
            manager.close()
        except Exception as e:  # nothing can raise to the user any more: say it loudly
            warnings.warn(f"ckpt_core: {e}", RuntimeWarning, stacklevel=1)
