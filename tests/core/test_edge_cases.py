"""Edge cases found in review: each test pins a behaviour that once lost or mangled data."""

from __future__ import annotations

import gc
import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from ckpt_core import (
    CheckpointError,
    CheckpointExistsError,
    CheckpointManager,
    CorruptCheckpointError,
    RetentionPolicy,
    checkpoint_exists,
    load_checkpoint,
    save_checkpoint,
)


def st(v: float) -> dict:
    return {"w": np.full(4, v)}


# ---------------------------------------------------------------- one-shot functions


def test_one_shot_save_killed_between_renames_is_repaired(tmp_path):
    save_checkpoint(tmp_path / "model", st(1))
    os.rename(tmp_path / "model", tmp_path / ".old-model-0123456789ab")  # killed here
    assert checkpoint_exists(tmp_path / "model")
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "model")["w"], st(1)["w"])


def test_one_shot_save_refuses_to_replace_a_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(CheckpointExistsError, match="is not a checkpoint"):
        save_checkpoint(tmp_path / "mine", st(1))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_one_shot_functions_take_single_segment_urls():
    name = f"memory://edge-{uuid.uuid4().hex}"
    save_checkpoint(name, st(5))
    np.testing.assert_array_equal(load_checkpoint(name)["w"], st(5)["w"])
    with pytest.raises(ValueError, match="inside a directory or bucket"):
        save_checkpoint("s3://just-a-bucket", st(1))


# ---------------------------------------------------------------- what the library owns


def test_user_files_that_look_like_temporaries_are_never_swept(run_dir):
    run_dir.mkdir()
    for name in ("notes.partial", "step_1", "step_00000002.bak"):
        (run_dir / name).write_text("mine")
    with CheckpointManager(run_dir) as mgr:
        mgr.save(1, st(1))
        assert mgr.all_steps() == [1]
    with CheckpointManager(run_dir, on_existing="overwrite"):
        pass
    assert all(
        (run_dir / n).read_text() == "mine"
        for n in ("notes.partial", "step_1", "step_00000002.bak")
    )


def test_overwrite_removes_quarantined_steps_too(run_dir):
    with CheckpointManager(run_dir) as mgr:
        mgr.save(1, st(1))
    (run_dir / "step_00000001.corrupt-1700000000").mkdir()
    with CheckpointManager(run_dir, on_existing="overwrite"):
        pass
    assert not (run_dir / "step_00000001.corrupt-1700000000").exists()


def test_a_symlinked_step_is_not_a_step(run_dir, tmp_path):
    outside = tmp_path / "outside"
    save_checkpoint(outside, st(9))
    with CheckpointManager(run_dir) as mgr:
        mgr.save(1, st(1))
    (run_dir / "step_00000099").symlink_to(outside)
    with CheckpointManager(run_dir, read_only=True) as mgr:
        assert mgr.all_steps() == [1]


def test_a_dropped_manager_releases_its_lock(run_dir):
    CheckpointManager(run_dir).save(1, st(1))  # never closed
    gc.collect()
    with CheckpointManager(run_dir, on_existing="resume") as mgr:
        assert mgr.latest_step() == 1


# ---------------------------------------------------------------- fitting to `like`


def test_numpy_scalars_and_big_endian_arrays_round_trip(run_dir):
    state = {"f": np.float64(0.5), "be": np.arange(4, dtype=">f4")}
    with CheckpointManager(run_dir, format="tree") as mgr:
        mgr.save(1, state)
        back = mgr.restore()
    assert type(back["f"]) is np.float64 and back["f"] == 0.5
    np.testing.assert_array_equal(back["be"], np.arange(4, dtype=np.float32))


def test_hostile_safetensors_header_is_a_corrupt_checkpoint(run_dir):
    import json
    import struct

    with CheckpointManager(run_dir) as mgr:
        mgr.save(1, {"w": np.ones(2, dtype=np.float32)})
        path = Path(mgr.path(1)) / "arrays.safetensors"
        raw = path.read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8 : 8 + n])
        header["w"]["shape"] = [-2]
        text = json.dumps(header).encode().ljust(n)
        path.write_bytes(raw[:8] + text + raw[8 + n :])
        with pytest.raises(
            CorruptCheckpointError, match=r"arrays\.safetensors: invalid safetensors header"
        ):
            mgr.restore()


# ---------------------------------------------------------------- errors and input


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
            mgr.save(1, st(1))
            raise KeyError("the user's own error")
    assert any("disk on fire" in note for note in err.value.__notes__)

    with CheckpointManager(run_dir / "b", async_save=True, format=Failing()) as mgr:
        mgr.save(1, st(1))
        with pytest.raises(CheckpointError):
            mgr.restore()  # nothing committed; the background error is kept for wait()
        with pytest.raises(OSError, match="disk on fire") as err:  # as a sync save raises it
            mgr.wait()
        assert "background save of step 1" in err.value.__notes__[-1]


def test_a_save_retention_would_delete_at_once_is_refused(run_dir):
    with CheckpointManager(run_dir, max_to_keep=2) as mgr:
        for s in (10, 20, 30):
            mgr.save(s, st(s))
        with pytest.raises(ValueError, match="retention would delete it"):
            mgr.save(15, st(15))
        assert mgr.all_steps() == [20, 30]
    with CheckpointManager(run_dir, on_existing="resume", max_to_keep=None) as mgr:
        assert mgr.save(15, st(15))  # kept under this policy: allowed


def test_best_pointer_never_names_a_deleted_step(run_dir):
    with CheckpointManager(run_dir, best_fn="loss", keep_best=1, max_to_keep=1) as mgr:
        mgr.save(1, st(1), metrics={"loss": 0.1})
        mgr.save(2, st(2), metrics={"loss": 0.5})
    with CheckpointManager(run_dir, on_existing="resume", max_to_keep=1) as mgr:  # no best_fn
        mgr.save(3, st(3))
        assert 1 not in mgr.all_steps()
    assert not (run_dir / "best").exists()


def test_input_checks(run_dir):
    with CheckpointManager(run_dir) as mgr:
        assert mgr.save(np.int64(5), st(5))
        assert mgr.all_steps() == [5]
    with pytest.raises(TypeError, match="Format object"):
        CheckpointManager(run_dir / "x", format=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_to_keep"):  # a bool is no count
        RetentionPolicy(max_to_keep=True)
