"""A Gymnasium env's mid-episode state as JSON data, for the envs whose state is known.

Vector envs reset their sub-envs on their own, so a checkpoint of one is always taken in the
middle of some episode. Nothing generic can serialise a running env (physics engines, render
handles), and pickling would make restoring run code. So the state is read by name: each
built-in classic-control and toy-text env keeps its whole episode in a few plain attributes
(`CartPoleEnv.state`, `FrozenLakeEnv.s`/`lastaction`, ...), and Gymnasium's default wrappers
keep theirs in known counters (`TimeLimit._elapsed_steps`). Any other env or wrapper with
attributes of its own cannot be captured: `capture` says which, and why.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

# Attributes that hold everything an episode of these built-in envs carries between steps.
_ENV_STATE: Mapping[str, tuple[str, ...]] = {
    "gymnasium.envs.classic_control.cartpole.CartPoleEnv": ("state", "steps_beyond_terminated"),
    "gymnasium.envs.classic_control.mountain_car.MountainCarEnv": ("state",),
    "gymnasium.envs.classic_control.continuous_mountain_car.Continuous_MountainCarEnv": ("state",),
    "gymnasium.envs.classic_control.acrobot.AcrobotEnv": ("state",),
    "gymnasium.envs.classic_control.pendulum.PendulumEnv": ("state", "last_u"),
    "gymnasium.envs.toy_text.frozen_lake.FrozenLakeEnv": ("s", "lastaction"),
    "gymnasium.envs.toy_text.cliffwalking.CliffWalkingEnv": ("s", "lastaction"),
    "gymnasium.envs.toy_text.taxi.TaxiEnv": ("s", "lastaction", "taxi_orientation", "fickle_step"),
    "gymnasium.envs.toy_text.blackjack.BlackjackEnv": ("dealer", "player"),
}
# Wrappers' state attributes, and the attributes they set once (configuration, not state).
_WRAPPER_STATE: Mapping[type, tuple[tuple[str, ...], tuple[str, ...]]] = {
    gym.wrappers.TimeLimit: (("_elapsed_steps",), ("_max_episode_steps",)),
    gym.wrappers.OrderEnforcing: (("_has_reset",), ("_disable_render_order_enforcing",)),
    gym.wrappers.PassiveEnvChecker: (
        ("checked_reset", "checked_step", "checked_render"),
        ("close_called", "checked_data_reuse", "_previous_data"),
    ),
}
# What `gym.Wrapper.__init__` sets on every wrapper.
_WRAPPER_BASE = frozenset(
    {"env", "_action_space", "_observation_space", "_metadata", "_cached_spec", "_reward_range"}
    | {"_saved_kwargs"}
)


class _NotData(Exception):
    """A value that is not plain data (numbers, strings, arrays, lists and tuples of them)."""


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.name, "shape": value.shape}
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return {"__scalar__": value.item(), "dtype": value.dtype.name}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    raise _NotData(type(value).__qualname__)


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__ndarray__" in value:
        return np.asarray(value["__ndarray__"], dtype=value["dtype"]).reshape(value["shape"])
    if "__scalar__" in value:
        return np.dtype(value["dtype"]).type(value["__scalar__"])
    return tuple(_decode(v) for v in value["__tuple__"])


def _layers(env: Any) -> list[Any]:
    """The wrappers from the outside in, then the unwrapped env."""
    layers = [env]
    while isinstance(layers[-1], gym.Wrapper):
        layers.append(layers[-1].env)
    return layers


def _attributes(layer: Any) -> tuple[str, ...] | str:
    """The state attributes of one layer, or why it has state that cannot be captured."""
    name = type(layer).__qualname__
    if isinstance(layer, gym.Wrapper):
        state, config = _WRAPPER_STATE.get(type(layer), ((), ()))
        unknown = sorted(
            key
            for key, value in vars(layer).items()
            if key not in _WRAPPER_BASE
            and key not in state
            and key not in config
            and not callable(value)
            and not isinstance(value, gym.Space)
        )
        if unknown:
            shown = ", ".join(unknown[:3]) + (", ..." if len(unknown) > 3 else "")
            return f"the wrapper {name} keeps state the runner cannot read ({shown})"
        return state
    attrs = _ENV_STATE.get(f"{type(layer).__module__}.{type(layer).__qualname__}")
    if attrs is None:
        return (
            f"{name} is not a built-in classic-control or toy-text env, whose mid-episode "
            "state the runner knows how to read"
        )
    return attrs


def capture(env: gym.Env[Any, Any]) -> tuple[list[dict[str, Any]] | None, str | None]:
    """Read one (possibly wrapped) env's mid-episode state.

    Returns:
        `(state, None)` with a JSON-serialisable state, or `(None, reason)` saying why it
        cannot be captured.
    """
    state = []
    for layer in _layers(env):
        attrs = _attributes(layer)
        if isinstance(attrs, str):
            return None, attrs
        try:
            state.append({key: _encode(getattr(layer, key)) for key in attrs})
        except _NotData as e:
            return None, f"{type(layer).__qualname__} holds a {e} in its state"
    return state, None


def restore(env: gym.Env[Any, Any], state: list[dict[str, Any]]) -> None:
    """Put back what `capture(env)` returned for an env built the same way."""
    layers = _layers(env)
    if len(layers) != len(state):
        raise ValueError(
            f"the env has {len(layers)} layers (wrappers and env), the checkpoint {len(state)}. "
            "HINT: build the env the way the saving run did."
        )
    for layer, values in zip(layers, state, strict=True):
        for key, value in values.items():
            setattr(layer, key, _decode(value))
        if isinstance(layer, gym.wrappers.PassiveEnvChecker):
            # Its data-reuse check compares two consecutive steps' objects, gone with the old
            # process; the check is a diagnostic, so skip it rather than compare with nothing.
            layer.checked_data_reuse, layer._previous_data = True, None


def capture_vector(env: gym.vector.VectorEnv[Any, Any, Any]) -> tuple[str, str | None]:
    """Every sub-env's state and the vector env's autoreset flags, as a JSON string.

    Returns:
        `(state, None)`, or `("", reason)` when some part cannot be captured.
    """
    envs = getattr(env, "envs", None)
    if not isinstance(env, gym.vector.SyncVectorEnv) or envs is None:
        return "", f"{type(env).__qualname__} does not expose its sub-envs (SyncVectorEnv does)"
    states = []
    for i, sub in enumerate(envs):
        state, why = capture(sub)
        if why is not None:
            return "", f"sub-env {i}: {why}"
        states.append(state)
    autoreset = [bool(x) for x in env._autoreset_envs]
    return json.dumps({"envs": states, "autoreset": autoreset}), None


def observations(env: gym.vector.VectorEnv[Any, Any, Any]) -> Any:
    """The batched observation of the last step or reset (what the loop acts on next)."""
    return env._observations  # type: ignore[attr-defined]


def restore_vector(env: gym.vector.VectorEnv[Any, Any, Any], state: str, obs: Any) -> None:
    """Put back what `capture_vector` and `observations` returned for an env built alike."""
    stored = json.loads(state)
    envs = env.envs  # type: ignore[attr-defined]
    if len(envs) != len(stored["envs"]):
        raise ValueError(
            f"the vector env has {len(envs)} sub-envs, the checkpoint {len(stored['envs'])}. "
            "HINT: build the vector env the way the saving run did."
        )
    for sub, sub_state in zip(envs, stored["envs"], strict=True):
        restore(sub, sub_state)
    env._autoreset_envs = np.asarray(stored["autoreset"], dtype=np.bool_)  # type: ignore[attr-defined]
    env._observations = copy.deepcopy(obs)  # type: ignore[attr-defined]


def capture_episode(env: gym.Env[Any, Any], obs: Any) -> tuple[str, str | None]:
    """A single env's open episode: its state and the observation the loop acts on next.

    Returns:
        `(state, None)` as a JSON string, or `("", reason)` when some part cannot be captured.
    """
    state, why = capture(env)
    if why is not None:
        return "", why
    try:
        encoded = _encode(obs)
    except _NotData as e:
        return "", f"its observation is a {e}, not an array or number"
    return json.dumps({"env": state, "obs": encoded}), None


def restore_episode(env: gym.Env[Any, Any], state: str) -> Any:
    """Put back what `capture_episode` returned; returns the observation to act on next."""
    stored = json.loads(state)
    restore(env, stored["env"])
    return _decode(stored["obs"])


def episode_part(
    env: Any, obs: Any, episode_return: float, length: int, *, template: bool = False
) -> dict[str, Any]:
    """A single env's open episode as a run's final checkpoint holds it (see `end`): the
    partial return and length and, if `obs` is given and the env's state is known, its state.

    With `template`, the restore template of that part (env and obs are not read).
    """
    state: str = ""
    why: str | None = None
    if not template and obs is None:
        why = "end() was not given the observation to act on next"
    elif not template:
        state, why = capture_episode(env, obs)
    return {"return": episode_return, "length": length, "state": state, "not_exact": why or ""}


def continue_episode(
    env: gym.Env[Any, Any], part: Mapping[str, Any] | None, where: str
) -> tuple[Any, float, int] | None:
    """Resume a single env where a finished run left it, mid-episode.

    Returns:
        `(obs, partial return, length)` of the open episode; None, with a warning naming
        `where`, when its state was not saved: the env is then reset and the episode dropped.
    """
    if part is None:  # a final checkpoint written before open episodes were saved
        part = {"state": "", "not_exact": "its final checkpoint holds no open episode"}
    if part["state"]:
        obs = restore_episode(env, str(part["state"]))
        return obs, float(part["return"]), int(part["length"])
    warnings.warn(
        f"continuing {where} is not exact: {part['not_exact']}; the env is reset and its open "
        "episode dropped. HINT: run() handles this; in your own loop pass the observation to "
        "hook.end(obs), with a built-in classic-control or toy-text env.",
        stacklevel=4,
    )
    return None
