"""ckpt_core.rng: the global streams survive a JSON round trip and come back exactly."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ckpt_core.rng import (
    generator_state,
    global_rng_state,
    set_generator_state,
    set_global_rng_state,
)


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


def test_the_state_is_compact_json_and_leaves_torch_out_unless_asked():
    state = global_rng_state()
    assert set(state) == {"python", "numpy"}
    assert isinstance(state["python"][1], str) and isinstance(state["numpy"]["state"]["key"], str)
    assert len(json.dumps(state)) < 12_000  # two hex strings, not 1,249 numbers


def test_states_written_with_lists_of_ints_still_restore():
    """The layout `global_rng_state` wrote before (Gym checkpoints hold it as a JSON string)."""
    random.seed(4)
    np.random.seed(4)
    version, internal, gauss = random.getstate()
    legacy = np.random.get_state(legacy=False)
    legacy["state"] = {"key": [int(x) for x in legacy["state"]["key"]], "pos": 7}
    older = json.loads(json.dumps({"python": [version, list(internal), gauss], "numpy": legacy}))
    expected_python = random.random()
    np.random.set_state({**legacy, "state": {"key": np.asarray(legacy["state"]["key"]), "pos": 7}})
    expected_numpy = np.random.random(4)

    random.seed(5)
    np.random.seed(5)
    set_global_rng_state(older)
    assert random.random() == expected_python
    np.testing.assert_array_equal(np.random.random(4), expected_numpy)


def test_torch_is_neither_imported_nor_captured_unless_the_program_imported_it():
    code = (
        "import sys, json\n"
        "from ckpt_core.rng import global_rng_state, set_global_rng_state\n"
        "state = global_rng_state(include_torch=True)\n"
        "set_global_rng_state({**state, 'torch': 'ff'})\n"  # nothing to restore it into
        "print(json.dumps(['torch' in sys.modules, sorted(state)]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert json.loads(out.stdout) == [False, ["numpy", "python"]]


@pytest.mark.parametrize("kind", ["PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"])
def test_a_generator_round_trips_through_json_in_place(kind):
    gen = np.random.Generator(getattr(np.random, kind)(5))
    gen.random(3)
    saved = json.loads(json.dumps(generator_state(gen)))
    expected = gen.random(4)
    live = np.random.Generator(getattr(np.random, kind)(9))
    assert set_generator_state(live, saved) is live  # holders of `live` see the stream
    np.testing.assert_array_equal(live.random(4), expected)
    other = set_generator_state(np.random.default_rng(0), saved)  # another kind: a new one
    assert type(other.bit_generator).__name__ == kind
    np.testing.assert_array_equal(other.random(4), expected)


def test_a_generator_state_in_the_gym_adapters_older_layout_still_restores():
    # integrations/_gym_rng.py wrote arrays as {"__ndarray__": list, "dtype": name}.
    gen = np.random.Generator(np.random.MT19937(3))
    state = gen.bit_generator.state
    key = {"__ndarray__": state["state"]["key"].tolist(), "dtype": "uint32"}
    older = {**state, "state": {"key": key, "pos": int(state["state"]["pos"])}}
    expected = gen.random(3)
    restored = set_generator_state(np.random.Generator(np.random.MT19937(0)), older)
    np.testing.assert_array_equal(restored.random(3), expected)


def test_the_global_numpy_stream_keeps_its_encoding():
    np.random.seed(4)
    numpy_state = global_rng_state()["numpy"]
    key = np.random.get_state(legacy=False)["state"]["key"]
    assert numpy_state["state"]["key"] == key.astype("<u4").tobytes().hex()
    assert numpy_state["bit_generator"] == "MT19937" and type(numpy_state["state"]["pos"]) is int
