"""SIGKILL a process saving in the `torch` format at random instants: every visible step restores."""

from __future__ import annotations

from tests.killing import kill_and_check


def test_sigkill_during_torch_saves_never_leaves_a_bad_step(tmp_path):
    report = kill_and_check(tmp_path / "run", "torch", "sync", kills=4, seed=7)
    assert report.problems == [] and report.steps_checked > 0
