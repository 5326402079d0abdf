"""vibe-rl's checkpointing, ported: one-shot save/load of a run directory, the retention
example, the resume/overwrite behaviour matrix, `RunnerConfig(resume=True)`, best-model
management and cross-device loading.

Names map to ours as in the README's "Coming from ..." table: `initialize_checkpoint_dir(dir,
resume=, overwrite=)` is `CheckpointManager(dir, on_existing=...)` with `mgr.resuming`;
`RunDir.mark_best` / `best_checkpoint` are the manager's `best_fn` and the `best` pointer.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ckpt_core import (
    CheckpointManager,
    checkpoint_exists,
    load_checkpoint,
    load_metadata,
    save_checkpoint,
)
from ckpt_core.options import on_existing_from_flags

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

from agents import TabularQAgent  # noqa: E402

from integrations.gym import CkptRunnerHook, RunnerCallback, RunnerConfig, run  # noqa: E402


def train_state(seed: int) -> dict[str, Any]:
    """A DQN-like train state: params, optimizer moments, a step counter."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    params = {"dense": {"w": jax.random.normal(k1, (4, 8)), "b": jnp.zeros(8)}}
    return {
        "params": params,
        "opt": {"mu": jax.tree.map(jnp.zeros_like, params), "count": jnp.int32(0)},
        "target": {"q": jax.random.normal(k2, (8, 2))},
    }


