"""jax.distributed jobs of 2 real processes (gloo CPU collectives, 2 CPU devices each) saving
`orbax` through `CkptHook`, and restoring onto other meshes and process counts."""

from __future__ import annotations

import json

import pytest

from .launch import assert_store_emptied, launch, succeeded


def test_saved_by_two_restores_onto_one_and_onto_another_mesh_of_two(tmp_path, ckpt):
    run = tmp_path / "run"
    losses = {"0": 9.0, "1": 3.0, "2": 1.0, "3": 2.0}
    options = {"max_to_keep": 1, "best_fn": "loss"}
    saved = succeeded(launch("jax_save", run, last_step=3, losses=losses, options=options))
    assert saved[0]["steps"] == saved[1]["steps"] == [2, 3]
    assert saved[0]["best"] == saved[1]["best"] == 2
    files = json.loads((run / "step_00000003" / "manifest.json").read_text())["files"]
    assert any("ocdbt.process_1/" in name for name in files)  # process 1's own shards

    # 1 process, 2 devices: `like` of ShapeDtypeStructs with shardings on a 1-D mesh.
    one = succeeded(launch("jax_restore", run, processes=1))[0]
    assert one == {**one, "step": 3, "ok": True, "placed": True, "devices": 2}
    # 2 processes, a 2x2 mesh and other partition specs than the saving run.
    two = succeeded(launch("jax_restore", run))
    assert all(r == {**r, "step": 3, "ok": True, "placed": True, "devices": 4} for r in two)

    # A relaunch of the loop resumes from the newest step in every process.
    resumed = succeeded(launch("jax_save", run, last_step=4, losses={"4": 0.5}, options=options))
    assert all(r["start"] == 4 and r["ok"] and r["steps"] == [4] for r in resumed)
    assert ckpt("verify", run)["intact"]
    assert ckpt("show", run)["format"] == "orbax"


def test_the_client_holds_no_key_of_a_save_two_saves_later_nor_after_close(tmp_path):
    assert_store_emptied(succeeded(launch("jax_store_keys", tmp_path / "run", last_step=4)), 4)


@pytest.mark.slow
def test_async_saves_while_the_loop_runs_collectives(tmp_path):
    """orbax meets through the jax.distributed client on the background thread, so the
    loop's own cross-process computations go on meanwhile (a device barrier would deadlock)."""
    run = tmp_path / "run"
    losses = {str(step): 1.0 for step in range(6)}
    options = {"async_save": True, "max_to_keep": 2}
    saved = succeeded(
        launch("jax_save", run, last_step=5, losses=losses, collectives=50, options=options)
    )
    assert saved[0]["steps"] == saved[1]["steps"] == [4, 5]
    one = succeeded(launch("jax_restore", run, processes=1))[0]
    assert one["step"] == 5 and one["ok"]


@pytest.mark.slow
def test_a_process_killed_mid_save_fails_the_other_and_the_relaunch_resumes(tmp_path):
    run = tmp_path / "run"
    losses = {str(step): 1.0 for step in range(4)}
    died = launch(
        "jax_save", run, last_step=2, losses=losses, kill_rank_at=[1, 2], barrier_timeout_secs=5
    )
    assert died[1].returncode == -9
    survivor = died[0].result
    assert survivor["type"] == "ProcessGroupError" and "process 1 of 2" in survivor["error"]
    assert "step 2" in survivor["error"] and survivor["seconds"] < 60
    assert not (run / "step_00000002").exists()
    assert not [p for p in run.iterdir() if p.name.startswith(".tmp-")]

    resumed = succeeded(launch("jax_save", run, last_step=3, losses=losses))
    assert all(r["start"] == 2 and r["ok"] and r["steps"] == [0, 1, 2, 3] for r in resumed)
