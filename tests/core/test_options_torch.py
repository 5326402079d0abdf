"""Careless input with torch at hand: torch integers are steps wherever numpy integers are."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ckpt_core import CheckpointManager
from tests.core.test_options import state


def test_numpy_and_torch_integers_are_steps_everywhere(run_dir):

    with CheckpointManager(run_dir, best_fn="loss") as mgr:
        mgr.save(np.int64(10), state(10), metrics={"loss": 1.0}, metadata={"epoch": 1})
        for step in (np.int64(10), np.uint32(10), torch.tensor(10)):
            np.testing.assert_array_equal(mgr.restore(step)["w"], state(10)["w"])
            assert mgr.info(step).step == 10
            assert mgr.metrics(step) == {"loss": 1.0}
            assert mgr.metadata(step) == {"epoch": 1}
            assert mgr.path(step) == run_dir / "step_00000010"
        with pytest.raises(ValueError, match=r"found True \(bool\)"):
            mgr.restore(True)  # type: ignore[arg-type]
