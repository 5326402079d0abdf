"""Shared fixtures."""

from __future__ import annotations

import os

import pytest

# Tests never touch a GPU and must not see the developer's accelerators.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture
def run_dir(tmp_path):
    """A fresh checkpoint directory path (not yet created)."""
    return tmp_path / "run"
