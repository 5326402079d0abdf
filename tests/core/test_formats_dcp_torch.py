"""The `dcp` format in one process: round trip, partial `like`, mismatches, `ckpt show`'s
listing, a forged `.metadata` that must not run code, and an async save of DTensors (a
process group of one)."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.distributed as dist

from ckpt_core import CheckpointManager, StructureMismatchError
from ckpt_core.errors import CorruptCheckpointError
from ckpt_core.formats import get_format


def state(seed: int) -> dict:
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    return {"model": model.state_dict(), "step": seed, "tags": ["a", "b"]}


def test_round_trip_and_a_like_that_asks_for_part_of_it(run_dir):
    with CheckpointManager(run_dir, format="dcp") as mgr:
        mgr.save(7, state(7))
        everything = mgr.restore()
        assert everything["step"] == 7 and everything["tags"] == ["a", "b"]
        assert torch.equal(everything["model"]["weight"], state(7)["model"]["weight"])
        part = mgr.restore(like={"model": state(1)["model"]})
        assert set(part) == {"model"}
        assert torch.equal(part["model"]["bias"], state(7)["model"]["bias"])
        meta = {"model": {k: v.to("meta") for k, v in state(1)["model"].items()}}
        assert mgr.restore(like=meta)["model"]["weight"].device.type == "cpu"
    assert (run_dir / "step_00000007" / "dcp" / ".metadata").is_file()


def test_a_mismatching_like_names_every_difference(run_dir):
    with CheckpointManager(run_dir, format="dcp") as mgr:
        mgr.save(1, state(1))
        wrong = {"model": {"weight": torch.zeros(3, 5), "extra": torch.zeros(1)}}
        with pytest.raises(StructureMismatchError) as caught:
            mgr.restore(like=wrong)
    message = str(caught.value)
    assert "model.weight: shape [3, 4]" in message and "model.extra: in `like`" in message


def test_a_state_torch_load_cannot_bring_back_is_refused_at_save(run_dir):
    with CheckpointManager(run_dir, format="dcp") as mgr:
        with pytest.raises(TypeError, match="dcp format cannot save"):
            mgr.save(1, {"w": torch.zeros(2), "where": run_dir})
        assert mgr.all_steps() == []


class _Boom:
    def __reduce__(self):
        return (eval, ("__import__('os').environ.__setitem__('CKPT_PWNED', '1')",))


def test_a_forged_metadata_is_refused_without_running_it(run_dir, monkeypatch):
    monkeypatch.delenv("CKPT_PWNED", raising=False)
    with CheckpointManager(run_dir, format="dcp") as mgr:
        mgr.save(1, state(1))
    metadata = run_dir / "step_00000001" / "dcp" / ".metadata"
    metadata.write_bytes(pickle.dumps(_Boom()))
    reader = CheckpointManager(run_dir, read_only=True)._reader
    from ckpt_core.run import read_manifest
    from ckpt_core.storage import open_storage

    step = reader(read_manifest(open_storage(run_dir, None), "step_00000001"))
    with pytest.raises(CorruptCheckpointError, match="not one of DCP's metadata classes"):
        get_format("dcp").describe(step)  # type: ignore[attr-defined]
    with pytest.raises(CorruptCheckpointError):  # the checksum catches it first on restore
        CheckpointManager(run_dir, read_only=True).restore()
    assert "CKPT_PWNED" not in __import__("os").environ


def test_describe_lists_every_leaf_without_loading(run_dir):
    with CheckpointManager(run_dir, format="dcp") as mgr:
        mgr.save(1, state(1))
        listing = get_format("dcp").describe(mgr._reader(mgr._run.manifest(1)))  # type: ignore[attr-defined]
    kinds = {e.path: (e.kind, e.shape) for e in listing.entries}
    assert kinds["model/weight"] == ("torch", (3, 4)) and kinds["step"][0] == "object"


@pytest.fixture
def group_of_one(tmp_path):
    """A gloo process group of one process, for DTensors; destroyed after the test."""
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    yield
    dist.destroy_process_group()


def test_an_async_save_keeps_dtensors_as_they_were_when_save_returned(run_dir, group_of_one):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (1,))
    weight = distribute_tensor(torch.arange(8.0).reshape(2, 4), mesh, [Shard(0)])
    with CheckpointManager(run_dir, format="dcp", async_save=True) as mgr:
        mgr.save(0, {"w": weight, "step": 0})
        weight.to_local().add_(100)  # the next training step, while the save writes
        mgr.wait()
        back = mgr.restore(like={"w": torch.empty(2, 4), "step": 0})
        into_dtensor = mgr.restore(like={"w": weight})["w"]
    assert torch.equal(back["w"], torch.arange(8.0).reshape(2, 4)) and back["step"] == 0
    assert isinstance(into_dtensor, DTensor) and into_dtensor.placements == (Shard(0),)
    assert torch.equal(into_dtensor.full_tensor(), back["w"])
    # One tensor, one shard file: no writer thread is left with an empty file.
    files = sorted(p.name for p in (run_dir / "step_00000000" / "dcp").iterdir())
    assert files == [".metadata", "__0_0.distcp"]
