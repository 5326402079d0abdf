"""On a CUDA device: async snapshots of GPU tensors, and `CkptCallback` under Lightning's
sharded strategies, FSDPStrategy among them (Lightning and torch's FSDP1 refuse a CPU).

Skipped without CUDA. The suite hides GPUs (`tests/conftest.py`); on a machine with one run
`CUDA_VISIBLE_DEVICES=0 pytest tests/gpu`.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
from torch import nn

from ckpt_core import CheckpointManager
from tests.multiprocess.launch import fit_sharded

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA device: CUDA_VISIBLE_DEVICES=0 pytest tests/gpu",
)

MIB = 2**20


def busy_gpu() -> None:
    """Keep the GPU busy for a while (about 0.1 s), so that a device-to-host copy queued next
    completes late: a snapshot read before its copy completed would hold stale bytes."""
    torch.cuda._sleep(200_000_000)


@pytest.mark.parametrize("fmt", ["tree", "torch", "dcp"])
def test_an_async_save_holds_cuda_tensors_as_they_were_when_save_returned(run_dir, fmt):
    w = torch.zeros(16 * MIB // 4, device="cuda")
    state = {"w": w}
    with CheckpointManager(run_dir, format=fmt, async_save=True, max_to_keep=None) as mgr:
        for step in range(3):
            w.fill_(step + 1)
            if step == 1:  # state that appears after the first save, as an optimizer's does
                state["m"] = torch.ones(4, device="cuda")
            busy_gpu()
            mgr.save(step, state)
            w.fill_(-1)  # the next training step, while the save writes
        mgr.wait()
        for step in range(3):
            like = {key: torch.empty_like(value) for key, value in state.items()}
            back = mgr.restore(step, like=like if step else {"w": like["w"]})
            assert back["w"].device == w.device  # where `like` has it
            assert torch.equal(back["w"], torch.full_like(w, step + 1.0))
            assert ("m" in back) == (step > 0)


@pytest.fixture
def group_of_one(tmp_path):
    """A process group of one process on the GPU (NCCL) and the CPU (gloo)."""
    torch.cuda.set_device(0)
    dist.init_process_group(
        "cpu:gloo,cuda:nccl", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    yield
    dist.destroy_process_group()


def test_an_async_dcp_save_of_an_fsdp2_model_keeps_its_copy_on_the_host(run_dir, group_of_one):
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )
    from torch.distributed.fsdp import fully_shard

    model = nn.Sequential(nn.Linear(1024, 4096), nn.Linear(4096, 1024)).cuda()
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 1024, device="cuda")).sum().backward()
    optimizer.step()

    def state() -> dict[str, object]:
        return {
            "model": get_model_state_dict(model),
            "optim": get_optimizer_state_dict(model, optimizer),
        }

    saved = state()
    expected = {k: v.full_tensor().cpu() for k, v in saved["model"].items()}
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters()) * 3  # + Adam's
    with CheckpointManager(run_dir, format="dcp", async_save=True) as mgr:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        busy_gpu()
        mgr.save(0, saved)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1)  # the next training step, while the save writes
        mgr.wait()
        grown = torch.cuda.max_memory_allocated() - before
        back = mgr.restore(like=state())
    for key, value in back["model"].items():
        assert torch.equal(value.full_tensor().cpu(), expected[key]), key
    # The snapshot and the background write hold host copies: no second copy on the GPU.
    assert grown < nbytes / 4, f"the GPU held {grown} more bytes during the save"


@pytest.mark.parametrize("strategy", ["fsdp", "model_parallel"])
def test_a_sharded_strategy_on_one_gpu_saves_dcp_and_resumes_bit_for_bit(tmp_path, strategy):
    (only,) = fit_sharded(
        tmp_path,
        devices=1,
        strategy=strategy,
        accelerator="cuda",
        monitor="val_loss",
        async_save=True,
    )
    assert only["resumed_step"] == 16  # one rank trains every batch: 16 per epoch
    assert only["resumed"] == only["straight"]
    manifest = json.loads((tmp_path / "resumed" / "step_00000048" / "manifest.json").read_text())
    assert manifest["format"] == "dcp" and "dcp/.metadata" in manifest["files"]


def test_fsdp_strategy_with_two_ranks_on_one_gpu_saves_from_both(tmp_path):
    # Two "nodes" of one device each, sharing the GPU over gloo (NCCL refuses a shared GPU).
    first, second = fit_sharded(
        tmp_path, devices=1, nodes=2, strategy="fsdp", accelerator="cuda", monitor="val_loss"
    )
    assert first["resumed_step"] == second["resumed_step"] == 8
    assert first["resumed"] == first["straight"] == second["resumed"]
    assert first["run"] == second["run"]
    for step in first["run"]["steps"]:
        manifest = json.loads(
            (tmp_path / "resumed" / f"step_{step:08d}" / "manifest.json").read_text()
        )
        shards = {name for name in manifest["files"] if name.endswith(".distcp")}
        assert {name.split("/")[1].split("_")[2] for name in shards} == {"0", "1"}, shards
    with CheckpointManager(tmp_path / "resumed", read_only=True) as run:
        for step in run.all_steps():
            run.verify(step)  # every rank's shards, against the manifest
