"""`check_resume_is_exact` on the three adapters' real loops, and its leaf comparison per framework.

Each adapter's loop is run straight through and interrupted then resumed, by the public helper
a user would call in their own test; a loop that leaves a random stream out is caught and its
leaves named. The Flax hook's warning about an `nnx.Rngs` left out of the state is tested here
too, as it is the case the helper catches.
"""

from __future__ import annotations

import functools
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch.utils.data import DataLoader, TensorDataset

from ckpt_core import ResumeNotExactError, check_resume_is_exact
from ckpt_core.exactness import _compare, _host_leaves
from integrations.flax import CkptHook
from integrations.gym import RunnerConfig, run
from integrations.lightning import CkptCallback

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import flax_resume  # noqa: E402
from agents import TabularQAgent  # noqa: E402

# ---------------------------------------------------------------------- leaf comparison


def differences(a: Any, b: Any) -> list[str]:
    return _compare(_host_leaves(a), _host_leaves(b))


def test_equal_leaves_of_every_kind_compare_equal():
    def tree() -> dict[str, Any]:
        return {
            "np": np.arange(6, dtype=np.float32).reshape(2, 3),
            "torch": {"w": torch.arange(4.0), "bf16": torch.ones(3, dtype=torch.bfloat16)},
            "flag": torch.tensor(True),
            "jax": jnp.linspace(0, 1, 5),
            "key": jax.random.key(3),
            "raw_key": jax.random.PRNGKey(3),
            "scalars": [1, 2.5, float("nan"), True, "adam", None],
        }

    assert differences(tree(), tree()) == []


@pytest.mark.parametrize(
    "a, b, why",
    [
        (np.float32([1, 2, 3]), np.float32([1, 2, 4]), "x: 1 of 3 elements differ"),
        (torch.zeros(2, 2), torch.tensor([[0.0, -0.0], [0.0, 0.0]]), "x: 1 of 4 elements differ"),
        (
            torch.ones(2, dtype=torch.bfloat16),
            torch.ones(2, dtype=torch.float32),
            "x: torch float32[2] resumed, torch bfloat16[2] uninterrupted",
        ),
        (torch.arange(3), np.arange(3), "x: numpy int64[3] resumed, torch int64[3] uninterrupted"),
        (jax.random.key(0), jax.random.key(1), "x: 1 of 2 elements differ"),
        (jnp.zeros((2, 3)), jnp.zeros((3, 2)), "x: jax float32[3, 2] resumed, jax float32[2, 3]"),
        (1, True, "x: bool True resumed, int 1 uninterrupted"),
        (0.1, math.nextafter(0.1, 1), "x: float 0.10000000000000002 resumed, float 0.1 uninte"),
    ],
    ids=["numpy", "torch-signed-zero", "torch-dtype", "kind", "typed-key", "shape", "bool", "ulp"],
)
def test_each_difference_is_named_with_its_path(a, b, why):
    got = differences({"x": a}, {"x": b})
    assert len(got) == 1 and got[0].startswith(why), got


def test_missing_and_extra_leaves_are_named():
    got = differences({"a": np.zeros(1), "b": 1}, {"a": np.zeros(1), "c": 1})
    assert got == ["b: missing from the resumed run", "c: only in the resumed run"]


# ---------------------------------------------------------------------- Flax (nnx)

X = jnp.asarray(np.random.default_rng(0).normal(size=(32, 4)), dtype=jnp.float32)
Y = jnp.sin(X.sum(axis=1, keepdims=True))


