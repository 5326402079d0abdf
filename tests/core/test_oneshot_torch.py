"""The one-shot functions and `restore` with torch tensors: `like` and the replicated device axis."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ckpt_core import CheckpointManager, load_checkpoint, save_checkpoint
from tests.core.test_oneshot import state


def test_restore_takes_like_positionally(run_dir):

    with CheckpointManager(run_dir) as mgr:
        mgr.save(5, state(1.0))
        restored = mgr.restore(5, {"w": torch.zeros(3, dtype=torch.float64), "b": 0.0})
        assert isinstance(restored["w"], torch.Tensor) and restored["w"].tolist() == [1.0] * 3
        assert mgr.restore(None, state(0.0), lazy=True)["w"].tolist() == [1.0] * 3
        with pytest.raises(ValueError, match=r"restore\(step, state\)"):
            mgr.restore(state(0.0))


def test_unreplicate_on_save_and_replicate_to_on_load(run_dir):

    replicated = {"w": np.stack([np.arange(3.0)] * 4), "t": torch.ones(4, 2), "n": 7}
    save_checkpoint(run_dir, replicated, step=1, unreplicate=True)
    single = load_checkpoint(run_dir, step=1)
    assert single["w"].tolist() == [0.0, 1.0, 2.0] and tuple(single["t"].shape) == (2,)
    back = load_checkpoint(run_dir, step=1, replicate_to=4)
    assert back["w"].shape == (4, 3) and tuple(back["t"].shape) == (4, 2) and back["n"] == 7
    with pytest.raises(TypeError, match="replicate_to"):
        load_checkpoint(run_dir, step=1, replicate_to="4")
    with pytest.raises(TypeError, match="unreplicate"):
        save_checkpoint(run_dir, replicated, step=2, unreplicate="yes")
