"""Every state `save` accepts comes back from `restore` with the same manager options.

Hypothesis builds nested dicts (str, int and tuple keys), lists and tuples mixing numpy
arrays and scalars, torch tensors (dense, non-contiguous, bfloat16, complex, sparse,
parameters), Python numbers, strings and bytes, and objects a user may leave in a state:
`Path`, an enum member, a dataclass, a plain object, a namedtuple, set, frozenset,
bytearray, complex, slice, `Counter`, `OrderedDict`, `defaultdict`, complex and object
numpy arrays, and a dataclass allowed with `torch.serialization.safe_globals`. Each state
is saved in `auto`, `tree` or `torch`, synchronously or not. A save that returns must
restore, through the same manager, to equal values; a save that raises must raise
`TypeError` at the call and leave the directory exactly as it was: no step, no temporary.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import pathlib
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ckpt_core import CheckpointManager

QUICK = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
STRESS = settings(QUICK, max_examples=1000)


class Color(enum.Enum):
    RED = 1
    GREEN = 2


@dataclasses.dataclass
class Config:
    depth: int = 2


@dataclasses.dataclass
class Allowed:
    """Allowed by the test with `torch.serialization.safe_globals` around save and restore."""

    name: str = "ok"
    size: int = 1


class Plain:
    pass


Pair = collections.namedtuple("Pair", "a b")

OBJECTS = {
    "path": lambda: pathlib.Path("/data/x"),
    "enum": lambda: Color.GREEN,
    "dataclass": lambda: Config(3),
    "allowed dataclass": lambda: Allowed("cfg", 4),
    "plain object": Plain,
    "namedtuple": lambda: Pair(1, "b"),
    "set": lambda: {1, 2, 3},
    "frozenset": lambda: frozenset({"a"}),
    "bytearray": lambda: bytearray(b"\x00\x01"),
    "complex": lambda: 1 + 2j,
    "slice": lambda: slice(1, 5),
    "Counter": lambda: collections.Counter(a=2),
    "OrderedDict": lambda: collections.OrderedDict(b=1, a=torch.ones(1)),
    "defaultdict": lambda: collections.defaultdict(list, x=[1]),
    "complex array": lambda: np.array([1 + 1j, 2], dtype=np.complex64),
    "object array": lambda: np.array([None, "a"], dtype=object),
}

NUMPY_DTYPES = ["bool", "uint8", "int32", "int64", "float16", "float32", "float64"]
TORCH_DTYPES = [torch.bool, torch.uint8, torch.int64, torch.float32, torch.bfloat16]


@st.composite
def numpy_leaves(draw: st.DrawFn) -> Any:
    dtype = draw(st.sampled_from(NUMPY_DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=2)))
    values = draw(st.lists(st.integers(0, 5), min_size=int(np.prod(shape)), max_size=9))
    arr = np.array(values[: int(np.prod(shape))], dtype=dtype).reshape(shape)
    return arr[()] if draw(st.booleans()) and arr.ndim == 0 else arr


@st.composite
def torch_leaves(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["dense", "transposed", "complex", "sparse", "parameter"]))
    base = torch.arange(6, dtype=torch.float32).reshape(2, 3) * draw(st.integers(-3, 3))
    if kind == "transposed":
        return base.T
    if kind == "complex":
        return torch.complex(base, -base)
    if kind == "sparse":
        return base.to_sparse()
    if kind == "parameter":
        return torch.nn.Parameter(base, requires_grad=False)
    return base.to(draw(st.sampled_from(TORCH_DTYPES)))


object_leaves = st.sampled_from(sorted(OBJECTS)).map(lambda name: OBJECTS[name]())
python_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**2030, max_value=2**2060),  # pickled with LONG1 or LONG4
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.binary(max_size=5),
)
keys = st.one_of(st.text("abc/", max_size=3), st.integers(0, 3), st.just((1, "k")))
states = st.recursive(
    numpy_leaves() | torch_leaves() | python_leaves | object_leaves,
    lambda kids: st.one_of(
        st.lists(kids, max_size=3),
        st.lists(kids, max_size=3).map(tuple),
        st.dictionaries(keys, kids, max_size=3),
    ),
    max_leaves=8,
)


def assert_equal_values(saved: Any, back: Any, path: str = "root") -> None:
    """The same values: containers element by element, arrays by dtype, shape and content."""
    if isinstance(saved, torch.Tensor):
        assert isinstance(back, torch.Tensor), f"{path}: {type(back).__name__} back"
        assert (saved.dtype, saved.shape, saved.layout) == (back.dtype, back.shape, back.layout)
        dense = saved.to_dense() if saved.is_sparse else saved
        assert torch.equal(dense, back.to_dense() if back.is_sparse else back), path
    elif isinstance(saved, np.ndarray | np.generic):
        assert isinstance(back, np.ndarray | np.generic), f"{path}: {type(back).__name__} back"
        assert (saved.dtype, np.shape(saved)) == (back.dtype, np.shape(back)), path
        assert np.array_equal(saved, back), path
    elif isinstance(saved, Mapping):
        assert isinstance(back, Mapping) and list(saved) == list(back), f"{path}: keys"
        for k in saved:
            assert_equal_values(saved[k], back[k], f"{path}/{k!r}")
    elif isinstance(saved, list | tuple):
        assert isinstance(back, list | tuple) and len(saved) == len(back), path
        assert isinstance(saved, list) == isinstance(back, list), f"{path}: list vs tuple"
        for i, (x, y) in enumerate(zip(saved, back)):
            assert_equal_values(x, y, f"{path}/{i}")
    else:
        assert type(saved) is type(back) and saved == back, f"{path}: {saved!r} vs {back!r}"


def listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def save_then_restore(state: Any, fmt: str, async_save: bool) -> str:
    """Save `state`; check the round trip or the clean refusal. Returns what happened."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        CheckpointManager(Path(tmp) / "run", format=fmt, async_save=async_save) as mgr,
    ):
        before = listing(Path(tmp))
        try:
            mgr.save(1, state)
        except TypeError as e:
            mgr.wait()
            assert listing(Path(tmp)) == before, f"a refused save left files: {e}"
            assert mgr.all_steps() == [], e
            assert "\x1b" not in str(e) and "HINT" in str(e), str(e)
            return "refused"
        back = mgr.restore(1)  # any error here is a committed step that does not come back
        assert_equal_values(state, back)
        return "restored"


@given(state=states, fmt=st.sampled_from(["auto", "tree", "torch"]), async_save=st.booleans())
@QUICK
def test_every_state_save_accepts_is_restored(tally, state, fmt, async_save):
    with torch.serialization.safe_globals([Allowed]):
        outcome = save_then_restore(state, fmt, async_save)
    event(f"{fmt}: {outcome}")
    tally("random mixed state", 1, format=fmt, outcome=outcome)


@pytest.mark.slow
@given(state=states, fmt=st.sampled_from(["auto", "tree", "torch"]), async_save=st.booleans())
@STRESS
def test_stress_every_state_save_accepts_is_restored(tally, state, fmt, async_save):
    with torch.serialization.safe_globals([Allowed]):
        outcome = save_then_restore(state, fmt, async_save)
    event(f"{fmt}: {outcome}")
    tally("random mixed state", 1, format=fmt, outcome=outcome)
