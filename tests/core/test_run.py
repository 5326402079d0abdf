"""The run model (`ckpt_core.run`): steps, run.json, pointers, retention, and the one "best"."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from ckpt_core import (
    CheckpointExistsError,
    CheckpointManager,
    CheckpointNotFoundError,
    layout,
    load_checkpoint,
    save_checkpoint,
)
from ckpt_core.info import CheckpointInfo
from ckpt_core.listing import scan_run
from ckpt_core.retention import DEFAULT_POLICY, RetentionPolicy
from ckpt_core.run import Run, acquire_writer_lock, best_step, open_directory
from ckpt_core.run_doc import recorded_policy


def state(step: int) -> dict:
    return {"w": np.full((3,), step, dtype=np.float32)}


def fill(run_dir: Path, losses: dict[int, float], **options) -> None:
    with CheckpointManager(run_dir, **options) as mgr:
        for step, loss in losses.items():
            mgr.save(step, state(step), metrics={"loss": loss})


def record(step: int, **metrics: float) -> CheckpointInfo:
    return CheckpointInfo(step, 0.0, metrics, None, "", 0, "tree")


def run_json(run_dir: Path) -> dict:
    return json.loads((run_dir / layout.RUN_FILE).read_text())


def by_loss(metrics):
    return metrics["loss"]


# ---------------------------------------------------------------- the one meaning of best


def test_best_is_the_top_ranked_step_else_the_runs_own_else_none():
    steps = [record(1, loss=0.5), record(2, loss=0.2), record(3, loss=0.2), record(4)]
    ranked = RetentionPolicy(best_fn="loss")
    assert best_step(ranked, steps, run_best=1) == 3  # ranking wins; ties: the newer
    assert best_step(RetentionPolicy(best_fn="acc"), steps, run_best=1) is None  # none ranked
    unranked = RetentionPolicy()
    assert best_step(unranked, steps, run_best=1) == 1  # e.g. the writer's pointer stands in
    assert best_step(unranked, steps, run_best=9) is None  # ...only naming a committed step
    assert best_step(unranked, steps, run_best=None) is None


def test_a_run_ranked_by_a_function_is_ranked_by_its_pointer_everywhere(run_dir):
    fill(run_dir, {1: 0.5, 2: 0.1, 3: 0.3}, best_fn=by_loss, max_to_keep=None)
    assert run_json(run_dir)["retention"]["best_fn_callable"] == "by_loss"
    with CheckpointManager(run_dir, read_only=True) as reader:
        assert reader.policy.best_fn is None  # a function is recorded by name only
        assert reader.best_step() == 2
        assert reader.restore("best")["w"].tolist() == [2.0] * 3
    assert load_checkpoint(run_dir, step="best")["w"].tolist() == [2.0] * 3
    listing = scan_run(open_directory(run_dir))
    assert listing.best_step(listing.recorded_policy or DEFAULT_POLICY) == 2


def test_without_any_ranking_there_is_no_best(run_dir):
    fill(run_dir, {1: 0.5, 2: 0.1})
    with CheckpointManager(run_dir, read_only=True) as reader:
        assert reader.best_step() is None
        with pytest.raises(CheckpointNotFoundError, match=r"needs a best_fn.*HINT"):
            reader.restore("best")


# ---------------------------------------------------------------- run.json and retention records


def test_retention_is_recorded_once_and_only_when_it_changes(run_dir):
    fill(run_dir, {1: 0.5}, max_to_keep=3)
    first = (run_dir / layout.RUN_FILE).stat().st_mtime_ns
    with CheckpointManager(run_dir, on_existing="resume", max_to_keep=3):
        pass
    assert (run_dir / layout.RUN_FILE).stat().st_mtime_ns == first  # same settings: untouched
    with CheckpointManager(run_dir, on_existing="resume", max_to_keep=2, keep_period=10):
        pass
    recorded = run_json(run_dir)["retention"]
    assert (recorded["max_to_keep"], recorded["keep_period"]) == (2, 10)


def test_readers_never_write_and_take_the_recorded_ranking(run_dir):
    fill(run_dir, {1: 0.5, 2: 0.1, 3: 0.3}, best_fn="loss", max_to_keep=None)
    before = (run_dir / layout.RUN_FILE).read_bytes()
    with CheckpointManager(run_dir, read_only=True, max_to_keep=1) as reader:
        assert reader.policy == recorded_policy(json.loads(before))
        assert reader.best_step() == 2
    assert (run_dir / layout.RUN_FILE).read_bytes() == before


def test_a_writer_without_best_fn_keeps_a_recorded_function(run_dir):
    fill(run_dir, {1: 0.5, 2: 0.1}, best_fn=by_loss, max_to_keep=None)
    save_checkpoint(run_dir, state(3), step=3, metrics={"loss": 0.9})
    assert run_json(run_dir)["retention"]["best_fn_callable"] == "by_loss"
    assert load_checkpoint(run_dir, step="best")["w"].tolist() == [2.0] * 3


def test_save_checkpoint_applies_the_recorded_budget(run_dir):
    with CheckpointManager(run_dir, max_to_keep=None) as mgr:
        mgr.save(1, state(1))
        budget = mgr.size_bytes() * 5 // 2  # room for two steps
    CheckpointManager(run_dir, on_existing="resume", max_to_keep=None, max_bytes=budget).close()
    save_checkpoint(run_dir, state(2), step=2)
    save_checkpoint(run_dir, state(3), step=3)
    assert run_json(run_dir)["retention"]["max_bytes"] == budget
    with CheckpointManager(run_dir, read_only=True) as reader:
        assert reader.all_steps() == [2, 3]


def test_a_damaged_run_json_is_moved_aside_by_a_writer_only(run_dir):
    fill(run_dir, {1: 0.5})
    (run_dir / layout.RUN_FILE).write_text("[1, 2")
    with CheckpointManager(run_dir, read_only=True) as reader:
        assert reader.run_metadata == {}
    assert (run_dir / layout.RUN_FILE).read_text() == "[1, 2"
    with pytest.warns(RuntimeWarning, match="moved aside"):
        CheckpointManager(run_dir, on_existing="resume").close()
    aside = [p for p in os.listdir(run_dir) if p.startswith("run.json.corrupt-")]
    assert len(aside) == 1 and (run_dir / aside[0]).read_text() == "[1, 2"


# ---------------------------------------------------------------- a run held open


def test_scan_lists_committed_steps_only(run_dir):
    fill(run_dir, {1: 0.5, 2: 0.1, 3: 0.3}, max_to_keep=None)
    (run_dir / layout.step_dirname(2) / layout.MANIFEST).unlink()  # not a step any more
    (run_dir / layout.step_dirname(7)).mkdir()
    run = Run(open_directory(run_dir), RetentionPolicy())
    assert sorted(run.infos) == [1, 3]
    assert run.infos[3].path == run_dir / layout.step_dirname(3)
    assert run.resolve("latest") == 3 and run.resolve(1) == 1
    with pytest.raises(CheckpointNotFoundError, match=r"no step 2 checkpoint .*\[1, 3\]"):
        run.resolve(2)
    listing = scan_run(open_directory(run_dir))
    assert [i.step for i in listing.steps] == [1, 3]
    assert {(o.step, o.kind) for o in listing.others} == {(2, "invalid"), (7, "invalid")}


def test_applying_a_policy_deletes_steps_and_repairs_the_pointers(run_dir):
    fill(run_dir, {1: 0.1, 2: 0.5, 3: 0.4, 4: 0.3}, best_fn="loss", max_to_keep=None)
    before = (run_dir / layout.RUN_FILE).read_bytes()
    storage = open_directory(run_dir)
    lock = acquire_writer_lock(storage)
    try:
        run = Run(storage, recorded_policy(json.loads(before)) or DEFAULT_POLICY)
        deleted = run.apply_retention(RetentionPolicy(max_to_keep=1, best_fn="loss", keep_best=0))
    finally:
        lock.release()
    assert deleted == [1, 2, 3] and sorted(run.infos) == [4]
    assert (run_dir / layout.BEST_POINTER).read_text().strip() == layout.step_dirname(4)
    assert (run_dir / layout.LATEST_POINTER).read_text().strip() == layout.step_dirname(4)
    assert (run_dir / layout.RUN_FILE).read_bytes() == before  # applying records nothing


def test_a_pointer_that_cannot_be_derived_is_removed_only_when_its_step_goes(run_dir):
    fill(run_dir, {1: 0.1, 2: 0.5, 3: 0.4}, best_fn=by_loss, max_to_keep=None)
    reader = Run(open_directory(run_dir), RetentionPolicy(max_to_keep=None))
    reader.adopt_recorded_retention()
    assert reader.pointer_ranks and reader.best_step() == 1  # as the ranking writer left it
    assert reader.reasons()[1] == ("recent", "best")
    writer = Run(open_directory(run_dir), RetentionPolicy(max_to_keep=1))
    assert writer.best_step() is None  # a writer without best_fn has no best step
    writer.refresh_pointers()
    assert (run_dir / layout.BEST_POINTER).exists()  # its step is still there
    assert writer.apply_retention() == [1, 2]
    assert not (run_dir / layout.BEST_POINTER).exists()


def test_prune_applies_a_policy_through_the_run_model_and_records_nothing(run_dir):
    from ckpt_core.cli import main

    fill(run_dir, {1: 0.1, 2: 0.5, 3: 0.4, 4: 0.3}, best_fn=by_loss, max_to_keep=None)
    before = (run_dir / layout.RUN_FILE).read_bytes()
    assert main(["prune", str(run_dir), "--max-to-keep", "1"]) == 0
    with CheckpointManager(run_dir, read_only=True) as reader:
        assert reader.all_steps() == [1, 4]  # 1: the best its writer's function ranked
        assert "best" in reader.info(1).kept_because
    assert (run_dir / layout.RUN_FILE).read_bytes() == before


def test_the_resume_table_is_the_run_models(run_dir):
    fill(run_dir, {1: 0.5})
    storage = open_directory(run_dir)
    with pytest.raises(CheckpointExistsError, match="on_existing='resume'"):
        Run(storage, DEFAULT_POLICY).open_as_writer("error")
    assert Run(storage, DEFAULT_POLICY).open_as_writer("resume") is True
    (run_dir / "notes.txt").write_text("mine")
    run = Run(storage, DEFAULT_POLICY)
    assert run.open_as_writer("overwrite") is False and run.infos == {}
    assert sorted(os.listdir(run_dir)) == [layout.LOCK_FILE, "notes.txt", layout.RUN_FILE]


def test_user_files_that_look_like_temporaries_are_never_swept(run_dir):
    run_dir.mkdir()
    for name in ("notes.partial", "step_1", "step_00000002.bak"):
        (run_dir / name).write_text("mine")
    with CheckpointManager(run_dir) as mgr:
        mgr.save(1, state(1))
        assert mgr.all_steps() == [1]
    with CheckpointManager(run_dir, on_existing="overwrite"):
        pass
    assert all(
        (run_dir / n).read_text() == "mine"
        for n in ("notes.partial", "step_1", "step_00000002.bak")
    )


def test_overwrite_removes_quarantined_steps_too(run_dir):
    with CheckpointManager(run_dir) as mgr:
        mgr.save(1, state(1))
    (run_dir / "step_00000001.corrupt-1700000000").mkdir()
    with CheckpointManager(run_dir, on_existing="overwrite"):
        pass
    assert not (run_dir / "step_00000001.corrupt-1700000000").exists()


def test_a_symlinked_step_is_not_a_step(run_dir, tmp_path):
    outside = tmp_path / "outside"
    save_checkpoint(outside, state(9))
    with CheckpointManager(run_dir) as mgr:
        mgr.save(1, state(1))
    (run_dir / "step_00000099").symlink_to(outside)
    with CheckpointManager(run_dir, read_only=True) as mgr:
        assert mgr.all_steps() == [1]


def test_a_save_retention_would_delete_at_once_is_refused(run_dir):
    with CheckpointManager(run_dir, max_to_keep=2) as mgr:
        for s in (10, 20, 30):
            mgr.save(s, state(s))
        with pytest.raises(ValueError, match="retention would delete it"):
            mgr.save(15, state(15))
        assert mgr.all_steps() == [20, 30]
    with CheckpointManager(run_dir, on_existing="resume", max_to_keep=None) as mgr:
        assert mgr.save(15, state(15))  # kept under this policy: allowed


def test_best_pointer_never_names_a_deleted_step(run_dir):
    with CheckpointManager(run_dir, best_fn="loss", keep_best=1, max_to_keep=1) as mgr:
        mgr.save(1, state(1), metrics={"loss": 0.1})
        mgr.save(2, state(2), metrics={"loss": 0.5})
    with CheckpointManager(run_dir, on_existing="resume", max_to_keep=1) as mgr:  # no best_fn
        mgr.save(3, state(3))
        assert 1 not in mgr.all_steps()
    assert not (run_dir / "best").exists()
