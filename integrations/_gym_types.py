"""The agent contract of the Gymnasium runner (`Agent`) and what a run returns (`RunResult`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Agent(Protocol):
    """What `run` and `CkptRunnerHook` need from an agent.

    `state_dict()` returns a pytree (nested dict/list/tuple) of numpy arrays, torch tensors,
    numbers, strings and None holding *everything* the agent's future behaviour depends on:
    network weights, target networks, optimizer state, replay buffer arrays and their
    cursor, step counters, the agent's own random generators. Its structure, shapes and
    dtypes must not change during training: preallocate the replay buffer to its capacity,
    because a resumed run restores the checkpoint in the structure of a freshly built agent's
    `state_dict()` and refuses one that differs. The one exception is filled in by the
    runner: the per-parameter state torch optimizers create lazily at their first step (a
    fresh Adam's `state_dict()["state"]` is empty; the checkpoint's moments are restored).

    An agent may also carry `observation_space` and `action_space` attributes (Gymnasium
    spaces); the runner then refuses an env whose spaces differ (a vector env's single or
    batched spaces both fit). With a vector env `act` gets and returns arrays batched along the
    first axis, and `learn` gets batched transitions. `CkptRunnerHook` in a user's own loop
    needs only `state_dict` and `load_state_dict`.
    """

    def act(self, obs: Any, rng: np.random.Generator) -> Any:
        """Return an action for `obs`, drawing any randomness from `rng` only."""
        ...

    def learn(
        self,
        obs: Any,
        action: Any,
        reward: float,
        next_obs: Any,
        terminated: bool,
        truncated: bool,
    ) -> Mapping[str, float] | None:
        """Learn from one transition; optionally return metrics such as `{"loss": 0.3}`."""
        ...

    def state_dict(self) -> Any:
        """Return the agent's complete state as a pytree of arrays and numbers."""
        ...

    def load_state_dict(self, state: Any) -> None:
        """Load a state returned by `state_dict` (restored in the same structure)."""
        ...


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What a run produced.

    Attributes:
        episode_returns: the return of every finished episode, in order (resumes included).
        episode_lengths: the length of every finished episode.
        timesteps: env steps taken over the whole run.
        resumed_from: the checkpoint step this process continued from, or None.
        was_complete: the run was already complete in `checkpoint_dir` (at `total_timesteps`
            or more); nothing was trained.
        preempted: a signal in `save_on_signals` stopped the run early, after its checkpoint
            was committed; run it again with `resume=True` to continue.
    """

    episode_returns: list[float]
    episode_lengths: list[int]
    timesteps: int
    resumed_from: int | None = None
    was_complete: bool = False
    preempted: bool = False

    @property
    def episodes(self) -> int:
        """Number of finished episodes."""
        return len(self.episode_returns)
