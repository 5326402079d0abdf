"""The single-writer lock within one process: a dropped manager lets go, a live one is named."""

from __future__ import annotations

import gc
import os
import uuid

import numpy as np
import pytest

from ckpt_core import CheckpointLockedError, CheckpointManager

BACKENDS = ["local", "memory"]


@pytest.fixture(params=BACKENDS)
def where(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run")
    return f"memory://ckpt-tests/{uuid.uuid4().hex}"


def test_an_unreachable_manager_in_a_reference_cycle_lets_the_next_one_in(where):
    # A notebook cell run twice: the first manager is garbage, but only the collector can
    # tell (a reference cycle keeps it from being freed at once).
    gc.disable()
    try:
        first = CheckpointManager(where, on_existing="resume")
        first.save(1, {"w": np.ones(3)})
        first.cycle = first  # type: ignore[attr-defined]
        del first
        second = CheckpointManager(where, on_existing="resume")
    finally:
        gc.enable()
    with second:
        assert second.resuming and second.latest_step() == 1
        assert second.save(2, {"w": np.ones(3)})
    with CheckpointManager(where, read_only=True) as ro:
        assert ro.all_steps() == [1, 2]


def test_a_live_manager_of_this_process_is_named_with_the_fix(where):
    first = CheckpointManager(where, on_existing="resume")
    with pytest.raises(CheckpointLockedError) as err:
        CheckpointManager(where, on_existing="resume")
    message = str(err.value)
    assert "this same process" in message and f"pid {os.getpid()}" in message
    assert "close()" in message and "stop the other run" not in message
    first.close()
    with CheckpointManager(where, on_existing="resume"):  # free once the first is closed
        pass


def test_rerunning_an_assignment_cell_names_the_earlier_manager_until_it_is_closed(where):
    mgr = CheckpointManager(where, on_existing="resume")
    # `mgr = CheckpointManager(...)` again: the old manager is still bound to `mgr` while the
    # new one opens, so it is live, and the message says what to do.
    with pytest.raises(CheckpointLockedError, match=r"call close\(\) on the earlier manager"):
        mgr = CheckpointManager(where, on_existing="resume")
    mgr.close()
    mgr = CheckpointManager(where, on_existing="resume")
    mgr.close()


def test_lease_lock_on_object_store():
    url = f"memory://ckpt-tests/{uuid.uuid4().hex}"
    with CheckpointManager(url):
        with pytest.raises(CheckpointLockedError, match="this same process"):
            CheckpointManager(url)
    with CheckpointManager(url):  # released at close
        pass


def test_a_dropped_manager_releases_its_lock(run_dir):
    CheckpointManager(run_dir).save(1, {"w": np.full(4, 1)})  # never closed
    gc.collect()
    with CheckpointManager(run_dir, on_existing="resume") as mgr:
        assert mgr.latest_step() == 1
