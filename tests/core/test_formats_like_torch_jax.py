"""Fitting restored leaves to `like` (`ckpt_core.formats.like`): abstract templates
(`jax.eval_shape` structs, torch `meta` tensors) are filled with the stored values in every
format, and concrete ones give their types (a `Parameter` stays one, a number fills a 0-d tensor).

The cross-mesh case needs several fake CPU devices (`XLA_FLAGS` is read once, at jax import):
it runs this file as a script in subprocesses, see `_main` at the bottom.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ckpt_core import (
    CheckpointManager,
    StructureMismatchError,
    load_checkpoint,
    save_checkpoint,
)
from tests.core.test_formats_contract_torch_jax import CASES, jax_state, numpy_state

REPO = Path(__file__).resolve().parents[2]


def abstract(state: Any) -> Any:
    """`state` with every array replaced by its abstract twin: a ShapeDtypeStruct for numpy
    and jax leaves (what `jax.eval_shape` gives), a `meta` tensor for torch leaves."""

    def one(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return torch.empty_like(x, device="meta")
        if (
            isinstance(x, np.ndarray | np.generic)
            and jax.dtypes.canonicalize_dtype(x.dtype) != x.dtype
        ):
            return x  # a 64-bit array jax (without x64) cannot hold: it stays numpy
        if isinstance(x, jax.Array | np.ndarray | np.generic):
            return jax.eval_shape(lambda: x)
        return x

    return jax.tree.map(one, state)


def is_key(x: Any) -> bool:
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def assert_filled(original: Any, template: Any, restored: Any) -> None:
    """Every abstract leaf of `template` came back as a real array holding `original`'s values."""
    flat_o = jax.tree_util.tree_leaves_with_path(original)
    flat_t = jax.tree.leaves(template)
    flat_r = jax.tree.leaves(restored)
    assert len(flat_o) == len(flat_t) == len(flat_r)
    for (path, want), like, got in zip(flat_o, flat_t, flat_r):
        name = jax.tree_util.keystr(path)
        if isinstance(like, jax.ShapeDtypeStruct):
            assert isinstance(got, jax.Array), f"{name}: {type(got).__name__}"
            assert got.dtype == like.dtype and got.shape == like.shape, name
            if is_key(got):
                assert str(jax.random.key_impl(got)) == str(jax.random.key_impl(want)), name
                got, want = jax.random.key_data(got), jax.random.key_data(want)
            assert got.sharding.is_equivalent_to(
                jax.sharding.SingleDeviceSharding(jax.devices()[0]), got.ndim
            ), name
            assert np.asarray(got).tobytes() == np.asarray(want).tobytes(), name
        elif isinstance(like, torch.Tensor):
            assert type(got) is type(like), f"{name}: {type(got).__name__}"
            assert got.device.type == "cpu" and got.dtype == like.dtype, name
            assert torch.equal(got, want), name
        elif isinstance(like, np.ndarray | np.generic):
            assert type(got) is type(want) and np.array_equal(got, want), name
        else:
            assert got == want, name


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> tuple[str, Any]:
    return CASES[request.param]


def test_abstract_like_is_filled_in_every_format(run_dir: Path, case: tuple[str, Any]) -> None:
    fmt, make = case
    state = make()
    with CheckpointManager(run_dir, format=fmt, allow_pickle=True) as mgr:
        mgr.save(1, state)
        template = abstract(make())
        assert_filled(state, template, mgr.restore(like=template))
        assert_filled(
            state, template, load_checkpoint(mgr.path(1), like=template, allow_pickle=True)
        )


@pytest.mark.parametrize("fmt", ["tree", "orbax", "pickle"])
def test_eval_shape_template_with_typed_key(run_dir: Path, fmt: str) -> None:
    with CheckpointManager(run_dir, format=fmt, allow_pickle=True) as mgr:
        mgr.save(1, jax_state())
        template = jax.eval_shape(jax_state)  # the orbax idiom; `step` becomes an int32 struct
        assert isinstance(template["key"], jax.ShapeDtypeStruct) and is_key(template["key"])
        restored = mgr.restore(like=template)
    assert_filled(jax.tree.map(jnp.asarray, jax_state()), template, restored)
    assert jax.random.key_impl(restored["key"]) == jax.random.key_impl(jax.random.key(0))


