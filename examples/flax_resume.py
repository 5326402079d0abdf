"""A Flax training loop that survives being killed: run it, kill it, run it again.

    python examples/flax_resume.py --dir runs/flax --steps 300 [--api nnx]
    # stop it (`kill PID` saves the current step and exits; Ctrl-C, SIGKILL or a lost node
    # keep the latest committed step), then start it again with the same command: it resumes
    # from the latest checkpoint and ends with the same weights as an uninterrupted run.

A small MLP with dropout is trained with adam on a synthetic regression problem, in linen
(`--api linen`, the default) or in NNX (`--api nnx`). A resume is exact because the state handed
to `CkptHook` holds everything the next step depends on:

- linen: the `TrainState` (parameters, optimizer state, step) and the loop's PRNG key, which
  draws every step's batch and dropout mask;
- nnx: the model, the optimizer, the `nnx.Rngs` that feeds dropout (kept outside the model),
  the running loss average (`nnx.metrics.Average`), the loop's PRNG key, which draws each
  epoch's data order, and that order; the position within the epoch is derived from the step.

The state is saved every `--every` steps, asynchronously, in orbax format; the three newest and
the best by evaluation loss are kept. `train` is also what a test hands to
`ckpt_core.check_resume_is_exact` to prove the resume exact.
"""

from __future__ import annotations

import argparse
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
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


# ---------------------------------------------------------------------- nnx

BATCH, BATCHES_PER_EPOCH = 64, 8


class NnxMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.hidden = nnx.Linear(16, 64, rngs=rngs)
        self.dropout = nnx.Dropout(0.1)  # no stream of its own: it draws from the call's rngs
        self.out = nnx.Linear(64, 1, rngs=rngs)

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        h = nnx.relu(self.hidden(x))
        return self.out(self.dropout(h, rngs=rngs, deterministic=rngs is None))


def nnx_init_state(seed: int) -> dict[str, Any]:
    model = NnxMLP(nnx.Rngs(params=seed))
    return {
        "model": model,
        "optimizer": nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param),
        "rngs": nnx.Rngs(dropout=seed + 1),  # outside the model: it must be saved too
        "metrics": nnx.metrics.Average(),  # the running loss: training state as well
        "key": jax.random.key(seed + 2),  # the loop's key: each epoch's data order
        "order": jnp.arange(X.shape[0]),  # this epoch's order
    }


@nnx.jit
def nnx_update(
    model: NnxMLP, optimizer: nnx.Optimizer, rngs: nnx.Rngs, metrics: nnx.Metric, idx: jax.Array
) -> jax.Array:
    def loss_fn(model: NnxMLP, rngs: nnx.Rngs) -> jax.Array:
        return jnp.mean((model(X[idx], rngs) - Y[idx]) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model, rngs)
    optimizer.update(model, grads)
    metrics.update(values=loss)
    return loss


def nnx_train_step(state: dict[str, Any], step: int) -> tuple[dict[str, Any], dict[str, Any]]:
    position = step % BATCHES_PER_EPOCH  # derived from the step: nothing to save
    if position == 0:  # a new epoch: a new data order from the loop key
        state["key"], shuffle_key = jax.random.split(state["key"])
        state["order"] = jax.random.permutation(shuffle_key, X.shape[0])
    idx = state["order"][position * BATCH : (position + 1) * BATCH]
    loss = nnx_update(state["model"], state["optimizer"], state["rngs"], state["metrics"], idx)
    return state, {"loss": loss, "mean_loss": state["metrics"].compute()}


@nnx.jit
def nnx_eval_loss(model: NnxMLP) -> jax.Array:
    return jnp.mean((model(X) - Y) ** 2)


# ---------------------------------------------------------------------- the loop

APIS: dict[str, tuple[Callable[[int], Any], Callable[..., Any], Callable[[Any], jax.Array]]] = {
    "linen": (init_state, lambda state, step: train_step(state), eval_loss),
    "nnx": (nnx_init_state, nnx_train_step, lambda state: nnx_eval_loss(state["model"])),
}


def train(
    directory: str | Path,
    total_steps: int,
    *,
    api: str = "linen",
    every: int = 25,
    seed: int = 0,
    step_delay: float = 0.0,
    log: Callable[[str], None] = print,
) -> Any:
    """Train until `total_steps` steps ran in all, resuming from `directory`; return the state."""
    init, step_fn, evaluate = APIS[api]
    hook = CkptHook(
        directory,
        every_n_steps=every,
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
        state = hook.restore_or(init(seed))  # NNX objects are updated in place
        if hook.is_complete and hook.start_step >= total_steps:
            log(f"run in {directory} already complete at step {hook.manager.latest_step()}")
            return state
        if hook.start_step:
            log(f"resumed from step {hook.start_step - 1} in {directory}")
        else:
            log(f"fresh run in {directory}")

        reported = hook.manager.latest_step()
        for step in range(hook.start_step, total_steps):
            state, metrics = step_fn(state, step)
            saving = hook(
                step,
                state,
                metrics=lambda state=state, metrics=metrics: {
                    **metrics,
                    "eval_loss": evaluate(state),
                },
                force=step == total_steps - 1,
            )
            if saving:  # async: committed in the background, reported once durable
                committed = hook.manager.latest_step()
                if committed is not None and committed != reported:
                    log(f"saved step {committed} (committed)")
                    reported = committed
                log(f"saving step {step} (loss {float(metrics['loss']):.4f})")
            if hook.preempted:  # SIGTERM: that step is committed; run again to resume
                log(f"preempted: saved step {step}; stopping")
                return state
            time.sleep(step_delay)
        hook.wait()
        hook.mark_complete()
        log(f"done: {total_steps} steps; best eval_loss at step {hook.manager.best_step()}")
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="runs/flax", help="checkpoint directory")
    parser.add_argument("--steps", type=int, default=300, help="total training steps")
    parser.add_argument("--every", type=int, default=25, help="save every N steps")
    parser.add_argument("--api", choices=sorted(APIS), default="linen", help="flax API")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--step-delay", type=float, default=0.02, help="seconds of sleep per step, to be killable"
    )
    args = parser.parse_args()
    train(
        args.dir,
        args.steps,
        api=args.api,
        every=args.every,
        seed=args.seed,
        step_delay=args.step_delay,
        log=lambda line: print(line, flush=True),
    )


if __name__ == "__main__":
    main()
