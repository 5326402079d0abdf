"""ckpt_core.schedule: when a save is due, from plain step and epoch numbers and a fake clock."""

from __future__ import annotations

import pytest

from ckpt_core.schedule import SaveSchedule


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def due_steps(schedule: SaveSchedule, steps: range) -> list[int]:
    """The steps `at_step` says are due, each saved as it comes (as a loop would)."""
    due = []
    for step in steps:
        if schedule.at_step(step) is not None:
            schedule.saved(step)
            due.append(step)
    return due


def test_every_n_steps_is_due_at_the_multiples():
    schedule = SaveSchedule(every_n_steps=3)
    assert due_steps(schedule, range(1, 11)) == [3, 6, 9]
    assert schedule.at_step(12) == "steps"


def test_no_trigger_is_never_due():
    schedule = SaveSchedule()
    assert due_steps(schedule, range(1, 50)) == []
    assert schedule.at_epoch_end(0, 49) is None


def test_a_step_already_saved_is_not_due_again():
    schedule = SaveSchedule(every_n_steps=2, every_n_epochs=1)
    assert schedule.at_step(4) == "steps"
    schedule.saved(4)
    assert schedule.at_step(4) is None
    assert schedule.at_step(4, signal_pending=True) is None
    assert schedule.at_epoch_end(0, 4) is None  # the epoch ended at the step just saved
    assert schedule.last_saved_step == 4


def test_the_step_resumed_from_counts_as_saved():
    schedule = SaveSchedule(every_n_steps=5)
    schedule.restart(last_saved_step=10)
    assert schedule.at_step(10) is None
    assert schedule.at_step(15) == "steps"


def test_every_n_epochs_counts_epochs_from_zero_and_needs_a_complete_epoch():
    schedule = SaveSchedule(every_n_epochs=2)
    assert schedule.at_epoch_end(0, 10) is None
    assert schedule.at_epoch_end(1, 20) == "epochs"
    schedule.saved(20)
    assert schedule.at_epoch_end(3, 37, epoch_complete=False) is None  # a step limit ended it
    assert schedule.at_step(20) is None  # epochs never make a step due


def test_a_pending_signal_wins_over_every_trigger_and_is_never_put_off():
    schedule = SaveSchedule(every_n_steps=10, every_n_epochs=5)
    assert schedule.at_step(7, signal_pending=True) == "signal"
    assert schedule.at_step(10, signal_pending=True, last_in_epoch=True) == "signal"
    assert schedule.at_epoch_end(0, 11, signal_pending=True) == "signal"
    assert schedule.at_epoch_end(4, 12, signal_pending=True) == "signal"


def test_a_trigger_at_an_epochs_last_step_is_put_off_to_the_epoch_end():
    schedule = SaveSchedule(every_n_steps=4)
    assert schedule.at_step(8, last_in_epoch=True) is None
    assert schedule.at_epoch_end(1, 8) == "steps"
    assert schedule.at_epoch_end(2, 8) is None  # taken once only


def test_an_epoch_trigger_wins_over_a_put_off_one():
    schedule = SaveSchedule(every_n_steps=4, every_n_epochs=1)
    assert schedule.at_step(8, last_in_epoch=True) is None
    assert schedule.at_epoch_end(0, 8) == "epochs"


def test_a_put_off_trigger_is_dropped_by_restart():
    schedule = SaveSchedule(every_n_steps=4)
    schedule.at_step(8, last_in_epoch=True)
    schedule.restart()
    assert schedule.at_epoch_end(0, 8) is None


def test_seconds_count_from_the_last_save_and_from_restart_clock():
    clock = FakeClock()
    schedule = SaveSchedule(every_seconds=60, clock=clock)
    clock.now += 59
    assert not schedule.seconds_elapsed()
    assert schedule.at_step(1) is None
    clock.now += 1
    assert schedule.at_step(2) == "seconds"
    schedule.saved(2)
    assert schedule.at_step(3) is None
    clock.now += 120
    schedule.restart_clock()  # e.g. training starts after a slow setup
    assert schedule.at_step(4) is None
    clock.now += 60
    assert schedule.at_step(5) == "seconds"


def test_seconds_decided_elsewhere_override_the_own_clock():
    clock = FakeClock()
    schedule = SaveSchedule(every_seconds=60, clock=clock)
    assert schedule.at_step(1, seconds_elapsed=True) == "seconds"
    clock.now += 1000
    assert schedule.at_step(2, seconds_elapsed=False) is None


def test_a_time_trigger_at_an_epochs_last_step_is_put_off_too():
    clock = FakeClock()
    schedule = SaveSchedule(every_seconds=1, clock=clock)
    clock.now += 5
    assert schedule.at_step(3, last_in_epoch=True) is None
    assert schedule.at_epoch_end(0, 3) == "seconds"


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"every_n_steps": 0}, ValueError, "every_n_steps must be an int >= 1"),
        ({"every_n_steps": "10"}, TypeError, "every_n_steps must be an int >= 1"),
        ({"every_n_epochs": 1.5}, TypeError, "every_n_epochs must be an int >= 1"),
        ({"every_seconds": 0}, ValueError, "every_seconds must be a positive number"),
        ({"every_seconds": "60"}, TypeError, "every_seconds must be a number of seconds"),
    ],
)
def test_bad_intervals_are_refused_with_the_option_named(options, error, message):
    with pytest.raises(error, match=message):
        SaveSchedule(**options)
