"""`check_resume_is_exact` on plain numpy loops: exact ones pass, ones that forget state are named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckpt_core import (
    CheckpointError,
    CheckpointManager,
    ResumeNotExactError,
    ResumeReport,
    check_resume_is_exact,
)


def exact_loop(directory: Path, total_steps: int) -> dict[str, Any]:
    """Noise derived from the step: nothing random to save besides the weights."""
    with CheckpointManager(directory, on_existing="resume", save_interval_steps=4) as mgr:
        latest = mgr.latest_step()
        w = np.zeros(8) if latest is None else mgr.restore()["w"]
        for step in range(0 if latest is None else latest + 1, total_steps):
            w = w - 0.1 * (w - np.random.default_rng([0, step]).normal(size=8))
            mgr.save(step, {"w": w}, force=step == total_steps - 1)
    return {"w": w, "steps": total_steps}


def loop_that_forgets_its_generator(directory: Path, total_steps: int) -> dict[str, Any]:
    """One generator for the whole run, never saved: a resume starts its stream over."""
    rng = np.random.default_rng(0)
    with CheckpointManager(directory, on_existing="resume") as mgr:
        latest = mgr.latest_step()
        state = {"w": np.zeros(8), "bias": np.ones(2)}
        if latest is not None:
            state = mgr.restore()
        for step in range(0 if latest is None else latest + 1, total_steps):
            state["w"] = state["w"] + rng.normal(size=8)
            mgr.save(step, state)
    return state


def loop_that_forgets_global_numpy(directory: Path, total_steps: int) -> dict[str, Any]:
    """Seeds `np.random` at its start, draws from it, never saves it (a replay buffer's habit)."""
    np.random.seed(0)
    with CheckpointManager(directory, on_existing="resume") as mgr:
        latest = mgr.latest_step()
        w = np.zeros(4) if latest is None else mgr.restore()["w"]
        for step in range(0 if latest is None else latest + 1, total_steps):
            w = w + np.random.rand(4)
            mgr.save(step, {"w": w})
    return {"w": w}


def loop_with_an_unsaved_average(directory: Path, total_steps: int) -> dict[str, Any]:
    """The weights are saved, a running average of them is not."""
    with CheckpointManager(directory, on_existing="resume") as mgr:
        latest = mgr.latest_step()
        w = np.zeros(3, dtype=np.float32) if latest is None else mgr.restore()["w"]
        average = np.zeros(3, dtype=np.float32)
        for step in range(0 if latest is None else latest + 1, total_steps):
            w = w + np.float32(1.5)
            average = 0.9 * average + 0.1 * w
            mgr.save(step, {"w": w})
    return {"w": w, "average": average, "count": total_steps}


def loop_that_saves_nothing(directory: Path, total_steps: int) -> dict[str, Any]:
    return {"w": np.zeros(2)}


def loop_that_returns_nothing(directory: Path, total_steps: int) -> None:
    exact_loop(directory, total_steps)


def test_an_exact_loop_passes_and_reports_what_it_compared(tmp_path):
    report = check_resume_is_exact(exact_loop, steps_before=6, steps_after=5, directory=tmp_path)
    assert isinstance(report, ResumeReport)
    assert report.exact and report.differences == []
    assert (report.steps_before, report.steps_after, report.leaves) == (6, 5, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["interrupted", "uninterrupted"]


def test_a_forgotten_generator_is_caught_and_the_leaf_named():
    with pytest.raises(ResumeNotExactError) as caught:
        check_resume_is_exact(loop_that_forgets_its_generator, steps_before=3, steps_after=2)
    error = caught.value
    assert isinstance(error, AssertionError)
    assert error.report.differences == ["w: 8 of 8 elements differ"]
    message = str(error)
    assert "after 3 steps and resumed for 2" in message and "1 of 2 leaves" in message
    assert "w: 8 of 8 elements differ" in message and "HINT" in message
    assert "bias" not in message
    assert len(message) < 500


def test_only_the_leaves_that_differ_are_named():
    with pytest.raises(ResumeNotExactError, match=r"in 1 of 3 leaves: average: 3 of 3 elements"):
        check_resume_is_exact(loop_with_an_unsaved_average, steps_before=4, steps_after=3)


def test_the_temporary_directory_is_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    check_resume_is_exact(exact_loop, steps_before=2, steps_after=2)
    with pytest.raises(ResumeNotExactError):
        check_resume_is_exact(loop_that_forgets_its_generator, steps_before=2, steps_after=2)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "train, exact",
    [(exact_loop, True), (loop_that_forgets_global_numpy, False)],
    ids=["exact", "forgets-np.random"],
)
def test_in_subprocess_each_run_is_a_fresh_process_and_the_interrupted_one_is_killed(
    train, exact, tmp_path
):
    if exact:
        report = check_resume_is_exact(
            train, steps_before=5, steps_after=3, directory=tmp_path, in_subprocess=True
        )
        assert report.exact
    else:
        with pytest.raises(ResumeNotExactError, match=r"in 1 of 1 leaves: w: 4 of 4 elements"):
            check_resume_is_exact(
                train, steps_before=5, steps_after=3, directory=tmp_path, in_subprocess=True
            )
    # the killed run left its committed checkpoint, and only that
    with CheckpointManager(tmp_path / "interrupted", read_only=True) as mgr:
        assert mgr.latest_step() == 7


def test_a_function_that_cannot_go_to_a_subprocess_is_refused_with_a_hint():
    def local(directory: Path, total_steps: int) -> Any:
        return {}

    with pytest.raises(ValueError, match=r"HINT: pass a function defined at module level"):
        check_resume_is_exact(local, steps_before=1, steps_after=1, in_subprocess=True)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"steps_before": 0, "steps_after": 1}, ValueError, r"steps_before=0.*positive int"),
        ({"steps_before": 1, "steps_after": 1.5}, TypeError, r"steps_after=1\.5.*positive int"),
        ({"steps_before": True, "steps_after": 1}, TypeError, r"steps_before=True"),
    ],
)
def test_bad_step_counts_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        check_resume_is_exact(exact_loop, **kwargs)


def failing_loop(directory: Path, total_steps: int) -> Any:
    raise RuntimeError("a bug in the loop")


def test_a_loop_that_fails_in_its_subprocess_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"failed in its process \(exit code 1"):
        check_resume_is_exact(
            failing_loop, steps_before=1, steps_after=1, directory=tmp_path, in_subprocess=True
        )


def test_a_loop_that_writes_no_checkpoint_is_told_so(tmp_path):
    with pytest.raises(ValueError, match=r"wrote nothing.*HINT"):
        check_resume_is_exact(loop_that_saves_nothing, steps_before=1, steps_after=1)


def test_a_loop_that_returns_nothing_to_compare_is_told_so():
    with pytest.raises(ValueError, match=r"returned no leaves.*HINT: return the trained state"):
        check_resume_is_exact(loop_that_returns_nothing, steps_before=1, steps_after=1)


def test_a_used_directory_is_refused(tmp_path):
    (tmp_path / "interrupted").mkdir()
    with pytest.raises(ValueError, match=r"'interrupted' already exists"):
        check_resume_is_exact(exact_loop, steps_before=1, steps_after=1, directory=tmp_path)
