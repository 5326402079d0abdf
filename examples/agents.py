"""Two small example agents for `integrations.gym`: a torch DQN and a numpy tabular Q-learner.

Both follow the `integrations.gym.Agent` protocol, and both keep `state_dict()` fixed in
structure from construction on (a preallocated replay buffer), which is what lets a resumed
run restore a checkpoint into a freshly built agent. Adam's state, which torch creates at
the first step, is the one part the runner fills in by itself on restore.
torch is imported only when a `DQNAgent` is built, so the tabular agent runs without it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np


def linear_schedule(start: float, end: float, duration: int, step: int) -> float:
    """`start` moving linearly to `end` over `duration` steps, then `end`."""
    return start + min(1.0, step / duration) * (end - start)


class TabularQAgent:
    """Epsilon-greedy Q-learning on a table, for discrete observations and actions (FrozenLake).

    Args:
        observation_space: a `Discrete` space of states.
        action_space: a `Discrete` space of actions.
        alpha: learning rate.
        gamma: discount.
        epsilon_start: exploration rate at step 0, decayed linearly ...
        epsilon_end: ... to this ...
        epsilon_decay: ... over this many steps.
    """

    def __init__(
        self,
        observation_space: gym.spaces.Discrete,
        action_space: gym.spaces.Discrete,
        *,
        alpha: float = 0.1,
        gamma: float = 0.99,
        epsilon_start: float = 1.0,
        epsilon_end: float = 0.05,
        epsilon_decay: int = 10_000,
    ) -> None:
        if not isinstance(observation_space, gym.spaces.Discrete) or not isinstance(
            action_space, gym.spaces.Discrete
        ):
            raise TypeError(
                f"TabularQAgent needs Discrete spaces, got {observation_space} and {action_space}. "
                "HINT: use DQNAgent for Box observations."
            )
        self.observation_space = observation_space
        self.action_space = action_space
        self.alpha, self.gamma = alpha, gamma
        self.epsilon_start, self.epsilon_end, self.epsilon_decay = (
            epsilon_start,
            epsilon_end,
            epsilon_decay,
        )
        self.q = np.zeros((int(observation_space.n), int(action_space.n)), dtype=np.float64)
        self.steps = 0

    def epsilon(self) -> float:
        """The current exploration rate."""
        return linear_schedule(self.epsilon_start, self.epsilon_end, self.epsilon_decay, self.steps)

    def act(self, obs: Any, rng: np.random.Generator) -> int:
        """Epsilon-greedy; ties between equally good actions are broken at random."""
        if rng.random() < self.epsilon():
            return int(rng.integers(self.q.shape[1]))
        row = self.q[int(obs)]
        best = np.flatnonzero(row == row.max())
        return int(best[rng.integers(len(best))])

    def learn(
        self,
        obs: Any,
        action: Any,
        reward: float,
        next_obs: Any,
        terminated: bool,
        truncated: bool,
    ) -> Mapping[str, float]:
        """One Q-learning update; bootstraps unless the episode terminated."""
        s, a = int(obs), int(action)
        target = float(reward) + (0.0 if terminated else self.gamma * self.q[int(next_obs)].max())
        td_error = target - self.q[s, a]
        self.q[s, a] += self.alpha * td_error
        self.steps += 1
        return {"td_error": abs(td_error)}

    def state_dict(self) -> dict[str, Any]:
        """The Q table and the step counter (which drives epsilon)."""
        return {"q": self.q, "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a `state_dict()`."""
        np.copyto(self.q, state["q"])
        self.steps = int(state["steps"])