class DropoutMLP(nnx.Module):
    """Its Dropout has no stream of its own: it draws from the `nnx.Rngs` passed at call time."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.hidden = nnx.Linear(4, 16, rngs=rngs)
        self.drop = nnx.Dropout(0.3)
        self.out = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, x: jax.Array, rngs: nnx.Rngs) -> jax.Array:
        return self.out(self.drop(nnx.relu(self.hidden(x)), rngs=rngs))


@nnx.jit
def nnx_step(model: DropoutMLP, optimizer: nnx.Optimizer, rngs: nnx.Rngs, step: jax.Array) -> Any:
    # The data order is derived from the step, so it needs nothing saved.
    order_key = jax.random.fold_in(jax.random.key(2), step)
    idx = jax.random.permutation(order_key, X.shape[0])[:8]

    def loss_fn(m: DropoutMLP, rngs: nnx.Rngs) -> jax.Array:
        return jnp.mean((m(X[idx], rngs) - Y[idx]) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model, rngs)
    optimizer.update(model, grads)
    return loss


def nnx_loop_that_leaves_its_rngs_out(directory: Path, total_steps: int) -> Any:
    model = DropoutMLP(nnx.Rngs(params=0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    rngs = nnx.Rngs(dropout=1)
    state = {"model": model, "optimizer": optimizer}  # no `rngs`: the dropout stream is lost
    with CkptHook(directory, every_n_steps=3, resume=True) as hook:
        hook.restore_or(state)
        for step in range(hook.start_step, total_steps):
            nnx_step(model, optimizer, rngs, step)
            hook(step, state, force=step == total_steps - 1)
    return {**state, "rngs": rngs}


def test_flax_nnx_loop_that_leaves_its_rngs_out_is_caught_and_warned_about():
    with pytest.warns(RuntimeWarning, match=r"'model/drop' is an nnx.Dropout \(rate 0.3\)"):
        with pytest.raises(ResumeNotExactError) as caught:
            check_resume_is_exact(nnx_loop_that_leaves_its_rngs_out, steps_before=4, steps_after=3)
    named = [d.split(":")[0] for d in caught.value.report.differences]
    assert "model/hidden/kernel" in named and "rngs/dropout/count" in named


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_the_flax_example_resumes_exactly(api):
    """The example's state holds its Rngs and keys: exact, and nothing to warn about."""
    train = functools.partial(flax_resume.train, api=api, every=4, log=lambda line: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        report = check_resume_is_exact(train, steps_before=10, steps_after=7)
    assert report.exact and report.leaves > 10


# ---------------------------------------------------------------------- Gymnasium


def gym_loop(directory: Path, total_steps: int) -> Any:
    """A run of `total_steps`: the resume raises `total_timesteps` on a finished run."""
    env = gym.make("FrozenLake-v1")
    agent = TabularQAgent(env.observation_space, env.action_space, epsilon_decay=2_000)
    config = RunnerConfig(
        total_steps, checkpoint_dir=directory, checkpoint_interval=300, resume=True, seed=3
    )
    result = run(env, agent, config, progress=False)
    return {"agent": agent, "returns": result.episode_returns, "lengths": result.episode_lengths}


def test_gym_run_resumes_exactly():
    # 1_001 is no interval step, and the run ends mid-episode there.
    report = check_resume_is_exact(gym_loop, steps_before=1_001, steps_after=700)
    assert report.exact and report.leaves > 100  # the Q table, steps, every episode


# ---------------------------------------------------------------------- Lightning


class DropoutRegressor(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1)
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


LIGHTNING_BATCHES = 4  # per epoch: 16 samples, batch_size=4


def lightning_loop(directory: Path, total_steps: int, *, then_max_epochs: int = 0) -> Any:
    """A run of `max_steps=total_steps`, or of `max_epochs` when `total_steps` reaches that
    many epochs' steps (`then_max_epochs`)."""
    seed_everything(0, verbose=False)
    model = DropoutRegressor()
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4, shuffle=True)
    callbacks: list[Callback] = [CkptCallback(directory, every_n_epochs=1, resume=True)]
    stop = {"max_steps": total_steps}
    if then_max_epochs and total_steps >= then_max_epochs * LIGHTNING_BATCHES:
        stop = {"max_epochs": then_max_epochs}
    trainer = Trainer(
        **stop,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(model, train_dataloaders=loader)
    return {"model": model, "optimizer": trainer.optimizers[0]}


@pytest.mark.parametrize(
    "before, after, then_max_epochs",
    [(8, 8, 0), (6, 6, 0), (6, 6, 3)],
    ids=["max_steps-at-epoch-end", "max_steps-mid-epoch", "max_steps-then-max_epochs"],
)
def test_lightning_continues_a_finished_fit_exactly(before, after, then_max_epochs):
    """A fit that `max_steps` ended, run again with a larger `max_steps` (or `max_epochs`),
    continues where it ended: at an epoch end, or mid-epoch (4 batches per epoch)."""
    train = functools.partial(lightning_loop, then_max_epochs=then_max_epochs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on workers
        report = check_resume_is_exact(train, steps_before=before, steps_after=after)
    assert report.exact and report.leaves > 16  # weights, Adam's state, its param groups
