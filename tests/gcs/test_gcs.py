"""Checkpoints on gs:// against a local GCS server: orbax writes and reads there by itself.

The `orbax` format on gs:// hands orbax the step's URL (tensorstore uploads the arrays); the
core lists and hashes what orbax wrote and commits it with the manifest, as on any object
store. The other formats go through the core's fsspec storage, with `storage_options`.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ckpt_core import CheckpointManager, CorruptCheckpointError
from ckpt_core.storage import atomicity
from integrations.flax import CkptHook
from tests.gcs.conftest import GcsRun
from tests.integrations.test_flax import linen_init, linen_step


def jax_state(n: int) -> dict:
    return {
        "params": {"w": jnp.arange(1000.0) + n, "b": jnp.full((3, 4), float(n))},
        "step": n,
    }


def assert_same(a: dict, b: dict) -> None:
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture
def no_local_staging(monkeypatch):
    """Fail any attempt of the core to stage an orbax payload on the local disk."""

    def refuse(*args, **kwargs):
        raise AssertionError("the payload was staged locally")

    monkeypatch.setattr(atomicity.tempfile, "mkdtemp", refuse)


def manager(run: GcsRun, **kwargs) -> CheckpointManager:
    return CheckpointManager(run.url, format="orbax", storage_options=run.options, **kwargs)


def test_orbax_writes_and_reads_gs_itself(gcs_run, no_local_staging):
    with manager(gcs_run, max_to_keep=2, best_fn="loss") as mgr:
        for n in (1, 2, 3):
            mgr.save(n, jax_state(n), metrics={"loss": 1.0 / n}, metadata={"n": n})
        assert mgr.all_steps() == [2, 3] and mgr.best_step() == 3
        like = jax.tree.map(jnp.zeros_like, jax_state(0))
        assert_same(mgr.restore(2, like=like), jax_state(2))
        assert_same(mgr.restore(), jax_state(3))
    keys = gcs_run.object_keys()
    assert not any(k.startswith("step_00000001/") for k in keys)  # pruned, every object
    stored = {k.removeprefix("step_00000003/") for k in keys if k.startswith("step_00000003/")}
    assert "orbax/commit_success.txt" in stored and "manifest.json" in stored
    assert any(k.startswith("orbax/ocdbt.process_0/") for k in stored)  # tensorstore's arrays
    manifest = json.loads(
        gcs_run.fs().cat_file(f"{gcs_run.bucket}/run/step_00000003/manifest.json")
    )
    assert set(manifest["files"]) == stored - {"manifest.json"}
    # A later process resumes from the bucket.
    with manager(gcs_run, on_existing="resume", max_to_keep=2) as mgr:
        assert mgr.latest_step() == 3
        assert mgr.metadata(3) == {"n": 3}


def test_every_object_orbax_wrote_is_in_the_manifest_and_checked(gcs_run):
    with manager(gcs_run) as mgr:
        mgr.save(1, jax_state(1))
    fs = gcs_run.fs()
    arrays = sorted(
        k for k in gcs_run.object_keys() if k.startswith("step_00000001/orbax/ocdbt.process_0/d/")
    )
    assert arrays
    path = f"{gcs_run.bucket}/run/{arrays[-1]}"
    data = bytearray(fs.cat_file(path))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(path, bytes(data))
    with manager(gcs_run, read_only=True) as mgr:
        with pytest.raises(CorruptCheckpointError, match="checksum"):
            mgr.restore(1)


def test_replacing_and_overwriting_steps_on_gs(gcs_run, no_local_staging):
    with manager(gcs_run) as mgr:
        mgr.save(1, jax_state(1))
        mgr.save(1, jax_state(10), force=True)  # replaced beside the committed payload
        assert_same(mgr.restore(1), jax_state(10))
    assert [k for k in gcs_run.object_keys() if "/rev-" in k and k.endswith("commit_success.txt")]
    # Overwrite deletes the run; the same step is written again at the same URL.
    with manager(gcs_run, on_existing="overwrite") as mgr:
        assert mgr.all_steps() == []
        mgr.save(1, jax_state(5))
        assert_same(mgr.restore(1), jax_state(5))
    assert len([k for k in gcs_run.object_keys() if k.endswith("commit_success.txt")]) == 1


def test_an_orbax_payload_on_gs_is_readable_by_orbax_alone(gcs_run):
    with manager(gcs_run) as mgr:
        mgr.save(4, jax_state(4))
        url = str(mgr.path(4))
    restored = ocp.StandardCheckpointer().restore(f"{url}/orbax")
    assert_same(restored, jax_state(4))


def test_tree_format_on_gs_goes_through_storage_options(gcs_run):
    state = {"w": np.arange(10.0), "nested": {"k": np.ones((2, 3), np.float32)}}
    with CheckpointManager(gcs_run.url, storage_options=gcs_run.options) as mgr:
        mgr.save(1, state)
        back = mgr.restore(1)
    np.testing.assert_array_equal(back["w"], state["w"])
    np.testing.assert_array_equal(back["nested"]["k"], state["nested"]["k"])
    assert "step_00000001/arrays.safetensors" in gcs_run.object_keys()


def test_flax_hook_resumes_from_gs(gcs_run, no_local_staging):
    def run(steps: int) -> dict:
        hook = CkptHook(gcs_run.url, every_n_steps=2, resume=True, storage_options=gcs_run.options)
        state = hook.restore_or(linen_init())
        for step in range(hook.start_step, steps):
            state, _ = linen_step(state)
            hook(step, state, force=step == steps - 1)
        hook.close()
        return state

    straight = linen_init()
    for _ in range(6):
        straight, _ = linen_step(straight)
    run(3)  # saves steps 0, 2: stops as if killed
    resumed = run(6)
    assert_same(resumed["train"].params, straight["train"].params)
    assert_same(resumed["train"].opt_state, straight["train"].opt_state)
