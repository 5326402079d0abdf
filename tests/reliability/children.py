"""Subprocesses of the reliability tests: racing writers and a preemptible training loop.

    python -m tests.reliability.children race DIR GO_FILE RELEASE_FILE
    python -m tests.reliability.children hold DIR
    python -m tests.reliability.children train DIR --steps N [--framework numpy|torch] ...
    python -m tests.reliability.children flax|gym|lightning DIR --steps N --wait-at K ...

`train` is a small deterministic training loop (numpy linear regression with momentum, or a
torch MLP with Adam), whose every random number comes from a generator saved in the
checkpoint, so a run that is preempted and resumed ends bit for bit where an uninterrupted
one does. With `--handshake` it waits for a line on stdin after reporting each step, so the
test knows exactly which step a signal arrived after. The adapter children (`flax`, `gym`,
`lightning`) say "ready K" once, at step K, and wait for one line: the test sends the signal
meanwhile. Every child stops by itself after the save a signal triggered (`preempted`) and
exits with status 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any

import numpy as np

DIM = 16
BATCH = 32


def _say(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------- writers


def race(directory: str, go_file: str, release_file: str) -> None:
    """Wait for GO_FILE, try to open DIR for writing; the winner holds it until RELEASE_FILE."""
    from ckpt_core import CheckpointLockedError, CheckpointManager

    _say("ready")
    deadline = time.monotonic() + 120
    while not os.path.exists(go_file):
        if time.monotonic() > deadline:
            return
        time.sleep(0.001)
    try:
        mgr = CheckpointManager(directory, on_existing="resume")
    except CheckpointLockedError as e:
        _say(f"LOCKED {' '.join(str(e).split())}")
        return
    _say(f"WON {os.getpid()}")
    deadline = time.monotonic() + 120  # never outlive a test that failed before releasing
    while not os.path.exists(release_file) and time.monotonic() < deadline:
        time.sleep(0.005)
    mgr.save((mgr.latest_step() or 0) + 1, {"pid": np.array([os.getpid()])})
    mgr.close()


def hold(directory: str) -> None:
    """Open DIR for writing, start a large async save, say so, and wait to be killed."""
    from ckpt_core import CheckpointManager

    mgr = CheckpointManager(directory, on_existing="resume", async_save=True, max_to_keep=2)
    step = (mgr.latest_step() or 0) + 1
    mgr.save(step, {"w": np.full(1 << 21, step, np.float32), "step": step})
    _say(f"holding {os.getpid()}")
    time.sleep(120)


# ---------------------------------------------------------------- training


def numpy_init(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "w": np.zeros(DIM),
        "v": np.zeros(DIM),
        "w_true": rng.standard_normal(DIM),
        "rng": rng.bit_generator.state,
    }


def numpy_step(state: dict[str, Any]) -> dict[str, Any]:
    rng = np.random.default_rng()
    rng.bit_generator.state = state["rng"]
    x = rng.standard_normal((BATCH, DIM))
    y = x @ state["w_true"] + 0.1 * rng.standard_normal(BATCH)
    grad = x.T @ (x @ state["w"] - y) / BATCH
    v = 0.9 * state["v"] + grad
    return {**state, "w": state["w"] - 0.01 * v, "v": v, "rng": rng.bit_generator.state}


class TorchRun:
    """A tiny MLP trained with Adam on batches drawn from a saved torch.Generator."""

    def __init__(self, seed: int) -> None:
        import torch

        torch.manual_seed(seed)
        self.torch = torch
        self.model = torch.nn.Sequential(
            torch.nn.Linear(DIM, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)
        )
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-2)
        self.gen = torch.Generator().manual_seed(seed + 1)

    def step(self) -> None:
        x = self.torch.randn(BATCH, DIM, generator=self.gen)
        y = x.sum(dim=1, keepdim=True).sin()
        loss = ((self.model(x) - y) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "gen": self.gen.get_state(),
        }

    def load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])

    def weights(self) -> np.ndarray:
        return np.concatenate([p.detach().numpy().ravel() for p in self.model.parameters()])


def reference_numpy(steps: int, seed: int = 0) -> dict[str, Any]:
    """The numpy run's state after `steps` steps, computed in one go."""
    state = numpy_init(seed)
    for _ in range(steps):
        state = numpy_step(state)
    return state


def train(args: argparse.Namespace) -> None:
    from ckpt_core import CheckpointManager

    mgr = CheckpointManager(
        args.dir,
        save_interval_steps=args.every,
        save_on_signals=(signal.SIGTERM,),
        on_existing="resume",
        async_save=args.mode == "async",
        max_to_keep=3,
    )
    start = 0
    if args.framework == "numpy":
        state = numpy_init(args.seed)
        if mgr.resuming:
            state = mgr.restore(like=state)
    else:
        run = TorchRun(args.seed)
        if mgr.resuming:
            run.load(mgr.restore())
    if mgr.resuming:
        start = mgr.latest_step() + 1
        _say(f"resumed from {mgr.latest_step()}")
    for step in range(start, args.steps):
        if args.framework == "numpy":
            state = numpy_step(state)
        else:
            run.step()
        saved = mgr.save(step, state if args.framework == "numpy" else run.state())
        if mgr.preempted:  # the save a signal triggered is committed: stop
            mgr.close()
            _say(f"preempted {step} saved={saved}")
            return
        _say(f"step {step}")
        if args.handshake:
            sys.stdin.readline()
    if mgr.latest_step() != args.steps - 1:
        mgr.save(args.steps - 1, state if args.framework == "numpy" else run.state(), force=True)
    mgr.mark_complete()
    mgr.close()
    if args.out:
        np.save(args.out, state["w"] if args.framework == "numpy" else run.weights())
    _say("done")


