"""Subprocesses of the reliability tests: racing writers and a preemptible training loop.

    python -m tests.reliability.children race DIR GO_FILE RELEASE_FILE
    python -m tests.reliability.children hold DIR
    python -m tests.reliability.children train DIR --steps N [--framework numpy|torch] ...

`train` is a small deterministic training loop (numpy linear regression with momentum, or a
torch MLP with Adam), whose every random number comes from a generator saved in the
checkpoint, so a run that is preempted and resumed ends bit for bit where an uninterrupted
one does. With `--handshake` it waits for a line on stdin after reporting each step, so the
test knows exactly which step a signal arrived after.
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
        preempted = mgr.preemption_signal is not None  # a signal arrived since the last save
        saved = mgr.save(step, state if args.framework == "numpy" else run.state())
        if preempted:
            mgr.close()  # finishes an async save
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
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
