"""CheckpointManager given torch and jax values: framework scalars are metrics like numbers."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ckpt_core import CheckpointManager
from tests.core.test_manager import state


def test_metrics_accept_framework_scalars_and_metadata_must_be_json(run_dir):

    with CheckpointManager(run_dir) as mgr:
        metrics = {"a": np.float32(0.5), "b": torch.tensor(2.0), "c": jnp.array(3.0), "d": 4}
        mgr.save(1, state(1), metrics=metrics, metadata={"epoch": 1})
        assert mgr.metrics(1) == {"a": 0.5, "b": 2.0, "c": 3.0, "d": 4.0}
        assert mgr.metadata(1) == {"epoch": 1}
        with pytest.raises(TypeError, match="JSON-serialisable"):
            mgr.save(2, state(2), metadata={"arr": np.ones(2)})
        with pytest.raises(TypeError, match="metric 'x'"):
            mgr.save(2, state(2), metrics={"x": np.ones(2)})
        assert mgr.all_steps() == [1]
