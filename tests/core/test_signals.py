"""`save_on_signals` in one process: the option is checked, and `preempted` follows the save.

The signal is sent to this very process (pytest runs tests in the main thread, where Python
runs signal handlers); the subprocess tests are in tests/reliability/test_signals.py.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckpt_core import CheckpointManager, get_format

STATE = {"w": np.arange(4.0)}


def sigterm_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before os.kill returns


@pytest.fixture(autouse=True)
def sigterm_untouched():
    before = signal.getsignal(signal.SIGTERM)
    yield
    assert signal.getsignal(signal.SIGTERM) == before  # every manager put it back


@pytest.mark.parametrize("async_save", [False, True])
def test_preempted_once_the_save_a_signal_triggered_is_committed(tmp_path, async_save):
    with CheckpointManager(
        tmp_path, save_interval_steps=1000, save_on_signals=(signal.SIGTERM,), async_save=async_save
    ) as mgr:
        assert not mgr.save(1, STATE)
        sigterm_self()
        # The signal is owed a save: not preempted yet, so a loop does not stop before it.
        assert mgr.preemption_signal == signal.SIGTERM and not mgr.preempted
        assert mgr.should_save(2)
        assert mgr.save(2, STATE)
        # Committed when save returns, also async: the loop may stop (and exit) right away.
        assert (tmp_path / "step_00000002").is_dir() and 2 in CheckpointManager(
            tmp_path, read_only=True
        ).all_steps()
        assert mgr.preempted and mgr.preemption_signal is None
        assert not mgr.save(3, STATE)  # the interval again
        assert mgr.preempted  # stays True


class SignalsWhileWriting:
    """The tree format, with a SIGTERM arriving in the middle of the write."""

    name = "tree"

    def __init__(self) -> None:
        self.tree = get_format("tree")

    def accepts(self, state: Any) -> bool:
        return self.tree.accepts(state)

    def snapshot(self, state: Any) -> Any:
        return self.tree.snapshot(state)

    def write(self, state: Any, writer: Any) -> None:
        sigterm_self()
        self.tree.write(state, writer)

    def read(self, reader: Any, like: Any = None) -> Any:
        return self.tree.read(reader, like)


def test_a_signal_during_a_save_is_owed_the_next_save(tmp_path):
    with CheckpointManager(
        tmp_path,
        save_interval_steps=1000,
        save_on_signals=signal.SIGTERM,  # a single signal is accepted
        format=SignalsWhileWriting(),
    ) as mgr:
        assert mgr.save(0, STATE)  # due by the interval; the signal came while it wrote
        assert not mgr.preempted and mgr.preemption_signal == signal.SIGTERM
        assert mgr.should_save(1)


def test_a_closed_managers_handler_acts_like_the_one_before_it(tmp_path):
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        mgr = CheckpointManager(tmp_path, save_on_signals=(signal.SIGTERM,))
        stale = signal.getsignal(signal.SIGTERM)
        mgr.close()
        # A framework that saved our handler puts it back after close (Lightning does).
        signal.signal(signal.SIGTERM, stale)
        sigterm_self()
        assert seen == [signal.SIGTERM] and not mgr.preempted
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_managers_closed_out_of_order_leave_the_original_handler(tmp_path):
    first = CheckpointManager(tmp_path / "a", save_on_signals=(signal.SIGTERM,))
    second = CheckpointManager(tmp_path / "b", save_on_signals=(signal.SIGTERM,))
    first.close()
    sigterm_self()  # the open manager saves for it; the closed one must not end the process
    assert second.preemption_signal == signal.SIGTERM
    second.close()  # the autouse fixture checks that SIGTERM's handler is the original again


def test_sigint_saves_then_stops_instead_of_raising_keyboard_interrupt(tmp_path):
    with CheckpointManager(tmp_path, save_interval_steps=1000, save_on_signals=signal.SIGINT) as m:
        os.kill(os.getpid(), signal.SIGINT)
        assert m.save(1, STATE) and m.preempted


BAD = [
    (15, None),  # accepted: one signal
    ("SIGTERM", (TypeError, "string")),
    (b"SIGTERM", (TypeError, "string")),
    (signal.SIGKILL, (ValueError, "SIGKILL cannot be caught")),
    ((signal.SIGKILL,), (ValueError, "SIGKILL cannot be caught")),
    ((signal.SIGSTOP,), (ValueError, "SIGSTOP cannot be caught")),
    ((99,), (ValueError, "99 is not a signal")),
    ((0,), (ValueError, "0 is not a signal")),
    ((-15,), (ValueError, "-15 is not a signal")),
    ((True,), (TypeError, "True is not a signal")),
    ((15.0,), (TypeError, "15.0 is not a signal")),
    (("SIGTERM",), (TypeError, "'SIGTERM' is not a signal")),
    (object(), (TypeError, "expected a signal or a tuple")),
]


@pytest.mark.parametrize(("value", "expected"), BAD, ids=lambda v: repr(v)[:30])
def test_save_on_signals_is_checked_before_anything_is_written(tmp_path, value, expected):
    run = tmp_path / "run"
    if expected is None:
        CheckpointManager(run, save_on_signals=value).close()
        return
    error, words = expected
    with pytest.raises(error) as info:
        CheckpointManager(run, save_on_signals=value)
    message = str(info.value)
    assert "save_on_signals" in message and words in message and "HINT" in message
    assert len(message) < 400
    assert not run.exists()  # nothing written, no lock left
    CheckpointManager(run).close()  # and the directory is free


def test_save_on_signals_outside_the_main_thread_is_refused(tmp_path):
    caught: list[BaseException] = []

    def open_it() -> None:
        try:
            CheckpointManager(tmp_path / "run", save_on_signals=(signal.SIGTERM,))
        except BaseException as e:
            caught.append(e)

    thread = threading.Thread(target=open_it, name="loader")
    thread.start()
    thread.join()
    assert isinstance(caught[0], ValueError)
    assert "'loader'" in str(caught[0]) and "main thread" in str(caught[0])
    assert not Path(tmp_path / "run").exists()