def _wait_at(step: int, at: int) -> None:
    """At step `at`, say so and wait for the test's line (it signals us meanwhile)."""
    if step == at:
        _say(f"ready {step}")
        sys.stdin.readline()


def flax_train(args: argparse.Namespace) -> None:
    """A plain JAX loop with `CkptHook`; the state after step s is w == s + 1."""
    import jax.numpy as jnp

    from integrations.flax import CkptHook

    hook = CkptHook(
        args.dir,
        every_n_steps=1000,
        resume=True,
        async_save=args.mode == "async",
        save_on_signals=signal.SIGTERM,  # a single signal is accepted too
    )
    state = hook.restore_or({"w": jnp.zeros(4), "b": jnp.float32(0)})
    if hook.start_step:
        _say(f"resumed from {hook.start_step - 1} w={float(state['w'][0])}")
    for step in range(hook.start_step, args.steps):
        state = {"w": state["w"] + 1, "b": state["b"] - 1}
        hook(step, state)
        if hook.preempted:
            hook.close()
            _say(f"preempted {step}")
            return
        _wait_at(step, args.wait_at)
    hook.save(args.steps - 1, state)
    hook.mark_complete()
    hook.close()
    _say("done")


def gym_train(args: argparse.Namespace) -> None:
    """`integrations.gym.run` on FrozenLake with a tabular agent (no torch)."""
    import gymnasium as gym

    from examples.agents import TabularQAgent
    from integrations.gym import RunnerCallback, RunnerConfig, run

    class WaitAt(RunnerCallback):
        def on_step(self, hook: Any) -> None:
            _wait_at(hook.timesteps, args.wait_at)

    env = gym.make("FrozenLake-v1")
    agent = TabularQAgent(env.observation_space, env.action_space, epsilon_decay=2_000)
    config = RunnerConfig(
        args.steps,
        checkpoint_dir=args.dir,
        checkpoint_interval=1_000_000,  # only the preemption and the final step save
        resume=True,
        save_on_signals=(signal.SIGTERM,),
    )
    result = run(env, agent, config, callbacks=[WaitAt()], progress=False)
    if result.resumed_from is not None:
        _say(f"resumed from {result.resumed_from}")
    _say(f"returns {sum(result.episode_returns)} episodes {result.episodes}")
    _say(f"preempted {result.timesteps}" if result.preempted else "done")


def lightning_train(args: argparse.Namespace) -> None:
    """`Trainer.fit` of a tiny regression with `CkptCallback(save_on_signals=...)`."""
    import torch
    from lightning.pytorch import Callback, LightningModule, Trainer

    from integrations.lightning import CkptCallback

    class Tiny(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class WaitAt(Callback):
        def on_train_batch_end(self, trainer: Any, *_: Any) -> None:
            _wait_at(trainer.global_step, args.wait_at)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=4)  # 8 batches an epoch
    signum = getattr(signal, args.signal)
    cb = CkptCallback(
        args.dir,
        every_n_epochs=1000,
        resume=True,
        async_save=args.mode == "async",
        save_on_signals=(signum,),
    )
    trainer = Trainer(
        max_steps=args.steps,
        callbacks=[WaitAt(), cb],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=True,
        num_sanity_val_steps=0,
        default_root_dir=args.dir,
    )
    try:
        trainer.fit(Tiny(), loader)
    finally:  # SIGTERM: Lightning raises its SIGTERMException (exit status 0) after our save
        if cb.resumed_step is not None:
            _say(f"resumed from {cb.resumed_step}")
        _say(f"preempted {trainer.global_step}" if cb.preempted else "done")


def main(argv: list[str]) -> None:
    command, rest = argv[0], argv[1:]
    if command == "race":
        race(*rest)
    elif command == "hold":
        hold(*rest)
    elif command == "train":
        p = argparse.ArgumentParser()
        p.add_argument("dir")
        p.add_argument("--steps", type=int, required=True)
        p.add_argument("--every", type=int, default=1000)
        p.add_argument("--framework", choices=("numpy", "torch"), default="numpy")
        p.add_argument("--mode", choices=("sync", "async"), default="sync")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--handshake", action="store_true")
        p.add_argument("--out", help="where to np.save the final weights")
        train(p.parse_args(rest))
    elif command in ("flax", "gym", "lightning"):
        p = argparse.ArgumentParser()
        p.add_argument("dir")
        p.add_argument("--steps", type=int, required=True)
        p.add_argument("--wait-at", type=int, default=-1)
        p.add_argument("--mode", choices=("sync", "async"), default="sync")
        p.add_argument("--signal", default="SIGTERM")
        {"flax": flax_train, "gym": gym_train, "lightning": lightning_train}[command](
            p.parse_args(rest)
        )
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
