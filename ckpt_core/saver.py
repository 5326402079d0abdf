"""Writing a manager's steps: in the caller's thread or one background thread, then the commit.

The one place where a step is committed for a manager and retention applied after it: the
payload through `write_step`, then, under the manager's mutex, `Run.committed` (prune and
repair the pointers). At most one save is in flight, so memory stays bounded; an error in a
background write is kept and raised by the next `save`, `wait` or `close`, never swallowed.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

from . import layout
from .commit import write_step
from .errors import CorruptCheckpointError, OverBudgetWarning
from .formats import Format, SnapshotBuffers
from .manifest import Manifest
from .processes import Meeting
from .run import Run
from .storage import disk_full_error


class Saver:
    """Writes steps into a `Run`, synchronously or in the background.

    Args:
        run: the run directory, held under the manager's lock.
        mutex: the manager's lock over `run`'s step list.
        async_save: write in a background thread after a host snapshot.
        incremental: share files unchanged since the previous committed step.
        meeting: the other processes of a multi-process job, each writing its own shards.
    """

    def __init__(
        self,
        run: Run,
        mutex: threading.RLock,
        meeting: Meeting | None = None,
        *,
        async_save: bool,
        incremental: bool,
    ) -> None:
        self._run = run
        self.meeting = meeting
        self._mutex = mutex
        self._async = async_save
        self._incremental = incremental
        self.pending: threading.Thread | None = None
        self.error: BaseException | None = None
        self._buffers = SnapshotBuffers()
        self._over_budget_warned = False  # warn once each time the run goes over max_bytes

    def save(
        self,
        step: int,
        fmt: Format,
        state: Any,
        metrics: dict[str, float],
        metadata: Any,
        *,
        background: bool,
    ) -> None:
        """Write `state` as step `step`: in the background if async and `background`, else now.

        A save written now first waits for the one in flight, so steps commit in order.
        """
        if self._async:
            self.wait()
        # The meeting keys shared so far, read by every process before it joins this save.
        mark = None if self.meeting is None else self.meeting.mark()
        if not (self._async and background):
            self._write(step, fmt, state, metrics, metadata, mark)
            return
        with self._buffers.reuse():
            snapshot = fmt.snapshot(state)
        thread = threading.Thread(
            target=self._write_in_background,
            args=(step, fmt, snapshot, metrics, metadata, mark),
            name=f"ckpt-save-{step}",
            daemon=False,  # the interpreter waits for it at exit: a last save is never lost
        )
        self.pending = thread
        thread.start()

    def join(self) -> None:
        """Wait for the save in flight, leaving its error for `wait` (restore sees its step)."""
        if self.pending is not None:
            self.pending.join()
            self.pending = None

    def wait(self) -> None:
        """Block until the save in flight is committed and the files of pruned steps are
        removed; raise the save's error if it failed."""
        self.join()
        self._run.storage.drain()
        if self.error is not None:
            # The very error a synchronous save raises (a full disk is a DiskFullError, with
            # the OSError as its cause), so one `except` serves both modes.
            error, self.error = self.error, None
            raise error

    def _write_in_background(self, step: int, *args: Any) -> None:
        try:
            self._write(step, *args)
        except BaseException as e:  # surfaced by the next save, wait or close
            e.add_note(f"ckpt_core: raised by the background save of step {step}")
            self.error = e

    def close(self) -> None:
        """`wait`, then delete the meeting keys once every process closed (`Meeting.leave`)."""
        self.wait()
        if self.meeting is not None:
            self.meeting.leave()

    def _write(
        self,
        step: int,
        fmt: Format,
        state: Any,
        metrics: dict[str, float],
        metadata: Any,
        mark: int | None = None,
    ) -> None:
        manifest = write_step(
            self._run.storage,
            layout.step_dirname(step),
            fmt,
            state,
            step=step,
            metrics=metrics,
            metadata=metadata,
            incremental=self._incremental,
            base=self._incremental_base(),
            meeting=self.meeting,
            mark=mark,
        )
        try:
            with self._mutex:
                self._run.committed(manifest)
                self._warn_if_over_budget()
        except OSError as e:  # step `step` is committed; the housekeeping after it failed
            outcome = f"step {step} was committed, but pruning or updating the pointers failed"
            full = disk_full_error(e, self._run.storage.root, outcome)
            if full is None:
                raise
            raise full from e

    def _warn_if_over_budget(self) -> None:
        """Warn once when the latest and best step alone exceed `max_bytes`, again only after
        the run fitted in between: not at every save of a run that stays over it."""
        problem = self._run.budget_exceeded()
        if problem is not None and not self._over_budget_warned:
            warnings.warn(f"{self._run.storage.root}: {problem}", OverBudgetWarning, stacklevel=5)
        self._over_budget_warned = problem is not None

    def _incremental_base(self) -> tuple[str, Manifest] | None:
        """The previous committed step, whose unchanged files an incremental save shares."""
        with self._mutex:
            latest = self._run.latest_step() if self._incremental else None
        if latest is None:
            return None
        try:
            return layout.step_dirname(latest), self._run.manifest(latest)
        except CorruptCheckpointError:  # a damaged base only means nothing is shared
            return None
