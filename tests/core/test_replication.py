"""The device axis of a replicated state (`ckpt_core.replication`), on numpy leaves."""

from __future__ import annotations

import numpy as np
import pytest

from ckpt_core.replication import replicate, strip_device_axis


def test_the_device_axis_is_dropped_and_scalars_are_kept() -> None:
    replicated = {"w": np.stack([np.arange(3.0)] * 4), "count": np.int64(5), "n": 7, "s": "x"}
    single = strip_device_axis(replicated)
    assert single["w"].tolist() == [0.0, 1.0, 2.0]
    assert single["count"] == 5 and single["n"] == 7 and single["s"] == "x"


def test_replicate_stacks_copies_on_the_host_that_do_not_share_memory() -> None:
    tree = {"w": np.arange(3.0), "nested": [np.ones((2, 2))], "n": 7}
    back = replicate(tree, 4, caller="load_checkpoint", on_devices=False)
    assert back["w"].shape == (4, 3) and back["nested"][0].shape == (4, 2, 2) and back["n"] == 7
    back["w"][0, 0] = 99.0  # a real copy per device, not a read-only broadcast view
    assert back["w"][1, 0] == 0.0 and tree["w"][0] == 0.0
    np.testing.assert_array_equal(strip_device_axis(back)["nested"][0], tree["nested"][0])


@pytest.mark.parametrize("bad", [0, -1, "4", 2.0])
def test_a_device_count_that_is_no_positive_int_is_refused_naming_the_option(bad) -> None:
    with pytest.raises((TypeError, ValueError), match="replicate_to"):
        replicate({"w": np.zeros(2)}, bad, caller="load_checkpoint", on_devices=False)
