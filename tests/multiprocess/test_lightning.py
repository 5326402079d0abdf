"""`CkptCallback` under Lightning's ModelParallelStrategy: 2 real ranks (FSDP2 on CPU, gloo)
saving `dcp` steps from every rank, and resuming from them (see `lightning_fit`)."""

from __future__ import annotations

import json

import pytest

from .launch import fit_sharded
from .test_torch import SHARD_FILES


def test_sharded_run_saves_dcp_from_both_ranks_and_resumes_bit_for_bit(tmp_path, ckpt):
    ranks = fit_sharded(tmp_path, monitor="val_loss", save_top_k=1)
    first, second = ranks

    # An interrupted run resumed with resume=True ends with the uninterrupted run's weights.
    assert first["resumed_step"] == second["resumed_step"] == 8  # the first epoch's end
    assert first["resumed"] == first["straight"]
    assert second["resumed"] == first["resumed"]

    # Retention and best across ranks: the best by val_loss and the latest, alike on both.
    run = first["run"]
    assert run == second["run"]
    assert run["steps"][-1] == 24
    best = run["best"]
    val_losses = {int(s): m["val_loss"] for s, m in run["metrics"].items()}
    assert best == min(val_losses, key=lambda s: (val_losses[s], -s))
    assert run["steps"] == sorted({best, 24})
    resumed = tmp_path / "resumed"
    for rank in ranks:
        assert rank["best_model_path"] == str(resumed / f"step_{best:08d}" / "dcp")
        assert rank["last_model_path"] == str(resumed / "step_00000024" / "dcp")
        # validate(ckpt_path="best") loaded the best step into the sharded model.
        assert rank["validated_val_loss"] == pytest.approx(val_losses[best], rel=1e-6)

    # Every step holds both ranks' shards, checked by the manifest; `ckpt` reads the run.
    for step in run["steps"]:
        manifest = json.loads((resumed / f"step_{step:08d}" / "manifest.json").read_text())
        assert manifest["format"] == "dcp"
        assert {"dcp/.metadata", *SHARD_FILES} <= set(manifest["files"])
    assert ckpt("verify", tmp_path / "straight")["intact"]
    assert ckpt("verify", resumed)["intact"]
    shown = ckpt("show", resumed, 24)
    assert shown["format"] == "dcp"

    # One process without a process group loads the final step into a plain model; Lightning's
    # `load_from_checkpoint` reads one file and cannot (the README says so).
    from ckpt_core import load_checkpoint
    from tests.multiprocess.lightning_fit import ShardedModel, digest

    model = ShardedModel()
    state = load_checkpoint(resumed / "step_00000024", like={"state_dict": model.state_dict()})
    model.load_state_dict(state["state_dict"])
    assert digest(model.state_dict()) == first["resumed"]
    with pytest.raises(IsADirectoryError):
        ShardedModel.load_from_checkpoint(first["last_model_path"])


@pytest.mark.slow
def test_sharded_async_saves_on_exception_continue_with_ckpt_path_last_bit_for_bit(tmp_path):
    first, second = fit_sharded(
        tmp_path,
        resume_with="last",  # fit(ckpt_path="last") instead of resume=True
        every_n_train_steps=3,
        async_save=True,
        max_to_keep=2,
        save_on_exception=True,  # every rank raises alike, so every rank saves its shards
    )
    assert first["resumed_step"] == second["resumed_step"] == 10  # saved on the exception
    assert first["resumed"] == first["straight"] == second["resumed"]
    assert first["run"]["steps"] == second["run"]["steps"] == [21, 24]


def test_sharded_strategy_on_one_device_saves_dcp_in_one_process(tmp_path):
    # World size 1: no process group to join, the dcp step is one process's.
    (only,) = fit_sharded(tmp_path, devices=1, monitor="val_loss")
    assert only["resumed_step"] == 16  # one rank trains every batch: 16 per epoch
    assert only["resumed"] == only["straight"]
    manifest = json.loads((tmp_path / "resumed" / "step_00000048" / "manifest.json").read_text())
    assert manifest["format"] == "dcp" and "dcp/__0_0.distcp" in manifest["files"]
