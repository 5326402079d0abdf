"""`CheckpointManager(max_bytes=...)`: the run's committed bytes on disk stay within the budget."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from ckpt_core import CheckpointManager, OverBudgetWarning


def payload_bytes_on_disk(run: Path) -> int:
    """What the step directories hold on disk besides manifests, a hard link counted once."""
    seen: dict[tuple[int, int], int] = {}
    for step_dir in run.glob("step_*"):
        for path in step_dir.rglob("*"):
            if path.is_file() and path.name != "manifest.json":
                st = path.stat()
                seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


def state(n: int) -> dict:
    return {"w": np.arange(n, dtype=np.float32)}


def test_disk_usage_after_every_commit_stays_within_the_budget(tmp_path):
    budget = 200_000
    rng = np.random.default_rng(0)
    with CheckpointManager(
        tmp_path, max_to_keep=None, keep_period=7, best_fn="loss", max_bytes=budget
    ) as mgr:
        for step in range(30):
            mgr.save(step, state(int(rng.integers(2_000, 15_000))), metrics={"loss": rng.random()})
            on_disk = payload_bytes_on_disk(tmp_path)
            assert on_disk <= budget, (step, on_disk, mgr.all_steps())
            assert mgr.size_bytes() == on_disk
            assert mgr.latest_step() == step and mgr.best_step() in mgr.all_steps()
        assert len(mgr.all_steps()) > 3  # it deletes what it must, not everything


def test_the_budget_accepts_a_size_string_and_records_it_for_readers_and_resume(tmp_path):
    with CheckpointManager(tmp_path, max_to_keep=None, max_bytes="100 KiB") as mgr:
        for step in range(10):
            mgr.save(step, state(10_000))  # 40 kB each: two fit
        assert mgr.all_steps() == [8, 9]
    run_doc = json.loads((tmp_path / "run.json").read_text())
    assert run_doc["retention"]["max_bytes"] == 100 * 1024
    reader = CheckpointManager(tmp_path, read_only=True)
    assert reader.policy.max_bytes == 100 * 1024
    with CheckpointManager(
        tmp_path, max_to_keep=None, max_bytes="100 KiB", on_existing="resume"
    ) as mgr:
        mgr.save(10, state(10_000))
        assert mgr.all_steps() == [9, 10]


def test_a_bad_budget_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match=r"max_bytes .*found '20 GBs'.*HINT: e\.g\. max_bytes="):
        CheckpointManager(tmp_path / "run", max_bytes="20 GBs")
    with pytest.raises(ValueError, match=r"max_bytes must be a positive size; found 0"):
        CheckpointManager(tmp_path / "run", max_bytes=0)
    assert not (tmp_path / "run").exists()


def test_latest_and_best_over_the_budget_warn_once_and_stay(tmp_path):
    with CheckpointManager(tmp_path, max_to_keep=None, best_fn="loss", max_bytes=50_000) as mgr:
        mgr.save(0, state(1_000), metrics={"loss": 0.1})  # the best, 4 kB
        with pytest.warns(OverBudgetWarning, match=r"step 0 \(best\) and step 1 \(latest\)"):
            mgr.save(1, state(20_000), metrics={"loss": 1.0})  # 80 kB
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # still over: no warning at every save
            mgr.save(2, state(20_000), metrics={"loss": 2.0})
        assert mgr.all_steps() == [0, 2]
        mgr.save(3, state(1_000), metrics={"loss": 3.0})  # fits again
        assert mgr.all_steps() == [0, 3]
        with pytest.warns(OverBudgetWarning):  # over the budget anew: warned again
            mgr.save(4, state(20_000), metrics={"loss": 3.0})


def test_a_file_shared_by_hard_links_is_counted_once(tmp_path):
    with CheckpointManager(tmp_path, max_to_keep=None) as mgr:
        mgr.save(1, state(10_000))
        mgr.save(2, state(10_000))
    # What an incremental save does: the unchanged file of step 2 is step 1's, hard-linked.
    one, two = (tmp_path / f"step_0000000{s}" / "arrays.safetensors" for s in (1, 2))
    os.unlink(two)
    os.link(one, two)
    nbytes = one.stat().st_size
    with CheckpointManager(
        tmp_path, max_to_keep=None, max_bytes=3 * nbytes, on_existing="resume"
    ) as mgr:
        assert mgr.size_bytes() == payload_bytes_on_disk(tmp_path) < 2 * nbytes + 1_000
        mgr.save(3, state(10_000))  # counted with sharing the three fit; without, they would not
        assert mgr.all_steps() == [1, 2, 3]
        mgr.restore(2)
