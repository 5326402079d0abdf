"""Writing a manager's steps (`ckpt_core.saver`): commits in order, retention after each commit,
a background write isolated from the loop and its error raised later, never swallowed."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from ckpt_core import CheckpointError, CheckpointManager, load_checkpoint, saver
from ckpt_core.formats import get_format
from ckpt_core.retention import RetentionPolicy
from ckpt_core.run import Run, acquire_writer_lock, open_directory
from ckpt_core.saver import Saver


def open_saver(run_dir: Path, *, async_save: bool, max_to_keep: int | None = 2) -> Saver:
    storage = open_directory(run_dir)
    run = Run(storage, RetentionPolicy(max_to_keep=max_to_keep))
    run.open_as_writer("error")
    return Saver(run, threading.RLock(), async_save=async_save, incremental=False)


@pytest.fixture
def lock(run_dir: Path):
    run_dir.mkdir()
    held = acquire_writer_lock(open_directory(run_dir))
    yield held
    held.release()


def save(s: Saver, step: int, state: dict, *, background: bool = True) -> None:
    s.save(step, get_format("tree"), state, {"loss": float(step)}, None, background=background)


def test_a_synchronous_saver_commits_each_step_then_applies_retention(run_dir: Path, lock) -> None:
    s = open_saver(run_dir, async_save=False)
    for step in (1, 2, 3):
        save(s, step, {"w": np.full(2, step)})
        assert s.pending is None  # written in the caller's thread, even when asked to go ahead
    assert sorted(p.name for p in run_dir.glob("step_*")) == ["step_00000002", "step_00000003"]
    assert load_checkpoint(run_dir, step=3)["w"].tolist() == [3, 3]


def test_a_background_save_writes_the_state_as_it_was_when_save_returned(
    run_dir: Path, lock
) -> None:
    s = open_saver(run_dir, async_save=True, max_to_keep=None)
    state = {"w": np.zeros(1000)}
    for step in (1, 2):
        save(s, step, state)
        state["w"] += 1  # the loop goes on while the step is written
    assert s.pending is not None and s.pending.name == "ckpt-save-2"
    s.wait()
    assert s.pending is None
    assert load_checkpoint(run_dir, step=1)["w"].max() == 0
    assert load_checkpoint(run_dir, step=2)["w"].min() == 1


def test_a_background_error_is_raised_by_the_next_wait_once_naming_the_step(
    run_dir: Path, lock, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = open_saver(run_dir, async_save=True)

    def broken(*args, **kwargs):
        raise OSError("the disk went away")

    monkeypatch.setattr(saver, "write_step", broken)
    save(s, 7, {"w": np.zeros(2)})
    s.join()  # the thread has ended; its error is kept, not raised yet
    with pytest.raises(OSError, match="the disk went away") as caught:
        s.wait()
    assert "raised by the background save of step 7" in "".join(caught.value.__notes__)
    s.wait()  # raised once: the next wait has nothing left to report
    assert list(run_dir.glob("step_*")) == []


def test_background_error_is_never_swallowed(run_dir):
    class Failing:
        name = "failing-edge"

        def accepts(self, s):
            return False

        def snapshot(self, s):
            return s

        def write(self, s, writer):
            raise OSError(5, "disk on fire")

        def read(self, reader, like=None):  # pragma: no cover
            raise AssertionError

    with pytest.raises(KeyError) as err:
        with CheckpointManager(run_dir, async_save=True, format=Failing()) as mgr:
            mgr.save(1, {"w": np.full(4, 1)})
            raise KeyError("the user's own error")
    assert any("disk on fire" in note for note in err.value.__notes__)

    with CheckpointManager(run_dir / "b", async_save=True, format=Failing()) as mgr:
        mgr.save(1, {"w": np.full(4, 1)})
        with pytest.raises(CheckpointError):
            mgr.restore()  # nothing committed; the background error is kept for wait()
        with pytest.raises(OSError, match="disk on fire") as err:  # as a sync save raises it
            mgr.wait()
        assert "background save of step 1" in err.value.__notes__[-1]