@pytest.mark.parametrize("fmt", ["tree", "orbax", "pickle"])
def test_abstract_mismatch_names_each_path_shape_and_dtype(run_dir: Path, fmt: str) -> None:
    with CheckpointManager(run_dir, format=fmt, allow_pickle=True) as mgr:
        mgr.save(1, jax_state())
        template = jax.eval_shape(jax_state)
        dense = template["params"]["dense"]
        dense["kernel"] = jax.ShapeDtypeStruct((3, 3), jnp.float32)
        dense["bias"] = jax.ShapeDtypeStruct((2,), jnp.float32)
        template["added"] = jax.ShapeDtypeStruct((1,), jnp.float32)
        with pytest.raises(StructureMismatchError) as err:
            mgr.restore(like=template)
    message = str(err.value)
    assert "params/dense/kernel: shape [3, 2] on disk, [3, 3] in `like`" in message
    assert "params/dense/bias: dtype bfloat16 on disk, float32 in `like`" in message
    assert "added: in `like` but not in the checkpoint" in message
    assert len(message) < 1000


def test_torch_meta_model_restores_and_loads_with_assign(run_dir: Path) -> None:
    torch.manual_seed(0)
    trained = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    trained(torch.randn(8, 4))  # BatchNorm's running stats and counter are non-default
    with torch.device("meta"):
        net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    for fmt in ("tree", "torch", "pickle"):
        with CheckpointManager(run_dir / fmt, format=fmt, allow_pickle=True) as mgr:
            mgr.save(1, trained.state_dict())
            restored = mgr.restore(like=net.state_dict())
            assert_filled(trained.state_dict(), net.state_dict(), restored)
            with_params = mgr.restore(like=net.state_dict(keep_vars=True))
            assert type(with_params["0.weight"]) is torch.nn.Parameter
            assert all(not t.is_meta for t in with_params.values())

            wrong = net.state_dict()
            wrong["0.weight"] = torch.empty(3, 5, device="meta", dtype=torch.float64)
            with pytest.raises(StructureMismatchError, match=r"0\.weight: shape \[3, 4\]"):
                mgr.restore(like=wrong)
    net.load_state_dict(restored, assign=True)
    assert all(not t.is_meta for t in net.state_dict().values())
    x = torch.randn(5, 4)
    trained.eval(), net.eval()
    assert torch.equal(net(x), trained(x))


@pytest.mark.parametrize("fmt", ["auto", "tree", "torch", "orbax", "pickle"])
def test_saving_an_abstract_state_is_refused_and_writes_nothing(run_dir: Path, fmt: str) -> None:
    if fmt == "torch":
        state: Any = {"w": torch.ones(2), "layer": {"b": torch.empty(3, device="meta")}}
        found = "torch tensor on the meta device"
    else:
        state = {"w": np.ones(2), "layer": {"b": jax.ShapeDtypeStruct((3,), jnp.float32)}}
        found = "jax.ShapeDtypeStruct"
    with CheckpointManager(run_dir, format=fmt, allow_pickle=True) as mgr:
        with pytest.raises(TypeError) as err:
            mgr.save(1, state)
        assert mgr.all_steps() == []
    message = str(err.value)
    assert "'layer/b'" in message and found in message and "HINT" in message
    with pytest.raises(TypeError, match="layer/b"):
        save_checkpoint(run_dir / "one", state, format=fmt)
    assert not (run_dir / "one").exists()


def test_numpy_state_restores_into_jax_structs_and_meta_tensors(run_dir: Path) -> None:
    state = numpy_state()
    with CheckpointManager(run_dir) as mgr:
        mgr.save(1, {"w": state["w"], "mask": state["mask"]})
        restored = mgr.restore(
            like={
                "w": jax.ShapeDtypeStruct((3, 4), jnp.float32),
                "mask": torch.empty(3, dtype=torch.bool, device="meta"),
            }
        )
    assert isinstance(restored["w"], jax.Array)
    np.testing.assert_array_equal(np.asarray(restored["w"]), state["w"])
    assert restored["mask"].device.type == "cpu"
    np.testing.assert_array_equal(restored["mask"].numpy(), state["mask"])


