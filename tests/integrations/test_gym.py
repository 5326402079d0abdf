"""integrations.gym on real Gymnasium envs: exact resume across SIGKILL, retention, errors.

The SIGKILL tests run this file as a script (`python test_gym.py child ...`): the child trains
with `run`, stops at a chosen timestep after writing a marker, and the test kills it there.
torch is imported only by the CartPole/DQN paths, so the FrozenLake child runs without it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

from agents import DQNAgent, TabularQAgent  # noqa: E402

from ckpt_core import (  # noqa: E402
    CheckpointExistsError,
    CheckpointManager,
    StructureMismatchError,
    UnrankedStepWarning,
    check_resume_is_exact,
)
from integrations.gym import (  # noqa: E402
    CkptRunnerHook,
    RunnerCallback,
    RunnerConfig,
    RunResult,
    run,
)

# Small enough for seconds per run; long enough that DQN trains (learning_starts < interval).
CARTPOLE = {"total": 1_500, "interval": 300, "kill_at": 1_111}
FROZENLAKE = {"total": 30_000, "interval": 2_000, "kill_at": 17_777}
# Agents that sample replay minibatches from numpy's global generator; the vector run's
# kill point is even (2 sub-envs: timesteps go up by 2).
REPLAY = {"total": 12_000, "interval": 1_000, "kill_at": 7_777}
VECTOR = {"total": 12_000, "interval": 1_000, "kill_at": 7_778}
SIZES = {"cartpole": CARTPOLE, "frozenlake": FROZENLAKE, "replay": REPLAY, "vector": VECTOR}


class ReplayQAgent:
    """Tabular Q-learning from a replay buffer sampled with `np.random` (as CleanRL's and SB3's
    buffers do), on batched transitions from a vector env or single ones from an env."""

    def __init__(self, n_states: int, n_actions: int, capacity: int = 512) -> None:
        self.q = np.zeros((n_states, n_actions))
        self.buffer = np.zeros((capacity, 4), dtype=np.int64)  # obs, action, next_obs, done
        self.rewards = np.zeros(capacity)
        self.cursor = 0
        self.size = 0

    def act(self, obs: Any, rng: np.random.Generator) -> Any:
        batch = np.atleast_1d(obs)
        greedy = self.q[batch].argmax(axis=1)
        explore = rng.random(len(batch)) < 0.3
        actions = np.where(explore, rng.integers(self.q.shape[1], size=len(batch)), greedy)
        return int(actions[0]) if np.ndim(obs) == 0 else actions

    def learn(self, obs, action, reward, next_obs, terminated, truncated):
        rows = np.stack(np.broadcast_arrays(obs, action, next_obs, terminated), axis=-1)
        for row, r in zip(np.atleast_2d(rows), np.atleast_1d(reward), strict=True):
            self.buffer[self.cursor], self.rewards[self.cursor] = row, r
            self.cursor = (self.cursor + 1) % len(self.buffer)
            self.size = min(self.size + 1, len(self.buffer))
        picks = np.random.randint(self.size, size=4)
        picks = np.concatenate([picks, np.random.choice(self.size, size=2)])
        for (s, a, s2, done), r in zip(self.buffer[picks], self.rewards[picks], strict=True):
            # A step cost: FrozenLake's rare rewards alone would leave `q` at zero.
            target = r - 0.01 + 0.9 * self.q[s2].max() * (1 - done)
            self.q[s, a] += 0.1 * (target - self.q[s, a])
        return None

    def state_dict(self) -> dict[str, Any]:
        return {
            "q": self.q,
            "buffer": self.buffer,
            "rewards": self.rewards,
            "cursor": self.cursor,
            "size": self.size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("q", "buffer", "rewards"):
            np.copyto(getattr(self, key), state[key])
        self.cursor, self.size = int(state["cursor"]), int(state["size"])


# ---------------------------------------------------------------- shared helpers


def make(env_name: str) -> tuple[gym.Env[Any, Any], Any]:
    """A fresh env and a freshly built agent for it."""
    if env_name == "cartpole":
        env = gym.make("CartPole-v1")
        agent = DQNAgent(
            env.observation_space,
            env.action_space,
            hidden=32,
            buffer_size=3_000,
            batch_size=32,
            learning_starts=200,
            target_update=200,
            epsilon_decay=2_000,
        )
        return env, agent
    if env_name == "vector":
        vector = gym.make_vec("FrozenLake-v1", num_envs=2, vectorization_mode="sync")
        return vector, ReplayQAgent(16, 4)
    if env_name == "replay":
        return gym.make("FrozenLake-v1"), ReplayQAgent(16, 4)
    env = gym.make("FrozenLake-v1")  # slippery: the env's generator drives every step
    return env, TabularQAgent(env.observation_space, env.action_space, epsilon_decay=20_000)


def leaves(tree: Any, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], Any]:
    """Flatten a state dict into path -> leaf."""
    if isinstance(tree, dict):
        out: dict[tuple[Any, ...], Any] = {}
        for key, value in tree.items():
            out.update(leaves(value, (*path, key)))
        return out
    if isinstance(tree, list | tuple):
        out = {}
        for i, value in enumerate(tree):
            out.update(leaves(value, (*path, i)))
        return out
    return {path: tree}


def assert_same_state(actual: Any, expected: Any) -> None:
    """Every leaf equal, bit for bit, with the same kind (torch stays torch)."""
    got, want = leaves(actual), leaves(expected)
    assert got.keys() == want.keys()
    for path, value in want.items():
        other = got[path]
        assert type(other) is type(value), path
        if hasattr(value, "numpy"):  # torch tensor
            assert value.dtype == other.dtype and value.shape == other.shape, path
            assert bool((value == other).all()), f"{path} differs"
        elif isinstance(value, np.ndarray):
            np.testing.assert_array_equal(other, value, err_msg=str(path))
        else:
            assert other == value, path


class Interrupt(Exception):
    """Stands in for a crash inside the training loop."""


class InterruptAt(RunnerCallback):
    def __init__(self, timestep: int) -> None:
        self.timestep = timestep

    def on_step(self, hook: CkptRunnerHook) -> None:
        if hook.timesteps == self.timestep:
            raise Interrupt


class Record(RunnerCallback):
    """Every committed checkpoint's step, metrics and metadata, read back from the manager."""

    def __init__(self) -> None:
        self.saved: dict[int, tuple[dict[str, float], dict[str, Any]]] = {}

    def on_checkpoint(self, hook: CkptRunnerHook, step: int) -> None:
        assert hook.manager is not None
        self.saved[step] = (dict(hook.manager.metrics(step)), hook.manager.metadata(step)["gym"])


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny networks run fastest, and steadiest on a busy machine, on one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` with its bytes (the lock file aside)."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and "lock" not in p.name
    }


# ---------------------------------------------------------------- child process


def child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("env")
    parser.add_argument("--dir", required=True)
    parser.add_argument("--total", type=int, required=True)
    parser.add_argument("--interval", type=int, required=True)
    parser.add_argument("--block-at", type=int, default=0)
    parser.add_argument("--marker", default="")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    if args.env == "cartpole":
        import torch

        torch.set_num_threads(1)

    class BlockAt(RunnerCallback):
        """Mid-episode at `block_at`: say so, then wait to be killed."""

        def on_step(self, hook: CkptRunnerHook) -> None:
            if hook.timesteps == args.block_at:
                Path(args.marker).write_text(str(hook.timesteps))
                time.sleep(600)

    env, agent = make(args.env)
    config = RunnerConfig(
        args.total, checkpoint_dir=args.dir, checkpoint_interval=args.interval, resume=True
    )
    result = run(env, agent, config, callbacks=[BlockAt()] if args.block_at else [])
    Path(args.out).write_text(
        json.dumps(
            {
                "returns": result.episode_returns,
                "lengths": result.episode_lengths,
                "timesteps": result.timesteps,
                "resumed_from": result.resumed_from,
                "torch_imported": "torch" in sys.modules,
            }
        )
    )


def start_child(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, "child", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[2],
    )


def wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            output = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"child exited early:\n{output[-3000:]}")
        assert time.monotonic() < deadline, "child did not reach the kill point in time"
        time.sleep(0.05)


# ---------------------------------------------------------------- exactness across SIGKILL


@pytest.mark.parametrize("env_name", ["cartpole", "frozenlake", "replay", "vector"])
def test_sigkill_and_resume_is_identical_to_an_uninterrupted_run(env_name, tmp_path):
    """`replay` samples from `np.random`; `vector` is a SyncVectorEnv of 2 FrozenLakes."""
    sizes = SIZES[env_name]
    # The reference: uninterrupted, in this process, checkpointing off.
    env, reference_agent = make(env_name)
    reference = run(env, reference_agent, RunnerConfig(sizes["total"]))

    ckpt, marker, out = tmp_path / "ckpt", tmp_path / "marker", tmp_path / "out.json"
    common = ["--dir", str(ckpt), "--total", str(sizes["total"]), "--interval"]
    common += [str(sizes["interval"]), "--out", str(out)]
    proc = start_child(
        env_name, *common, "--block-at", str(sizes["kill_at"]), "--marker", str(marker)
    )
    try:
        wait_for(marker, proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()

    with CheckpointManager(ckpt, read_only=True) as mgr:
        killed_at = mgr.latest_step()
        assert killed_at is not None and killed_at < sizes["kill_at"] and not mgr.is_complete
        assert killed_at >= 2 * sizes["interval"]

    proc = start_child(env_name, *common)
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 0, output[-3000:]
    resumed = json.loads(out.read_text())

    assert resumed["resumed_from"] == killed_at
    assert resumed["timesteps"] == reference.timesteps == sizes["total"]
    assert resumed["returns"] == reference.episode_returns
    assert resumed["lengths"] == reference.episode_lengths
    assert resumed["torch_imported"] == (env_name == "cartpole")
    with CheckpointManager(ckpt, read_only=True) as mgr:
        assert mgr.is_complete and mgr.latest_step() == sizes["total"]
        final = mgr.restore()
        assert mgr.metadata()["gym"]["torch_rng"] == (env_name == "cartpole")
    assert_same_state(final["agent"], reference_agent.state_dict())
    np.testing.assert_array_equal(final["runner"]["episode_returns"], reference.episode_returns)


def test_interrupted_in_process_resume_restores_every_random_stream(tmp_path):
    """A user loop driving the hook, with an agent that draws from torch's and Python's
    global generators; the resumed process has them scrambled before it resumes."""
    import random

    import torch

    class GlobalRandomAgent(TabularQAgent):
        def act(self, obs: Any, rng: np.random.Generator) -> int:
            if torch.rand(()) < 0.3 or random.random() < 0.2:
                return int(rng.integers(self.q.shape[1]))
            return super().act(obs, rng)

    def train(config: RunnerConfig, callbacks=()) -> tuple[RunResult, Any]:
        env = gym.make("FrozenLake-v1")
        agent = GlobalRandomAgent(env.observation_space, env.action_space)
        with CkptRunnerHook(config, callbacks=callbacks) as hook:
            obs, _ = hook.begin(env, agent)
            while not hook.done:
                action = agent.act(obs, hook.rng)
                next_obs, reward, terminated, truncated, _ = env.step(action)
                metrics = agent.learn(obs, action, reward, next_obs, terminated, truncated)
                obs = next_obs
                if hook.step(reward, terminated, truncated, metrics):
                    obs, _ = env.reset()
            return hook.end(), agent

    reference, reference_agent = train(RunnerConfig(8_000))
    config = RunnerConfig(8_000, checkpoint_dir=tmp_path, checkpoint_interval=1_000, resume=True)
    with pytest.raises(Interrupt):
        train(config, [InterruptAt(5_555)])
    torch.manual_seed(1234)
    random.seed(1234)
    result, agent = train(config)
    assert result.resumed_from == 5_000
    assert result.episode_returns == reference.episode_returns
    assert result.episode_lengths == reference.episode_lengths
    np.testing.assert_array_equal(agent.q, reference_agent.q)


# ---------------------------------------------------------------- checkpoints, retention, best


class LinearCartPoleAgent:
    """A linear policy nudged by `np.random`: enough to make CartPole's episodes vary."""

    def __init__(self) -> None:
        self.weights = np.zeros((4, 2))
        self.steps = 0

    def act(self, obs: Any, rng: np.random.Generator) -> Any:
        scores = obs @ self.weights + rng.normal(0.0, 1.0, (len(obs), 2))
        return scores.argmax(axis=1)

    def learn(self, obs, action, reward, next_obs, terminated, truncated):
        self.steps += 1
        self.weights += 1e-3 * np.random.standard_normal(self.weights.shape)
        return {"weight_norm": float(np.abs(self.weights).sum())}

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        np.copyto(self.weights, state["weights"])
        self.steps = int(state["steps"])


def make_cartpoles(mode: str = "NextStep", **wrappers: Any) -> gym.vector.VectorEnv:
    return gym.make_vec(
        "CartPole-v1",
        num_envs=3,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": mode},
        **wrappers,
    )


def train_vector(
    directory: Path, stop_at: int | None = None, **make_kwargs: Any
) -> tuple[RunResult, LinearCartPoleAgent]:
    agent = LinearCartPoleAgent()
    config = RunnerConfig(
        3_000, checkpoint_dir=directory, checkpoint_interval=400, resume=True, seed=7
    )
    callbacks = [InterruptAt(stop_at)] if stop_at else []
    return run(make_cartpoles(**make_kwargs), agent, config, callbacks=callbacks), agent


@pytest.mark.parametrize("mode", ["NextStep", "SameStep"])
def test_a_sync_vector_env_resumes_mid_episode_exactly(mode, tmp_path):
    """3 CartPoles: checkpoints fall mid-episode; the resume restores each sub-env's physics,
    its time limit, the autoreset flags and the open episodes' partial returns."""
    reference, reference_agent = train_vector(tmp_path / "reference", mode=mode)
    with pytest.raises(Interrupt):
        train_vector(tmp_path / "run", stop_at=1_899, mode=mode)  # 3 sub-envs: 633 steps
    with CheckpointManager(tmp_path / "run", read_only=True) as mgr:
        assert mgr.all_steps() == [400, 800, 1_200, 1_600]
        assert mgr.metadata(1_600)["gym"]["vector"] == {"num_envs": 3, "not_exact": None}
        assert mgr.metadata(1_600)["gym"]["timesteps"] == 1_602  # first step at or after 1,600
    result, agent = train_vector(tmp_path / "run", mode=mode)
    assert result.resumed_from == 1_600 and result.timesteps == reference.timesteps == 3_000
    assert len(reference.episode_returns) > 20
    assert result.episode_returns == reference.episode_returns
    assert result.episode_lengths == reference.episode_lengths
    assert_same_state(agent.state_dict(), reference_agent.state_dict())


def test_a_vector_env_whose_state_cannot_be_saved_warns_at_save_and_resume(tmp_path):
    """RecordEpisodeStatistics keeps counters the runner does not know: not exact, and said."""
    stats = {"wrappers": [gym.wrappers.RecordEpisodeStatistics]}
    with pytest.warns(UserWarning, match="RecordEpisodeStatistics.*not exact"):
        with pytest.raises(Interrupt):
            train_vector(tmp_path, stop_at=1_899, **stats)
    with pytest.warns(UserWarning, match="timestep 1602 is not exact.*re-seeded and reset"):
        result, _ = train_vector(tmp_path, **stats)
    assert result.resumed_from == 1_600 and result.timesteps == 3_000


def test_checkpoints_are_taken_at_the_first_episode_boundary_after_each_interval(tmp_path):
    record = Record()
    env, agent = make("frozenlake")
    config = RunnerConfig(
        10_500, checkpoint_dir=tmp_path, checkpoint_interval=1_000, max_checkpoints=None
    )
    result = run(env, agent, config, callbacks=[record])
    boundaries = set(np.cumsum(result.episode_lengths).tolist())
    interim = sorted(s for s in record.saved if s != 10_500)
    assert interim == list(range(1_000, 10_001, 1_000))
    for step in interim:
        metrics, meta = record.saved[step]
        timesteps, episodes = meta["timesteps"], meta["episodes"]
        assert timesteps in boundaries
        assert timesteps == sum(result.episode_lengths[:episodes])
        window = result.episode_returns[:episodes][-config.metric_window :]
        assert metrics["episode_return"] == pytest.approx(np.mean(window))
        # the first boundary at or after the interval: no episode ended in [step, timesteps)
        assert not any(step <= b < timesteps for b in boundaries)
    assert record.saved[10_500][1]["final"] and record.saved[10_500][1]["timesteps"] == 10_500
    with CheckpointManager(tmp_path, read_only=True) as mgr:
        assert mgr.all_steps() == [*interim, 10_500]
        assert mgr.info(10_500).format == "tree"


def test_retention_and_best_tracking_survive_a_resume(tmp_path):
    # Ranked by the shortest mean episode, the best is an early step (FrozenLake episodes
    # lengthen as the agent learns to avoid holes) that only the best rule keeps.
    record = Record()
    config = RunnerConfig(
        16_000,
        checkpoint_dir=tmp_path,
        checkpoint_interval=1_000,
        max_checkpoints=2,
        keep_period=5_000,
        best_metric="episode_length",
        best_mode="min",
        metric_window=30,
        resume=True,
    )
    env, agent = make("frozenlake")
    with pytest.raises(Interrupt):
        run(env, agent, config, callbacks=[record, InterruptAt(9_500)])
    before = set(record.saved)
    env, agent = make("frozenlake")
    result = run(env, agent, config, callbacks=[record])
    assert result.resumed_from == 9_000 and set(record.saved) > before

    lengths = {step: metrics["episode_length"] for step, (metrics, _) in record.saved.items()}
    best = min(lengths, key=lambda s: (lengths[s], -s))  # ties: the newer wins
    newest = sorted(lengths)[-2:]
    assert best in before and best not in newest and best % 5_000  # kept by the best rule only
    expected = {*newest, best, *(s for s in lengths if s % 5_000 == 0)}
    reader = CheckpointManager(tmp_path, read_only=True, best_fn="episode_length", best_mode="min")
    with reader as mgr:
        assert mgr.best_step() == best
        assert mgr.all_steps() == sorted(expected)
        assert mgr.metrics(best)["episode_length"] == lengths[best]


def test_resuming_a_complete_run_returns_its_result_without_training(tmp_path):
    config = RunnerConfig(6_000, checkpoint_dir=tmp_path, checkpoint_interval=1_000, resume=True)
    env, agent = make("frozenlake")
    first = run(env, agent, config)
    files = snapshot(tmp_path)

    class NoLearning(TabularQAgent):
        def learn(self, *args: Any) -> Any:
            raise AssertionError("a complete run must not train")

    env = gym.make("FrozenLake-v1")
    again = NoLearning(env.observation_space, env.action_space)
    result = run(env, again, config)
    assert result.was_complete and result.resumed_from == 6_000
    assert result.episode_returns == first.episode_returns
    assert result.episode_lengths == first.episode_lengths
    assert result.timesteps == 6_000
    np.testing.assert_array_equal(again.q, agent.q)  # the final agent is loaded
    assert snapshot(tmp_path) == files

    with pytest.warns(UserWarning, match="complete at 6000 timesteps"):
        shorter = run(
            env,
            NoLearning(env.observation_space, env.action_space),
            RunnerConfig(3_000, checkpoint_dir=tmp_path, resume=True),
        )
    assert shorter.was_complete and shorter.timesteps == 6_000


# A vector run of 2 sub-envs takes 2 timesteps a step: its N is even.
@pytest.mark.parametrize("env_name, before", [("frozenlake", 1_001), ("vector", 1_002)])
def test_raising_total_timesteps_continues_a_finished_run_exactly(env_name, before):
    """A run of N timesteps run again to N+M ends as a straight N+M run, although N is no
    interval step and ends mid-episode (`vector`: a SyncVectorEnv of 2 FrozenLakes)."""
    results: list[RunResult] = []

    def train(directory: Path, total: int) -> dict[str, Any]:
        env, agent = make(env_name)
        config = RunnerConfig(
            total, checkpoint_dir=directory, checkpoint_interval=300, resume=True, seed=5
        )
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # exact: nothing to warn about
            result = run(env, agent, config, progress=False)
        results.append(result)
        return {
            "agent": agent.state_dict(),
            "returns": result.episode_returns,
            "lengths": result.episode_lengths,
            "timesteps": result.timesteps,
        }

    report = check_resume_is_exact(train, steps_before=before, steps_after=700)
    assert report.exact
    _straight, short, continued = results
    assert sum(short.episode_lengths) < before  # an episode was open at the end
    assert continued.resumed_from == before and not continued.was_complete
    assert continued.episodes > short.episodes


def test_continuing_an_own_loop_that_ended_without_its_observation_warns(tmp_path):
    def own_loop(total: int) -> RunResult:
        env, agent = make("frozenlake")
        hook = CkptRunnerHook(RunnerConfig(total, checkpoint_dir=tmp_path, resume=True))
        obs, _ = hook.begin(env, agent)
        while not hook.done:
            action = agent.act(obs, hook.rng)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            metrics = agent.learn(obs, action, reward, next_obs, terminated, truncated)
            obs = next_obs
            if hook.step(reward, terminated, truncated, metrics):
                obs, _ = env.reset()
        return hook.end()  # hook.end(obs) would make a continuation exact

    own_loop(1_001)
    with pytest.warns(UserWarning, match=r"timestep 1001 is not exact: end\(\) was not given"):
        result = own_loop(1_500)
    assert result.resumed_from == 1_001 and result.timesteps == 1_500 and not result.was_complete


def test_a_best_metric_nothing_reports_fails_at_the_first_checkpoint(tmp_path):
    env, agent = make("frozenlake")  # its learn() returns {"td_error": ...}
    config = RunnerConfig(
        3_000, checkpoint_dir=tmp_path, checkpoint_interval=1_000, best_metric="loss"
    )
    with pytest.raises(ValueError) as refused:
        run(env, agent, config, progress=False)
    message = str(refused.value)
    assert "best_metric='loss'" in message and "checkpoint 1000" in message
    assert "'episode_return'" in message and "'td_error'" in message
    assert "HINT: return {'loss': value} from learn()" in message and "save(" not in message
    with CheckpointManager(tmp_path, read_only=True) as mgr:
        assert mgr.all_steps() == []


def test_a_best_metric_not_reported_yet_is_a_warning_in_the_runners_terms(tmp_path):
    class LateLoss(TabularQAgent):
        """Reports its loss only once it has learned for a while, as a DQN does."""

        calls = 0

        def learn(self, *args: Any) -> Any:
            super().learn(*args)
            self.calls += 1
            return {"loss": 1.0 / self.calls} if self.calls > 1_500 else None

    env = gym.make("FrozenLake-v1")
    agent = LateLoss(env.observation_space, env.action_space)
    config = RunnerConfig(
        3_000,
        checkpoint_dir=tmp_path,
        checkpoint_interval=1_000,
        best_metric="loss",
        best_mode="min",
    )
    with pytest.warns(UnrankedStepWarning) as record:
        run(env, agent, config, progress=False)
    messages = [str(w.message) for w in record if issubclass(w.category, UnrankedStepWarning)]
    assert len(messages) == 1 and "save(" not in messages[0], messages
    assert "checkpoint 1000" in messages[0] and "returning it from learn()" in messages[0]
    with CheckpointManager(tmp_path, read_only=True, best_fn="loss", best_mode="min") as mgr:
        assert mgr.best_step() == 3_000


def test_learn_metrics_are_converted_by_the_core_as_they_arrive(tmp_path):
    class Reports(TabularQAgent):
        """Returns numpy scalars, then a string from step 700 on."""

        calls = 0

        def learn(self, *args: Any) -> Any:
            super().learn(*args)
            self.calls += 1
            loss: Any = np.float32(0.5) if self.calls < 700 else "0.5"
            return {"loss": loss, "updates": np.int64(self.calls)}

    env = gym.make("FrozenLake-v1")
    agent = Reports(env.observation_space, env.action_space)
    config = RunnerConfig(1_000, checkpoint_dir=tmp_path, checkpoint_interval=300)
    with pytest.raises(TypeError, match=r"metric 'loss' must be a scalar number.*'0.5' \(str\)"):
        run(env, agent, config, progress=False)
    assert agent.calls == 700  # refused at the step that returned it, not at a checkpoint
    with CheckpointManager(tmp_path, read_only=True) as mgr:
        step = mgr.latest_step()
        assert step == 600 and mgr.metrics(step)["loss"] == 0.5
        assert all(type(v) is float for v in mgr.metrics(step).values())


def test_a_run_that_ends_before_its_first_episode_stores_an_empty_result(tmp_path):
    env, agent = make("frozenlake")
    config = RunnerConfig(
        1, checkpoint_dir=tmp_path, checkpoint_interval=1, resume=True, best_metric="episode_return"
    )
    with pytest.warns(RuntimeWarning, match="episode_return"):  # nothing to rank: the core says so
        first = run(env, agent, config)
    assert first.episodes == 0  # no hole next to FrozenLake's start: one step ends no episode
    env, agent = make("frozenlake")
    again = run(env, agent, config)
    assert again.was_complete and again.episode_returns == [] and again.timesteps == 1


def test_overwrite_deletes_the_old_run_and_starts_over(tmp_path):
    env, agent = make("frozenlake")
    first = run(env, agent, RunnerConfig(6_000, checkpoint_dir=tmp_path, checkpoint_interval=1_000))
    (tmp_path / "notes.txt").write_text("mine")
    env, agent = make("frozenlake")
    config = RunnerConfig(6_000, checkpoint_dir=tmp_path, checkpoint_interval=3_000, overwrite=True)
    second = run(env, agent, config)
    assert second.resumed_from is None and not second.was_complete
    assert second.episode_returns == first.episode_returns  # same seed, trained again
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with CheckpointManager(tmp_path, read_only=True) as mgr:
        assert mgr.all_steps() == [3_000, 6_000] and mgr.is_complete


# ---------------------------------------------------------------- bad input


def test_an_existing_run_without_resume_or_overwrite_is_refused_untouched(tmp_path):
    env, agent = make("frozenlake")
    with pytest.raises(Interrupt):
        run(
            env,
            agent,
            RunnerConfig(5_000, checkpoint_dir=tmp_path, checkpoint_interval=1_000),
            callbacks=[InterruptAt(3_500)],
        )
    files = snapshot(tmp_path)
    env, agent = make("frozenlake")
    with pytest.raises(CheckpointExistsError, match="resume") as excinfo:
        run(env, agent, RunnerConfig(5_000, checkpoint_dir=tmp_path, checkpoint_interval=1_000))
    assert isinstance(excinfo.value, FileExistsError)
    assert str(tmp_path) in str(excinfo.value) and "3000" in str(excinfo.value)
    assert snapshot(tmp_path) == files
    assert not agent.q.any()  # nothing was trained or loaded


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"checkpoint_interval": 0}, "checkpoint_interval=0"),
        ({"checkpoint_interval": -100}, "checkpoint_interval=-100"),
        ({"total_timesteps": 0}, "total_timesteps=0"),
        ({"max_checkpoints": 0}, "max_checkpoints=0"),
        ({"keep_period": 0}, "keep_period=0"),
        ({"seed": -1}, "seed=-1"),
        ({"best_mode": "up"}, "best_mode='up'"),
        ({"resume": True, "overwrite": True}, "resume=True, overwrite=True"),
    ],
)
def test_bad_config_is_a_value_error_with_a_hint(kwargs, match):
    arguments = {"total_timesteps": 1_000, **kwargs}
    with pytest.raises(ValueError, match=match) as excinfo:
        RunnerConfig(**arguments)
    assert "HINT" in str(excinfo.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"checkpoint_interval": 1.5}, "checkpoint_interval=1.5"),
        ({"checkpoint_interval": "200"}, "checkpoint_interval='200'"),
        ({"total_timesteps": "1000"}, "total_timesteps='1000'"),
        ({"max_checkpoints": True}, "max_checkpoints=True"),
    ],
)
def test_a_config_value_of_the_wrong_type_is_a_type_error_with_a_hint(kwargs, match):
    """As everywhere (README, Reliability): a wrong type is a TypeError, a bad value a ValueError."""
    arguments = {"total_timesteps": 1_000, **kwargs}
    with pytest.raises(TypeError, match=match) as excinfo:
        RunnerConfig(**arguments)
    assert "HINT" in str(excinfo.value)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"checkpoint_dir": ""}, ValueError, r"checkpoint_dir='' \(str\)"),
        ({"checkpoint_dir": 5}, ValueError, r"checkpoint_dir=5 \(int\)"),
        ({"resume": "no"}, TypeError, "resume must be True or False"),
        ({"overwrite": 1}, TypeError, "overwrite must be True or False"),
        ({"storage_options": "key=x"}, TypeError, "storage_options must be a dict"),
    ],
)
def test_careless_config_is_refused_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        RunnerConfig(total_timesteps=1_000, **kwargs)


def test_keep_period_off_the_interval_grid_warns():
    with pytest.warns(UserWarning, match="only every 15000 timesteps"):
        RunnerConfig(50_000, checkpoint_interval=3_000, keep_period=5_000)


def test_config_is_frozen():
    config = RunnerConfig(1_000)
    with pytest.raises(AttributeError):
        config.seed = 3
    assert config.checkpoint_dir is None and config.checkpoint_interval == 5_000


def test_an_agent_with_another_state_structure_is_refused_and_nothing_is_lost(tmp_path):
    env, agent = make("cartpole")
    config = RunnerConfig(1_200, checkpoint_dir=tmp_path, checkpoint_interval=300, resume=True)
    with pytest.raises(Interrupt):
        run(env, agent, config, callbacks=[InterruptAt(1_000)])
    files = snapshot(tmp_path)

    env = gym.make("CartPole-v1")
    wider = DQNAgent(env.observation_space, env.action_space, hidden=48, buffer_size=3_000)
    with pytest.raises(StructureMismatchError) as excinfo:
        run(env, wider, config)
    message = str(excinfo.value)
    assert "agent/q/0.weight" in message and "[32, 4]" in message and "[48, 4]" in message
    assert "DQNAgent" in message and "HINT" in message
    assert snapshot(tmp_path) == files

    env, agent = make("cartpole")  # the right agent still resumes
    assert run(env, agent, config).resumed_from == 900


def test_an_env_that_does_not_fit_the_agent_or_the_run_is_refused(tmp_path):
    small = gym.make("FrozenLake-v1")
    large = gym.make("FrozenLake-v1", map_name="8x8")
    with pytest.raises(ValueError, match=r"observation_space: the agent expects Discrete\(16\)"):
        run(large, TabularQAgent(small.observation_space, small.action_space), RunnerConfig(100))

    config = RunnerConfig(3_000, checkpoint_dir=tmp_path, checkpoint_interval=1_000, resume=True)
    with pytest.raises(Interrupt):
        run(
            small,
            TabularQAgent(small.observation_space, small.action_space),
            config,
            callbacks=[InterruptAt(2_500)],
        )
    files = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"Discrete\(16\) in the checkpoints, Discrete\(64\)"):
        run(large, TabularQAgent(large.observation_space, large.action_space), config)
    assert snapshot(tmp_path) == files


def test_async_vector_envs_and_non_agents_are_refused():
    # The type alone is refused, before any use: no worker processes need to start (forking
    # after other tests imported JAX would warn).
    vector = object.__new__(gym.vector.AsyncVectorEnv)
    with pytest.raises(TypeError, match=r"AsyncVectorEnv.*SyncVectorEnv"):
        run(vector, ReplayQAgent(16, 4), RunnerConfig(100))
    env = gym.make("FrozenLake-v1")
    with pytest.raises(TypeError, match="lacks act, learn, state_dict, load_state_dict"):
        run(env, object(), RunnerConfig(100))
    with pytest.raises(TypeError, match="lacks state_dict, load_state_dict"):
        CkptRunnerHook(RunnerConfig(100)).begin(env, object())


def test_the_hook_in_a_users_own_loop_needs_only_state_dict_and_load_state_dict(tmp_path):
    """The user's loop acts and learns itself; the hook only saves and restores the state."""

    class QTable:
        def __init__(self) -> None:
            self.q = np.zeros((16, 4))

        def state_dict(self) -> dict[str, Any]:
            return {"q": self.q}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            np.copyto(self.q, state["q"])

    def train(directory: Path, stop_at: int | None = None) -> tuple[RunResult, QTable]:
        config = RunnerConfig(3_000, checkpoint_dir=directory, checkpoint_interval=500, resume=True)
        env, table = gym.make("FrozenLake-v1"), QTable()
        with CkptRunnerHook(config, callbacks=[InterruptAt(stop_at)] if stop_at else []) as hook:
            obs, _ = hook.begin(env, table)
            while not hook.done:
                action = int(hook.rng.integers(4))
                next_obs, reward, terminated, truncated, _ = env.step(action)
                table.q[obs, action] += 0.1 * (reward - 0.01 + table.q[next_obs].max())
                obs = next_obs
                if hook.step(reward, terminated, truncated):
                    obs, _ = env.reset()
            return hook.end(), table

    reference, reference_table = train(tmp_path / "reference")
    with pytest.raises(Interrupt):
        train(tmp_path / "run", stop_at=1_777)
    result, table = train(tmp_path / "run")
    assert result.resumed_from is not None and 0 < result.resumed_from < 1_777
    assert result.episode_returns == reference.episode_returns
    assert result.episode_lengths == reference.episode_lengths
    np.testing.assert_array_equal(table.q, reference_table.q)


# ---------------------------------------------------------------- progress


def test_progress_bar_is_quiet_off_a_terminal_and_shown_on_request(capfd):
    env, agent = make("frozenlake")
    run(env, agent, RunnerConfig(2_000))
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    env, agent = make("frozenlake")
    run(env, agent, RunnerConfig(2_000), progress=True)
    err = capfd.readouterr().err
    assert "2000/2000" in err and "episodes" in err


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    child_main(sys.argv[2:])


def test_max_bytes_keeps_the_run_within_its_budget(tmp_path):
    config = RunnerConfig(
        total_timesteps=2_000,
        checkpoint_dir=tmp_path / "run",
        checkpoint_interval=200,
        max_checkpoints=None,
        max_bytes="60kB",  # room for two or three steps of about 25 kB
    )
    assert config.max_bytes == 60_000
    env = gym.make("FrozenLake-v1")
    run(env, TabularQAgent(env.observation_space, env.action_space), config)
    with CheckpointManager(tmp_path / "run", read_only=True) as ro:
        assert 2 <= len(ro.all_steps()) < 10  # max_checkpoints=None alone would keep all 10
        assert ro.size_bytes() <= 60_000
    with pytest.raises(ValueError, match="max_bytes"):
        RunnerConfig(total_timesteps=10, max_bytes="12 parsecs")


def test_incremental_checkpoints_share_what_did_not_change_and_resume_alike(tmp_path):
    class WithFrozenFeatures(TabularQAgent):
        """A tabular agent that also carries 4 MiB of features it never changes."""

        def state_dict(self) -> dict[str, Any]:
            features = np.random.default_rng(0).standard_normal((1024, 1024), np.float32)
            return {**super().state_dict(), "features": features}

        def load_state_dict(self, state: Any) -> None:
            super().load_state_dict({k: v for k, v in state.items() if k != "features"})

    env = gym.make("FrozenLake-v1")

    def train(directory: Path, total: int, incremental: bool) -> RunResult:
        config = RunnerConfig(
            total_timesteps=total,
            checkpoint_dir=directory,
            checkpoint_interval=500,
            max_checkpoints=None,
            resume=True,
            incremental=incremental,
        )
        return run(env, WithFrozenFeatures(env.observation_space, env.action_space), config)

    straight = train(tmp_path / "full", 3_000, incremental=False)
    train(tmp_path / "inc", 1_500, incremental=True)
    resumed = train(tmp_path / "inc", 3_000, incremental=True)
    assert resumed.episode_returns == straight.episode_returns
    shards = list((tmp_path / "inc").glob("step_*/arrays-*.safetensors"))
    assert any(p.stat().st_nlink > 1 for p in shards)  # the features: written once, shared
    full = sum(p.stat().st_size for p in (tmp_path / "full").rglob("*") if p.is_file())
    on_disk = {(p.stat().st_dev, p.stat().st_ino): p.stat().st_size for p in shards}
    assert sum(on_disk.values()) < full / 2