def same(a: Any, b: Any) -> bool:
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_one_shot_save_and_load_in_a_checkpoints_directory(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    state = train_state(0)
    save_checkpoint(checkpoints, state, step=500)
    save_checkpoint(
        checkpoints, state, step=1000, metadata={"env": "CartPole-v1", "algorithm": "dqn"}
    )

    restored = load_checkpoint(checkpoints, like=train_state(1), step=1000)
    assert same(restored, state) and isinstance(restored["params"]["dense"]["w"], jax.Array)
    assert load_metadata(checkpoints, step=1000) == {"env": "CartPole-v1", "algorithm": "dqn"}
    assert load_metadata(checkpoints, step=500) is None  # vibe-rl: None without metadata
    assert checkpoint_exists(checkpoints, step=1000)


def test_retention_example_keeps_recent_periodic_and_best(tmp_path):
    """max_to_keep=3 most recent; every keep_period-th step forever; the best by best_fn."""
    returns = {15: 9.0}  # the best evaluation happens early and must survive
    with CheckpointManager(
        tmp_path / "ckpt",
        max_to_keep=3,
        keep_period=10,
        save_interval_steps=5,
        best_fn=lambda m: m["mean_return"],
        best_mode="max",
    ) as mgr:
        state = train_state(0)
        for step in range(35):
            saved = mgr.save(step, state, metrics={"mean_return": returns.get(step, 1.0)})
            assert saved == (step % 5 == 0)
        mgr.wait()
        assert mgr.all_steps() == [0, 10, 15, 20, 25, 30]
        assert mgr.best_step() == 15 and mgr.latest_step() == 30


@pytest.mark.parametrize(
    ("existing", "resume", "overwrite", "result"),
    [
        (False, True, False, "fresh"),
        (False, False, False, "fresh"),
        (True, True, False, "resume"),
        (True, False, True, "wiped"),
        (True, False, False, FileExistsError),
    ],
)
def test_behaviour_matrix(tmp_path, existing, resume, overwrite, result):
    directory = tmp_path / "checkpoints"
    state = train_state(0)
    if existing:
        with CheckpointManager(directory) as first:
            first.save(100, state)
    on_existing = on_existing_from_flags(resume, overwrite, caller="initialize_checkpoint_dir")
    if result is FileExistsError:
        with pytest.raises(FileExistsError, match="resume"):
            CheckpointManager(directory, on_existing=on_existing)
        assert checkpoint_exists(directory, step=100)  # refused untouched
        return
    with CheckpointManager(directory, on_existing=on_existing, save_interval_steps=100) as mgr:
        assert mgr.resuming == (result == "resume")
        if mgr.resuming:
            step = mgr.latest_step()
            restored = mgr.restore(step, train_state(1))  # vibe-rl: restore(step, state)
            assert same(restored, state) and step + 1 == 101
        else:
            assert mgr.all_steps() == []


def test_stale_files_only_is_not_a_resume(tmp_path):
    directory = tmp_path / "checkpoints"
    (directory / "step_00000100").mkdir(parents=True)  # a save that never committed
    (directory / "notes.txt").write_text("mine")
    with CheckpointManager(directory, on_existing="resume") as mgr:
        assert not mgr.resuming and mgr.latest_step() is None
    assert (directory / "notes.txt").read_text() == "mine"


class InterruptAt(RunnerCallback):
    def __init__(self, timestep: int) -> None:
        self.timestep = timestep

    def on_step(self, hook: CkptRunnerHook) -> None:
        if hook.timesteps == self.timestep:
            raise KeyboardInterrupt


def test_runner_config_resume_continues_from_the_latest_checkpoint(tmp_path):
    def agent_for(env: gym.Env[Any, Any]) -> TabularQAgent:
        return TabularQAgent(env.observation_space, env.action_space, epsilon_decay=4_000)

    env = gym.make("FrozenLake-v1")
    reference = run(env, agent_for(env), RunnerConfig(total_timesteps=4_000))

    runner_config = RunnerConfig(
        total_timesteps=4_000,
        checkpoint_dir=str(tmp_path / "dqn_run"),
        checkpoint_interval=1_000,
        max_checkpoints=5,
        keep_period=2_000,
        resume=True,
    )
    env = gym.make("FrozenLake-v1")
    with pytest.raises(KeyboardInterrupt):  # no checkpoints yet: starts from scratch
        run(env, agent_for(env), runner_config, callbacks=[InterruptAt(2_500)])
    env = gym.make("FrozenLake-v1")
    agent = agent_for(env)
    result = run(env, agent, runner_config)

    assert 2_000 <= result.resumed_from < 2_500
    assert result.episode_returns == reference.episode_returns
    latest = load_checkpoint(tmp_path / "dqn_run", step="latest")  # inspect what the run wrote
    assert latest is not None and checkpoint_exists(tmp_path / "dqn_run" / "latest")


def test_best_model_management_and_loading_run_best(tmp_path):
    """vibe-rl marks the best step after evaluation and loads `run/best`; here the manager's
    best_fn tracks it, retention never deletes it, and `run/best` is a path that loads."""
    run_dir = tmp_path / "checkpoints"
    eval_returns = {0: 1.0, 10: 7.0, 20: 3.0, 30: 2.0, 40: 4.0}
    states = {step: train_state(step) for step in eval_returns}
    with CheckpointManager(
        run_dir, max_to_keep=2, best_fn=lambda m: m["eval_return"], best_mode="max"
    ) as mgr:
        for step, eval_return in eval_returns.items():
            mgr.save(step, states[step], metrics={"eval_return": eval_return})
        assert mgr.all_steps() == [10, 30, 40]  # cleanup kept the best outside the window

    assert (run_dir / "best").read_text().strip() == "step_00000010"
    best_state = load_checkpoint(run_dir / "best", like=train_state(99))
    assert same(best_state, states[10])
    assert same(load_checkpoint(run_dir, like=train_state(99), step="best"), states[10])


def test_cross_device_loading_unreplicate_and_replicate_to(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    single = train_state(0)
    n = jax.local_device_count()
    replicated = jax.tree.map(lambda x: jnp.broadcast_to(x[None], (n, *x.shape)), single)

    save_checkpoint(checkpoints, replicated, step=1000, unreplicate=True)
    assert same(load_checkpoint(checkpoints, like=single, step=1000), single)

    restored = load_checkpoint(checkpoints, like=single, step=1000, replicate_to=n)
    assert same(restored, replicated)
    assert all(leaf.shape[0] == n for leaf in jax.tree.leaves(restored))
