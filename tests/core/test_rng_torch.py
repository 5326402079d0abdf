"""ckpt_core.rng with torch imported: torch's generators (CPU, CUDA when initialised) come back too."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import torch

from ckpt_core.formats import torch as torch_format
from ckpt_core.rng import global_rng_state, set_global_rng_state
from tests.legacy_rng import lightning_rng_layout_before


def draws() -> tuple[float, np.ndarray, torch.Tensor]:
    return random.random(), np.random.random(3), torch.rand(3)


def reseed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def assert_same_draws(got: tuple, expected: tuple) -> None:
    assert got[0] == expected[0]
    np.testing.assert_array_equal(got[1], expected[1])
    assert torch.equal(got[2], expected[2])


def test_torch_is_captured_when_asked_and_survives_json():
    reseed(1)
    state = global_rng_state(include_torch=True)
    assert set(state) >= {"python", "numpy", "torch"}
    expected = draws()
    reseed(2)
    set_global_rng_state(json.loads(json.dumps(state)))
    assert_same_draws(draws(), expected)


def test_the_state_survives_torch_load_weights_only_without_the_slow_check():
    reseed(3)
    state = global_rng_state(include_torch=True)
    expected = draws()
    assert torch_format._plainly_restorable(torch, state)  # strings and numbers only
    buffer = io.BytesIO()
    torch.save({"rng": state}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["rng"]
    reseed(4)
    set_global_rng_state(loaded)
    assert_same_draws(draws(), expected)


def test_checkpoints_of_the_lightning_adapter_before_still_restore():
    reseed(5)
    np.random.standard_normal()  # a cached Gaussian in numpy's legacy state
    buffer = io.BytesIO()
    torch.save(lightning_rng_layout_before(), buffer)
    expected = (*draws(), np.random.standard_normal())
    buffer.seek(0)
    older = torch.load(buffer, weights_only=True)
    reseed(6)
    set_global_rng_state(older)
    got = (*draws(), np.random.standard_normal())
    assert_same_draws(got[:3], expected[:3])
    assert got[3] == expected[3]


def test_by_default_torch_is_left_alone():
    """What the Gym adapter asks for: it saves torch's state itself, only for torch agents."""
    torch.manual_seed(7)
    expected = torch.rand(2)
    torch.manual_seed(7)
    state = global_rng_state()
    assert "torch" not in state
    set_global_rng_state(state)
    assert torch.equal(torch.rand(2), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_generators_are_captured_once_cuda_is_initialised():
    torch.cuda.manual_seed_all(8)
    torch.cuda.init()
    state = global_rng_state(include_torch=True)
    assert len(state["cuda"]) == torch.cuda.device_count()
    expected = torch.rand(4, device="cuda")
    torch.cuda.manual_seed_all(9)
    set_global_rng_state(json.loads(json.dumps(state)))
    assert torch.equal(torch.rand(4, device="cuda"), expected)
