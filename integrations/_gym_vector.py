"""A vector env's open episodes: per sub-env return, length and autoreset flag, checkpointed.

Vector envs reset their sub-envs themselves, so a checkpoint of one is taken mid-episode:
it holds these counters, every sub-env's state (read by name, see `_gym_envstate`) and the
batched observation the loop acts on next. When some sub-env's state cannot be read, the
checkpoint says why and a resume re-seeds and resets the env instead (with a warning).
"""

from __future__ import annotations

import copy
import os
import warnings
from typing import Any

import gymnasium as gym
import numpy as np

from . import _gym_envstate
from ._gym_checks import autoreset_mode

_EXACT_HINT = (
    "HINT: SyncVectorEnv of classic-control or toy-text envs with gymnasium's default "
    "wrappers resumes exactly."
)


class VectorEpisodes:
    """The open episode of each sub-env of one vector env."""

    def __init__(self, env: gym.vector.VectorEnv[Any, Any, Any]) -> None:
        self.env = env
        self.returns = np.zeros(env.num_envs)
        self.lengths = np.zeros(env.num_envs, np.int64)
        # Sub-envs whose next step is their autoreset (NEXT_STEP mode: no part of any episode).
        self.resetting = np.zeros(env.num_envs, bool)
        self.obs: Any = None  # the batched observation a resume continues from
        self.inexact_why: str | None = None  # why the env's state cannot be saved

    def step(self, reward: Any, terminated: Any, truncated: Any) -> list[tuple[float, int]]:
        """Count one batched step; returns the `(return, length)` of the episodes it ended,
        in sub-env order."""
        playing = ~self.resetting
        self.returns[playing] += np.asarray(reward, np.float64)[playing]
        self.lengths[playing] += 1
        ended_mask = np.logical_or(terminated, truncated) & playing
        ended = []
        for i in np.flatnonzero(ended_mask):  # episodes ending at the same step: by index
            ended.append((float(self.returns[i]), int(self.lengths[i])))
            self.returns[i], self.lengths[i] = 0.0, 0
        if autoreset_mode(self.env) == gym.vector.AutoresetMode.NEXT_STEP:
            self.resetting = ended_mask
        return ended

    def part(self, env_state: str, exact: bool) -> dict[str, Any]:
        """The checkpoint's part (with `env_state=""`, the restore template)."""
        return {
            "episode_returns": self.returns.copy(),
            "episode_lengths": self.lengths.copy(),
            "resetting": self.resetting.copy(),
            "env_state": env_state,
            "obs": _gym_envstate.observations(self.env) if exact else None,
        }

    def capture(
        self, step: int, directory: str | os.PathLike[str] | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The part to save as `step` and its metadata; warns at the first inexact save."""
        env_state, why = _gym_envstate.capture_vector(self.env)
        if why is not None and self.inexact_why is None:
            warnings.warn(
                f"checkpoint {step} in {directory} cannot hold the vector env's state: {why}. "
                f"A resume will re-seed and reset it: not exact. {_EXACT_HINT}",
                stacklevel=4,
            )
        self.inexact_why = why
        return self.part(env_state, why is None), {"num_envs": self.env.num_envs, "not_exact": why}

    def template(self, meta: dict[str, Any], step: int, directory: Any) -> dict[str, Any]:
        """The restore template for the part saved with metadata `meta`."""
        if meta.get("num_envs") != self.env.num_envs:
            raise ValueError(
                f"cannot resume from step {step} of {directory}: it was saved from "
                f"{meta.get('num_envs') or 'no'} vector sub-envs, this env has "
                f"{self.env.num_envs}. HINT: build the env the way the saving run did, or "
                "use a new checkpoint_dir."
            )
        self.inexact_why = meta.get("not_exact")
        return self.part("", self.inexact_why is None)

    def load(self, part: dict[str, Any]) -> None:
        """Put back a restored part (the env's state too, if it was saved)."""
        self.returns[:] = part["episode_returns"]
        self.lengths[:] = part["episode_lengths"]
        self.resetting[:] = part["resetting"]
        if self.inexact_why is None:
            _gym_envstate.restore_vector(self.env, part["env_state"], part["obs"])
            self.obs = part["obs"]

    def resume(self, timesteps: int, seed: int, directory: Any) -> tuple[Any, dict[str, Any]]:
        """The batched observation to continue from; a re-seeded reset if it was not saved."""
        if self.obs is not None:
            return copy.deepcopy(self.obs), {}
        why = self.inexact_why or "its sub-envs' state could not be captured"
        warnings.warn(
            f"resuming {directory} at timestep {timesteps} is not exact: {why}; the vector env "
            f"is re-seeded and reset, its unfinished episodes dropped. {_EXACT_HINT}",
            stacklevel=3,
        )
        self.returns[:], self.lengths[:], self.resetting[:] = 0, 0, False
        return self.env.reset(seed=seed + timesteps)
