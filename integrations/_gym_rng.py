"""Every random stream of a Gymnasium run, captured as JSON data and put back in place.

A bit-exact resume needs all of them: the runner's generator (the one `agent.act` draws
from), the env's (or each sub-env's) `np_random`, the action space's generators (sub-spaces
included), Python's `random` and numpy's global `np.random` (through `ckpt_core.rng`), and
torch's CPU generator when torch is imported. Generators are restored in place where their
kind allows, so code holding a reference keeps the live one.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from ckpt_core.rng import global_rng_state, set_global_rng_state


def torch_module() -> Any:
    """torch if this process imported it (the runner never imports it on its own)."""
    return sys.modules.get("torch")


def _jsonable(value: Any) -> Any:
    """A bit generator state (ints up to 128 bits, possibly numpy arrays) as plain JSON."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.name}
    if isinstance(value, np.integer):
        return int(value)
    return value


def _from_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=value["dtype"])
        return {k: _from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_jsonable(v) for v in value]
    return value


def _set_generator(gen: np.random.Generator, state: Mapping[str, Any]) -> np.random.Generator:
    """Load `state` into `gen` in place (other holders see it); a new generator if kinds differ."""
    state = _from_jsonable(state)
    if type(gen.bit_generator).__name__ == state["bit_generator"]:
        gen.bit_generator.state = state
        return gen
    bit_generator = getattr(np.random, state["bit_generator"])()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


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
    env_part: Any = [_jsonable(g.bit_generator.state) for g in _env_generators(env)]
    return {
        "runner": _jsonable(runner_rng.bit_generator.state),
        "env": env_part if vector else env_part[0],
        "action_space": {
            path: _jsonable(space.np_random.bit_generator.state)
            for path, space in _subspaces(env.action_space)
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
        restored = _set_generator(gen, state)
        if restored is not gen:
            holder.np_random = restored
    for path, space in _subspaces(env.action_space):
        if path in states["action_space"]:
            gen = _set_generator(space.np_random, states["action_space"][path])
            space._np_random = gen  # Space has no public setter; seed() only takes ints
    set_global_rng_state(states)  # checkpoints older than numpy's stream restore Python's
    return _set_generator(runner_rng, states["runner"])


def seed(runner_rng: np.random.Generator, env: Any, seed: int) -> None:
    """Seed every stream but the env's own (seeded by its first `reset(seed=...)`)."""
    # In place: a caller holding the runner's generator from before keeps the live one.
    runner_rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
    env.action_space.seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch = torch_module()
    if torch is not None:
        torch.manual_seed(seed)
