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

This module holds the public surface and the hook's event flow; the pieces live beside it:
`_gym_config` (`RunnerConfig`), `_gym_types` (`Agent`, `RunResult`), `_gym_checkpoint` (the
manager's options, the runner's metadata, restoring into the agent), `_gym_rng` (every random
stream), `_gym_vector` and `_gym_envstate` (open episodes and env state), `_gym_metrics`
(averaging `learn`'s metrics), `_gym_checks` and `_gym_progress`.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from ckpt_core import CheckpointManager, UnrankedStepWarning

from . import _gym_envstate, _gym_rng
from ._gym_checkpoint import (
    META_KEY,
    open_manager,
    restore_tree,
    run_metadata,
    step_metadata,
    stored_run,
)
from ._gym_checks import check_agent, check_agent_spaces, check_env, check_run_spaces
from ._gym_config import RunnerConfig
from ._gym_metrics import MetricAverages
from ._gym_progress import ProgressBar, stderr_is_terminal
from ._gym_types import Agent, RunResult
from ._gym_vector import VectorEpisodes

__all__ = [
    "Agent",
    "CkptRunnerHook",
    "RunResult",
    "RunnerCallback",
    "RunnerConfig",
    "run",
]


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
        self._episode_return = 0.0  # a single env's open episode
        self._episode_length = 0
        self._vector: VectorEpisodes | None = None  # a vector env's open episodes
        self._end_obs: Any = None  # a single env's observation at the end, passed to end()
        self._open_obs: Any = None  # ... and the one a run continued past its end acts on
        self._last_step = 0  # step (interval label) of the newest checkpoint
        self._metrics = MetricAverages(config)
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
        check_env(env)
        check_agent(agent, ("state_dict", "load_state_dict"))
        check_agent_spaces(env, agent)
        self._env, self._agent = env, agent
        if isinstance(env, gym.vector.VectorEnv):
            self._vector = VectorEpisodes(env)
        if self.config.checkpoint_dir is not None:
            self.manager = open_manager(self.config)
        try:
            if self.manager is not None and self.manager.resuming:
                check_run_spaces(stored_run(self.manager), env, self.config.checkpoint_dir)
                self._restore()
            else:
                _gym_rng.seed(self.rng, env, self.config.seed)
                if self.manager is not None:
                    self.manager.update_run_metadata(
                        {META_KEY: run_metadata(env, agent, self.config)}
                    )
        except BaseException:
            self.close()  # a refused resume writes nothing: the checkpoints stay as they were
            raise
        self._started = True
        if self.done:
            first: tuple[Any, dict[str, Any]] = (None, {})
        elif self.resumed_from is None:
            first = env.reset(seed=self.config.seed)
        elif self._vector is not None:
            first = self._vector.resume(
                self.timesteps, self.config.seed, self.config.checkpoint_dir
            )
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
        if self._vector is not None:
            self.timesteps += self._env.num_envs
            ended = self._vector.step(reward, terminated, truncated)
        else:
            self.timesteps += 1
            self._episode_return += float(reward)
            self._episode_length += 1
            ended = (
                [(self._episode_return, self._episode_length)] if terminated or truncated else []
            )
        self._metrics.add(metrics)
        for handler in self._handlers["on_step"]:
            handler(self)
        if self._vector is None and not ended:
            return False
        for episode_return, length in ended:
            self.episode_returns.append(episode_return)
            self.episode_lengths.append(length)
            for handler in self._handlers["on_episode_end"]:
                handler(self, episode_return, length)
        self._episode_return, self._episode_length = 0.0, 0
        if self.manager is not None and not self._finished:
            # A single env is saved at episode boundaries, a vector env at any step.
            interval = self.config.checkpoint_interval
            if self.timesteps // interval * interval > self._last_step:
                self._save(self.timesteps // interval * interval)
            elif self.manager.preemption_signal is not None:
                self._save(self.timesteps)  # named by its timestep: between two interval steps
        return self._vector is None

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

    def _state(
        self,
        *,
        torch_rng: bool,
        episodes: int | None = None,
        vector: Any = None,
        episode: Any = None,
    ) -> dict[str, Any]:
        """The checkpointed tree; with `episodes`, the restore template for that many episodes.

        `vector` is a vector env's part (see `VectorEpisodes.part`), None for a single env;
        `episode` a single env's open episode at the run's end (see `_gym_envstate.episode_part`).
        """
        returns: Any = self.episode_returns if episodes is None else np.zeros(episodes)
        lengths: Any = self.episode_lengths if episodes is None else np.zeros(episodes, np.int64)
        agent = self._agent.state_dict()
        streams = _gym_rng.capture(self.rng, self._env, vector=self._vector is not None)
        runner: dict[str, Any] = {
            "timesteps": self.timesteps,
            "episode_returns": np.asarray(returns, dtype=np.float64),
            "episode_lengths": np.asarray(lengths, dtype=np.int64),
            "rng": json.dumps(streams),
            "torch_rng": _gym_rng.imported_torch().get_rng_state() if torch_rng else None,
        }
        if vector is not None:
            runner["vector"] = vector
        if episode is not None:
            runner["episode"] = episode
        return {"agent": agent, "runner": runner}

    def _save(self, step: int, *, final: bool = False) -> None:
        assert self.manager is not None
        torch_rng = _gym_rng.imported_torch() is not None
        meta: dict[str, Any] = {
            "timesteps": self.timesteps,
            "episodes": self.episodes,
            "torch_rng": torch_rng,
            "final": final,
        }
        vector = episode = None
        if self._vector is not None:
            vector, meta["vector"] = self._vector.capture(step, self.config.checkpoint_dir)
        elif final:
            episode = _gym_envstate.episode_part(
                self._env, self._end_obs, self._episode_return, self._episode_length
            )
            meta["open_episode"] = True
        metrics, unranked = self._metrics.pop(step, self.episode_returns, self.episode_lengths)
        with warnings.catch_warnings():
            if unranked:  # said in the runner's terms above, not the core's
                warnings.simplefilter("ignore", UnrankedStepWarning)
            self.manager.save(
                step,
                self._state(torch_rng=torch_rng, vector=vector, episode=episode),
                metrics=metrics,
                metadata={META_KEY: meta},
                force=True,  # the interval counts env timesteps at episode boundaries
            )
        self._last_step = step
        for handler in self._handlers["on_checkpoint"]:
            handler(self, step)

    def _restore(self) -> None:
        manager, c = self.manager, self.config
        assert manager is not None
        step = manager.latest_step()
        assert step is not None
        meta = step_metadata(manager, step, c)
        if meta["torch_rng"] and _gym_rng.imported_torch() is None:
            import torch  # noqa: F401  # the saved run used torch; its generator is restored too

        # The template has the checkpoint's episode count, so only the agent can differ.
        vector = None
        if self._vector is not None:
            vector = self._vector.template(meta.get("vector") or {}, step, c.checkpoint_dir)
        open_episode = None  # a single env's final checkpoint holds its open episode
        if self._vector is None and meta.get("open_episode"):
            open_episode = _gym_envstate.episode_part(None, None, 0.0, 0, template=True)
        like = self._state(
            torch_rng=bool(meta["torch_rng"]),
            episodes=int(meta["episodes"]),
            vector=vector,
            episode=open_episode,
        )
        tree = restore_tree(manager, step, like, agent=self._agent, config=c)
        self._agent.load_state_dict(tree["agent"])
        runner = tree["runner"]
        self.timesteps = int(runner["timesteps"])
        self.episode_returns = [float(x) for x in runner["episode_returns"]]
        self.episode_lengths = [int(x) for x in runner["episode_lengths"]]
        self.rng = _gym_rng.restore(
            self.rng, self._env, json.loads(runner["rng"]), vector=self._vector is not None
        )
        if runner["torch_rng"] is not None:
            _gym_rng.imported_torch().set_rng_state(runner["torch_rng"])
        if self._vector is not None:
            self._vector.load(runner["vector"])
        self.resumed_from = self._last_step = step
        # A complete run asked for more timesteps continues from its final checkpoint.
        self.was_complete = manager.is_complete and self.timesteps >= c.total_timesteps
        continued = manager.is_complete and not self.was_complete
        if self.was_complete and c.total_timesteps != self.timesteps:
            warnings.warn(
                f"the run in {c.checkpoint_dir} is complete at {self.timesteps} timesteps; "
                f"total_timesteps={c.total_timesteps} is ignored and its stored result returned. "
                "HINT: raise total_timesteps above it to train further; a new checkpoint_dir "
                "(or overwrite=True) trains again.",
                stacklevel=3,
            )
        if continued and self._vector is None:
            where = f"the run in {c.checkpoint_dir} past its end at timestep {self.timesteps}"
            episode = _gym_envstate.continue_episode(self._env, runner.get("episode"), where)
            if episode is not None:
                self._open_obs, self._episode_return, self._episode_length = episode


# ---------------------------------------------------------------- reference loop


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
    bar = ProgressBar() if (stderr_is_terminal() if progress is None else progress) else None
    if bar is not None:
        callbacks.append(bar)
    check_agent(agent, ("act", "learn", "state_dict", "load_state_dict"))
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
