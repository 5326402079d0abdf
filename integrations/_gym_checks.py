"""Checks that a Gymnasium env and an agent fit each other, the runner, and a stored run.

Each refusal names what was found and what fits instead; a refused resume changes nothing on
disk (the hook closes its manager before raising).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import gymnasium as gym


def autoreset_mode(env: Any) -> Any:
    """A vector env's autoreset mode (gymnasium's default, `NEXT_STEP`, when it says none)."""
    return env.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)


def check_env(env: Any) -> None:
    if isinstance(env, gym.vector.AsyncVectorEnv):
        raise TypeError(
            "run()/CkptRunnerHook cannot checkpoint an AsyncVectorEnv: its sub-envs live in "
            "other processes, out of reach of the checkpoint. HINT: build the same envs with "
            'gym.make_vec(env_id, num_envs=n, vectorization_mode="sync") (SyncVectorEnv).'
        )
    if isinstance(env, gym.vector.VectorEnv):
        return
    if not isinstance(env, gym.Env):
        raise TypeError(
            f"run()/CkptRunnerHook expects a gymnasium.Env, got {type(env).__qualname__}. "
            "HINT: create it with gymnasium.make(...) or subclass gymnasium.Env."
        )


def check_agent(agent: Any, needs: tuple[str, ...]) -> None:
    missing = [name for name in needs if not callable(getattr(agent, name, None))]
    if missing:
        raise TypeError(
            f"the agent {type(agent).__qualname__} lacks {', '.join(missing)}: run() needs "
            "act(obs, rng), learn(obs, action, reward, next_obs, terminated, truncated), "
            "state_dict() and load_state_dict(state); CkptRunnerHook in your own loop only the "
            "last two. HINT: see integrations.gym.Agent."
        )


def check_agent_spaces(env: gym.Env[Any, Any], agent: Any) -> None:
    problems = []
    for name in ("observation_space", "action_space"):
        wanted = getattr(agent, name, None)
        single = getattr(env, f"single_{name}", None)  # a vector env's per-sub-env space
        if wanted is not None and wanted != getattr(env, name) and wanted != single:
            problems.append(f"{name}: the agent expects {wanted}, the env has {getattr(env, name)}")
    if problems:
        raise ValueError(
            f"the agent {type(agent).__qualname__} does not fit the env "
            f"{getattr(getattr(env, 'spec', None), 'id', type(env).__qualname__)}:\n  "
            + "\n  ".join(problems)
            + "\nHINT: build the agent from this env's spaces, or pass the env it was built for."
        )


def check_run_spaces(
    stored: Mapping[str, Any], env: Any, directory: str | os.PathLike[str] | None
) -> None:
    """Refuse to resume a run (its stored run metadata) on an env with other spaces."""
    problems = [
        f"{name}: {stored[name]} in the checkpoints, {getattr(env, name)} in this env"
        for name in ("observation_space", "action_space")
        if name in stored and stored[name] != str(getattr(env, name))
    ]
    if problems:
        raise ValueError(
            f"cannot resume the run in {directory}: it was trained on an env "
            f"({stored.get('env_id')}) with other spaces:\n  "
            + "\n  ".join(problems)
            + "\nHINT: pass the env the run was trained on, or a new checkpoint_dir (or "
            "overwrite=True, which deletes the old checkpoints) to train on this one."
        )
