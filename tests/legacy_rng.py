"""The RNG layout `CkptCallback` wrote itself before it used `ckpt_core.rng`, for the tests that
check such steps still restore (tests/core/test_rng_torch.py, tests/integrations/test_lightning.py)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def lightning_rng_layout_before(include_torch: bool = True) -> dict[str, Any]:
    """Python, numpy and torch states as tensors, as the callback captured them (it always
    captured torch: `include_torch` only matches the signature of `global_rng_state`)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": {"version": version, "internal": torch.tensor(internal), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
