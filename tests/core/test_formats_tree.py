"""The `tree` format on numpy leaves: scalars and byte orders kept, a hostile header refused.

Every format's round trip, mismatch and corruption cases are in test_formats_contract_torch_jax.py.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from ckpt_core import CheckpointManager, CorruptCheckpointError


def test_numpy_scalars_and_big_endian_arrays_round_trip(run_dir):
    state = {"f": np.float64(0.5), "be": np.arange(4, dtype=">f4")}
    with CheckpointManager(run_dir, format="tree") as mgr:
        mgr.save(1, state)
        back = mgr.restore()
    assert type(back["f"]) is np.float64 and back["f"] == 0.5
    np.testing.assert_array_equal(back["be"], np.arange(4, dtype=np.float32))


def test_hostile_safetensors_header_is_a_corrupt_checkpoint(run_dir):

    with CheckpointManager(run_dir) as mgr:
        mgr.save(1, {"w": np.ones(2, dtype=np.float32)})
        path = Path(mgr.path(1)) / "arrays.safetensors"
        raw = path.read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8 : 8 + n])
        header["w"]["shape"] = [-2]
        text = json.dumps(header).encode().ljust(n)
        path.write_bytes(raw[:8] + text + raw[8 + n :])
        with pytest.raises(
            CorruptCheckpointError, match=r"arrays\.safetensors: invalid safetensors header"
        ):
            mgr.restore()
