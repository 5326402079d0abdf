"""A Flax training loop that survives being killed: run it, kill it, run it again.

    python examples/flax_resume.py --dir runs/flax --steps 300
    # stop it (`kill PID` saves the current step and exits; Ctrl-C, SIGKILL or a lost node
    # keep the latest committed step), then start it again with the same command: it resumes from the latest checkpoint and ends with the same weights as an
    # uninterrupted run.

A small linen MLP with dropout is trained with adam on a synthetic regression problem. The
training state (`TrainState` plus the PRNG key that drives data order and dropout) is saved
every `--every` steps with `CkptHook`, asynchronously, in orbax format; the three newest and
the best by evaluation loss are kept.
"""

from __future__ import annotations

import argparse
import signal
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from integrations.flax import CkptHook


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.relu(nn.Dense(64)(x))
        x = nn.Dropout(0.1, deterministic=not train)(x)
        return nn.Dense(1)(x)


def make_data() -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 16)).astype(np.float32)
    y = np.sin(x @ rng.normal(size=(16, 1))).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(y)


X, Y = make_data()


def init_state(seed: int) -> dict[str, Any]:
    model = MLP()
    params = model.init(jax.random.key(seed), X[:1], train=False)["params"]
    ts = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(3e-3))
    return {"train": ts, "key": jax.random.key(seed + 1)}


@jax.jit
def train_step(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    key, data_key, dropout_key = jax.random.split(state["key"], 3)
    idx = jax.random.choice(data_key, X.shape[0], (64,), replace=False)
    ts = state["train"]

    def loss_fn(params: Any) -> jax.Array:
        pred = ts.apply_fn({"params": params}, X[idx], train=True, rngs={"dropout": dropout_key})
        return jnp.mean((pred - Y[idx]) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(ts.params)
    return {"train": ts.apply_gradients(grads=grads), "key": key}, {"loss": loss}


@jax.jit
def eval_loss(state: dict[str, Any]) -> jax.Array:
    ts = state["train"]
    return jnp.mean((ts.apply_fn({"params": ts.params}, X, train=False) - Y) ** 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="runs/flax", help="checkpoint directory")
    parser.add_argument("--steps", type=int, default=300, help="total training steps")
    parser.add_argument("--every", type=int, default=25, help="save every N steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--step-delay", type=float, default=0.02, help="seconds of sleep per step, to be killable"
    )
    args = parser.parse_args()

    hook = CkptHook(
        args.dir,
        every_n_steps=args.every,
        max_to_keep=3,
        best_fn="eval_loss",
        best_mode="min",
        resume=True,
        async_save=True,
        # A polite preemption (SIGTERM) saves the next step, then the loop stops (below);
        # SIGKILL loses only the work since the last commit.
        save_on_signals=(signal.SIGTERM,),
    )
    with hook:
        if hook.is_complete:
            print(f"run in {args.dir} already complete at step {hook.manager.latest_step()}")
            return
        state = hook.restore_or(init_state(args.seed))
        if hook.start_step:
            print(f"resumed from step {hook.start_step - 1} in {args.dir}", flush=True)
        else:
            print(f"fresh run in {args.dir}", flush=True)

        reported = hook.manager.latest_step()
        for step in range(hook.start_step, args.steps):
            state, metrics = train_step(state)
            last = step == args.steps - 1
            saving = hook(
                step,
                state,
                metrics=lambda state=state, metrics=metrics: {
                    **metrics,
                    "eval_loss": eval_loss(state),
                },
                force=last,
            )
            if saving:  # async: committed in the background, reported once durable
                committed = hook.manager.latest_step()
                if committed is not None and committed != reported:
                    print(f"saved step {committed} (committed)", flush=True)
                    reported = committed
                print(f"saving step {step} (loss {float(metrics['loss']):.4f})", flush=True)
            if hook.preempted:  # SIGTERM: that step is committed; run again to resume
                print(f"preempted: saved step {step}; stopping", flush=True)
                return
            time.sleep(args.step_delay)
        hook.wait()
        hook.mark_complete()
        best = hook.manager.best_step()
        print(f"done: {args.steps} steps; best eval_loss at step {best}", flush=True)


if __name__ == "__main__":
    main()
