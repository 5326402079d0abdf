"""torch.distributed jobs of 2 real processes (gloo, FSDP2 `fully_shard` on CPU) saving `dcp`."""

from __future__ import annotations

import json
import time

import pytest
import torch

from ckpt_core import CheckpointManager
from ckpt_core.formats.dcp import SHARD_THREADS
from ckpt_core.processes import split

from .launch import assert_store_emptied, launch, succeeded

RETAIN = {"max_to_keep": 1, "best_fn": "loss"}
# Each rank's shards, in DCP's own names: a file per writing thread.
SHARD_FILES = {f"dcp/__{rank}_{i}.distcp" for rank in (0, 1) for i in range(SHARD_THREADS)}


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # DCP alone, in 1 process
def test_saved_by_two_restores_onto_one_and_back_onto_two(tmp_path, ckpt):
    run = tmp_path / "run"
    losses = {"1": 3.0, "2": 1.0, "3": 2.0}
    saved = succeeded(launch("torch_save", run, last_step=3, losses=losses, options=RETAIN))

    # One run, seen alike by both processes: retention and best tracking across processes.
    assert saved[0]["steps"] == saved[1]["steps"] == [2, 3]  # 3 the latest, 2 the best
    assert saved[0]["best"] == saved[1]["best"] == 2
    assert saved[0]["fingerprint"] == saved[1]["fingerprint"]
    # The primary's manifest covers every process's shards, checksummed by their writers.
    manifest = json.loads((run / "step_00000003" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"dcp/.metadata", *SHARD_FILES}
    assert sorted(p.name for p in run.iterdir()) == [
        ".lock", "best", "latest", "run.json", "step_00000002", "step_00000003",
    ]  # fmt: skip

    # Onto 1 process without a process group, into a plain model and optimizer.
    one = succeeded(launch("torch_restore", run, processes=1, optim=True))[0]
    assert one["fingerprint"] == saved[0]["fingerprint"]
    assert one["model_only_matches"]  # like={"model": ...} loads the model alone
    # Back onto 2 processes, into a model sharded from another seed.
    two = succeeded(launch("torch_restore", run, optim=True))
    assert two[0]["fingerprint"] == two[1]["fingerprint"] == saved[0]["fingerprint"]

    # DCP itself opens the step.
    import torch
    import torch.distributed.checkpoint as dcp

    bias = {"model": {"2.bias": torch.zeros(8)}}
    dcp.load(bias, checkpoint_id=str(run / "step_00000003" / "dcp"))
    assert float(bias["model"]["2.bias"].double().sum()) == pytest.approx(
        saved[0]["fingerprint"]["model/2.bias"]
    )
    # And the `ckpt` command.
    assert ckpt("verify", run)["intact"]
    listed = ckpt("ls", run)["runs"][0]
    assert [s["step"] for s in listed["steps"]] == [2, 3] and listed["best"] == 2
    shown = ckpt("show", run, 3)
    assert shown["format"] == "dcp" and len(shown["files"]) == 1 + len(SHARD_FILES)


def test_a_process_killed_mid_save_leaves_no_step_and_the_relaunch_resumes(tmp_path):
    run = tmp_path / "run"
    timeout = 3.0
    options = {"barrier_timeout_secs": timeout}
    died = launch("torch_save", run, last_step=2, kill_rank_at=[1, 2, "after"], options=options)

    assert died[1].returncode == -9
    survivor = died[0].result
    assert survivor["type"] == "ProcessGroupError"
    message = survivor["error"]
    assert "process 1 of 2" in message and "step 2" in message and "HINT" in message
    assert survivor["seconds"] < timeout + 5  # both saves, and the bounded wait
    # No step 2, no temporary left; step 1 intact.
    assert sorted(p.name for p in run.iterdir()) == [".lock", "latest", "run.json", "step_00000001"]
    with CheckpointManager(run, read_only=True) as mgr:
        assert mgr.all_steps() == [1]
        mgr.verify(1)

    relaunched = succeeded(launch("torch_save", run, last_step=3, options=options))
    assert [r["first"] for r in relaunched] == [2, 2]
    assert relaunched[0]["steps"] == relaunched[1]["steps"] == [1, 2, 3]


def test_the_store_holds_no_key_of_a_save_two_saves_later_nor_after_close(tmp_path):
    assert_store_emptied(succeeded(launch("torch_store_keys", tmp_path / "run", last_step=4)), 4)


def test_a_damaged_shard_fails_the_restore_in_every_process_naming_it(tmp_path):
    """Each process checksums a share of the files; the verdicts are pooled."""
    run = tmp_path / "run"
    succeeded(launch("torch_save", run, last_step=2))
    manifest = json.loads((run / "step_00000001" / "manifest.json").read_text())
    sizes = {name: record["size"] for name, record in manifest["files"].items()}
    # A shard only process 1 checksums: process 0 learns of it at the meeting.
    damaged = next(name for name, i in split(sizes, 2).items() if i == 1 and "distcp" in name)
    path = run / "step_00000001" / damaged
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))

    began = time.monotonic()
    restored = launch(
        "torch_restore", run, step=1, writer=True, options={"barrier_timeout_secs": 60}
    )
    for outcome in restored:
        result = outcome.result
        assert result.get("type") == "CorruptCheckpointError", outcome.output[-4000:]
        assert damaged in result["error"] and "checksum" in result["error"]
        assert result["path"] == str(path)
    assert time.monotonic() - began < 40  # at once, not at the timeout