# ---------------------------------------------------------------------- another mesh

FORMATS_WITH_JAX = ("tree", "orbax", "pickle")


def test_like_fitting_edge_cases(run_dir):
    with CheckpointManager(run_dir, format="torch") as mgr:
        mgr.save(1, {"step": 3, "w": torch.ones(2), "name": "abc"})
        param = torch.nn.Parameter(torch.zeros(2))
        back = mgr.restore(like={"step": torch.tensor(0), "w": param, "name": "", "slot": None})
        assert torch.equal(back["step"], torch.tensor(3))  # a number into a 0-d tensor
        assert isinstance(back["w"], torch.nn.Parameter) and back["w"].requires_grad
        assert back["slot"] is None  # an empty slot the checkpoint does not have
        with pytest.raises(StructureMismatchError, match="name: the checkpoint holds a str"):
            mgr.restore(like={"step": 0, "w": torch.zeros(2), "name": 0})
        kept = mgr.restore(like={"step": 0, "w": torch.zeros(2), "name": "", "fn": len})
        assert kept["fn"] is len  # what the tree cannot store stays the caller's


def _mesh_state(devices: list[Any]) -> dict[str, Any]:
    """A state sharded along axis 0 over `devices` where that divides, replicated elsewhere."""
    P = jax.sharding.PartitionSpec
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    values = {
        "kernel": jnp.arange(32.0).reshape(8, 4),
        "bias": jnp.arange(4, dtype=jnp.bfloat16),
        "key": jax.random.key(5),
    }

    def place(x: jax.Array) -> jax.Array:
        spec = P("data") if x.ndim and x.shape[0] % len(devices) == 0 else P()
        return jax.device_put(x, jax.sharding.NamedSharding(mesh, spec))

    return {name: place(x) for name, x in values.items()}


def _save_on_4(directory: Path) -> None:
    assert jax.device_count() == 4
    state = _mesh_state(jax.devices())
    assert len(state["kernel"].sharding.device_set) == 4
    for fmt in FORMATS_WITH_JAX:
        with CheckpointManager(directory / fmt, format=fmt, allow_pickle=True) as mgr:
            mgr.save(1, state)


def _restore_on_2(directory: Path) -> None:
    assert jax.device_count() == 2
    expected = _mesh_state(jax.devices())
    # The orbax idiom: eval_shape, then give each struct the sharding it should land in.
    template = jax.tree.map(
        lambda s, x: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=x.sharding),
        jax.eval_shape(lambda: expected),
        expected,
    )
    report = {}
    for fmt in FORMATS_WITH_JAX:
        with CheckpointManager(directory / fmt, allow_pickle=True, read_only=True) as mgr:
            restored = mgr.restore(like=template)
        for name, got in restored.items():
            want = expected[name]
            assert isinstance(got, jax.Array), (fmt, name, type(got))
            assert got.sharding.is_equivalent_to(want.sharding, got.ndim), (fmt, name)
            if is_key(want):
                got, want = jax.random.key_data(got), jax.random.key_data(want)
            assert np.array_equal(np.asarray(got), np.asarray(want)), (fmt, name)
        assert len(restored["kernel"].sharding.device_set) == 2
        report[fmt] = "ok"
    (directory / "report.json").write_text(json.dumps(report))


def _run_script(command: str, directory: Path, devices: int) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), command, str(directory)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"{command} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"


def test_structs_sharded_on_another_mesh_restore_there(tmp_path: Path) -> None:
    _run_script("save-on-4", tmp_path, devices=4)
    _run_script("restore-on-2", tmp_path, devices=2)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == dict.fromkeys(FORMATS_WITH_JAX, "ok")


def _main(argv: list[str]) -> None:
    command, directory = argv
    if command == "save-on-4":
        _save_on_4(Path(directory))
    elif command == "restore-on-2":
        _restore_on_2(Path(directory))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    _main(sys.argv[1:])
