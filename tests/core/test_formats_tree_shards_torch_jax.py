"""Incremental (sharded) tree saves of torch and jax leaves: meta templates, bfloat16 blocks, typed keys."""

from __future__ import annotations

import fsspec
import jax
import numpy as np
import pytest
import torch

from ckpt_core import CheckpointManager
from tests.core import test_formats_tree_shards as plain

FROZEN, state = plain.FROZEN, plain.state
where = plain.where  # the fixture: a local disk and memory://


def test_each_step_restores_alone_after_the_others_are_deleted(where):
    with CheckpointManager(where, incremental=True, max_to_keep=None) as mgr:
        for s in range(3):
            mgr.save(s, state(s))
    fs, root = fsspec.core.url_to_fs(where)
    for s in (0, 2):
        fs.rm(f"{root}/step_{s:08d}", recursive=True)
    with CheckpointManager(where, on_existing="resume") as mgr:
        assert mgr.all_steps() == [1]
        mgr.verify(1)
        like = {
            "base": {"frozen": torch.empty(4096, 1024, device="meta"), "embedding": np.zeros(1)},
            "adapter": torch.zeros(64, 64),
            "step": 0,
        }
        with pytest.raises(ValueError, match="embedding"):  # the blocks reassemble its shape
            mgr.restore(1, like)
        like["base"]["embedding"] = np.zeros(300_000, dtype=np.int64)
        got = mgr.restore(1, like)
        assert isinstance(got["base"]["frozen"], torch.Tensor)
        np.testing.assert_array_equal(got["base"]["frozen"].numpy(), FROZEN)
        np.testing.assert_array_equal(got["base"]["embedding"], state(1)["base"]["embedding"])
        assert got["step"] == 1


def test_every_kind_of_leaf_round_trips_in_the_sharded_layout(where):

    big = torch.arange(3 * (3 << 20), dtype=torch.bfloat16).reshape(-1, 3)  # cut into blocks
    tree_state = {
        "big": big,
        "key": jax.random.key(3),
        "empty": np.zeros((0, 5), np.float32),
        "scalar": np.float64(2.5),
        "rows": [np.arange(4, dtype=np.uint8), (np.ones((2, 2), np.int16), "text", None)],
    }
    with CheckpointManager(where, incremental=True, async_save=True) as mgr:
        mgr.save(0, tree_state)
        mgr.save(0, tree_state)  # replaces step 0, sharing with the step it replaces
        mgr.wait()
        got = mgr.restore(0)
        again = mgr.restore(0, like=tree_state)
    assert torch.equal(got["big"], big) and torch.equal(again["big"], big)
    assert (jax.random.key_data(got["key"]) == jax.random.key_data(tree_state["key"])).all()
    assert got["empty"].shape == (0, 5) and got["scalar"] == 2.5
    np.testing.assert_array_equal(got["rows"][1][0], np.ones((2, 2), np.int16))
    assert got["rows"][1][1:] == ("text", None)
