"""Save scheduling: which trigger (steps, epochs, seconds or a pending signal) calls for a save now.

A training loop reports its events (a step ended, an epoch ended) and gets back the trigger that
makes a save due there, or None; it tells the schedule when it saved. The schedule reads no
files and imports no framework; its clock can be injected, so tests use plain numbers:

```python
schedule = SaveSchedule(every_n_steps=100)
for step in range(1, total + 1):
    train_step()
    if schedule.at_step(step, signal_pending=manager.preemption_signal is not None):
        manager.save(step, state)
        schedule.saved(step)
```

Rules, the same for every adapter:
* A step that was saved already is never due again (nor is the step a run resumed from).
* A pending signal (see `CheckpointManager.preemption_signal`) wins over every other trigger.
* A step or time trigger that fires at an epoch's last step (`last_in_epoch=True`) is put off to
  that epoch's end, so the save sees what the loop does in between (validation, say) and the
  resume starts at a clean epoch boundary.
* The time trigger counts from the last save, or from `restart_clock()` (the start of training).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from .options import check_int, check_seconds

__all__ = ["SaveSchedule", "Trigger"]

Trigger = Literal["signal", "steps", "epochs", "seconds"]
"""Why a save is due: a pending signal, the step interval, the epoch interval or elapsed time."""


class SaveSchedule:
    """When to save, from step, epoch and time intervals and a pending signal.

    Args:
        every_n_steps: due when the step is a multiple of this (None: never by step count).
        every_n_epochs: due at the end of every N-th epoch (None: never by epoch count).
        every_seconds: due at the first step end this many seconds after the last save.
        clock: seconds from any fixed origin (default `time.monotonic`); injectable for tests.

    Raises:
        TypeError, ValueError: an interval that is not a positive number (steps and epochs: int).
    """

    def __init__(
        self,
        *,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = None,
        every_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_int("every_n_steps", every_n_steps, minimum=1, none="never by step", example=100)
        check_int("every_n_epochs", every_n_epochs, minimum=1, none="never by epoch", example=1)
        check_seconds("every_seconds", every_seconds)
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.every_seconds = None if every_seconds is None else float(every_seconds)
        self._clock = clock
        self._last_time = clock()
        self._last_step: int | None = None
        self._put_off: Trigger | None = None  # fired at an epoch's last step: due at its end

    def __repr__(self) -> str:
        return (
            f"SaveSchedule(every_n_steps={self.every_n_steps}, every_n_epochs="
            f"{self.every_n_epochs}, every_seconds={self.every_seconds})"
        )

    @property
    def last_saved_step(self) -> int | None:
        """The step last saved (or resumed from), None before any."""
        return self._last_step

    def seconds_elapsed(self) -> bool:
        """The time trigger is due by this process's clock.

        A multi-process loop asks this on one process and passes the answer to `at_step` on
        all of them (`seconds_elapsed=`), so that every process saves at the same step.
        """
        return (
            self.every_seconds is not None and self._clock() - self._last_time >= self.every_seconds
        )

    def at_step(
        self,
        step: int,
        *,
        signal_pending: bool = False,
        last_in_epoch: bool = False,
        seconds_elapsed: bool | None = None,
    ) -> Trigger | None:
        """At the end of a training step: the trigger that makes a save due now, or None.

        Args:
            step: the step just completed.
            signal_pending: a save-on-signal arrived and no save has answered it yet.
            last_in_epoch: the epoch's last step: a step or time trigger is put off to
                `at_epoch_end` (a signal is not).
            seconds_elapsed: the time trigger's answer decided elsewhere (another process);
                None: `seconds_elapsed()`.
        """
        if step == self._last_step:
            return None
        if signal_pending:
            return "signal"
        trigger: Trigger | None = None
        if self.every_n_steps is not None and step % self.every_n_steps == 0:
            trigger = "steps"
        elif seconds_elapsed if seconds_elapsed is not None else self.seconds_elapsed():
            trigger = "seconds"
        if trigger is not None and last_in_epoch:
            self._put_off = trigger
            return None
        return trigger

    def at_epoch_end(
        self, epoch: int, step: int, *, signal_pending: bool = False, epoch_complete: bool = True
    ) -> Trigger | None:
        """At the end of epoch `epoch` (counted from 0), at `step`: the trigger due, or None.

        Args:
            epoch: the epoch that ended, 0 for the first.
            step: the step training stands at.
            signal_pending: a save-on-signal arrived and no save has answered it yet.
            epoch_complete: every step of the epoch ran (False when a step limit ended the loop
                mid-epoch: that is no epoch end for `every_n_epochs`).
        """
        put_off, self._put_off = self._put_off, None
        if step == self._last_step:
            return None
        if signal_pending:
            return "signal"
        if (
            self.every_n_epochs is not None
            and (epoch + 1) % self.every_n_epochs == 0
            and epoch_complete
        ):
            return "epochs"
        return put_off

    def saved(self, step: int) -> None:
        """A save of `step` happened (whatever triggered it): restart the time interval."""
        self._last_step = step
        self._last_time = self._clock()

    def restart(self, last_saved_step: int | None = None) -> None:
        """Start over, e.g. for a new run or a resume from `last_saved_step`."""
        self._last_step = last_saved_step
        self._put_off = None
        self.restart_clock()

    def restart_clock(self) -> None:
        """Count the time interval from now (training starts, say, after a slow setup)."""
        self._last_time = self._clock()
