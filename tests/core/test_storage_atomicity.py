"""How a step becomes visible all at once (`ckpt_core.storage.atomicity`): a replaced step
survives a failed write or cleanup, and a process killed at random instants while saving
leaves only steps that restore exactly."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

from ckpt_core import CheckpointManager
from ckpt_core.storage import atomicity as storage_module
from tests.killing import kill_and_check


def st(v: float) -> dict:
    return {"w": np.full(4, v)}


# ---------------------------------------------------------------- replacing a step


def test_object_store_replacement_survives_a_failed_cleanup(monkeypatch):
    url = f"memory://edge/{uuid.uuid4().hex}"
    with CheckpointManager(url) as mgr:
        mgr.save(1, st(1))
        real_remove = type(mgr.storage).remove
        calls = {"n": 0}

        def flaky_remove(self, rel):
            calls["n"] += 1
            if calls["n"] == 1:
                raise OSError(5, "transient")
            return real_remove(self, rel)

        monkeypatch.setattr(type(mgr.storage), "remove", flaky_remove)
        mgr.save(1, st(2), force=True)  # the old payload's deletion fails after the commit
        monkeypatch.undo()
        np.testing.assert_array_equal(mgr.restore(1)["w"], st(2)["w"])
    with CheckpointManager(url, on_existing="resume") as mgr:  # the sweep takes the leftovers
        np.testing.assert_array_equal(mgr.restore(1)["w"], st(2)["w"])


def test_local_replacement_without_exchange_puts_the_old_step_back_on_failure(run_dir, monkeypatch):
    with CheckpointManager(run_dir) as mgr:
        mgr.save(3, st(3))
        monkeypatch.setattr(storage_module, "_exchange", lambda a, b: False)
        real_rename, calls = os.rename, {"n": 0}

        def failing_second_rename(src, dst):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(5, "simulated I/O error")
            return real_rename(src, dst)

        monkeypatch.setattr(storage_module.os, "rename", failing_second_rename)
        with pytest.raises(OSError, match="simulated"):
            mgr.save(3, st(30))
        monkeypatch.undo()
        np.testing.assert_array_equal(mgr.restore(3)["w"], st(3)["w"])
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == [".lock"]


# ---------------------------------------------------------------- SIGKILL while saving


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sigkill_during_tree_saves_never_leaves_a_bad_step(tmp_path, mode):
    report = kill_and_check(tmp_path / "run", "tree", mode, kills=8, seed=hash(mode) % 1000)
    assert report.problems == []
    assert report.kills == 8 and report.steps_checked > 0


def test_sigkill_during_incremental_saves_and_retention_of_shared_files(tmp_path):
    report = kill_and_check(
        tmp_path / "run", "tree", "sync", kills=8, seed=17, scenario="incremental"
    )
    assert report.problems == []
    assert report.kills == 8 and report.steps_checked > 0
    linked = [p for p in (tmp_path / "run").glob("step_*/arrays-*") if p.stat().st_nlink > 1]
    assert linked, "no step shares a file with another: nothing incremental was tested"
