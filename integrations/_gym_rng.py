"""Every random stream of a Gymnasium run but torch's, captured as JSON data and put back in place.

A bit-exact resume needs all of them: the runner's generator (the one `agent.act` draws
from), the env's (or each sub-env's) `np_random`, the action space's generators (sub-spaces
included), and Python's `random` and numpy's global `np.random`; every one is encoded by
`ckpt_core.rng`. torch's CPU generator, when the program imported torch, is saved as a tensor
by `gym.py` beside these. Generators are restored in place where their kind allows, so code
holding a reference keeps the live one.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from ckpt_core.rng import (
    generator_state,
    global_rng_state,
    set_generator_state,
    set_global_rng_state,
)


def imported_torch() -> Any:
    """torch if this process imported it, else None (the runner never imports it itself)."""
    return sys.modules.get("torch")


def _subspaces(space: gym.Space[Any], path: str = "") -> Iterator[tuple[str, gym.Space[Any]]]:
    """The space and every nested space, each with its own generator, by a stable path."""
    yield path or ".", space
    spaces = gym.spaces
    kids: list[tuple[Any, Any]] = []
    if isinstance(space, spaces.Dict):
        kids = list(space.spaces.items())
    elif isinstance(space, spaces.Tuple | spaces.OneOf):
        kids = list(enumerate(space.spaces))
    elif isinstance(space, spaces.Sequence):
        kids = [("feature_space", space.feature_space)]
    elif isinstance(space, spaces.Graph):
        kids = [("node_space", space.node_space), ("edge_space", space.edge_space)]
    for key, sub in kids:
        if sub is not None:
            yield from _subspaces(sub, f"{path}/{key}")


def _env_generators(env: Any) -> list[np.random.Generator]:
    """The env's generator, or a vector env's sub-envs' generators in order."""
    gens = env.np_random
    return list(gens) if isinstance(gens, tuple | list) else [gens]


def capture(runner_rng: np.random.Generator, env: Any, *, vector: bool) -> dict[str, Any]:
    """The runner's, the env's, the action space's and the global streams as JSON data."""
    env_part: Any = [generator_state(g) for g in _env_generators(env)]
    return {
        "runner": generator_state(runner_rng),
        "env": env_part if vector else env_part[0],
        "action_space": {
            path: generator_state(space.np_random) for path, space in _subspaces(env.action_space)
        },
        **global_rng_state(),  # Python's `random` and numpy's global `np.random`
    }


def restore(
    runner_rng: np.random.Generator, env: Any, states: Mapping[str, Any], *, vector: bool
) -> np.random.Generator:
    """Put back what `capture` returned; returns the runner's generator (the same object
    unless its kind changed)."""
    env_states = states["env"] if vector else [states["env"]]
    holders = getattr(env, "envs", [env]) if vector else [env]
    for holder, gen, state in zip(holders, _env_generators(env), env_states, strict=True):
        restored = set_generator_state(gen, state)
        if restored is not gen:
            holder.np_random = restored
    for path, space in _subspaces(env.action_space):
        if path in states["action_space"]:
            gen = set_generator_state(space.np_random, states["action_space"][path])
            space._np_random = gen  # Space has no public setter; seed() only takes ints
    set_global_rng_state(states)  # checkpoints older than numpy's stream restore Python's
    return set_generator_state(runner_rng, states["runner"])


def seed(runner_rng: np.random.Generator, env: Any, seed: int) -> None:
    """Seed every stream but the env's own (seeded by its first `reset(seed=...)`)."""
    # In place: a caller holding the runner's generator from before keeps the live one.
    runner_rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
    env.action_space.seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch = imported_torch()
    if torch is not None:
        torch.manual_seed(seed)
