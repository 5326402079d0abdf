"""Gymnasium adapter: a reference RL loop and a hook that make a run resumable, bit for bit.

Users either hand an env and an agent to `run`::

    config = RunnerConfig(total_timesteps=50_000, checkpoint_dir="runs/cartpole",
                          checkpoint_interval=5_000, best_metric="episode_return", resume=True)
    result = run(gym.make("CartPole-v1"), agent, config)

or drive their own loop with `CkptRunnerHook` (see its docstring).

When checkpoints are taken, and why
-----------------------------------
A checkpoint is taken at the first *episode boundary* at or after each multiple of
`checkpoint_interval` env timesteps: after the episode's last transition was learned from
and before the env is reset. At that moment nothing about the env has to be saved except
its random number generator: the old episode is over and the next one has not begun, and
a Gymnasium env carries nothing else from one episode to the next (true of every built-in
env; a custom env that does must be rebuilt to match by its owner). An env in the middle of
an episode, by contrast, holds physics state, wrappers' counters, rendering handles...
that no generic code can serialise. So a resumed run restores the env's `np_random` state as
it was at the boundary and then calls `env.reset()` *without* a seed, which is exactly the
call the uninterrupted run made at that point: the two runs cannot tell each other apart.

A checkpoint is named after the interval it belongs to: step `10000` holds the state at the
first episode boundary at or after timestep 10,000 (its exact timestep is in the metadata,
`timesteps`), so `keep_period` and `ckpt ls` see round numbers. The end of the run
(`total_timesteps`, usually mid-episode) is saved as the last step and the run is marked
complete. That last step also holds the open episode, read by name as for vector envs below
(the env's state, the observation to act on next, the partial return and length), so that
resuming a complete run with a larger `total_timesteps` continues it exactly, as if it had
never stopped; resuming it with the same or a smaller total returns its stored result without
training (a smaller total with a warning). An env whose state cannot be read continues after a
reset, with a warning that says so.

Vector envs (`gymnasium.vector.SyncVectorEnv`) reset their sub-envs themselves, so there
is no moment when all of them are between episodes: a vector run is checkpointed at the first
step at or after each multiple of `checkpoint_interval` (counting every sub-env's timesteps),
mid-episode, with each sub-env's state read by name (see `_gym_envstate`: built-in
classic-control and toy-text envs under gymnasium's default wrappers), the autoreset flags,
the batched observation the loop acts on next and the open episodes' partial returns. The
resume then continues exactly. When some sub-env's state cannot be read (another env, a
wrapper with counters of its own, a vector env without reachable sub-envs), the first such
save and the resume warn, and the resume re-seeds and resets the env: agent, counters and
random streams are restored, the unfinished episodes are dropped. `AsyncVectorEnv` is
refused: its sub-envs live in other processes. Episodes are recorded in the order they end;
those ending at the same step by sub-env index. In the default `NEXT_STEP` autoreset mode a
sub-env's step after its episode ended is its reset: it counts as a timestep and reaches
`learn` (with reward 0), but belongs to no episode.

What a checkpoint holds: `{"agent": agent.state_dict(), "runner": {...}}`, where the runner
part has the timestep counter, every finished episode's return and length, and every random
stream: the runner's `numpy.random.Generator` (the one passed to `agent.act`), the env's
(or each sub-env's) `np_random`, the action space's generators (sub-spaces included), Python's
`random`, numpy's global `np.random` (replay buffers sample from it) and, when
torch is imported, torch's CPU generator. It is written in the core's `tree` format (arrays
in safetensors, structure in JSON): replay buffers are stored as arrays and nothing is ever
pickled.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from ckpt_core import CheckpointManager, StructureMismatchError, UnrankedStepWarning
from ckpt_core.optimizer_state import complete_optimizer_state
from ckpt_core.options import (
    check_bool,
    check_mapping,
    describe,
    on_existing_from_flags,
    parse_size,
)
from ckpt_core.rng import global_rng_state, set_global_rng_state
from ckpt_core.signals import check_save_on_signals

from . import _gym_envstate

__all__ = [
    "Agent",
    "CkptRunnerHook",
    "RunResult",
    "RunnerCallback",
    "RunnerConfig",
    "run",
]

# Key under which the runner records itself in the run-level and per-step metadata.
_META_KEY = "gym"
# Metrics the runner reports itself (see `CkptRunnerHook._metrics`).
_EPISODE_METRICS = ("episode_return", "episode_length")
# Progress bar refresh period in timesteps: a redraw per step would cost more than the step.
_PROGRESS_EVERY = 250


# ---------------------------------------------------------------- configuration


def _check_int(
    name: str, value: Any, minimum: int, example: str, *, optional: bool = False
) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        allowed = f"an int >= {minimum}" + (" or None" if optional else "")
        raise ValueError(
            f"RunnerConfig({name}={value!r}): expected {allowed}. HINT: e.g. {name}={example}."
        )


@dataclasses.dataclass(frozen=True)
class RunnerConfig:
    """What to train for and how to checkpoint it.

    Args:
        total_timesteps: env steps to train for, counted over the whole run (resumes included).
        checkpoint_dir: local path or fsspec URL of the run's checkpoints; `None` turns
            checkpointing off.
        checkpoint_interval: env timesteps between checkpoints; each is taken at the first
            episode boundary at or after a multiple of this (see the module docstring).
        max_checkpoints: keep this many most recent checkpoints (`None`: keep all).
        keep_period: checkpoints whose step is a multiple of this are never deleted.
        max_bytes: a disk budget for the run's checkpoints (int bytes or e.g. `"20GB"`); see
            `CheckpointManager(max_bytes=...)`.
        incremental: write only the parts of a checkpoint that changed since the previous one
            (a replay buffer's new rows, the weights that moved); see
            `CheckpointManager(incremental=...)`.
        resume: continue from the latest checkpoint in `checkpoint_dir` if there is one.
        overwrite: delete the checkpoints already in `checkpoint_dir` and start over.
            `resume` and `overwrite` together are an error; with neither, an existing run in
            `checkpoint_dir` raises `CheckpointExistsError`.
        best_metric: a metric to keep the best checkpoint by: `"episode_return"` (mean return
            of the last `metric_window` episodes), `"episode_length"`, or a key of the mapping
            the agent's `learn` returns (averaged since the previous checkpoint). A checkpoint
            without it is saved unranked, with a warning; a name that `learn` never returned
            while it returned others raises `ValueError` at that checkpoint.
        seed: seeds, on a fresh start, the runner's generator, the env (`reset(seed=...)`), its
            action space, Python's `random`, numpy's global `np.random` and torch's global
            generator if torch is imported.
        best_mode: `"max"` (default: a higher return is better) or `"min"` (e.g. a loss).
        metric_window: how many of the most recent episodes the episode metrics average.
        storage_options: fsspec options (endpoint, credentials) for a URL `checkpoint_dir`;
            never written to disk.
        save_on_signals: signals (e.g. `(signal.SIGTERM,)`, or one signal) after which the
            run checkpoints at the next episode boundary (a step named by its exact timestep)
            and stops: `run` returns a result with `preempted=True`, `hook.done` turns True.

    Raises:
        ValueError: a count is not a positive int, `resume` and `overwrite` are both set, or
            `best_mode` is not "max"/"min".
    """

    total_timesteps: int
    checkpoint_dir: str | os.PathLike[str] | None = None
    checkpoint_interval: int = 5_000
    max_checkpoints: int | None = 5
    keep_period: int | None = None
    max_bytes: int | str | None = None
    incremental: bool = False
    resume: bool = False
    overwrite: bool = False
    best_metric: str | None = None
    seed: int = 0
    best_mode: str = "max"
    metric_window: int = 100
    storage_options: Mapping[str, Any] | None = dataclasses.field(default=None, repr=False)
    save_on_signals: Iterable[int] | int | None = ()

    def __post_init__(self) -> None:
        signals = check_save_on_signals(self.save_on_signals, caller="RunnerConfig")
        object.__setattr__(self, "save_on_signals", signals)  # frozen: store the checked tuple
        _check_int("total_timesteps", self.total_timesteps, 1, "50_000")
        _check_int("checkpoint_interval", self.checkpoint_interval, 1, "5_000 (timesteps)")
        _check_int("max_checkpoints", self.max_checkpoints, 1, "5 (None keeps all)", optional=True)
        _check_int("keep_period", self.keep_period, 1, "20_000 (None: off)", optional=True)
        object.__setattr__(self, "max_bytes", parse_size("max_bytes", self.max_bytes))
        _check_int("seed", self.seed, 0, "0")
        _check_int("metric_window", self.metric_window, 1, "100 (episodes)")
        check_bool("incremental", self.incremental)
        check_bool("resume", self.resume)
        check_bool("overwrite", self.overwrite)
        check_mapping("storage_options", self.storage_options)
        directory = self.checkpoint_dir
        if directory is not None and (
            not isinstance(directory, str | os.PathLike) or not os.fspath(directory)
        ):
            raise ValueError(
                f"RunnerConfig(checkpoint_dir={describe(directory)}): expected a directory path "
                "or URL, or None for no checkpointing. HINT: e.g. checkpoint_dir='runs/ppo'."
            )
        if self.resume and self.overwrite:
            raise ValueError(
                "RunnerConfig(resume=True, overwrite=True): these contradict each other "
                "(continue the checkpoints in checkpoint_dir vs. delete them). "
                "HINT: pass resume=True to continue a run, or overwrite=True to start it over."
            )
        if self.keep_period is not None and self.keep_period % self.checkpoint_interval:
            # Steps are multiples of checkpoint_interval, so only common multiples are kept.
            every = math.lcm(self.keep_period, self.checkpoint_interval)
            warnings.warn(
                f"RunnerConfig(keep_period={self.keep_period}) is not a multiple of "
                f"checkpoint_interval={self.checkpoint_interval}: checkpoint steps are multiples "
                f"of the interval, so only every {every} timesteps is one kept for good. "
                "HINT: make keep_period a multiple of checkpoint_interval.",
                stacklevel=3,
            )
        if self.best_mode not in ("max", "min"):
            raise ValueError(
                f"RunnerConfig(best_mode={self.best_mode!r}): expected 'max' or 'min'. "
                "HINT: 'max' for returns, 'min' for losses."
            )
        if self.best_metric is not None and not isinstance(self.best_metric, str):
            raise ValueError(
                f"RunnerConfig(best_metric={self.best_metric!r}): expected a metric name (str) or "
                "None. HINT: best_metric='episode_return'."
            )


# ---------------------------------------------------------------- agent protocol and result


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


class RunnerCallback:
    """Base class for `run`/`CkptRunnerHook` callbacks; override the events you need.

    Any object with some of these methods works; each receives the hook first, whose
    `timesteps`, `episode_returns`, `episode_lengths`, `resumed_from` and `manager` it may read.
    """

    def on_start(self, hook: CkptRunnerHook) -> None:
        """After restore or seeding, before the first step."""

    def on_step(self, hook: CkptRunnerHook) -> None:
        """After every env step has been counted (`hook.timesteps` is its number)."""

    def on_episode_end(self, hook: CkptRunnerHook, episode_return: float, length: int) -> None:
        """After an episode finished and was recorded, before any checkpoint of that boundary."""

    def on_checkpoint(self, hook: CkptRunnerHook, step: int) -> None:
        """After checkpoint `step` was committed."""

    def on_end(self, hook: CkptRunnerHook, result: RunResult) -> None:
        """After the run ended (and the final checkpoint, if any, was written)."""


# ---------------------------------------------------------------- random streams


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


def _torch() -> Any:
    """torch if this process imported it (the runner never imports it on its own)."""
    return sys.modules.get("torch")


# ---------------------------------------------------------------- the hook


class CkptRunnerHook:
    """Checkpointing for a user's own Gymnasium loop; `run` is built on it.

    The hook counts timesteps and episodes, owns the generator the agent acts with
    (`hook.rng`), and saves, restores and seeds everything a bit-exact resume needs::

        hook = CkptRunnerHook(RunnerConfig(100_000, checkpoint_dir="runs/x", resume=True))
        obs, info = hook.begin(env, agent)        # restore or seed, then the first reset
        while not hook.done:
            action = agent.act(obs, hook.rng)
            next_obs, reward, terminated, truncated, info = env.step(action)
            metrics = agent.learn(obs, action, reward, next_obs, terminated, truncated)
            obs = next_obs
            if hook.step(reward, terminated, truncated, metrics):  # episode over (saved if due)
                obs, info = env.reset()                            # no seed: see module doc
        result = hook.end(obs)                    # final checkpoint, mark_complete, close

    If the run in `checkpoint_dir` is already complete at `total_timesteps` or more, `begin`
    loads the final agent state, returns `(None, {})` and `done` is True at once; `end()`
    returns the stored result. With a larger `total_timesteps` the run continues from where it
    ended (exactly when `end` was given `obs`, see there). With
    `RunnerConfig(save_on_signals=...)`, `done` also turns True once the checkpoint a signal
    triggered is committed (`preempted`); `end()` then only closes, leaving the run resumable.

    Args:
        config: the run's `RunnerConfig`.
        callbacks: objects with any of `RunnerCallback`'s methods.
    """

    def __init__(self, config: RunnerConfig, *, callbacks: Iterable[Any] = ()) -> None:
        if not isinstance(config, RunnerConfig):
            raise TypeError(
                "CkptRunnerHook(config=...) expects a RunnerConfig, got "
                f"{type(config).__qualname__}. "
                "HINT: CkptRunnerHook(RunnerConfig(total_timesteps=..., checkpoint_dir=...))."
            )
        self.config = config
        self.callbacks = list(callbacks)
        self.rng = np.random.default_rng(config.seed)
        self.timesteps = 0
        self.episode_returns: list[float] = []
        self.episode_lengths: list[int] = []
        self.resumed_from: int | None = None
        self.was_complete = False
        self.manager: CheckpointManager | None = None
        self._env: Any = None
        self._agent: Any = None
        self._episode_return = 0.0
        self._episode_length = 0
        # Vector envs: per sub-env open-episode return and length, and which sub-envs' next
        # step is their autoreset (NEXT_STEP mode: no part of any episode).
        self._vector = False
        self._vector_returns: Any = None
        self._vector_lengths: Any = None
        self._vector_resetting: Any = None
        self._vector_obs: Any = None  # the batched observation a resume continues from
        self._inexact_why: str | None = None  # why the vector env's state cannot be saved
        self._end_obs: Any = None  # a single env's observation at the end, passed to end()
        self._open_obs: Any = None  # ... and the one a run continued past its end acts on
        self._continued = False  # a complete run was resumed to a larger total_timesteps
        self._last_step = 0  # step (interval label) of the newest checkpoint
        self._metric_sums: dict[str, float] = {}
        self._metric_counts: dict[str, int] = {}
        self._metrics_reported: set[str] = set()  # every key `learn` returned in this process
        self._started = False
        self._preempted = False  # remembered once the manager is closed
        self._result: RunResult | None = None
        # Bound methods per event, found once: `on_step` runs every env step.
        self._handlers: dict[str, list[Callable[..., Any]]] = {
            event: [
                getattr(cb, event) for cb in self.callbacks if callable(getattr(cb, event, None))
            ]
            for event in ("on_start", "on_step", "on_episode_end", "on_checkpoint", "on_end")
        }

    # ---------------------------------------------------------------- state

    @property
    def done(self) -> bool:
        """True once `total_timesteps` were taken, the stored run was already complete, or
        the run was preempted (see `preempted`)."""
        return self.was_complete or self.preempted or self._finished

    @property
    def _finished(self) -> bool:
        return self.timesteps >= self.config.total_timesteps

    @property
    def preempted(self) -> bool:
        """True once a signal in `save_on_signals` arrived and its checkpoint, taken at the
        next episode boundary, is committed: the loop stops and `end()` only closes."""
        return (self.manager is not None and self.manager.preempted) or self._preempted

    @property
    def episodes(self) -> int:
        """Number of finished episodes."""
        return len(self.episode_returns)

    def mean_return(self, last: int | None = None) -> float:
        """Mean return of the last `last` (default: `metric_window`) episodes; NaN if none."""
        window = self.episode_returns[-(last or self.config.metric_window) :]
        return float(np.mean(window)) if window else math.nan

    # ---------------------------------------------------------------- lifecycle

    def begin(self, env: gym.Env[Any, Any], agent: Any) -> tuple[Any, dict[str, Any]]:
        """Check env and agent, restore the latest checkpoint or seed everything, reset the env.

        Args:
            env: a Gymnasium env or a `SyncVectorEnv`, freshly made.
            agent: an object with `state_dict()` (the restore template: build it fresh) and
                `load_state_dict(state)`.

        Returns:
            `(obs, info)` of the first episode to play; `(None, {})` if the run is complete.

        Raises:
            TypeError: `env` is not a Gymnasium env or is an `AsyncVectorEnv`, or `agent` lacks
                `state_dict`/`load_state_dict`.
            ValueError: the env's spaces differ from the agent's or from the checkpointed run's.
            CheckpointExistsError: `checkpoint_dir` holds a run and neither resume nor
                overwrite was requested.
            StructureMismatchError: the checkpoint was written by an agent whose
                `state_dict()` differs in structure, shape or dtype.
        """
        if self._started:
            raise RuntimeError(
                "CkptRunnerHook.begin() was already called. HINT: use one hook per run."
            )
        _check_env(env)
        _check_agent(agent, ("state_dict", "load_state_dict"))
        _check_agent_spaces(env, agent)
        self._env, self._agent = env, agent
        self._vector = isinstance(env, gym.vector.VectorEnv)
        if self._vector:
            self._vector_returns = np.zeros(env.num_envs)
            self._vector_lengths = np.zeros(env.num_envs, np.int64)
            self._vector_resetting = np.zeros(env.num_envs, bool)
        if self.config.checkpoint_dir is not None:
            self.manager = self._open_manager()
        try:
            if self.manager is not None and self.manager.resuming:
                self._check_run_spaces(env)
                self._restore()
            else:
                self._seed_everything()
                if self.manager is not None:
                    self.manager.update_run_metadata({_META_KEY: self._run_metadata()})
        except BaseException:
            self.close()  # a refused resume writes nothing: the checkpoints stay as they were
            raise
        self._started = True
        if self.done:
            first: tuple[Any, dict[str, Any]] = (None, {})
        elif self.resumed_from is None:
            first = env.reset(seed=self.config.seed)
        elif self._vector:
            first = self._resume_vector_env()
        elif self._open_obs is not None:  # continued past the old end, mid-episode
            first, self._open_obs = (self._open_obs, {}), None
        else:
            first = env.reset()  # np_random is as the uninterrupted run had it at this boundary
        for handler in self._handlers["on_start"]:
            handler(self)
        return first

    def step(
        self,
        reward: float,
        terminated: bool,
        truncated: bool,
        metrics: Mapping[str, Any] | None = None,
    ) -> bool:
        """Count one env step; at an episode's end record it and checkpoint if one is due.

        Call it after `agent.learn` and before `env.reset()`: a checkpoint taken here must see
        the learned transition and the env's generator as it is before the reset. With a vector
        env pass the batched `reward`, `terminated` and `truncated` arrays.

        Args:
            reward: the step's reward.
            terminated: the env's `terminated` flag.
            truncated: the env's `truncated` flag.
            metrics: what `agent.learn` returned (averaged into the checkpoint's metrics).

        Returns:
            True if the episode ended: reset the env (without a seed) before the next step.
            Always False for a vector env, which resets its sub-envs itself.
        """
        if not self._started or self._result is not None:
            raise RuntimeError(
                "CkptRunnerHook.step() outside a run. HINT: call begin(env, agent) first and "
                "stop stepping once hook.done is True or after end()."
            )
        if self.done:
            what = (
                "was preempted (its checkpoint is committed)"
                if self.preempted
                else f"already took its {self.config.total_timesteps} timesteps"
            )
            raise RuntimeError(
                f"CkptRunnerHook.step(): the run {what}. HINT: loop `while not hook.done:`."
            )
        if self._vector:
            return self._step_vector(reward, terminated, truncated, metrics)
        self.timesteps += 1
        self._episode_return += float(reward)
        self._episode_length += 1
        self._add_metrics(metrics)
        for handler in self._handlers["on_step"]:
            handler(self)
        if not (terminated or truncated):
            return False
        self._record_episode(self._episode_return, self._episode_length)
        self._episode_return, self._episode_length = 0.0, 0
        if self.manager is not None and not self._finished:
            step = (
                self.timesteps // self.config.checkpoint_interval * self.config.checkpoint_interval
            )
            if step > self._last_step:
                self._save(step)
            elif self.manager.preemption_signal is not None:
                self._save(self.timesteps)  # named by its timestep: between two interval steps
        return True

    def _add_metrics(self, metrics: Mapping[str, Any] | None) -> None:
        if metrics and not self._metrics_reported.issuperset(metrics):
            self._metrics_reported.update(metrics)
        for key, value in (metrics or {}).items():
            self._metric_sums[key] = self._metric_sums.get(key, 0.0) + float(value)
            self._metric_counts[key] = self._metric_counts.get(key, 0) + 1

    def _record_episode(self, episode_return: float, length: int) -> None:
        self.episode_returns.append(episode_return)
        self.episode_lengths.append(length)
        for handler in self._handlers["on_episode_end"]:
            handler(self, episode_return, length)

    def _step_vector(self, reward: Any, terminated: Any, truncated: Any, metrics: Any) -> bool:
        """`step` for a vector env: batched flags, a checkpoint at any step, never a reset."""
        self.timesteps += self._env.num_envs
        playing = ~self._vector_resetting
        self._vector_returns[playing] += np.asarray(reward, np.float64)[playing]
        self._vector_lengths[playing] += 1
        self._add_metrics(metrics)
        for handler in self._handlers["on_step"]:
            handler(self)
        ended = np.logical_or(terminated, truncated) & playing
        for i in np.flatnonzero(ended):  # episodes ending at the same step: by sub-env index
            self._record_episode(float(self._vector_returns[i]), int(self._vector_lengths[i]))
            self._vector_returns[i], self._vector_lengths[i] = 0.0, 0
        if _autoreset_mode(self._env) == gym.vector.AutoresetMode.NEXT_STEP:
            self._vector_resetting = ended
        if self.manager is not None and not self._finished:
            interval = self.config.checkpoint_interval
            if self.timesteps // interval * interval > self._last_step:
                self._save(self.timesteps // interval * interval)
            elif self.manager.preemption_signal is not None:
                self._save(self.timesteps)  # named by its timestep: between two interval steps
        return False

    def _resume_vector_env(self) -> tuple[Any, dict[str, Any]]:
        """The batched observation to continue from; a re-seeded reset if it was not saved."""
        if self._vector_obs is not None:
            return copy.deepcopy(self._vector_obs), {}
        why = self._inexact_why or "its sub-envs' state could not be captured"
        warnings.warn(
            f"resuming {self.config.checkpoint_dir} at timestep {self.timesteps} is not exact: "
            f"{why}; the vector env is re-seeded and reset, its unfinished episodes dropped. "
            "HINT: SyncVectorEnv of classic-control or toy-text envs with gymnasium's default "
            "wrappers resumes exactly.",
            stacklevel=3,
        )
        self._vector_returns[:], self._vector_lengths[:], self._vector_resetting[:] = 0, 0, False
        return self._env.reset(seed=self.config.seed + self.timesteps)

    def end(self, obs: Any = None) -> RunResult:
        """Finish the run: final checkpoint and `mark_complete()` if it is done, then close.

        Ending a run that is not done (the loop stopped early) only closes the manager; the
        run stays resumable from its latest checkpoint. Calling `end()` again returns the
        same result.

        Args:
            obs: with a single env, the observation the loop would act on next. The final
                checkpoint then holds the open episode (the env's state, see `_gym_envstate`),
                so a run resumed with a larger `total_timesteps` continues exactly.

        Returns:
            The run's `RunResult`.
        """
        if self._result is not None:
            return self._result
        if not self._started:
            raise RuntimeError("CkptRunnerHook.end() before begin(). HINT: call begin(env, agent).")
        try:
            if self.manager is not None and self._finished and not self.was_complete:
                self._end_obs = obs
                self._save(self.timesteps, final=True)
                self.manager.mark_complete()
        finally:
            self.close()
        self._result = RunResult(
            episode_returns=list(self.episode_returns),
            episode_lengths=list(self.episode_lengths),
            timesteps=self.timesteps,
            resumed_from=self.resumed_from,
            was_complete=self.was_complete,
            preempted=self.preempted and not self._finished,  # not if the last step came first
        )
        for handler in self._handlers["on_end"]:
            handler(self, self._result)
        return self._result

    def close(self) -> None:
        """Close the checkpoint manager without saving (what an aborted run does)."""
        if self.manager is not None:
            manager, self.manager = self.manager, None
            self._preempted = manager.preempted
            manager.close()

    def __enter__(self) -> CkptRunnerHook:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        # On an exception the run is interrupted mid-episode: no checkpoint can capture that,
        # so only close; the latest episode-boundary checkpoint is where a resume continues.
        if exc_type is None and self._started and self._result is None:
            self.end()
        else:
            self.close()

    # ---------------------------------------------------------------- checkpoint I/O

    def _open_manager(self) -> CheckpointManager:
        c = self.config
        assert c.checkpoint_dir is not None
        on_existing = on_existing_from_flags(c.resume, c.overwrite, caller="RunnerConfig")
        return CheckpointManager(
            c.checkpoint_dir,
            max_to_keep=c.max_checkpoints,
            keep_period=c.keep_period,
            max_bytes=c.max_bytes,
            incremental=c.incremental,
            best_fn=c.best_metric,
            best_mode=c.best_mode,
            on_existing=on_existing,
            format="tree",
            storage_options=dict(c.storage_options) if c.storage_options else None,
            save_on_signals=c.save_on_signals,
        )

    def _run_metadata(self) -> dict[str, Any]:
        env, agent, c = self._env, self._agent, self.config
        spec = getattr(env, "spec", None)
        return {
            "env_id": getattr(spec, "id", None),
            "observation_space": str(env.observation_space),
            "action_space": str(env.action_space),
            "agent": f"{type(agent).__module__}.{type(agent).__qualname__}",
            "seed": c.seed,
            "total_timesteps": c.total_timesteps,
            "checkpoint_interval": c.checkpoint_interval,
        }

    def _check_run_spaces(self, env: gym.Env[Any, Any]) -> None:
        assert self.manager is not None
        stored = (self.manager.run_metadata or {}).get(_META_KEY) or {}
        problems = [
            f"{name}: {stored[name]} in the checkpoints, {getattr(env, name)} in this env"
            for name in ("observation_space", "action_space")
            if name in stored and stored[name] != str(getattr(env, name))
        ]
        if problems:
            raise ValueError(
                f"cannot resume the run in {self.config.checkpoint_dir}: it was trained on an env "
                f"({stored.get('env_id')}) with other spaces:\n  "
                + "\n  ".join(problems)
                + "\nHINT: pass the env the run was trained on, or a new checkpoint_dir (or "
                "overwrite=True, which deletes the old checkpoints) to train on this one."
            )

    def _rng_states(self) -> dict[str, Any]:
        env = self._env
        env_part: Any = [_jsonable(g.bit_generator.state) for g in _env_generators(env)]
        return {
            "runner": _jsonable(self.rng.bit_generator.state),
            "env": env_part if self._vector else env_part[0],
            "action_space": {
                path: _jsonable(space.np_random.bit_generator.state)
                for path, space in _subspaces(env.action_space)
            },
            **global_rng_state(),  # Python's `random` and numpy's global `np.random`
        }

    def _state(
        self,
        *,
        torch_rng: bool,
        episodes: int | None = None,
        vector: Any = None,
        episode: Any = None,
    ) -> dict[str, Any]:
        """The checkpointed tree; with `episodes`, the restore template for that many episodes.

        `vector` is a vector env's part (see `_vector_state`), None for a single env;
        `episode` a single env's open episode at the run's end (see `_episode_state`).
        """
        torch = _torch()
        returns: Any = self.episode_returns if episodes is None else np.zeros(episodes)
        lengths: Any = self.episode_lengths if episodes is None else np.zeros(episodes, np.int64)
        state = {
            "agent": self._agent.state_dict(),
            "runner": {
                "timesteps": self.timesteps,
                "episode_returns": np.asarray(returns, dtype=np.float64),
                "episode_lengths": np.asarray(lengths, dtype=np.int64),
                "rng": json.dumps(self._rng_states()),
                "torch_rng": torch.get_rng_state() if torch_rng else None,
            },
        }
        if vector is not None:
            state["runner"]["vector"] = vector
        if episode is not None:
            state["runner"]["episode"] = episode
        return state

    def _vector_state(self, env_state: str, exact: bool) -> dict[str, Any]:
        """A vector env's part of the checkpoint: its open episodes and, if `exact`, its state."""
        return {
            "episode_returns": self._vector_returns.copy(),
            "episode_lengths": self._vector_lengths.copy(),
            "resetting": self._vector_resetting.copy(),
            "env_state": env_state,
            "obs": _gym_envstate.observations(self._env) if exact else None,
        }

    def _metrics(self) -> dict[str, float]:
        out = {key: self._metric_sums[key] / self._metric_counts[key] for key in self._metric_sums}
        if self.episode_returns:
            window = self.config.metric_window
            out["episode_return"] = self.mean_return()
            out["episode_length"] = float(np.mean(self.episode_lengths[-window:]))
        self._metric_sums.clear()
        self._metric_counts.clear()
        return out

    def _save(self, step: int, *, final: bool = False) -> None:
        assert self.manager is not None
        torch_rng = _torch() is not None
        metadata: dict[str, Any] = {
            _META_KEY: {
                "timesteps": self.timesteps,
                "episodes": self.episodes,
                "torch_rng": torch_rng,
                "final": final,
            }
        }
        vector = None
        if self._vector:
            env_state, why = _gym_envstate.capture_vector(self._env)
            vector = self._vector_state(env_state, why is None)
            metadata[_META_KEY]["vector"] = {"num_envs": self._env.num_envs, "not_exact": why}
            if why is not None and self._inexact_why is None:
                warnings.warn(
                    f"checkpoint {step} in {self.config.checkpoint_dir} cannot hold the vector "
                    f"env's state: {why}. A resume will re-seed and reset it: not exact. "
                    "HINT: SyncVectorEnv of classic-control or toy-text envs with gymnasium's "
                    "default wrappers resumes exactly.",
                    stacklevel=4,
                )
            self._inexact_why = why
        episode = None
        if final and not self._vector:
            episode = self._episode_state()
            metadata[_META_KEY]["open_episode"] = True
        metrics = self._metrics()
        unranked = self._check_best_metric(step, metrics)
        with warnings.catch_warnings():
            if unranked:  # said in the runner's terms above, not the core's
                warnings.simplefilter("ignore", UnrankedStepWarning)
            self.manager.save(
                step,
                self._state(torch_rng=torch_rng, vector=vector, episode=episode),
                metrics=metrics,
                metadata=metadata,
                force=True,
            )
        self._last_step = step
        for handler in self._handlers["on_checkpoint"]:
            handler(self, step)

    def _check_best_metric(self, step: int, metrics: Mapping[str, float]) -> bool:
        """Refuse a `best_metric` that nothing reports; warn if it is merely not there yet.

        Returns:
            True if checkpoint `step` will be unranked (and the warning was given).

        Raises:
            ValueError: `learn` returned metrics, never this one, and it is not an episode metric.
        """
        name = self.config.best_metric
        if name is None or name in metrics:
            return False
        reported = sorted(self._metrics_reported)
        if name not in _EPISODE_METRICS and name not in reported and reported:
            shown = ", ".join(map(repr, reported[:5])) + (", ..." if len(reported) > 5 else "")
            raise ValueError(
                f"RunnerConfig(best_metric={name!r}): nothing reports it at checkpoint {step}. "
                f"The runner reports 'episode_return' and 'episode_length'; the agent's learn() "
                f"returned {shown}. HINT: return {{{name!r}: value}} from learn(), or pick one "
                "of those names."
            )
        if name in _EPISODE_METRICS:
            why = "no episode has finished yet"
        elif reported:
            why = "the agent's learn() has not returned it since the previous checkpoint"
        else:
            why = "the agent's learn() has returned no metrics yet"
        warnings.warn(
            f"checkpoint {step} in {self.config.checkpoint_dir} has no {name!r} (best_metric): "
            f"{why}, so it is saved unranked. HINT: the runner reports 'episode_return' and "
            f"'episode_length'; an agent reports {name!r} by returning it from learn().",
            UnrankedStepWarning,
            stacklevel=4,
        )
        return True

    def _restore(self) -> None:
        manager, c = self.manager, self.config
        assert manager is not None
        step = manager.latest_step()
        assert step is not None
        meta = (manager.metadata(step) or {}).get(_META_KEY)
        if not meta:
            raise ValueError(
                f"cannot resume from step {step} of {c.checkpoint_dir}: it was not written by the "
                "gym runner (no runner metadata). HINT: point checkpoint_dir at a directory of "
                "`run`/`CkptRunnerHook` checkpoints, or a new directory."
            )
        if meta["torch_rng"] and _torch() is None:
            import torch  # noqa: F401  # the saved run used torch; its generator is restored too

        # The template has the checkpoint's episode count, so only the agent can differ.
        vector = None
        if self._vector:
            vector_meta = meta.get("vector") or {}
            if vector_meta.get("num_envs") != self._env.num_envs:
                raise ValueError(
                    f"cannot resume from step {step} of {c.checkpoint_dir}: it was saved from "
                    f"{vector_meta.get('num_envs') or 'no'} vector sub-envs, this env has "
                    f"{self._env.num_envs}. HINT: build the env the way the saving run did, or "
                    "use a new checkpoint_dir."
                )
            self._inexact_why = vector_meta.get("not_exact")
            vector = self._vector_state("", self._inexact_why is None)
        open_episode = None  # a single env's final checkpoint holds its open episode
        if not self._vector and meta.get("open_episode"):
            open_episode = {"return": 0.0, "length": 0, "state": "", "not_exact": ""}
        like = self._state(
            torch_rng=bool(meta["torch_rng"]),
            episodes=int(meta["episodes"]),
            vector=vector,
            episode=open_episode,
        )
        try:
            tree = self._restore_filling_optimizer_state(step, like)
        except StructureMismatchError as e:
            stored_agent = ((manager.run_metadata or {}).get(_META_KEY) or {}).get("agent")
            raise StructureMismatchError(
                f"cannot resume from step {step} of {c.checkpoint_dir}: the checkpoint was written "
                f"by agent {stored_agent}, and this {type(self._agent).__qualname__}'s "
                f"state_dict() differs from it. Nothing was changed on disk.\n{e}\n"
                "HINT: build the agent with the same architecture and buffer sizes as the saving "
                "run (torch optimizer state created lazily is filled in by itself); or use a "
                "new checkpoint_dir."
            ) from e
        self._agent.load_state_dict(tree["agent"])
        runner = tree["runner"]
        self.timesteps = int(runner["timesteps"])
        self.episode_returns = [float(x) for x in runner["episode_returns"]]
        self.episode_lengths = [int(x) for x in runner["episode_lengths"]]
        self._set_rng_states(json.loads(runner["rng"]))
        if runner["torch_rng"] is not None:
            _torch().set_rng_state(runner["torch_rng"])
        if self._vector:
            part = runner["vector"]
            self._vector_returns[:] = part["episode_returns"]
            self._vector_lengths[:] = part["episode_lengths"]
            self._vector_resetting[:] = part["resetting"]
            if self._inexact_why is None:
                _gym_envstate.restore_vector(self._env, part["env_state"], part["obs"])
                self._vector_obs = part["obs"]
        self.resumed_from = self._last_step = step
        # A complete run asked for more timesteps continues from its final checkpoint.
        self.was_complete = manager.is_complete and self.timesteps >= c.total_timesteps
        self._continued = manager.is_complete and not self.was_complete
        if self.was_complete and c.total_timesteps != self.timesteps:
            warnings.warn(
                f"the run in {c.checkpoint_dir} is complete at {self.timesteps} timesteps; "
                f"total_timesteps={c.total_timesteps} is ignored and its stored result returned. "
                "HINT: raise total_timesteps above it to train further; a new checkpoint_dir "
                "(or overwrite=True) trains again.",
                stacklevel=3,
            )
        if self._continued and not self._vector:
            self._continue_episode(runner.get("episode"))

    def _episode_state(self) -> dict[str, Any]:
        """A single env's open episode at the end of the run (see `end`)."""
        if self._end_obs is None:
            state, why = "", "end() was not given the observation to act on next"
        else:
            state, why = _gym_envstate.capture_episode(self._env, self._end_obs)
        return {
            "return": self._episode_return,
            "length": self._episode_length,
            "state": state,
            "not_exact": why or "",
        }

    def _continue_episode(self, part: Mapping[str, Any] | None) -> None:
        """Resume a single env where a finished run left it, mid-episode (or just reset)."""
        if part is None:  # a final checkpoint written before open episodes were saved
            part = {"state": "", "not_exact": "its final checkpoint holds no open episode"}
        if part["state"]:
            self._open_obs = _gym_envstate.restore_episode(self._env, str(part["state"]))
            self._episode_return = float(part["return"])
            self._episode_length = int(part["length"])
            return
        warnings.warn(
            f"continuing the run in {self.config.checkpoint_dir} past its end at timestep "
            f"{self.timesteps} is not exact: {part['not_exact']}; the env is reset and its open "
            "episode dropped. HINT: run() handles this; in your own loop pass the observation to "
            "hook.end(obs), with a built-in classic-control or toy-text env.",
            stacklevel=4,
        )

    def _restore_filling_optimizer_state(self, step: int, like: Any) -> Any:
        """Restore into `like`; if only lazily created torch optimizer state is missing from it
        (a fresh agent's Adam has no moments yet), take that part's structure from the step."""
        assert self.manager is not None
        try:
            return self.manager.restore(step, like=like)
        except StructureMismatchError as first:
            like, filled = complete_optimizer_state(like, self.manager.restore(step))
            if not filled:
                raise first from None
            return self.manager.restore(step, like=like)

    def _set_rng_states(self, states: Mapping[str, Any]) -> None:
        env = self._env
        self.rng = _set_generator(self.rng, states["runner"])
        env_states = states["env"] if self._vector else [states["env"]]
        holders = getattr(env, "envs", [env]) if self._vector else [env]
        for holder, gen, state in zip(holders, _env_generators(env), env_states, strict=True):
            restored = _set_generator(gen, state)
            if restored is not gen:
                holder.np_random = restored
        for path, space in _subspaces(env.action_space):
            if path in states["action_space"]:
                gen = _set_generator(space.np_random, states["action_space"][path])
                space._np_random = gen  # Space has no public setter; seed() only takes ints
        set_global_rng_state(states)  # checkpoints older than numpy's stream restore Python's

    def _seed_everything(self) -> None:
        seed = self.config.seed
        # In place: a caller holding `hook.rng` from before begin() keeps the live generator.
        self.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        self._env.action_space.seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        torch = _torch()
        if torch is not None:
            torch.manual_seed(seed)


# ---------------------------------------------------------------- checks


def _env_generators(env: Any) -> list[np.random.Generator]:
    """The env's generator, or a vector env's sub-envs' generators in order."""
    gens = env.np_random
    return list(gens) if isinstance(gens, tuple | list) else [gens]


def _autoreset_mode(env: Any) -> Any:
    return env.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)


def _check_env(env: Any) -> None:
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


def _check_agent(agent: Any, needs: tuple[str, ...]) -> None:
    missing = [name for name in needs if not callable(getattr(agent, name, None))]
    if missing:
        raise TypeError(
            f"the agent {type(agent).__qualname__} lacks {', '.join(missing)}: run() needs "
            "act(obs, rng), learn(obs, action, reward, next_obs, terminated, truncated), "
            "state_dict() and load_state_dict(state); CkptRunnerHook in your own loop only the "
            "last two. HINT: see integrations.gym.Agent."
        )


def _check_agent_spaces(env: gym.Env[Any, Any], agent: Any) -> None:
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


# ---------------------------------------------------------------- reference loop


class _ProgressBar(RunnerCallback):
    """A rich progress bar: timesteps, episodes, recent mean return."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]timesteps"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("episodes {task.fields[episodes]}"),
            TextColumn("mean return {task.fields[mean_return]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.task: Any = None

    def _fields(self, hook: CkptRunnerHook) -> dict[str, Any]:
        mean = hook.mean_return()
        return {
            "episodes": hook.episodes,
            "mean_return": "-" if math.isnan(mean) else f"{mean:.2f}",
        }

    def on_start(self, hook: CkptRunnerHook) -> None:
        self.progress.start()
        self.task = self.progress.add_task(
            "run", total=hook.config.total_timesteps, completed=hook.timesteps, **self._fields(hook)
        )

    def on_step(self, hook: CkptRunnerHook) -> None:
        if hook.timesteps % _PROGRESS_EVERY == 0:
            self.progress.update(self.task, completed=hook.timesteps)

    def on_episode_end(self, hook: CkptRunnerHook, episode_return: float, length: int) -> None:
        self.progress.update(self.task, completed=hook.timesteps, **self._fields(hook))

    def on_end(self, hook: CkptRunnerHook, result: RunResult) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=hook.timesteps, **self._fields(hook))

    def close(self) -> None:
        self.progress.stop()


def _stderr_is_terminal() -> bool:
    from rich.console import Console

    return Console(stderr=True).is_terminal


def run(
    env: gym.Env[Any, Any],
    agent: Any,
    config: RunnerConfig,
    *,
    callbacks: Iterable[Any] = (),
    progress: bool | None = None,
) -> RunResult:
    """Train `agent` on `env` for `config.total_timesteps`, checkpointing as configured.

    The loop is the one in `CkptRunnerHook`'s docstring: act with `hook.rng`, step, learn,
    and reset (without a seed) at each episode's end. With `config.resume=True` a killed run
    continues from its latest checkpoint and ends exactly as an uninterrupted run would: the
    same episode returns and the same final agent state.

    Args:
        env: a Gymnasium env (`gym.make(...)`) or a `SyncVectorEnv`
            (`gym.make_vec(..., vectorization_mode="sync")`), freshly made.
        agent: an `Agent`, freshly built.
        config: the `RunnerConfig`.
        callbacks: objects with any of `RunnerCallback`'s methods.
        progress: show a progress bar on stderr; None (default): only if stderr is a terminal.

    Returns:
        A `RunResult` with every finished episode's return and length.

    Raises:
        The errors of `CkptRunnerHook.begin`; whatever `env` or `agent` raise (the run then
        stays resumable from its latest checkpoint).

    Example:
        >>> result = run(gym.make("CartPole-v1"), agent, RunnerConfig(10_000))  # doctest: +SKIP
    """
    callbacks = list(callbacks)
    bar = _ProgressBar() if (_stderr_is_terminal() if progress is None else progress) else None
    if bar is not None:
        callbacks.append(bar)
    _check_agent(agent, ("act", "learn", "state_dict", "load_state_dict"))
    hook = CkptRunnerHook(config, callbacks=callbacks)
    try:
        obs, _ = hook.begin(env, agent)
        act, learn, env_step, hook_step = agent.act, agent.learn, env.step, hook.step
        while not hook.done:
            action = act(obs, hook.rng)
            next_obs, reward, terminated, truncated, _ = env_step(action)
            metrics = learn(obs, action, reward, next_obs, terminated, truncated)
            obs = next_obs
            if hook_step(reward, terminated, truncated, metrics):
                obs, _ = env.reset()
        return hook.end(obs)
    finally:
        hook.close()
        if bar is not None:
            bar.close()
