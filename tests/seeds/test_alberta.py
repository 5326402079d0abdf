"""alberta_framework's one-shot checkpoints, ported: `save_checkpoint(state, path, metadata)`,
`load_checkpoint(template, path)` and `load_checkpoint_metadata(path)` on orbax.

Their names map to ours as `save_checkpoint(path, state, metadata=..., format="orbax")`,
`load_checkpoint(path, like=template)` (the metadata comes from `load_metadata`) and
`load_metadata(path)`; see the README's "Coming from ..." table.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ckpt_core import (
    CheckpointNotFoundError,
    StructureMismatchError,
    checkpoint_exists,
    load_checkpoint,
    load_metadata,
    save_checkpoint,
)


class MultiHeadMLPState(NamedTuple):
    """A learner state as alberta's `learner.init()` returns: a NamedTuple of arrays."""

    hidden: list[jax.Array]
    heads: jax.Array
    step_size: jax.Array
    key: jax.Array


def init(n_heads: int, hidden_sizes: tuple[int, ...], feature_dim: int, key: jax.Array) -> Any:
    keys = jax.random.split(key, len(hidden_sizes) + 2)
    sizes = (feature_dim, *hidden_sizes)
    hidden = [jax.random.normal(k, (a, b)) * 0.1 for k, a, b in zip(keys, sizes[:-1], sizes[1:])]
    heads = jax.random.normal(keys[-2], (sizes[-1], n_heads)) * 0.1
    return MultiHeadMLPState(hidden, heads, jnp.float32(0.01), keys[-1])


def test_save_then_load_with_a_template_and_metadata(tmp_path):
    path = tmp_path / "agent.ckpt"
    state = init(n_heads=5, hidden_sizes=(8, 8), feature_dim=4, key=jax.random.key(42))

    save_checkpoint(path, state, metadata={"epoch": 1}, format="orbax")
    assert checkpoint_exists(path)
    template = init(n_heads=5, hidden_sizes=(8, 8), feature_dim=4, key=jax.random.key(0))
    loaded = load_checkpoint(path, like=template)
    meta = load_metadata(path)

    assert meta["epoch"] == 1
    assert isinstance(loaded, MultiHeadMLPState)  # the template's type comes back
    for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(state)):
        if jax.dtypes.issubdtype(want.dtype, jax.dtypes.prng_key):
            got, want = jax.random.key_data(got), jax.random.key_data(want)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_metadata_first_builds_the_template_then_loads(tmp_path):
    """rlsecd's order: the learner config lives in the metadata, read before any template."""
    path = tmp_path / "agent.ckpt"
    config = {"n_heads": 3, "hidden_sizes": [16], "feature_dim": 6}
    state = init(3, (16,), 6, jax.random.key(1))
    save_checkpoint(path, state, metadata={"learner_config": config}, format="orbax")

    learner_config = load_metadata(path)["learner_config"]
    template = init(
        learner_config["n_heads"],
        tuple(learner_config["hidden_sizes"]),
        learner_config["feature_dim"],
        jax.random.key(0),
    )
    loaded = load_checkpoint(path, like=template)
    np.testing.assert_array_equal(np.asarray(loaded.heads), np.asarray(state.heads))


def test_missing_checkpoint_and_wrong_template_fail_as_documented(tmp_path):
    """alberta raises FileNotFoundError and ValueError; ours subclass them and name the fix."""
    path = tmp_path / "agent.ckpt"
    assert not checkpoint_exists(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(path, like=None)
    with pytest.raises(CheckpointNotFoundError):
        load_metadata(path)
    save_checkpoint(path, init(2, (8,), 4, jax.random.key(0)), format="orbax")
    with pytest.raises(ValueError, match="heads") as caught:
        load_checkpoint(path, like=init(5, (8,), 4, jax.random.key(0)))
    assert isinstance(caught.value, StructureMismatchError)


def test_a_training_run_saves_steps_the_same_functions_read(tmp_path):
    """An alberta user who moves to a run directory keeps the same calls, adding step=."""
    run = tmp_path / "run"
    for epoch in (1, 2):
        state = init(2, (8,), 4, jax.random.key(epoch))
        save_checkpoint(run, state, step=epoch, metadata={"epoch": epoch}, format="orbax")
    assert load_metadata(run) == {"epoch": 2}
    assert load_metadata(run, step=1) == {"epoch": 1}
    loaded = load_checkpoint(run / "latest", like=init(2, (8,), 4, jax.random.key(0)))
    np.testing.assert_array_equal(np.asarray(loaded.heads), np.asarray(state.heads))
