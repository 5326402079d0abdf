"""One contract every format passes: round trip, `like` types, mismatch naming paths, corruption."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch

from ckpt_core import (
    CheckpointManager,
    CorruptCheckpointError,
    StructureMismatchError,
    UnsafeFormatError,
    load_checkpoint,
    save_checkpoint,
)


def numpy_state():
    return {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "bf": np.linspace(0, 1, 5).astype(ml_dtypes.bfloat16),
        "mask": np.array([True, False, True]),
        "empty": np.zeros((0, 3), dtype=np.int64),
        "nested": {"b": np.int32(7), "list": [np.ones(2, dtype=np.float64), np.uint8(3)]},
    }


def torch_state():
    g = torch.Generator().manual_seed(0)
    return {
        "layer.weight": torch.randn(4, 3, generator=g),
        "half": torch.randn(5, generator=g).to(torch.bfloat16),
        "steps": torch.tensor(17),
        "opt": {
            "state": {0: {"exp_avg": torch.zeros(4, 3)}},
            "param_groups": [{"lr": 0.1, "params": [0]}],
        },
    }


def jax_state():
    return {
        "params": {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2, dtype=jnp.bfloat16)}},
        "key": jax.random.key(3),
        "raw_key": jax.random.PRNGKey(4),
        "step": 5,
    }


def mixed_state():
    return {
        **numpy_state(),
        "t": torch.arange(4),
        "j": jnp.arange(3.0),
        "s": "text",
        "n": None,
        "f": 0.25,
    }


CASES = {
    "tree-numpy": ("tree", numpy_state),
    "tree-torch": ("tree", torch_state),
    "tree-jax": ("tree", jax_state),
    "tree-mixed": ("tree", mixed_state),
    "torch": ("torch", torch_state),
    "pickle-numpy": ("pickle", numpy_state),
    "pickle-torch": ("pickle", torch_state),
    "orbax": ("orbax", jax_state),
    "dcp": ("dcp", torch_state),
}


def assert_same(a, b, path="root"):
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{path}: keys {list(a)} vs {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}/{i}")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), f"{path}: {type(b)}"
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, jax.Array):
        assert isinstance(b, jax.Array), f"{path}: {type(b)}"
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            assert a.dtype == b.dtype
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), path
    elif isinstance(a, np.ndarray | np.generic):
        assert type(a) is type(b), f"{path}: {type(a)} vs {type(b)}"
        assert a.dtype == b.dtype and np.shape(a) == np.shape(b), path
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), path
    else:
        assert type(a) is type(b) and a == b, f"{path}: {a!r} vs {b!r}"


@pytest.fixture(params=sorted(CASES))
def case(request):
    return CASES[request.param]


def save_one(run_dir, fmt, state):
    mgr = CheckpointManager(run_dir, format=fmt, allow_pickle=True)
    mgr.save(1, state)
    return mgr


def test_round_trip_with_like_gives_like_types(run_dir, case):
    fmt, make = case
    state = make()
    with save_one(run_dir, fmt, state) as mgr:
        assert_same(state, mgr.restore(like=make()))
        assert mgr.info(1).format == fmt


def test_round_trip_without_like(run_dir, case):
    fmt, make = case
    state = make()
    with save_one(run_dir, fmt, state) as mgr:
        restored = mgr.restore()
    if fmt in ("tree", "torch", "pickle"):
        assert_same(state, restored)  # these restore the very leaf kinds that were saved
    else:
        flat_saved = jax.tree_util.tree_leaves(state)
        flat_back = jax.tree_util.tree_leaves(restored)
        assert len(flat_saved) == len(flat_back)


def test_async_round_trip_is_isolated_from_later_mutation(run_dir, case):
    fmt, make = case
    state = make()
    with CheckpointManager(run_dir, format=fmt, allow_pickle=True, async_save=True) as mgr:
        mgr.save(1, state)
        for leaf in jax.tree_util.tree_leaves(state):  # mutate what can be mutated in place
            if isinstance(leaf, np.ndarray) and leaf.size and leaf.flags.writeable:
                leaf.fill(0)
            elif isinstance(leaf, torch.Tensor) and leaf.numel():
                leaf.zero_()
        mgr.wait()
        assert_same(make(), mgr.restore(like=make()))


def mismatched(state):
    """Change one shape, one dtype, drop one leaf and add one."""
    flat = state
    if "w" in flat:
        flat["w"] = np.zeros((4, 4), dtype=np.float32)
        flat["mask"] = np.zeros(3, dtype=np.int8)
    elif "layer.weight" in flat:
        flat["layer.weight"] = torch.zeros(4, 4)
        flat["steps"] = torch.tensor(1.0)
    else:
        flat["params"]["dense"]["kernel"] = jnp.ones((3, 3))
        flat["params"]["dense"]["bias"] = jnp.zeros(2, dtype=jnp.float32)
    first = next(iter(k for k in flat if k not in ("w", "mask", "layer.weight", "steps", "params")))
    del flat[first]
    flat["added"] = np.ones(1) if not isinstance(flat.get("t"), torch.Tensor) else torch.ones(1)
    return flat, first


def test_structure_mismatch_names_every_differing_path(run_dir, case):
    fmt, make = case
    with save_one(run_dir, fmt, make()) as mgr:
        like, dropped = mismatched(make())
        with pytest.raises(StructureMismatchError) as err:
            mgr.restore(like=like)
    message = str(err.value)
    assert "added: in `like` but not in the checkpoint" in message
    if fmt != "dcp":  # dcp loads what `like` asks for and skips the rest: DCP's convention
        assert f"{dropped}: in the checkpoint but not in `like`" in message
    assert "shape" in message and "dtype" in message
    assert isinstance(err.value, ValueError)


def payload_files(step_dir: Path):
    return sorted(
        p
        for p in step_dir.rglob("*")
        if p.is_file() and p.name != "manifest.json" and p.stat().st_size
    )


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corruption_is_detected_and_names_the_file(run_dir, case, damage):
    fmt, make = case
    with save_one(run_dir, fmt, make()) as mgr:
        step_dir = Path(mgr.path(1))
        victim = max(payload_files(step_dir), key=lambda p: p.stat().st_size)
        if damage == "flip":
            data = bytearray(victim.read_bytes())
            data[len(data) // 2] ^= 0xFF
            victim.write_bytes(bytes(data))
        elif damage == "truncate":
            os.truncate(victim, victim.stat().st_size - 1)
        else:
            victim.unlink()
        with pytest.raises(CorruptCheckpointError) as err:
            mgr.restore(like=make())
    assert victim.name in str(err.value)


def test_pickle_refuses_without_allow_pickle(run_dir):
    state = {"obj": {1, 2, 3}}
    # A writer must be able to read back what it writes: no pickle writer without allow_pickle.
    with pytest.raises(ValueError, match="allow_pickle=True"):
        CheckpointManager(run_dir, format="pickle")
    with CheckpointManager(run_dir, format="pickle", allow_pickle=True) as mgr:
        mgr.save(1, state)
        assert mgr.restore() == state
    with CheckpointManager(run_dir, read_only=True) as reader:
        with pytest.raises(UnsafeFormatError, match="allow_pickle=True"):
            reader.restore()
    save_checkpoint(run_dir / "one", state, format="pickle")
    with pytest.raises(UnsafeFormatError):
        load_checkpoint(run_dir / "one")
    assert load_checkpoint(run_dir / "one", allow_pickle=True) == state


def test_tree_payload_opens_with_safetensors_and_torch_payload_with_torch_load(run_dir):
    from safetensors.numpy import load_file

    state = numpy_state()
    with CheckpointManager(run_dir) as mgr:
        mgr.save(1, state)
        arrays = load_file(mgr.payload_path(1))
        structure = json.loads((Path(mgr.path(1)) / "tree.json").read_text())
    np.testing.assert_array_equal(arrays["w"], state["w"])
    np.testing.assert_array_equal(arrays["nested/list/0"], state["nested"]["list"][0])
    assert structure["structure"]["t"] == "dict"
    with CheckpointManager(run_dir / "t", format="torch") as mgr:
        mgr.save(1, torch_state())
        loaded = torch.load(mgr.payload_path(1), weights_only=True)
    assert torch.equal(loaded["layer.weight"], torch_state()["layer.weight"])


def test_auto_picks_tree_for_arrays_and_torch_for_other_torch_checkpoints(run_dir):
    with CheckpointManager(run_dir) as mgr:
        mgr.save(1, numpy_state())
        mgr.save(2, {"model": torch.ones(2), "extra": {(1, 2): torch.ones(1)}})  # tuple key
        assert [mgr.info(s).format for s in (1, 2)] == ["tree", "torch"]
        with pytest.raises(TypeError, match="format='pickle'"):
            mgr.save(3, {"fn": object()})


def test_tree_refuses_unstorable_objects_with_a_hint(run_dir):
    with CheckpointManager(run_dir, format="tree") as mgr, pytest.raises(TypeError) as err:
        mgr.save(1, {"a": {"b": object()}})
    assert "'a/b'" in str(err.value) and "format='pickle'" in str(err.value)


def test_custom_format_can_be_registered(run_dir):
    from ckpt_core import register_format

    class TextFormat:
        name = "text-test"

        def accepts(self, state):
            return False

        def snapshot(self, state):
            return str(state)

        def write(self, state, writer):
            with writer.open("state.txt") as f:
                f.write(str(state).encode())

        def read(self, reader, like=None):
            return reader.read_bytes("state.txt").decode()

    register_format(TextFormat())
    with CheckpointManager(run_dir, format="text-test") as mgr:
        mgr.save(3, "hello")
        assert mgr.restore() == "hello"
    with pytest.raises(TypeError, match="not a Format"):
        register_format(object())  # type: ignore[arg-type]


def test_a_built_in_name_is_taken_before_the_built_ins_are_first_used(monkeypatch):
    from ckpt_core import register_format
    from ckpt_core.formats import get_format, registry

    class Impostor:
        name = "tree"

        def accepts(self, state):
            return False

        def snapshot(self, state):
            return state

        def write(self, state, writer):
            raise AssertionError("never written")

        def read(self, reader, like=None):
            raise AssertionError("never read")

    monkeypatch.setattr(registry, "_REGISTRY", {})  # as in a process that saved nothing yet
    with pytest.raises(ValueError, match="'tree' is already registered; pass replace=True"):
        register_format(Impostor())
    assert type(get_format("tree")).__name__ == "TreeFormat"
    monkeypatch.setattr(registry, "_REGISTRY", {})
    mine = Impostor()
    register_format(mine, replace=True)  # a deliberate replacement stays, built-ins loaded or not
    assert get_format("tree") is mine and type(get_format("torch")).__name__ == "TorchFormat"


@pytest.mark.parametrize("fmt", ["tree", "orbax"])
def test_python_number_and_0d_array_stand_for_each_other(run_dir, fmt):
    # A fresh flax TrainState has step=0 (an int); a trained one holds an int32 array.
    with CheckpointManager(run_dir, format=fmt) as mgr:
        mgr.save(1, {"step": jnp.asarray(5, jnp.int32), "lr": 0.5, "w": jnp.ones(2)})
        back = mgr.restore(like={"step": 0, "lr": jnp.asarray(0.0), "w": jnp.zeros(2)})
    assert back["step"] == 5 and type(back["step"]) is int
    assert isinstance(back["lr"], jax.Array) and float(back["lr"]) == 0.5
    with pytest.raises(StructureMismatchError, match="step: the checkpoint holds an array"):
        with CheckpointManager(run_dir, read_only=True) as mgr:
            mgr.restore(like={"step": "five", "lr": 0.0, "w": jnp.zeros(2)})


@pytest.mark.parametrize("fmt", ["tree", "orbax"])
def test_empty_pytree_nodes_restore(run_dir, fmt):
    import optax

    params = {"w": jnp.ones(3)}
    opt_state = optax.sgd(0.1).init(params)  # holds empty nodes (EmptyState)
    with CheckpointManager(run_dir, format=fmt) as mgr:
        mgr.save(1, {"params": params, "opt": opt_state, "none": None})
        back = mgr.restore(like={"params": params, "opt": opt_state, "none": None})
    assert jax.tree_util.tree_structure(back["opt"]) == jax.tree_util.tree_structure(opt_state)
    assert back["none"] is None


@pytest.mark.parametrize("fmt", ["tree", "orbax"])
def test_async_jax_save_survives_buffer_donation(run_dir, fmt):
    step = jax.jit(lambda x: x + 1, donate_argnums=0)
    x = jnp.arange(1000.0)
    with CheckpointManager(run_dir, format=fmt, async_save=True, max_to_keep=None) as mgr:
        for s in range(3):
            mgr.save(s, {"x": x})
            x = step(x)  # donates the buffer the background save is writing
        mgr.wait()
        for s in range(3):
            np.testing.assert_array_equal(np.asarray(mgr.restore(s)["x"]), np.arange(1000.0) + s)


def test_importing_one_format_module_first_leaves_every_format_available():
    code = (
        "import ckpt_core.formats.tree\n"
        "from ckpt_core import get_format\n"
        "print(sorted(get_format(n).name for n in ('tree', 'torch', 'orbax', 'pickle')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "['orbax', 'pickle', 'torch', 'tree']", out.stderr[-500:]


@pytest.mark.parametrize("fmt", ["tree", "torch", "orbax"])
def test_each_format_describes_a_step_without_loading_it_numpy_torch_jax(run_dir, fmt):
    from ckpt_core import get_format, layout
    from ckpt_core.formats import DescribableFormat, StepReader, TreeEntry
    from ckpt_core.run import open_directory, read_manifest

    make = {
        "tree": lambda shape: np.ones(shape, np.float32),
        "torch": torch.ones,
        "orbax": jnp.ones,
    }[fmt]
    with CheckpointManager(run_dir, format=fmt) as mgr:
        mgr.save(1, {"params": {"w": make((2, 3)), "b": make((4,))}, "epoch": 7})
    storage = open_directory(run_dir)
    name = layout.step_dirname(1)
    described = get_format(fmt)
    assert isinstance(described, DescribableFormat)
    listing = described.describe(StepReader(storage, name, read_manifest(storage, name)))
    kind = {"tree": "numpy", "torch": "torch", "orbax": "jax"}[fmt]
    epoch = {  # orbax records a Python number as a scalar of its dtype, without the value
        "tree": TreeEntry("epoch", "int", value=7),
        "torch": TreeEntry("epoch", "int", value=7),
        "orbax": TreeEntry("epoch", "scalar", "int64"),
    }[fmt]
    assert sorted(listing.entries, key=lambda e: e.path) == [
        epoch,
        TreeEntry("params/b", kind, "float32", (4,), 16),
        TreeEntry("params/w", kind, "float32", (2, 3), 24),
    ]
