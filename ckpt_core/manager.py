"""`CheckpointManager`: saves, retains, tracks best, resumes and restores the steps of one run."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import operator
import os
import signal
import socket
import threading
import time
import warnings
import weakref
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal

from . import layout
from .commit import write_step
from .errors import (
    CheckpointError,
    CheckpointExistsError,
    CheckpointLockedError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    OverBudgetWarning,
    UnrankedStepWarning,
)
from .formats import Format, SnapshotBuffers, StepReader, get_format, resolve_format
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
    describe,
    parse_size,
)
from .retention import BestFn, RetentionPolicy, StepFiles, committed_bytes
from .signals import check_save_on_signals
from .storage import Storage, disk_full_error, new_token, open_storage, step_files

StepSpec = int | Literal["latest", "best"] | None

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
        read_only: open only to inspect and restore; any write raises.
        format: "auto", "tree", "torch", "orbax", "pickle", or a `Format` object.
        async_save: `save` returns once a host copy is taken; a background thread writes.
        allow_pickle: allow restoring `pickle` steps (unpickling can run code); a manager
            that writes with `format="pickle"` needs it, so it can read back what it saves.
        storage_options: passed to fsspec for URL directories; never written to disk.
        max_bytes: a disk budget for all committed steps, an int of bytes or a string such
            as "20GB" or "500MiB" (None: no budget). After each commit, steps are deleted
            until the run fits: those kept only as recent (oldest first), then by
            `keep_period` (oldest first), then by best rank (worst first). The latest and the
            best step are never deleted for it; an `OverBudgetWarning` says when they alone
            exceed it.
        incremental: a `tree` save writes its arrays as sharded safetensors files (large
            arrays in row blocks) and takes every shard unchanged since the previous
            committed step from it (a hard link on a local disk, a server-side copy on an
            object store) instead of writing it. Each step still restores on its own. Off by
            default: a damaged shared file damages every step that holds it.

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
        max_to_keep: int | None = 5,
        keep_period: int | None = None,
        best_fn: BestFn | None = None,
        best_mode: Literal["min", "max"] = "min",
        keep_best: int | None = 1,
        save_interval_steps: int | None = 1,
        save_interval_secs: float | None = None,
        save_on_signals: Iterable[int] | int | None = (),
        on_existing: OnExisting = "error",
        read_only: bool = False,
        format: str | Format = "auto",
        async_save: bool = False,
        allow_pickle: bool = False,
        storage_options: dict[str, Any] | None = None,
        max_bytes: int | str | None = None,
        incremental: bool = False,
    ) -> None:
        self._policy = RetentionPolicy(
            max_to_keep,
            keep_period,
            best_fn,
            best_mode,
            keep_best,
            parse_size("max_bytes", max_bytes),
        )
        check_int(
            "save_interval_steps",
            save_interval_steps,
            minimum=1,
            none="no step interval",
            example=100,
        )
        check_seconds("save_interval_secs", save_interval_secs)
        check_choice("on_existing", on_existing, ("error", "resume", "overwrite"))
        for name, flag in (
            ("read_only", read_only),
            ("async_save", async_save),
            ("allow_pickle", allow_pickle),
            ("incremental", incremental),
        ):
            check_bool(name, flag)
        check_mapping("storage_options", storage_options)
        if isinstance(format, str) and format != "auto":
            chosen: Format | None = get_format(format)  # unknown names fail here, not at save
        elif isinstance(format, Format):
            chosen = format
        elif format == "auto":
            chosen = None
        else:
            raise TypeError(
                f"format must be a name or a Format object, got {format!r}; a Format needs a "
                "`name` and the methods accepts, snapshot, write and read."
            )
        if chosen is not None and chosen.name == "pickle" and not (read_only or allow_pickle):
            # Every step this manager commits must come back with its own options.
            raise ValueError(
                "CheckpointManager(format='pickle') writes steps that only allow_pickle=True can "
                "restore, so this manager could not read back what it saves. HINT: pass "
                "allow_pickle=True if you trust whoever writes this directory, or use "
                "format='tree' or 'torch', which never unpickle."
            )
        self._format = format
        self._save_interval_steps = save_interval_steps
        self._save_interval_secs = save_interval_secs
        self._async = async_save
        self._incremental = incremental
        self._allow_pickle = allow_pickle
        self._read_only = read_only
        self._storage: Storage = open_storage(directory, storage_options)
        self._mutex = threading.RLock()
        self._pending: threading.Thread | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._lock: Lock | None = None
        self._on_drop: weakref.finalize[Any, Any] | None = None
        # Signals are counted, not flagged: one that arrives during a save is still owed a save.
        self._signals = check_save_on_signals(save_on_signals)
        self._signal_count = 0
        self._signals_saved = 0  # the signal count the latest completed save has answered
        self._last_signal: int | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._pointers: dict[str, str | None] = {}
        self._snapshot_buffers = SnapshotBuffers()
        # Each step's payload files (identity -> size), stat'ed only once the budget or
        # size_bytes() needs them: opening a 10,000-step run reads manifests, nothing more.
        self._files: dict[int, StepFiles] = {}
        self._unstated: dict[int, Manifest] = {}
        self._over_budget_warned = False  # warn once each time the run goes over max_bytes
        self.resuming = False

        if not read_only:
            self._lock = self._storage.acquire_lock(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "since": time.time(),
                    "token": new_token(),
                }
            )
            # A manager dropped without close() must not hold the directory until exit. At
            # exit, _finish_pending_saves closes live managers (commit first, then unlock).
            self._on_drop = weakref.finalize(self, self._lock.release_abandoned)
            self._on_drop.atexit = False
        try:
            if not read_only:
                self._storage.sweep()
            self._infos = self._scan()
            if read_only and not self._infos and not self._storage.exists(""):
                raise CheckpointNotFoundError(
                    f"{self._storage.root} does not exist; read_only=True opens an existing run "
                    "and never creates one. HINT: check the path for a typo, or open it without "
                    "read_only to start a run there."
                )
            if read_only:
                self._adopt_recorded_retention(best_fn)
            else:
                if self._infos:
                    self._apply_on_existing(on_existing)
                self._set_aside_damaged_run_doc()
                self._record_retention()
            self._install_signal_handlers(self._signals)
        except BaseException:
            self._release()
            raise
        self._last_save = time.monotonic()
        _LIVE.add(self)

    # ------------------------------------------------------------------ opening

    def _scan(self) -> dict[int, CheckpointInfo]:
        infos: dict[int, CheckpointInfo] = {}
        self._files, self._unstated = {}, {}
        for name in self._storage.list_names():
            step = layout.parse_step(name)
            if step is None:
                continue
            manifest = self._read_manifest(name, quiet=True)
            if manifest is not None and manifest.step == step:
                infos[step] = self._info_of(manifest)
                self._unstated[step] = manifest
        return infos

    def _step_files(self) -> dict[int, StepFiles]:
        """Every committed step's payload files by identity, so bytes shared between steps
        count once; stat'ed on first use."""
        for step, manifest in self._unstated.items():
            if step in self._infos:
                self._files[step] = step_files(self._storage, manifest)
        self._unstated = {}
        return self._files

    def _budget_files(self) -> dict[int, StepFiles] | None:
        """What the retention rules need to know of the files: nothing without a budget."""
        return self._step_files() if self._policy.max_bytes is not None else None

    def _read_manifest(self, name: str, *, quiet: bool = False) -> Manifest | None:
        rel = f"{name}/{layout.MANIFEST}"
        try:
            raw = self._storage.read_bytes(rel)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            if quiet:
                return None
            raise CorruptCheckpointError(
                f"{self._storage.join(rel)} is missing: {self._storage.join(name)} is not a "
                "committed step.",
                path=self._storage.join(rel),
            ) from None
        try:
            return Manifest.from_json(raw, self._storage.join(rel))
        except CorruptCheckpointError:
            if quiet:
                return None
            raise

    def _info_of(self, manifest: Manifest) -> CheckpointInfo:
        return CheckpointInfo(
            step=manifest.step,
            time=manifest.time,
            metrics=manifest.metrics,
            metadata=manifest.metadata,
            path=self.path_of(layout.step_dirname(manifest.step)),
            bytes=manifest.nbytes,
            format=manifest.format,
        )

    def _apply_on_existing(self, on_existing: OnExisting) -> None:
        latest = max(self._infos)
        if on_existing == "error":
            raise CheckpointExistsError(
                f"{self._storage.root} already holds {len(self._infos)} committed checkpoint(s), "
                f"the latest at step {latest}. HINT: pass on_existing='resume' to continue from "
                f"step {latest}, on_existing='overwrite' to delete them and start over, or use "
                "another directory (adapters: resume=True / overwrite=True)."
            )
        if on_existing == "overwrite":
            self._remove_owned()
            return
        self._quarantine_damaged_newest()
        self.resuming = bool(self._infos)

    def _set_aside_damaged_run_doc(self) -> None:
        """Move a damaged `run.json` aside (never overwrite it): its metadata may be recoverable."""
        try:
            raw = self._storage.read_bytes(layout.RUN_FILE)
        except FileNotFoundError:
            return
        try:
            doc = json.loads(raw)
        except ValueError:  # not JSON, or not UTF-8
            doc = None
        if isinstance(doc, dict):
            return
        aside = layout.corrupt_run_filename(int(time.time()))
        self._storage.write_small(aside, raw)  # a copy, then the removal: works on every store
        self._storage.remove(layout.RUN_FILE)
        warnings.warn(
            f"{self._storage.join(layout.RUN_FILE)} is damaged (not a JSON object); moved aside to "
            f"{aside} and starting a new one: the run metadata, completion mark and recorded "
            "retention in it are not used. HINT: recover what you need from the file moved aside.",
            RuntimeWarning,
            stacklevel=3,
        )

    def _record_retention(self) -> None:
        """Write the retention settings into `run.json`, for readers and `ckpt ls`."""
        doc = self._run_doc()
        if doc.get("retention") != self._policy.to_json():
            doc["retention"] = self._policy.to_json()
            self._write_run_doc(doc)

    def _adopt_recorded_retention(self, best_fn: BestFn | None) -> None:
        """A reader given no `best_fn` ranks and explains retention as the writer did."""
        recorded = self._run_doc().get("retention")
        if best_fn is None and isinstance(recorded, dict):
            with contextlib.suppress(TypeError, ValueError):
                self._policy = RetentionPolicy.from_json(recorded)

    def _quarantine_damaged_newest(self) -> None:
        """Verify the newest step; move damaged ones aside (never delete) until one is intact."""
        candidates = sorted(
            (s for n in self._storage.list_names() if (s := layout.parse_step(n)) is not None),
            reverse=True,
        )
        for step in candidates:
            name = layout.step_dirname(step)
            try:
                manifest = self._read_manifest(name)
                assert manifest is not None
                if manifest.step != step:
                    raise CorruptCheckpointError(
                        f"{self._storage.join(name)} holds a manifest of step {manifest.step}"
                    )
                self._reader(manifest).verify_all()
                break
            except CorruptCheckpointError as e:
                aside = layout.corrupt_dirname(step, int(time.time()))
                warnings.warn(
                    f"step {step} in {self._storage.root} is damaged ({e}); moved aside to "
                    f"{aside} and resuming from the newest intact step instead.",
                    RuntimeWarning,
                    stacklevel=4,
                )
                self._storage.rename(name, aside)
                self._infos.pop(step, None)
                self._files.pop(step, None)
                self._unstated.pop(step, None)
        self._refresh_pointers()

    def _remove_owned(self) -> None:
        for name in self._storage.list_names():
            if layout.parse_step(name) is not None:
                self._storage.delete_step(name)
            elif layout.is_owned(name):
                self._storage.remove(name)
        self._infos = {}
        self._files, self._unstated = {}, {}
        self._pointers = {}

    # ------------------------------------------------------------------ saving

    def should_save(self, step: int) -> bool:
        """Whether `save(step, ...)` would write: the step interval, time interval or a signal."""
        if self._signal_count > self._signals_saved:
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
        step = _as_step(step)
        if not force and not self.should_save(step):
            return False
        signals = self._signal_count  # a signal arriving during this save is owed the next one
        floats = to_float_metrics(metrics)
        self._check_not_pruned_at_once(step, floats)
        check_metadata(metadata)
        fmt = resolve_format(self._format, state)
        # A preemption save is written here, without a snapshot: it is committed when save
        # returns (so `preempted` can stop the loop) and sooner than a copy and a thread.
        preempting = signals > self._signals_saved
        if self._async and not preempting:
            self.wait()  # at most one save in flight: memory stays bounded
            with self._snapshot_buffers.reuse():
                snapshot = fmt.snapshot(state)
            thread = threading.Thread(
                target=self._write_in_background,
                args=(step, fmt, snapshot, floats, metadata),
                name=f"ckpt-save-{step}",
                daemon=False,  # the interpreter waits for it at exit: a last save is never lost
            )
            self._pending = thread
            thread.start()
        else:
            if self._async:
                self.wait()  # the save in flight first
            self._write(step, fmt, state, floats, metadata)
        # Only now: a save that fails on its state must not first say the step is unranked.
        if (problem := self._policy.missing_metric(floats)) is not None:
            warnings.warn(f"step {step}: {problem}", UnrankedStepWarning, stacklevel=2)
        self._last_save = time.monotonic()
        self._signals_saved = signals
        return True

    def _check_not_pruned_at_once(self, step: int, metrics: dict[str, float]) -> None:
        """Refuse a save that retention would delete right after committing it."""
        with self._mutex:
            latest = self.latest_step()
            if latest is None or step >= latest or step in self._infos:
                return
            record = CheckpointInfo(step, 0.0, metrics, None, "", 0, "")
            files = self._budget_files()
            files = None if files is None else {**files, step: {}}
            if step not in self._policy.to_delete([*self._infos.values(), record], files):
                return
        raise ValueError(
            f"step {step} is older than the latest step {latest} in {self._storage.root} and "
            "retention would delete it as soon as it is written. HINT: to roll a run back, "
            "delete the later steps first (`ckpt prune`, or clear()), or save to a new directory."
        )

    def _write_in_background(self, step: int, *args: Any) -> None:
        try:
            self._write(step, *args)
        except BaseException as e:  # surfaced by the next save, wait or close
            e.add_note(f"ckpt_core: raised by the background save of step {step}")
            self._error = e

    def _write(
        self, step: int, fmt: Format, state: Any, metrics: dict[str, float], metadata: Any
    ) -> None:
        name = layout.step_dirname(step)
        manifest = write_step(
            self._storage,
            name,
            fmt,
            state,
            step=step,
            metrics=metrics,
            metadata=metadata,
            incremental=self._incremental,
            base=self._incremental_base(),
        )
        try:
            with self._mutex:
                self._infos[step] = self._info_of(manifest)
                self._unstated[step] = manifest
                files = self._budget_files()
                for doomed in self._policy.to_delete(list(self._infos.values()), files):
                    # Forgotten first: a failed delete leaves a complete step on disk, which
                    # the next open finds again; never a listed step that is gone.
                    del self._infos[doomed]
                    self._files.pop(doomed, None)
                    self._unstated.pop(doomed, None)
                    self._storage.delete_step(layout.step_dirname(doomed))
                self._refresh_pointers()
                self._warn_if_over_budget()
        except OSError as e:  # step `step` is committed; the housekeeping after it failed
            outcome = f"step {step} was committed, but pruning or updating the pointers failed"
            full = disk_full_error(e, self._storage.root, outcome)
            if full is None:
                raise
            raise full from e

    def _warn_if_over_budget(self) -> None:
        """Warn once when the latest and best step alone exceed `max_bytes`, again only after
        the run fitted in between: not at every save of a run that stays over it."""
        problem = self._policy.budget_exceeded(list(self._infos.values()), self._budget_files())
        if problem is not None and not self._over_budget_warned:
            warnings.warn(f"{self._storage.root}: {problem}", OverBudgetWarning, stacklevel=4)
        self._over_budget_warned = problem is not None

    def _incremental_base(self) -> tuple[str, Manifest] | None:
        """The previous committed step, whose unchanged files an incremental save shares."""
        latest = self.latest_step() if self._incremental else None
        if latest is None:
            return None
        name = layout.step_dirname(latest)
        manifest = self._read_manifest(name, quiet=True)
        return None if manifest is None else (name, manifest)

    def _refresh_pointers(self) -> None:
        """Keep the `latest` and `best` pointer files current (for people and tools)."""
        targets = {layout.LATEST_POINTER: self.latest_step()}
        if self._policy.best_fn is not None:
            targets[layout.BEST_POINTER] = self.best_step()
        elif self._pointer_names_deleted_step(layout.BEST_POINTER):
            targets[layout.BEST_POINTER] = None  # cannot rank, but must not point at nothing
        for pointer, step in targets.items():
            value = None if step is None else layout.step_dirname(step)
            if self._pointers.get(pointer, "?") == value:
                continue
            if value is None:
                self._storage.remove(pointer)
            else:  # derived from the manifests: no fsync needed, a stale pointer is harmless
                self._storage.write_small(pointer, f"{value}\n".encode(), durable=False)
            self._pointers[pointer] = value

    def _pointer_names_deleted_step(self, pointer: str) -> bool:
        try:
            target = self._storage.read_bytes(pointer).decode().strip()
        except (FileNotFoundError, UnicodeDecodeError):
            return False
        return layout.parse_step(target) not in self._infos

    def wait(self) -> None:
        """Block until the background save (if any) is committed and the files of pruned steps
        are removed; raise the save's error if it failed."""
        thread = self._pending
        if thread is not None:
            thread.join()
            self._pending = None
        self._storage.drain()
        if self._error is not None:
            # The very error a synchronous save raises (a full disk is a DiskFullError, with
            # the OSError as its cause), so one `except` serves both modes.
            error, self._error = self._error, None
            raise error

    # ------------------------------------------------------------------ reading

    def latest_step(self) -> int | None:
        """The newest committed step, or None."""
        with self._mutex:
            return max(self._infos, default=None)

    def best_step(self) -> int | None:
        """The best committed step by `best_fn`, or None (no `best_fn`, or nothing ranked)."""
        with self._mutex:
            return self._policy.best_step(list(self._infos.values()))

    def all_steps(self) -> list[int]:
        """Every committed step, ascending."""
        with self._mutex:
            return sorted(self._infos)

    def path_of(self, name: str) -> Path | str:
        full = self._storage.join(name)
        return Path(full) if self._storage.is_local else full

    def path(self, step: int) -> Path | str:
        """The directory of step `step` (a `Path` locally, a URL string on object stores)."""
        return self.path_of(layout.step_dirname(self._resolve_step(step)))

    def payload_path(self, step: StepSpec = None) -> Path | str:
        """The main payload file of a step (`state.pt` for the torch format), for other tools."""
        step = self._resolve_step(step)
        manifest = self._manifest(step)
        main = getattr(get_format(manifest.format), "main_file", None)
        if main and main not in manifest.files and f"{main}.index.json" in manifest.files:
            main = f"{main}.index.json"  # a sharded (incremental) step: its index names the rest
        parts = [layout.step_dirname(step), manifest.payload_dir, main or ""]
        return self.path_of("/".join(p for p in parts if p))

    def info(self, step: StepSpec = None) -> CheckpointInfo:
        """What the manifest says about `step`, and why retention keeps it."""
        step = self._resolve_step(step)
        with self._mutex:
            reasons = self._policy.reasons(list(self._infos.values()))
            return dataclasses.replace(self._infos[step], kept_because=reasons.get(step, ()))

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
        if self._pending is not None:  # see the save in flight; its error stays for save/wait
            self._pending.join()
            self._pending = None
        step = self._resolve_step(step)
        manifest = self._manifest(step)
        return get_format(manifest.format).read(self._reader(manifest, lazy), like)

    def _reader(self, manifest: Manifest, lazy: bool = False) -> StepReader:
        return StepReader(
            self._storage,
            layout.step_dirname(manifest.step),
            manifest,
            allow_pickle=self._allow_pickle,
            lazy=lazy,
        )

    def verify(self, step: StepSpec = None) -> None:
        """Check every file of `step` against its manifest; raises CorruptCheckpointError."""
        self._reader(self._manifest(self._resolve_step(step))).verify_all()

    def _manifest(self, step: int) -> Manifest:
        manifest = self._read_manifest(layout.step_dirname(step))
        assert manifest is not None
        return manifest

    def _resolve_step(self, step: StepSpec) -> int:
        with self._mutex:
            if step is None or (isinstance(step, str) and step == "latest"):
                found = self.latest_step()
                what = "latest"
            elif isinstance(step, str) and step == "best":
                if self._policy.best_fn is None:
                    raise CheckpointNotFoundError(
                        f"restore('best') needs a best_fn; {self._storage.root} was opened "
                        "without one. HINT: CheckpointManager(..., best_fn='val_loss')."
                    )
                found = self.best_step()
                what = "best"
            else:
                number = _as_step(step, reading=True)
                found = number if number in self._infos else None
                what = f"step {number}"
            if found is None:
                raise CheckpointNotFoundError(
                    f"no {what} checkpoint in {self._storage.root}; committed steps: "
                    f"{_short(sorted(self._infos))}."
                )
            return found

    def reload(self) -> None:
        """Re-read the directory (for read-only managers watching a run that is still writing)."""
        with self._mutex:
            self._infos = self._scan()

    # ------------------------------------------------------------------ run level

    def _run_doc(self) -> dict[str, Any]:
        try:
            doc = json.loads(self._storage.read_bytes(layout.RUN_FILE))
            return doc if isinstance(doc, dict) else {}
        except (FileNotFoundError, ValueError):
            return {}

    @property
    def run_metadata(self) -> dict[str, Any]:
        """Run-level JSON (config, seed, ...) kept in `run.json` beside the steps."""
        meta = self._run_doc().get("metadata", {})
        return meta if isinstance(meta, dict) else {}

    def update_run_metadata(self, values: Mapping[str, Any]) -> None:
        """Merge `values` into the run metadata (written atomically)."""
        self._check_writable()
        if not isinstance(values, Mapping):
            raise TypeError(
                f"update_run_metadata takes a dict of JSON values; found {describe(values)}. "
                "HINT: e.g. update_run_metadata({'seed': 0})."
            )
        doc = self._run_doc()
        doc["metadata"] = {**doc.get("metadata", {}), **values}
        self._write_run_doc(doc)

    def _write_run_doc(self, doc: dict[str, Any]) -> None:
        try:
            raw = json.dumps(doc, indent=1).encode()
        except TypeError as e:
            raise TypeError(f"run metadata must be JSON-serialisable: {e}") from None
        self._storage.write_small(layout.RUN_FILE, raw)

    def mark_complete(self) -> None:
        """Record that the run finished; adapters treat resuming it as a no-op."""
        self._check_writable()
        self.wait()
        doc = self._run_doc()
        doc.update(complete=True, completed_at=time.time(), final_step=self.latest_step())
        self._write_run_doc(doc)

    @property
    def is_complete(self) -> bool:
        return bool(self._run_doc().get("complete", False))

    @property
    def directory(self) -> str:
        return self._storage.root

    @property
    def storage(self) -> Storage:
        return self._storage

    @property
    def policy(self) -> RetentionPolicy:
        return self._policy

    @property
    def preemption_signal(self) -> int | None:
        """The signal received since the last save, if any (the run should save and stop)."""
        return self._last_signal if self._signal_count > self._signals_saved else None

    @property
    def preempted(self) -> bool:
        """True once a signal in `save_on_signals` arrived and the save it triggered returned.

        That save is committed by then, also with `async_save`, so a loop can stop right away;
        it stays True::

            mgr.save(step, state)
            if mgr.preempted:
                break
        """
        return self._signals_saved > 0

    def size_bytes(self) -> int:
        """The payload bytes of all committed steps, a file shared between steps counted once."""
        with self._mutex:
            return committed_bytes(self._step_files().values())

    def backup(self, path: str | os.PathLike[str]) -> Path:
        """Write a zip of every committed step (and `run.json`) to `path`; returns its path.

        Every file is verified against its manifest as it is copied, so a backup never
        preserves damage silently (CorruptCheckpointError names the file).
        """
        self.wait()
        target = Path(path)
        tmp = target.with_name(target.name + ".partial")
        try:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                for step in self.all_steps():
                    reader = self._reader(self._manifest(step))
                    for file in sorted(reader.manifest.files):
                        with reader.open(file) as src, zf.open(reader.rel(file), "w") as dst:
                            while chunk := src.read(8 << 20):
                                dst.write(chunk)
                            src.verify()
                    zf.writestr(reader.rel(layout.MANIFEST), reader.manifest.to_json())
                with contextlib.suppress(FileNotFoundError):
                    zf.writestr(layout.RUN_FILE, self._storage.read_bytes(layout.RUN_FILE))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, target)
        return target

    def clear(self) -> None:
        """Delete every step and library file in the directory (files of others stay)."""
        self._check_writable()
        self.wait()
        with self._mutex:
            self._remove_owned()
            self._record_retention()

    # ------------------------------------------------------------------ lifetime

    def _check_writable(self) -> None:
        if self._closed:
            raise CheckpointError(f"the CheckpointManager of {self._storage.root} is closed.")
        if self._read_only:
            raise CheckpointError(
                f"{self._storage.root} was opened with read_only=True; it cannot be written. "
                "HINT: open it with read_only=False (one writer at a time)."
            )
        if self._error is not None:
            self.wait()
        if self._lock is not None and self._lock.lost:
            raise CheckpointLockedError(
                f"this manager lost its lease on {self._storage.root} to another writer (its "
                "refresh was late); nothing more is written. HINT: make sure one job writes a "
                "directory at a time, then reopen it with on_existing='resume'."
            )

    def _install_signal_handlers(self, signals: tuple[int, ...]) -> None:
        for sig in signals:  # checked in __init__: catchable, and this is the main thread
            self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous_handlers.get(signum)
        if self._closed:
            # Called after close: by a later handler that chains to this one (which acts on
            # the signal itself), or because a framework put this one back: then act as the
            # handler before it.
            installed = signal.getsignal(signum) == self._on_signal
            if installed and previous in (signal.SIG_DFL, None):
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)
            elif callable(previous):
                previous(signum, frame)
            return
        self._last_signal = signum
        self._signal_count += 1
        # Python's SIGINT handler would raise KeyboardInterrupt before the save; others chain.
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, frame)

    def _release(self) -> None:
        """Restore the signal handlers and let go of the lock."""
        for sig, handler in self._previous_handlers.items():
            if signal.getsignal(sig) == self._on_signal:  # not one installed after ours
                # Skip the handlers of managers closed meanwhile (closed out of order).
                while (
                    isinstance(owner := getattr(handler, "__self__", None), CheckpointManager)
                    and owner._closed
                ):
                    handler = owner._previous_handlers.get(sig, signal.SIG_DFL)
                with contextlib.suppress(ValueError, TypeError):
                    signal.signal(sig, handler)
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
            self.wait()
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
        return (
            f"CheckpointManager({self._storage.root!r}, steps={_short(self.all_steps())}, {mode})"
        )


def _as_step(step: Any, *, reading: bool = False) -> int:
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


def _short(steps: list[int]) -> str:
    if len(steps) <= 8:
        return str(steps)
    return (
        f"[{', '.join(map(str, steps[:3]))}, ..., {', '.join(map(str, steps[-3:]))}] ({len(steps)})"
    )


@atexit.register
def _finish_pending_saves() -> None:
    """At interpreter exit, commit pending background saves and release locks."""
    for manager in list(_LIVE):
        try:
            manager.close()
        except Exception as e:  # nothing can raise to the user any more: say it loudly
            warnings.warn(f"ckpt_core: {e}", RuntimeWarning, stacklevel=1)