class DQNAgent:
    """DQN with a replay buffer, a target network and Adam, for Box observations (CartPole).

    The replay buffer is preallocated numpy arrays with a cursor; minibatches are sampled
    with the agent's own `torch.Generator`, whose state is part of `state_dict()`.

    Args:
        observation_space: a `Box` space.
        action_space: a `Discrete` space.
        hidden: width of the two hidden layers.
        buffer_size: replay capacity in transitions.
        batch_size: minibatch size.
        gamma: discount.
        lr: Adam learning rate.
        learning_starts: transitions collected before the first update.
        train_every: one gradient step every this many env steps.
        target_update: copy the online network to the target every this many env steps.
        epsilon_start: exploration rate at step 0, decayed linearly ...
        epsilon_end: ... to this ...
        epsilon_decay: ... over this many steps.
        seed: seeds the network initialisation and the minibatch sampler (not the global RNG).
    """

    def __init__(
        self,
        observation_space: gym.spaces.Box,
        action_space: gym.spaces.Discrete,
        *,
        hidden: int = 64,
        buffer_size: int = 10_000,
        batch_size: int = 64,
        gamma: float = 0.99,
        lr: float = 1e-3,
        learning_starts: int = 500,
        train_every: int = 1,
        target_update: int = 250,
        epsilon_start: float = 1.0,
        epsilon_end: float = 0.05,
        epsilon_decay: int = 5_000,
        seed: int = 0,
    ) -> None:
        import torch
        from torch import nn

        self.observation_space = observation_space
        self.action_space = action_space
        obs_dim = int(np.prod(observation_space.shape))
        self.n_actions = int(action_space.n)
        self.batch_size, self.gamma = batch_size, gamma
        self.learning_starts, self.train_every, self.target_update = (
            learning_starts,
            train_every,
            target_update,
        )
        self.epsilon_start, self.epsilon_end, self.epsilon_decay = (
            epsilon_start,
            epsilon_end,
            epsilon_decay,
        )
        # Initialise from `seed` without consuming the process-wide torch generator.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.q = nn.Sequential(
                nn.Linear(obs_dim, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Linear(hidden, self.n_actions),
            )
        self.target = copy.deepcopy(self.q).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.q.parameters(), lr=lr)
        self.sampler = torch.Generator().manual_seed(seed)
        self.replay = {
            "obs": np.zeros((buffer_size, obs_dim), dtype=np.float32),
            "action": np.zeros(buffer_size, dtype=np.int64),
            "reward": np.zeros(buffer_size, dtype=np.float32),
            "next_obs": np.zeros((buffer_size, obs_dim), dtype=np.float32),
            "terminated": np.zeros(buffer_size, dtype=np.float32),
        }
        self.capacity = buffer_size
        self.position = 0  # next slot to write
        self.size = 0  # filled slots
        self.steps = 0

    def epsilon(self) -> float:
        """The current exploration rate."""
        return linear_schedule(self.epsilon_start, self.epsilon_end, self.epsilon_decay, self.steps)

    def act(self, obs: Any, rng: np.random.Generator) -> int:
        """Epsilon-greedy on the online network."""
        import torch

        if rng.random() < self.epsilon():
            return int(rng.integers(self.n_actions))
        with torch.no_grad():
            return int(self.q(torch.as_tensor(obs, dtype=torch.float32)).argmax())

    def learn(
        self,
        obs: Any,
        action: Any,
        reward: float,
        next_obs: Any,
        terminated: bool,
        truncated: bool,
    ) -> Mapping[str, float] | None:
        """Store the transition; every `train_every` steps, one Huber-loss gradient step."""
        import torch
        import torch.nn.functional as F

        i, r = self.position, self.replay
        r["obs"][i], r["action"][i], r["reward"][i] = obs, action, reward
        r["next_obs"][i], r["terminated"][i] = next_obs, float(terminated)
        self.position = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)
        self.steps += 1
        if self.steps % self.target_update == 0:
            self.target.load_state_dict(self.q.state_dict())
        if self.size < self.learning_starts or self.steps % self.train_every:
            return None
        idx = torch.randint(self.size, (self.batch_size,), generator=self.sampler).numpy()
        o, a = torch.from_numpy(r["obs"][idx]), torch.from_numpy(r["action"][idx])
        rew, done = torch.from_numpy(r["reward"][idx]), torch.from_numpy(r["terminated"][idx])
        with torch.no_grad():
            next_q = self.target(torch.from_numpy(r["next_obs"][idx])).max(dim=1).values
            target = rew + self.gamma * (1.0 - done) * next_q
        q = self.q(o).gather(1, a[:, None]).squeeze(1)
        loss = F.smooth_l1_loss(q, target)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    def state_dict(self) -> dict[str, Any]:
        """Networks, optimizer, sampler generator, replay arrays and counters."""
        return {
            "q": self.q.state_dict(),
            "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.get_state(),
            "replay": dict(self.replay),
            "position": self.position,
            "size": self.size,
            "steps": self.steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a `state_dict()` (the replay arrays are copied into the preallocated ones)."""
        self.q.load_state_dict(state["q"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.set_state(state["sampler"])
        for key, array in self.replay.items():
            np.copyto(array, np.asarray(state["replay"][key]))
        self.position, self.size, self.steps = (
            int(state["position"]),
            int(state["size"]),
            int(state["steps"]),
        )
