"""Async snapshots: host copies isolated from the loop, in buffers reused between saves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ckpt_core import CheckpointManager
from ckpt_core.formats.snapshot import SnapshotBuffers, host_copy


def test_buffers_are_reused_from_one_snapshot_to_the_next():
    buffers = SnapshotBuffers()
    x, t = np.arange(6.0), torch.arange(4.0)
    with buffers.reuse():
        first = (host_copy(x), host_copy(t), host_copy(np.float32(2)))
    x += 1
    t += 1
    with buffers.reuse():
        second = (host_copy(x), host_copy(t))
    assert second[0] is first[0] and second[1] is first[1]  # the same memory, refilled
    np.testing.assert_array_equal(second[0], np.arange(6.0) + 1)
    assert torch.equal(second[1], torch.arange(4.0) + 1)
    assert second[0] is not x and second[1] is not t
    with buffers.reuse():
        third = host_copy(np.zeros(3))  # another shape: a new buffer
    assert third is not first[0] and third.shape == (3,)


def test_async_saves_through_reused_buffers_keep_every_step_exact(tmp_path):
    state = {"w": np.zeros(1000), "t": torch.zeros(10)}
    with CheckpointManager(tmp_path, async_save=True, max_to_keep=None) as mgr:
        for step in range(4):
            state["w"] += 1
            state["t"] += 1
            mgr.save(step, state)
            state["w"] += 100  # mutated while the background write runs
            state["t"] += 100
            state["w"] -= 100
            state["t"] -= 100
        mgr.wait()
        for step in range(4):
            back = mgr.restore(step)
            np.testing.assert_array_equal(back["w"], np.full(1000, step + 1.0))
            assert torch.equal(back["t"], torch.full((10,), step + 1.0))


@pytest.mark.parametrize("fmt", ["tree", "torch", "dcp"])
def test_async_saves_of_a_growing_state_by_two_managers_in_one_process(tmp_path, fmt):
    # An optimizer's state appears after the first step; a second manager (an EMA copy, say)
    # saves another state from the same process. Each save holds what `save` was handed.
    model = {"w": torch.zeros(8)}
    options = {"format": fmt, "async_save": True, "max_to_keep": None}
    with (
        CheckpointManager(tmp_path / "model", **options) as mgr,
        CheckpointManager(tmp_path / "ema", **options) as ema,
    ):
        for step in range(3):
            model["w"].fill_(step + 1)
            if step == 1:
                model["exp_avg"] = torch.zeros(8)
            if "exp_avg" in model:
                model["exp_avg"].fill_(10 * step)
            mgr.save(step, model)
            ema.save(step, {"ema": model["w"] * 0.5})
            for tensor in model.values():
                tensor.fill_(-1)  # the next training step, while both saves write
        mgr.wait()
        ema.wait()
        for step in range(3):
            back = mgr.restore(step)
            assert torch.equal(back["w"], torch.full((8,), step + 1.0))
            assert ("exp_avg" in back) == (step >= 1)
            assert torch.equal(ema.restore(step)["ema"], torch.full((8,), (step + 1) / 2))
        assert torch.equal(mgr.restore(2)["exp_avg"], torch.full((8,), 20.0))
