"""A small numpy training loop that survives being killed: run it, kill it, run it again.

    python examples/quickstart.py --dir runs/quickstart --steps 200

Linear regression trained with SGD + momentum. Every 10 steps the model, the optimizer and the
data RNG are checkpointed; a restarted run continues from the latest step and ends with exactly
the weights an uninterrupted run would have.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ckpt_core import CheckpointManager

FEATURES = 32


def initial_state(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "weights": np.zeros(FEATURES),
        "momentum": np.zeros(FEATURES),
        "true_weights": rng.standard_normal(FEATURES),
    }


def train_step(state: dict, rng: np.random.Generator, lr: float = 0.05) -> float:
    x = rng.standard_normal((64, FEATURES))
    y = x @ state["true_weights"] + 0.1 * rng.standard_normal(64)
    err = x @ state["weights"] - y
    grad = x.T @ err / len(y)
    state["momentum"] = 0.9 * state["momentum"] + grad
    state["weights"] = state["weights"] - lr * state["momentum"]
    return float(np.mean(err**2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="runs/quickstart")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--step-delay", type=float, default=0.01, help="seconds per step")
    args = parser.parse_args()

    with CheckpointManager(
        args.dir,
        max_to_keep=3,
        keep_period=50,
        best_fn="loss",
        save_interval_steps=10,
        on_existing="resume",
    ) as mgr:
        if mgr.resuming:
            checkpoint = mgr.restore()
            state, rng = checkpoint["model"], np.random.default_rng()
            rng.bit_generator.state = checkpoint["rng"]
            start = mgr.latest_step() + 1
            print(f"resumed from step {mgr.latest_step()}", flush=True)
        else:
            state, rng, start = initial_state(0), np.random.default_rng(1), 0
            print("fresh start", flush=True)
        for step in range(start, args.steps):
            loss = train_step(state, rng)
            if mgr.should_save(step):
                # The generator's state is a plain dict of ints: it goes into the same tree.
                mgr.save(
                    step, {"model": state, "rng": rng.bit_generator.state}, metrics={"loss": loss}
                )
                print(f"saved step {step} loss={loss:.4f}", flush=True)
            time.sleep(args.step_delay)
        mgr.mark_complete()
        print(f"done: latest step {mgr.latest_step()}, best step {mgr.best_step()}")
        for step in mgr.all_steps():
            info = mgr.info(step)
            print(
                f"  step {step:4d}  loss={info.metrics['loss']:.4f}  kept: {', '.join(info.kept_because)}"
            )


if __name__ == "__main__":
    main()
