"""Tests of `integrations.flax.CkptHook` with real jax, flax (linen and nnx), optax and orbax on CPU.

Runs that must be killed, or need several fake CPU devices (`XLA_FLAGS` is read once, at jax
import), run this file as a script in a subprocess: see `_main` at the bottom.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from flax.training import train_state

from ckpt_core import CheckpointExistsError, StructureMismatchError
from integrations.flax import CkptHook

REPO = Path(__file__).resolve().parents[2]

# A fixed regression problem: 64 samples of 8 features.
_DATA_RNG = np.random.default_rng(0)
X = jnp.asarray(_DATA_RNG.normal(size=(64, 8)), dtype=jnp.float32)
Y = jnp.asarray(_DATA_RNG.normal(size=(64, 1)), dtype=jnp.float32)
BATCH = 16


# ---------------------------------------------------------------------- linen training


class LinenMLP(nn.Module):
    hidden: int = 16

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.relu(nn.Dense(self.hidden)(x))
        x = nn.Dropout(0.3, deterministic=not train)(x)
        return nn.Dense(1)(x)


def linen_init(seed: int = 0, hidden: int = 16) -> dict[str, Any]:
    """A TrainState with adam and the raw PRNGKey that drives data order and dropout."""
    model = LinenMLP(hidden)
    params = model.init(jax.random.PRNGKey(seed), X[:1], train=False)["params"]
    ts = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(1e-2))
    return {"train": ts, "key": jax.random.PRNGKey(seed + 1)}


@jax.jit
def linen_step(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    key, data_key, dropout_key = jax.random.split(state["key"], 3)
    idx = jax.random.permutation(data_key, X.shape[0])[:BATCH]
    ts = state["train"]

    def loss_fn(params: Any) -> jax.Array:
        pred = ts.apply_fn({"params": params}, X[idx], train=True, rngs={"dropout": dropout_key})
        return jnp.mean((pred - Y[idx]) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(ts.params)
    return {"train": ts.apply_gradients(grads=grads), "key": key}, {"loss": loss}


# ---------------------------------------------------------------------- nnx training


class NnxMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, hidden: int = 16) -> None:
        self.l1 = nnx.Linear(8, hidden, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.l2 = nnx.Linear(hidden, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.l2(self.drop(nnx.relu(self.l1(x))))


def nnx_init(seed: int = 0) -> tuple[NnxMLP, nnx.Optimizer, dict[str, jax.Array]]:
    """Model (its dropout stream inside), adam optimizer, and a typed key for data order."""
    model = NnxMLP(nnx.Rngs(params=seed, dropout=seed + 1))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    return model, optimizer, {"data_key": jax.random.key(seed + 2)}


@nnx.jit
def nnx_step(model: NnxMLP, optimizer: nnx.Optimizer, key: jax.Array) -> tuple[jax.Array, Any]:
    key, data_key = jax.random.split(key)
    idx = jax.random.permutation(data_key, X.shape[0])[:BATCH]

    def loss_fn(m: NnxMLP) -> jax.Array:
        return jnp.mean((m(X[idx]) - Y[idx]) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return key, loss


# ---------------------------------------------------------------------- a resumable run


def train(
    kind: str,
    directory: Path,
    steps: int,
    *,
    every: int = 5,
    async_save: bool = False,
    marker: Path | None = None,
    marker_after: int = -1,
) -> list[np.ndarray]:
    """Train `steps` steps with checkpointing and resume; return the final leaves on host.

    With `marker`, after step `marker_after` the run waits for its saves, writes the marker
    and goes on slowly, so that a test can SIGKILL it in the middle of the run.
    """
    hook = CkptHook(
        directory, every_n_steps=every, max_to_keep=3, resume=True, async_save=async_save
    )
    if kind == "linen":
        state = hook.restore_or(linen_init())
    else:
        model, optimizer, extra = nnx_init()
        restored = hook.restore_or((model, optimizer, extra))
        # NNX objects are updated in place and handed back as the same objects.
        assert restored[0] is model and restored[1] is optimizer
        extra = restored[2]
    for step in range(hook.start_step, steps):
        if kind == "linen":
            state, metrics = linen_step(state)
        else:
            extra["data_key"], loss = nnx_step(model, optimizer, extra["data_key"])
            state, metrics = (model, optimizer, extra), {"loss": loss}
        hook(step, state, metrics=metrics, force=step == steps - 1)
        if marker is not None and step >= marker_after:
            if not marker.exists():
                hook.wait()
                marker.write_text(str(step))
            time.sleep(0.2)
    hook.close()
    if kind == "nnx":
        state = (nnx.state(model), nnx.state(optimizer), extra)
    return [np.asarray(jax.random.key_data(x) if _is_key(x) else x) for x in jax.tree.leaves(state)]


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _script(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def _env(devices: int | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["JAX_PLATFORMS"] = "cpu"
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _run_script(*args: str, devices: int | None = None, timeout: float = 60) -> None:
    proc = subprocess.run(
        _script(*args), env=_env(devices), cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"


# ---------------------------------------------------------------------- exactness


@pytest.mark.parametrize(("kind", "async_save"), [("linen", True), ("nnx", False)])
def test_killed_and_resumed_run_is_bit_exact(tmp_path: Path, kind: str, async_save: bool) -> None:
    steps = 30
    expected = train(kind, tmp_path / "straight", steps)

    run_dir, marker = tmp_path / "killed", tmp_path / "marker"
    proc = subprocess.Popen(
        _script("train", kind, str(run_dir), str(steps), str(int(async_save)), str(marker)),
        env=_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the training subprocess never reached step 12"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    probe = CkptHook(run_dir, every_n_steps=5, resume=True)
    latest = probe.manager.latest_step()
    probe.close()
    # Killed after step 12 committed (a wait at the marker), before the end.
    assert latest is not None and 10 <= latest < steps - 1

    resumed = train(kind, run_dir, steps, async_save=async_save)
    assert len(resumed) == len(expected)
    for got, want in zip(resumed, expected):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()


# ---------------------------------------------------------------------- best and retention


@pytest.mark.parametrize("async_save", [False, True])
def test_best_fn_eval_loss_and_retention(tmp_path: Path, async_save: bool) -> None:
    state = linen_init()
    calls: list[int] = []

    def evaluate(step: int) -> dict[str, jax.Array]:
        calls.append(step)
        # Lowest at step 6, an old step that only best tracking keeps.
        return {"eval_loss": jnp.abs(jnp.float32(step - 6)) + 0.5, "step_seen": jnp.int32(step)}

    with CkptHook(
        tmp_path,
        every_n_steps=2,
        max_to_keep=2,
        keep_period=8,
        best_fn="eval_loss",
        best_mode="min",
        keep_best=1,
        async_save=async_save,
    ) as hook:
        for step in range(20):
            state, _ = linen_step(state)
            saved = hook(step, state, metrics=lambda step=step: evaluate(step))
            assert saved == (step % 2 == 0)
        mgr = hook.manager
    # The evaluation ran only on the steps that saved.
    assert calls == list(range(0, 20, 2))
    assert mgr.all_steps() == [0, 6, 8, 16, 18]
    assert mgr.best_step() == 6
    assert mgr.latest_step() == 18
    assert mgr.metrics(6) == {"eval_loss": 0.5, "step_seen": 6.0}
    assert all(type(v) is float for v in mgr.metrics(6).values())

    reader = CkptHook(tmp_path, resume=True, best_fn="eval_loss")
    best = reader.restore(linen_init(), step="best")
    assert int(best["train"].step) == 7  # the state after the loop body of step 6
    assert reader.start_step == 19
    reader.close()


def test_max_bytes_keeps_an_orbax_run_within_its_budget(tmp_path: Path) -> None:
    def states() -> list[Any]:
        state, out = linen_init(), []
        for _ in range(8):
            state, _ = linen_step(state)
            out.append(state)
        return out

    with CkptHook(tmp_path / "unbudgeted", max_to_keep=None) as hook:
        for step, state in enumerate(states()):
            hook(step, state)
        hook.manager.wait()
        largest = max(hook.manager.info(s).bytes for s in hook.manager.all_steps())
    budget = int(2.5 * largest)  # orbax steps differ in size a little: two always fit
    with CkptHook(tmp_path / "run", max_to_keep=None, best_fn="loss", max_bytes=budget) as hook:
        for step, state in enumerate(states()):
            hook(step, state, metrics={"loss": abs(step - 3)})
            assert hook.manager.size_bytes() <= budget
        kept = hook.manager.all_steps()  # the best (3) and the latest fit, never all eight
        assert 3 in kept and kept[-1] == 7 and len(kept) <= 3, kept
    assert (
        json.loads((tmp_path / "run" / "run.json").read_text())["retention"]["max_bytes"] == budget
    )


def test_metrics_must_be_scalars(tmp_path: Path) -> None:
    with CkptHook(tmp_path) as hook, pytest.raises(ValueError, match=r"'loss_curve'.*scalars"):
        hook(0, linen_init(), metrics={"loss_curve": jnp.ones(3)})


def test_metrics_are_passed_to_the_manager_which_names_a_non_number(tmp_path: Path) -> None:
    with CkptHook(tmp_path) as hook:
        hook(0, linen_init(), metrics={"loss": np.float32(0.5), "n": jnp.int32(3), "k": 2})
        assert hook.manager.metrics(0) == {"loss": 0.5, "n": 3.0, "k": 2.0}
        with pytest.raises(TypeError, match=r"metric 'flag' must be a scalar number"):
            hook(1, linen_init(), metrics={"flag": True})


# ---------------------------------------------------------------------- global generators


def _data_pipeline_loop(
    directory: Path, steps: int, *, stop_at: int | None = None, save_global_rng: bool = True
) -> list[float]:
    """A loop whose batches come from `np.random` and `random` (as data pipelines draw them);
    returns the draws of the steps it ran. The state is one weight, saved every 3 steps."""
    hook = CkptHook(directory, every_n_steps=3, resume=True, save_global_rng=save_global_rng)
    state = hook.restore_or({"w": jnp.zeros(())})
    draws = []
    for step in range(hook.start_step, steps):
        draw = float(np.random.uniform()) + random.random()
        draws.append(draw)
        state = {"w": state["w"] + draw}
        hook(step, state)
        if step == stop_at:
            break
    hook.close()
    return draws


@pytest.mark.parametrize("save_global_rng", [True, False])
def test_resumed_loop_continues_the_global_random_streams(
    tmp_path: Path, save_global_rng: bool
) -> None:
    random.seed(1)
    np.random.seed(1)
    reference = _data_pipeline_loop(tmp_path / "reference", 10)

    random.seed(1)
    np.random.seed(1)
    first = _data_pipeline_loop(tmp_path / "run", 10, stop_at=7, save_global_rng=save_global_rng)
    assert first == reference[:8]
    random.seed(99)  # a new process starts from other streams
    np.random.seed(99)
    resumed = _data_pipeline_loop(tmp_path / "run", 10, save_global_rng=save_global_rng)
    # Saved at step 6: the resumed run redoes step 7 and goes on.
    if save_global_rng:
        assert resumed == reference[7:]
    else:
        assert resumed != reference[7:]


def test_global_rng_is_kept_in_the_step_metadata_and_put_back_by_restore_or_only(
    tmp_path: Path,
) -> None:
    def reseed(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)

    def draws() -> tuple[float, float]:
        return random.random(), float(np.random.uniform())

    state = {"w": jnp.ones(3)}
    with CkptHook(tmp_path, save_global_rng=True) as hook:
        with pytest.warns(RuntimeWarning, match=r"metadata is list, not a dict"):
            hook(0, state, metadata=["not", "a", "dict"])
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # said once per hook
            hook(0, state, metadata=["not", "a", "dict"])
        reseed(5)
        hook(1, state, metadata={"epoch": 1})
        after_step_1 = draws()
        with pytest.raises(ValueError, match=r"the key 'ckpt_core.global_rng'.*nothing was saved"):
            hook(2, state, metadata={"ckpt_core.global_rng": 1})
        assert hook.manager.metadata(0) == ["not", "a", "dict"]
        meta = hook.manager.metadata(1)
        assert set(meta) == {"epoch", "ckpt_core.global_rng"} and meta["epoch"] == 1
        assert set(meta["ckpt_core.global_rng"]) == {"python", "numpy"}
        assert hook.manager.all_steps() == [0, 1]
    reseed(7)
    seven = draws()
    with CkptHook(tmp_path, resume=True, save_global_rng=True) as hook:
        reseed(7)
        hook.restore(state, step=1)  # loading a step to look at it does not reseed
        assert draws() == seven
        restored = hook.restore_or(state)
        assert draws() == after_step_1
    assert np.array_equal(restored["w"], state["w"])


# ---------------------------------------------------------------------- resume semantics


def test_start_step_resume_overwrite_and_existing(tmp_path: Path) -> None:
    state = linen_init()
    with CkptHook(tmp_path, every_n_steps=3) as hook:
        assert hook.start_step == 0
        for step in range(8):
            state, _ = linen_step(state)
            if hook(step, state):
                saved = state
    with pytest.raises(CheckpointExistsError):
        CkptHook(tmp_path)
    with pytest.raises(ValueError, match="resume=True and overwrite=True"):
        CkptHook(tmp_path, resume=True, overwrite=True)

    with CkptHook(tmp_path, resume=True) as hook:
        assert hook.start_step == 7
        restored = hook.restore_or(linen_init(seed=5))
    assert int(restored["train"].step) == 7
    assert isinstance(restored["train"], train_state.TrainState)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(saved)):
        assert np.array_equal(np.asarray(got), np.asarray(want))

    with CkptHook(tmp_path, overwrite=True) as hook:
        assert hook.start_step == 0
        fresh = linen_init(seed=5)
        assert hook.restore_or(fresh) is fresh
        assert hook.manager.all_steps() == []


def test_structure_mismatch_names_the_paths(tmp_path: Path) -> None:
    with CkptHook(tmp_path) as hook:
        hook(0, linen_init(hidden=16))
    with CkptHook(tmp_path, resume=True) as hook, pytest.raises(StructureMismatchError) as err:
        hook.restore_or(linen_init(hidden=32))
    message = str(err.value)
    assert "Dense_0" in message and "kernel" in message
    assert "16" in message and "32" in message


def test_restore_or_fills_an_abstract_linen_state(tmp_path: Path) -> None:
    state, _ = linen_step(linen_init())
    state["rbg_key"] = jax.random.key(9, impl="rbg")
    with CkptHook(tmp_path) as hook:
        hook(1, state)

    def init() -> dict[str, Any]:
        return {**linen_init(seed=3), "rbg_key": jax.random.key(0, impl="rbg")}

    abstract = jax.eval_shape(init)  # the orbax idiom: a template that allocates nothing
    assert isinstance(abstract["train"].params["Dense_0"]["kernel"], jax.ShapeDtypeStruct)
    with CkptHook(tmp_path, resume=True) as hook:
        restored = hook.restore_or(abstract)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(restored))
    assert [np.asarray(x).tolist() for x in _flat(restored)] == [
        np.asarray(x).tolist() for x in _flat(state)
    ]
    assert jax.random.key_impl(restored["rbg_key"]) == jax.random.key_impl(state["rbg_key"])
    # It trains on exactly as the saved state would.
    assert np.array_equal(linen_step(restored)[1]["loss"], linen_step(state)[1]["loss"])


def test_restore_or_fills_an_abstract_nnx_model_and_optimizer(tmp_path: Path) -> None:
    model, optimizer, extra = nnx_init()
    extra["data_key"], _ = nnx_step(model, optimizer, extra["data_key"])
    with CkptHook(tmp_path) as hook:
        hook(1, (model, optimizer, extra))
    expected = _flat((nnx.state(model), nnx.state(optimizer), extra))

    abs_model, abs_optimizer, abs_extra = nnx.eval_shape(lambda: nnx_init(seed=5))
    assert isinstance(nnx.to_pure_dict(nnx.state(abs_model))["l1"]["kernel"], jax.ShapeDtypeStruct)
    with CkptHook(tmp_path, resume=True) as hook:
        new_model, new_optimizer, new_extra = hook.restore_or((abs_model, abs_optimizer, abs_extra))
    assert new_model is abs_model and new_optimizer is abs_optimizer
    got = _flat((nnx.state(new_model), nnx.state(new_optimizer), new_extra))
    assert all(isinstance(x, jax.Array) for x in got)
    assert [np.asarray(x).tolist() for x in got] == [np.asarray(x).tolist() for x in expected]
    # It trains on exactly as the saved model would.
    _, loss = nnx_step(new_model, new_optimizer, new_extra["data_key"])
    _, want = nnx_step(model, optimizer, extra["data_key"])
    assert np.array_equal(loss, want)


def _flat(tree: Any) -> list[Any]:
    """Every leaf, typed keys as their key data."""
    return [jax.random.key_data(x) if _is_key(x) else x for x in jax.tree.leaves(tree)]


# ---------------------------------------------------------------------- keys and orbax


def test_typed_and_raw_keys_round_trip(tmp_path: Path) -> None:
    state = {
        "typed": jax.random.key(3),
        "typed_rbg": jax.random.key(3, impl="rbg"),
        "split": jax.random.split(jax.random.key(4), 5),
        "raw": jax.random.PRNGKey(5),
    }
    with CkptHook(tmp_path, async_save=True) as hook:
        hook(0, state)
    like = {
        "typed": jax.random.key(0),
        "typed_rbg": jax.random.key(0, impl="rbg"),
        "split": jax.random.split(jax.random.key(0), 5),
        "raw": jax.random.PRNGKey(0),
    }
    with CkptHook(tmp_path, resume=True) as hook:
        restored = hook.restore_or(like)
    for name in ("typed", "typed_rbg", "split"):
        assert _is_key(restored[name])
        assert jax.random.key_impl(restored[name]) == jax.random.key_impl(state[name])
        assert np.array_equal(jax.random.key_data(restored[name]), jax.random.key_data(state[name]))
    assert restored["raw"].dtype == jnp.uint32
    assert np.array_equal(restored["raw"], state["raw"])
    # The streams continue exactly.
    assert np.array_equal(
        jax.random.normal(restored["typed"], (4,)), jax.random.normal(state["typed"], (4,))
    )


def test_orbax_standard_checkpointer_reads_a_step(tmp_path: Path) -> None:
    state = linen_init()
    state, _ = linen_step(state)
    with CkptHook(tmp_path) as hook:
        hook(0, state)
        step_dir = Path(hook.manager.path(0))
    with ocp.StandardCheckpointer() as ckptr:
        raw = ckptr.restore(step_dir / "orbax")
        typed = ckptr.restore(step_dir / "orbax", linen_init(seed=9))
    kernel = state["train"].params["Dense_0"]["kernel"]
    assert np.array_equal(raw["train"]["params"]["Dense_0"]["kernel"], kernel)
    assert isinstance(typed["train"], train_state.TrainState)
    assert np.array_equal(
        typed["train"].opt_state[0].mu["Dense_1"]["bias"],
        state["train"].opt_state[0].mu["Dense_1"]["bias"],
    )
    assert np.array_equal(typed["key"], state["key"])


def test_async_save_survives_buffer_donation(tmp_path: Path) -> None:
    """A donating train step deletes the saved arrays while an async write may still read them."""
    step_fn = jax.jit(lambda w: w + 1, donate_argnums=0)
    # The step is compiled first, so it donates while the background write has barely started.
    state = {"w": jnp.arange(1 << 20, dtype=jnp.float32), "key": jax.random.key(0)}
    expected = np.asarray(state["w"]).copy()
    step_fn(jnp.zeros_like(state["w"])).block_until_ready()  # compiled: donation is immediate
    with CkptHook(tmp_path, async_save=True) as hook:
        hook(0, state)
        for _ in range(3):
            state = {**state, "w": step_fn(state["w"])}
    assert float(state["w"][1]) == 4.0
    with CkptHook(tmp_path, resume=True) as hook:
        restored = hook.restore_or({"w": jnp.zeros(1 << 20), "key": jax.random.key(1)})
    assert np.array_equal(restored["w"], expected)
    assert np.array_equal(
        jax.random.key_data(restored["key"]), jax.random.key_data(jax.random.key(0))
    )


# ---------------------------------------------------------------------- devices


def test_sharded_restore_onto_4_and_2_devices_and_replication(tmp_path: Path) -> None:
    _run_script("sharded-save", str(tmp_path), devices=4)
    _run_script("sharded-restore", str(tmp_path), devices=2)
    report = json.loads((tmp_path / "report-2.json").read_text())
    assert report == {"sharded": "ok", "replicated": "ok"}
    report = json.loads((tmp_path / "report-4.json").read_text())
    assert report == {"sharded": "ok", "replicated": "ok"}


def _shard_like_data(x: Any, mesh: jax.sharding.Mesh) -> Any:
    """Shard axis 0 over the mesh where it divides evenly; replicate the rest."""
    P = jax.sharding.PartitionSpec
    if not isinstance(x, jax.Array):
        return x
    spec = P("data") if x.ndim and x.shape[0] % mesh.size == 0 else P()
    return jax.device_put(x, jax.sharding.NamedSharding(mesh, spec))


def _sharded_state(seed: int, devices: list[Any]) -> dict[str, Any]:
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    state, _ = linen_step(linen_init(seed))  # one step: adam's moments are non-zero
    state["typed_key"] = jax.random.key(seed)
    return jax.tree.map(lambda x: _shard_like_data(x, mesh), state)


def _check_restored(restored: Any, template: Any, expected: dict[str, np.ndarray]) -> None:
    flat_r = jax.tree_util.tree_leaves_with_path(restored)
    flat_t = jax.tree.leaves(template)
    assert len(flat_r) == len(flat_t) == len(expected)
    for (path, got), like in zip(flat_r, flat_t):
        name = jax.tree_util.keystr(path)
        data = jax.random.key_data(got) if _is_key(got) else got
        assert np.array_equal(np.asarray(data), expected[name]), name
        if isinstance(like, jax.Array):
            assert got.sharding.is_equivalent_to(like.sharding, got.ndim), name


def _flat_host(tree: Any) -> dict[str, np.ndarray]:
    return {
        jax.tree_util.keystr(path): np.asarray(jax.random.key_data(x) if _is_key(x) else x)
        for path, x in jax.tree_util.tree_leaves_with_path(tree)
    }


def _sharded_save(directory: Path) -> None:
    devices = jax.devices()
    assert len(devices) == 4
    state = _sharded_state(0, devices)
    kernel = state["train"].params["Dense_0"]["kernel"]
    assert len(kernel.sharding.device_set) == 4 and not kernel.sharding.is_fully_replicated
    with CkptHook(directory / "sharded", async_save=True) as hook:
        hook(0, state)
    np.savez(directory / "expected.npz", **_flat_host(state))

    # pmap-era state: a leading device axis of 4; saved without it.
    plain = {"params": linen_init(1)["train"].params, "key": jax.random.key(7)}
    replicated = _replicate_with_flax(plain, devices)
    with CkptHook(directory / "replicated", unreplicate=True) as hook:
        hook(0, replicated, metrics={"loss": jnp.full((4,), 0.25)})
        assert hook.manager.metrics(0) == {"loss": 0.25}
        step_dir = Path(hook.manager.path(0))
    on_disk = ocp.StandardCheckpointer().restore(step_dir / "orbax")
    assert on_disk["params"]["Dense_0"]["kernel"].shape == (8, 16)
    np.savez(directory / "expected-plain.npz", **_flat_host(plain))
    _restore_and_check(directory, 4)


def _replicate_with_flax(tree: Any, devices: list[Any]) -> Any:
    from flax import jax_utils

    return jax_utils.replicate(tree, devices=devices)


def _restore_and_check(directory: Path, n: int) -> None:
    devices = jax.devices()
    assert len(devices) >= n
    expected = dict(np.load(directory / "expected.npz"))
    expected_plain = dict(np.load(directory / "expected-plain.npz"))
    results = {}

    for subset in {n, 2}:
        template = _sharded_state(3, devices[:subset])
        with CkptHook(directory / "sharded", resume=True) as hook:
            restored = hook.restore_or(template)
        _check_restored(restored, template, expected)
        kernel = restored["train"].params["Dense_0"]["kernel"]
        assert len(kernel.sharding.device_set) == subset
    results["sharded"] = "ok"

    plain_template = {"params": linen_init(4)["train"].params, "key": jax.random.key(0)}
    # replicate_to on an unreplicated template: broadcast after restore.
    with CkptHook(directory / "replicated", resume=True, replicate_to=2) as hook:
        restored = hook.restore_or(plain_template)
    _check_replicated(restored, expected_plain, 2)
    if n == 4:
        # unreplicate on a replicated template: back onto its 4 devices, or onto replicate_to.
        replicated_template = _replicate_with_flax(plain_template, devices)
        with CkptHook(directory / "replicated", resume=True, unreplicate=True) as hook:
            restored = hook.restore_or(replicated_template)
        _check_replicated(restored, expected_plain, 4)
        with CkptHook(
            directory / "replicated", resume=True, unreplicate=True, replicate_to=2
        ) as hook:
            restored = hook.restore_or(replicated_template)
        _check_replicated(restored, expected_plain, 2)
    results["replicated"] = "ok"
    (directory / f"report-{n}.json").write_text(json.dumps(results))


def _check_replicated(restored: Any, expected: dict[str, np.ndarray], n: int) -> None:
    for path, got in jax.tree_util.tree_leaves_with_path(restored):
        name = jax.tree_util.keystr(path)
        assert got.shape[0] == n, name
        assert len(got.sharding.device_set) == n, name
        data = np.asarray(jax.random.key_data(got) if _is_key(got) else got)
        for i in range(n):
            assert np.array_equal(data[i], expected[name]), name


# ---------------------------------------------------------------------- subprocess entry


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"every_n_steps": "10"}, TypeError, r"every_n_steps .* found '10' \(str\)"),
        ({"every_n_steps": 0}, ValueError, r"every_n_steps .* found 0"),
        ({"every_n_seconds": "5"}, TypeError, "every_n_seconds must be a number"),
        ({"async_save": "no"}, TypeError, "async_save must be True or False"),
        ({"resume": "no"}, TypeError, "resume must be True or False"),
        ({"unreplicate": "yes"}, TypeError, "unreplicate must be True or False"),
        ({"replicate_to": "2"}, TypeError, r"replicate_to .* found '2' \(str\)"),
    ],
)
def test_careless_hook_arguments_are_named_as_the_hook_names_them(
    tmp_path, options, error, message
):
    with pytest.raises(error, match=message):
        CkptHook(tmp_path / "run", **options)
    assert not (tmp_path / "run").exists()


def _main(argv: list[str]) -> None:
    command = argv[0]
    if command == "train":
        kind, directory, steps, async_save, marker = argv[1:]
        train(
            kind,
            Path(directory),
            int(steps),
            async_save=bool(int(async_save)),
            marker=Path(marker),
            marker_after=12,
        )
    elif command == "sharded-save":
        _sharded_save(Path(argv[1]))
    elif command == "sharded-restore":
        _restore_and_check(Path(argv[1]), jax.device_count())
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    _main(sys.argv[1:])


def test_by_default_the_global_generators_are_neither_saved_nor_put_back(tmp_path: Path) -> None:
    # As with orbax alone: a user's own seeding before restore_or stands, and "flax" is the
    # user's key like any other.
    state = {"w": jnp.ones(3)}
    with CkptHook(tmp_path) as hook:
        hook(1, state, metadata={"flax": {"global_rng": 1}, "epoch": 2})
        assert hook.manager.metadata(1) == {"flax": {"global_rng": 1}, "epoch": 2}
    random.seed(3)
    np.random.seed(3)
    expected = (random.random(), float(np.random.uniform()))
    random.seed(3)
    np.random.seed(3)
    with CkptHook(tmp_path, resume=True) as hook:
        hook.restore_or(state)
    assert (random.random(), float(np.random.uniform())) == expected
