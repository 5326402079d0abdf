"""Random pytrees round-trip exactly through the `tree` format.

Hypothesis builds nested dicts (str and int keys, including ones that print alike, `/` and
`%`), lists and tuples, empty ones too, of numpy arrays and scalars, torch tensors and jax
arrays in every dtype the format stores (bfloat16 and bool included; empty, 0-d and
non-contiguous arrays; arbitrary bit patterns, so NaN payloads and subnormals), and Python
None, bools, ints of any size, floats (NaN, infinities, -0.0), strings (lone surrogates
included) and bytes. Saved synchronously (`save_checkpoint`) or through an async manager,
what comes back must be the same tree: same container and leaf types, dtypes, shapes, and
bytes.
"""

from __future__ import annotations

import math
import struct
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpt_core import CheckpointManager, load_checkpoint, save_checkpoint

NUMPY_DTYPES = [
    "bool",
    "uint8",
    "int8",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float16",
    "bfloat16",
    "float32",
    "float64",
]
TORCH_DTYPES = [d for d in NUMPY_DTYPES if d not in ("uint16", "uint32", "uint64")]
JAX_DTYPES = ["bool", "uint8", "int8", "int32", "float16", "bfloat16", "float32"]
QUICK = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
STRESS = settings(QUICK, max_examples=1000)


def np_dtype(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


@st.composite
def numpy_arrays(draw, dtypes=NUMPY_DTYPES) -> np.ndarray:
    dtype = np_dtype(draw(st.sampled_from(dtypes)))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    n = int(np.prod(shape, dtype=np.int64))
    if dtype == np.bool_:
        flat = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    else:  # any bit pattern: NaN payloads, infinities, subnormals, -0.0
        raw = draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize))
        flat = np.frombuffer(raw, dtype=dtype).copy()
    arr = flat.reshape(shape)
    if arr.ndim == 2 and draw(st.booleans()):
        arr = arr.T  # not contiguous
    return arr


def to_torch(arr: np.ndarray) -> torch.Tensor:
    if arr.dtype == np_dtype("bfloat16"):
        return torch.from_numpy(np.ascontiguousarray(arr).view(np.int16)).view(torch.bfloat16)
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.T if arr.ndim == 2 and not arr.flags.c_contiguous else t


array_leaves = st.one_of(
    numpy_arrays(),
    numpy_arrays().filter(lambda a: a.ndim == 0).map(lambda a: a[()]),  # numpy scalars
    numpy_arrays(TORCH_DTYPES).map(to_torch),
    numpy_arrays(JAX_DTYPES).map(jnp.asarray),
)
surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
python_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.text(alphabet=st.characters() | surrogates, max_size=5),
    st.binary(max_size=20),
)
keys = st.one_of(
    st.text(max_size=6),
    st.sampled_from(["a/b", "%2F", "1", "a", "<root>", ""]),
    st.integers(min_value=-3, max_value=3),
)
trees = st.recursive(
    array_leaves | python_leaves,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.lists(kids, max_size=4).map(tuple),
        st.dictionaries(keys, kids, max_size=4),
    ),
    max_leaves=12,
)


def assert_identical(a: Any, b: Any, path: str = "root") -> None:
    """Same container and leaf types, dtypes, shapes and bytes (NaN equals NaN)."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} saved, {type(b).__name__} back"
    if isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)!r} vs {list(b)!r}"
        assert [type(k) for k in a] == [type(k) for k in b], f"{path}: key types"
        for k in a:
            assert_identical(a[k], b[k], f"{path}/{k!r}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{path}/{i}")
    elif isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), f"{path}: {a.dtype} {b.dtype}"
        assert _bytes(a) == _bytes(b), path
    elif isinstance(a, jax.Array):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), path
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), path
    elif isinstance(a, np.ndarray | np.generic):
        assert (a.dtype, np.shape(a)) == (b.dtype, np.shape(b)), f"{path}: {a.dtype} {b.dtype}"
        assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes(), path
    elif isinstance(a, float):
        assert struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def _bytes(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def round_trip(tree: Any, how: str) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        if how == "save_checkpoint":
            save_checkpoint(Path(tmp) / "one", tree, format="tree")
            return load_checkpoint(Path(tmp) / "one")
        with CheckpointManager(Path(tmp) / "run", format="tree", async_save=True) as mgr:
            mgr.save(1, tree)
            return mgr.restore(1)


@given(tree=trees, how=st.sampled_from(["save_checkpoint", "async manager"]))
@QUICK
def test_random_pytrees_round_trip_exactly(tally, tree, how):
    back = round_trip(tree, how)
    tally("random pytree round trip", 1)
    assert_identical(tree, back)


@pytest.mark.slow
@given(tree=trees, how=st.sampled_from(["save_checkpoint", "async manager"]))
@STRESS
def test_stress_random_pytrees_round_trip_exactly(tally, tree, how):
    back = round_trip(tree, how)
    tally("random pytree round trip", 1)
    assert_identical(tree, back)


def test_regression_numpy_float64_scalar_keeps_its_type(tally):
    """Regression (core bug fixed in 006980e): `formats/tree.py::_encode` tests `isinstance(node, float)` before arrays.

    `np.float64` subclasses `float`, so a numpy float64 scalar is stored as a JSON float and
    restored as a Python float (np.float32 and every other numpy scalar keep their type).
    Fix: test `_tree.is_array(node)` (np.generic) before the Python scalar types.
    """
    tree = {"lr": np.float64(0.1), "x": np.float32(0.5)}
    back = round_trip(tree, "save_checkpoint")
    tally("random pytree round trip", 1, case="np.float64 scalar")
    assert_identical(tree, back)
