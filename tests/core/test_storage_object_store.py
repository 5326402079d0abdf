"""Object stores (`ckpt_core.storage.object_store`, here fsspec's memory://): the guarantees of a
local disk, with the manifest written last as the commit."""

from __future__ import annotations

import uuid

import fsspec
import numpy as np
import pytest

from ckpt_core import CheckpointExistsError, CheckpointManager


@pytest.fixture(params=["local", "memory"])
def where(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "run")
        return
    yield f"memory://ckpt-tests/{uuid.uuid4().hex}"


def st(step):
    return {"w": np.full(3, step, dtype=np.float32)}


def test_same_behaviour_on_both_backends(where):
    with CheckpointManager(where, max_to_keep=2, best_fn="loss") as mgr:
        for s in range(5):
            mgr.save(s, st(s), metrics={"loss": abs(s - 1)})
        mgr.save(4, st(40), metrics={"loss": 5})  # replace
        assert mgr.all_steps() == [1, 3, 4]
        assert mgr.best_step() == 1
        np.testing.assert_array_equal(mgr.restore(4)["w"], st(40)["w"])
        mgr.mark_complete()
    with pytest.raises(CheckpointExistsError):
        CheckpointManager(where)
    with CheckpointManager(where, on_existing="resume") as mgr:
        assert mgr.resuming and mgr.latest_step() == 4 and mgr.is_complete
    with CheckpointManager(where, on_existing="overwrite") as mgr:
        assert mgr.all_steps() == []


def test_object_store_upload_without_manifest_is_invisible_and_swept():
    url = f"memory://ckpt-tests/{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    with CheckpointManager(url) as mgr:
        mgr.save(1, st(1))
    root = url.removeprefix("memory://")
    fs.pipe_file(f"{root}/step_00000002/arrays.safetensors", b"half an upload")
    with CheckpointManager(url, read_only=True) as ro:
        assert ro.all_steps() == [1]  # a reader needs no special case
    with CheckpointManager(url, on_existing="resume") as mgr:
        assert mgr.all_steps() == [1]
    assert not fs.exists(f"{root}/step_00000002")


def test_object_store_replacement_keeps_the_old_step_until_the_new_manifest():
    url = f"memory://ckpt-tests/{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    root = url.removeprefix("memory://")
    with CheckpointManager(url) as mgr:
        mgr.save(1, st(1))
        storage = mgr.storage
        writer = storage.begin_step("step_00000001")
        with writer.open("arrays.safetensors") as f:
            f.write(b"new bytes, not committed")
        # killed here: the committed step is untouched and still restores
        np.testing.assert_array_equal(mgr.restore(1)["w"], st(1)["w"])
        writer.abort()
        assert sorted(p.rsplit("/", 1)[-1] for p in fs.find(f"{root}/step_00000001")) == [
            "arrays.safetensors",
            "manifest.json",
            "tree.json",
        ]
