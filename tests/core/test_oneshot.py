"""The one-shot functions (`ckpt_core.oneshot`) on run directories (`step=`, `run/best`,
`run/latest`), on URLs, and after a kill; never replacing what is not a checkpoint. The device
axis (`unreplicate`, `replicate_to`) and `restore(step, like)` are in test_oneshot_torch.py."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import numpy as np
import pytest

from ckpt_core import (
    CheckpointExistsError,
    CheckpointLockedError,
    CheckpointManager,
    CheckpointNotFoundError,
    checkpoint_exists,
    load_checkpoint,
    load_metadata,
    save_checkpoint,
)


def state(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full(3, value), "b": np.full((), value)}


def test_a_step_saved_into_a_run_is_read_by_the_manager_and_ckpt(run_dir):
    save_checkpoint(run_dir, state(1.0), step=1000, metadata={"env": "CartPole-v1"})
    save_checkpoint(run_dir, state(2.0), step=2000, metrics={"loss": 0.5})

    assert load_checkpoint(run_dir, like=state(0.0), step=1000)["w"].tolist() == [1.0] * 3
    assert load_checkpoint(run_dir, like=state(0.0))["w"].tolist() == [2.0] * 3  # latest
    assert load_metadata(run_dir, step=1000) == {"env": "CartPole-v1"}
    assert load_metadata(run_dir) is None
    assert checkpoint_exists(run_dir, step=1000) and not checkpoint_exists(run_dir, step=3000)
    with CheckpointManager(run_dir, on_existing="resume") as mgr:
        assert mgr.all_steps() == [1000, 2000]
        assert mgr.metrics(2000) == {"loss": 0.5}
    listing = subprocess.run(
        [sys.executable, "-m", "ckpt_core.cli", "ls", str(run_dir)], capture_output=True, text=True
    )
    assert listing.returncode == 0 and "2000" in listing.stdout, listing.stderr


def test_a_run_save_applies_the_runs_recorded_retention(run_dir):
    with CheckpointManager(run_dir, max_to_keep=2, best_fn="loss", keep_best=1) as mgr:
        mgr.save(1, state(1.0), metrics={"loss": 0.1})
        mgr.save(2, state(2.0), metrics={"loss": 0.9})
    save_checkpoint(run_dir, state(3.0), step=3, metrics={"loss": 0.5})
    assert CheckpointManager(run_dir, read_only=True).all_steps() == [1, 2, 3]  # 1 is best
    save_checkpoint(run_dir, state(4.0), step=4, metrics={"loss": 0.7})
    assert CheckpointManager(run_dir, read_only=True).all_steps() == [1, 3, 4]


def test_best_and_latest_work_as_paths_and_as_steps(run_dir):
    with CheckpointManager(run_dir, best_fn="reward", best_mode="max") as mgr:
        for step, reward in ((1, 3.0), (2, 9.0), (3, 5.0)):
            mgr.save(step, state(float(step)), metrics={"reward": reward})
    assert load_checkpoint(run_dir / "best")["w"].tolist() == [2.0] * 3
    assert load_checkpoint(run_dir, step="best")["w"].tolist() == [2.0] * 3
    assert load_checkpoint(f"{run_dir}/latest/")["w"].tolist() == [3.0] * 3
    assert checkpoint_exists(run_dir / "best")
    with pytest.raises(ValueError, match="both pick the step"):
        load_checkpoint(run_dir / "best", step=1)


def test_best_without_a_recorded_metric_names_the_fix(run_dir):
    save_checkpoint(run_dir, state(1.0), step=1)
    with pytest.raises(CheckpointNotFoundError, match=r"records no best_fn.*HINT"):
        load_checkpoint(run_dir, step="best")
    assert not checkpoint_exists(run_dir, step="best")
    assert not checkpoint_exists(run_dir / "best")


def test_a_manager_writing_the_run_locks_out_save_checkpoint(run_dir):
    with CheckpointManager(run_dir) as mgr:
        mgr.save(1, state(1.0))
        with pytest.raises(CheckpointLockedError, match="save_checkpoint cannot add step 2"):
            save_checkpoint(run_dir, state(2.0), step=2)
        assert mgr.all_steps() == [1]
        assert load_checkpoint(run_dir, step=1)["w"].tolist() == [1.0] * 3  # reading is fine
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith("step_")) == [
        "step_00000001"
    ]


def test_ambiguous_and_missing_paths_say_what_to_do(tmp_path):
    one = tmp_path / "agent.ckpt"
    save_checkpoint(one, state(1.0))
    with pytest.raises(ValueError, match=r"one checkpoint's directory.*HINT: drop step="):
        load_checkpoint(one, step=3)
    with pytest.raises(ValueError, match=r"one checkpoint's directory"):
        save_checkpoint(one, state(1.0), step=3)
    save_checkpoint(tmp_path / "run", state(1.0), step=1)
    with pytest.raises(ValueError, match=r"needs the step number.*step=1000"):
        save_checkpoint(tmp_path / "run", state(1.0))
    with pytest.raises(CheckpointNotFoundError, match="step 7"):
        load_checkpoint(tmp_path / "run", step=7)
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere", step=1)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(CheckpointExistsError, match="not a checkpoint"):
        save_checkpoint(tmp_path / "notes", state(1.0))
    with pytest.raises(CheckpointExistsError, match=r"holds files but no checkpoints.*HINT"):
        save_checkpoint(tmp_path / "notes", state(1.0), step=1)
    (tmp_path / "empty").mkdir()
    save_checkpoint(tmp_path / "empty", state(1.0), step=1)
    assert checkpoint_exists(tmp_path / "empty", step=1)
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["todo.txt"]


def test_load_errors_say_what_the_path_is(tmp_path):
    (tmp_path / "qs.py").write_text("print('hi')")
    with pytest.raises(NotADirectoryError, match=r"a file, not a checkpoint directory") as e:
        load_checkpoint(tmp_path / "qs.py")
    assert "created" not in str(e.value).replace("nothing is created on a read", "")
    assert not checkpoint_exists(tmp_path / "qs.py")
    with pytest.raises(CheckpointNotFoundError, match="the directory does not exist") as e:
        load_checkpoint(tmp_path / "runs" / "nope")
    assert "manifest.json" not in str(e.value)
    save_checkpoint(tmp_path / "runs" / "exp", state(1.0), step=1)
    save_checkpoint(tmp_path / "runs" / "agent", state(2.0))
    with pytest.raises(CheckpointNotFoundError, match=r"below it: exp, agent.*HINT") as e:
        load_checkpoint(tmp_path / "runs")
    assert str(tmp_path / "runs" / "exp") in str(e.value)
    with pytest.raises(CheckpointNotFoundError, match="below it"):
        load_metadata(tmp_path / "runs")
    assert not checkpoint_exists(tmp_path / "runs")


def test_one_shot_save_killed_between_renames_is_repaired(tmp_path):
    save_checkpoint(tmp_path / "model", state(1))
    os.rename(tmp_path / "model", tmp_path / ".old-model-0123456789ab")  # killed here
    assert checkpoint_exists(tmp_path / "model")
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "model")["w"], state(1)["w"])


def test_one_shot_save_refuses_to_replace_a_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(CheckpointExistsError, match="is not a checkpoint"):
        save_checkpoint(tmp_path / "mine", state(1))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_one_shot_functions_take_single_segment_urls():
    name = f"memory://edge-{uuid.uuid4().hex}"
    save_checkpoint(name, state(5))
    np.testing.assert_array_equal(load_checkpoint(name)["w"], state(5)["w"])
    with pytest.raises(ValueError, match="inside a directory or bucket"):
        save_checkpoint("s3://just-a-bucket", state(1))
