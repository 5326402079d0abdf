"""ckpt_core.rng: the global streams survive a JSON round trip and come back exactly."""

from __future__ import annotations

import json
import random

import numpy as np

from ckpt_core.rng import global_rng_state, set_global_rng_state


def test_python_and_numpy_global_streams_round_trip_through_json():
    random.seed(1)
    np.random.seed(1)
    np.random.standard_normal()  # leaves a cached Gaussian in numpy's legacy state
    saved = json.loads(json.dumps(global_rng_state()))
    expected = (random.random(), np.random.standard_normal(3), np.random.randint(100, size=5))

    random.seed(2)
    np.random.seed(2)
    set_global_rng_state(saved)

    assert random.random() == expected[0]
    np.testing.assert_array_equal(np.random.standard_normal(3), expected[1])
    np.testing.assert_array_equal(np.random.randint(100, size=5), expected[2])


def test_a_state_without_numpy_leaves_numpy_alone():
    """Checkpoints written before numpy's stream was saved hold only Python's."""
    np.random.seed(3)
    expected = np.random.random()
    np.random.seed(3)
    set_global_rng_state({"python": global_rng_state()["python"]})
    assert np.random.random() == expected
