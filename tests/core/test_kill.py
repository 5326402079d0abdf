"""SIGKILL a saving process at random instants: every visible step restores exactly."""

from __future__ import annotations

import pytest

from tests.killing import kill_and_check


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sigkill_during_tree_saves_never_leaves_a_bad_step(tmp_path, mode):
    report = kill_and_check(tmp_path / "run", "tree", mode, kills=8, seed=hash(mode) % 1000)
    assert report.problems == []
    assert report.kills == 8 and report.steps_checked > 0


def test_sigkill_during_torch_saves_never_leaves_a_bad_step(tmp_path):
    report = kill_and_check(tmp_path / "run", "torch", "sync", kills=4, seed=7)
    assert report.problems == [] and report.steps_checked > 0


def test_sigkill_during_incremental_saves_and_retention_of_shared_files(tmp_path):
    report = kill_and_check(
        tmp_path / "run", "tree", "sync", kills=8, seed=17, scenario="incremental"
    )
    assert report.problems == []
    assert report.kills == 8 and report.steps_checked > 0
    linked = [p for p in (tmp_path / "run").glob("step_*/arrays-*") if p.stat().st_nlink > 1]
    assert linked, "no step shares a file with another: nothing incremental was tested"