@pytest.mark.slow
@pytest.mark.parametrize("who, when", [(1, "before"), (0, "after")])
def test_any_process_killed_mid_save_fails_the_others_with_a_clear_error(tmp_path, who, when):
    """A rank killed inside DCP's collective write, and the primary killed before it commits."""
    run = tmp_path / "run"
    options = {"barrier_timeout_secs": 5.0}
    began = time.monotonic()
    died = launch("torch_save", run, last_step=2, kill_rank_at=[who, 2, when], options=options)
    assert died[who].returncode == -9
    survivor = died[1 - who].result
    assert survivor["type"] == "ProcessGroupError", survivor
    assert "step 2" in survivor["error"] or "process 0" in survivor["error"]
    assert "HINT" in survivor["error"] and "restart" in survivor["error"]
    assert time.monotonic() - began < 120
    with CheckpointManager(run, read_only=True) as mgr:
        assert mgr.all_steps() == [1]
        mgr.verify(1)


@pytest.mark.slow
def test_async_saves_from_two_processes(tmp_path, ckpt):
    run = tmp_path / "run"
    options = {"async_save": True, "max_to_keep": 2}
    saved = succeeded(launch("torch_save", run, last_step=4, options=options))
    assert saved[0]["steps"] == saved[1]["steps"] == [3, 4]
    one = succeeded(launch("torch_restore", run, processes=1, optim=True))[0]
    assert one["fingerprint"] == saved[0]["fingerprint"]
    assert ckpt("verify", run)["intact"]


@pytest.mark.slow
def test_the_same_protocol_on_s3(s3_run, s3_server, ckpt):
    """Each process uploads its shards as it writes them; the primary's manifest, written
    last, commits the step."""
    endpoint = {"endpoint": s3_server.endpoint}
    env = s3_server.env()
    saved = succeeded(
        launch("torch_save", s3_run.url, last_step=2, env=env, options=RETAIN, **endpoint)
    )
    assert saved[0]["steps"] == saved[1]["steps"] == [2]
    assert set(s3_run.step_keys(2)) == {
        "step_00000002/manifest.json",
        "step_00000002/dcp/.metadata",
        *(f"step_00000002/{name}" for name in SHARD_FILES),
    }
    one = succeeded(launch("torch_restore", s3_run.url, processes=1, env=env, **endpoint))[0]
    assert one["fingerprint"]["model/0.weight"] == saved[0]["fingerprint"]["model/0.weight"]
    assert ckpt("verify", s3_run.url, env=env)["intact"]
    assert [s["step"] for s in ckpt("ls", s3_run.url, env=env)["runs"][0]["steps"]] == [2]


def test_sharded_tensors_with_a_process_holding_no_shard_save_and_restore(tmp_path):
    # FSDP1's sharded state dicts hold ShardedTensors, of which a process may hold no shard.
    first, second = succeeded(launch("torch_sharded_tensors", tmp_path / "run"))
    assert first["shards"] == {"w": [[[0.0, 1.0], [2.0, 3.0]]], "b": [[1.0]]}
    assert second["shards"] == {"w": [[[4.0, 5.0], [6.0, 7.0]]], "b": []}
    assert first["step"] == second["step"] == 1

    from ckpt_core import load_checkpoint

    whole = load_checkpoint(tmp_path / "run" / "step_00000002", like={"w": torch.empty(4, 2)})
    assert torch.equal(whole["w"], torch.arange(8.0).reshape(4, 2) * 2)
