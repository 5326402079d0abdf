"""A save that commits restores with the same options; what would not come back is refused at
`save`, naming the leaf, its type and the fix, and leaves nothing behind."""

from __future__ import annotations

import collections
import dataclasses
import enum
import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch

from ckpt_core import (
    CheckpointManager,
    UnsafeFormatError,
    load_checkpoint,
    save_checkpoint,
)
from ckpt_core.formats import torch as torch_format


class Color(enum.Enum):
    RED = 1


@dataclasses.dataclass
class Config:
    depth: int = 2
    name: str = "mlp"


class Plain:
    pass


Pair = collections.namedtuple("Pair", "a b")

# (leaf, its type as the message names it, the global add_safe_globals needs or None)
REFUSED = {
    "path": (pathlib.Path("/data"), "pathlib.PosixPath", "pathlib.PosixPath"),
    "enum": (Color.RED, f"{__name__}.Color", f"{__name__}.Color"),
    "dataclass": (Config(), f"{__name__}.Config", f"{__name__}.Config"),
    "plain object": (Plain(), f"{__name__}.Plain", f"{__name__}.Plain"),
    "frozenset": (frozenset({1, 2}), "frozenset", "frozenset"),
    "namedtuple": (Pair(1, 2), f"{__name__}.Pair", f"{__name__}.Pair"),
    "defaultdict": (collections.defaultdict(list), "collections.defaultdict", None),
    "numpy array": (np.ones(3, dtype=np.float32), "numpy.ndarray", None),
    "function": (lambda: 0, "function", None),
}


TREE_TAKES = {"numpy array", "defaultdict", "namedtuple"}  # `auto` picks the tree format
REFUSAL_CASES = [
    (kind, fmt)
    for kind in sorted(REFUSED)
    for fmt in ("auto", "torch")
    if fmt == "torch" or kind not in TREE_TAKES
]


def listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(("kind", "fmt"), REFUSAL_CASES)
def test_torch_save_refuses_what_weights_only_load_refuses(run_dir, kind, fmt, async_save):
    leaf, type_name, allow = REFUSED[kind]
    with CheckpointManager(run_dir, format=fmt, async_save=async_save) as mgr:
        mgr.save(1, {"w": torch.ones(2)})
        mgr.wait()
        before = listing(run_dir)
        with pytest.raises(TypeError) as err:
            mgr.save(2, {"w": torch.ones(2), "extra": {"p": leaf}})  # `save` itself refuses
        mgr.wait()
        assert listing(run_dir) == before  # no step 2, no temporaries
        assert mgr.all_steps() == [1]
    message = str(err.value)
    assert "'extra/p'" in message and type_name in message, message
    assert "format='pickle'" in message and "allow_pickle=True" in message, message
    if allow is not None:
        assert f"torch.serialization.add_safe_globals([{allow}])" in message, message
    assert len(message) < 500 and "\x1b" not in message, message


def test_refused_one_shot_save_leaves_no_directory(tmp_path):
    with pytest.raises(TypeError, match=r"'p'.*pathlib\.PosixPath"):
        save_checkpoint(tmp_path / "one", {"w": torch.ones(2), "p": pathlib.Path("/d")})
    assert listing(tmp_path) == []


def test_classes_allowed_with_add_safe_globals_are_saved_and_come_back(run_dir):
    state = {"w": torch.ones(2), "cfg": Config(3, "cnn"), "color": Color.RED}
    with torch.serialization.safe_globals([Config, Color]):
        with CheckpointManager(run_dir) as mgr:
            mgr.save(1, state)
            back = mgr.restore(1)
    assert back["cfg"] == Config(3, "cnn") and back["color"] is Color.RED
    assert torch.equal(back["w"], state["w"])
    with CheckpointManager(run_dir, on_existing="resume") as mgr:
        with pytest.raises(TypeError, match="'cfg'"):  # no longer allowed: refused again
            mgr.save(2, state)


def test_what_weights_only_takes_beyond_plain_tensors_is_saved(run_dir):
    state = {
        "sparse": torch.eye(3).to_sparse(),
        "csr": torch.eye(3).to_sparse_csr(),
        "complex": torch.ones(2, dtype=torch.complex64),
        "param": torch.nn.Parameter(torch.ones(2)),
        "set": {1, 2},
        "counter": collections.Counter(a=2),
        "ordered": collections.OrderedDict(b=torch.ones(1)),
        "dtype": torch.float16,
        "size": torch.Size([2, 3]),
    }
    for async_save in (False, True):
        with CheckpointManager(run_dir, async_save=async_save, on_existing="overwrite") as mgr:
            mgr.save(1, state)  # auto: the tree format cannot, torch can
            back = mgr.restore(1)
            assert mgr.info(1).format == "torch"
        assert back["sparse"].layout == torch.sparse_coo
        assert torch.equal(back["sparse"].to_dense(), torch.eye(3))
        assert torch.equal(back["csr"].to_dense(), torch.eye(3))
        assert back["set"] == {1, 2} and back["counter"] == collections.Counter(a=2)
        assert back["dtype"] is torch.float16 and back["size"] == torch.Size([2, 3])


def test_plain_values_weights_only_still_refuses(run_dir):
    """Found by tests/reliability/test_restorable_states.py: b"" pickles as a call of `bytes`
    and an int of 256 bytes or more with LONG4; torch.load(weights_only=True) takes neither,
    though it takes b"x" and smaller ints."""
    with CheckpointManager(run_dir, format="torch") as mgr:
        for refused in (b"", 2**2040):
            with pytest.raises(TypeError, match="'v'"):
                mgr.save(1, {"w": torch.ones(1), "v": refused})
        mgr.save(2, {"w": torch.ones(1), "v": [b"x", 2**2000]})
        assert mgr.restore(2)["v"] == [b"x", 2**2000]


def test_the_check_runs_past_what_it_cannot_rebuild_without_data(run_dir):
    # a quantized tensor cannot be rebuilt on the meta device: the Path after it is still found
    state = {
        "q": torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8),
        "p": pathlib.Path("/d"),
    }
    with CheckpointManager(run_dir, format="torch") as mgr:
        with pytest.raises(TypeError, match="'p'"):
            mgr.save(1, state)
        mgr.save(2, {"q": state["q"]})
        assert torch.equal(mgr.restore(2)["q"].dequantize(), state["q"].dequantize())


@pytest.mark.parametrize(
    ("leaf", "found", "fix"),
    [
        (np.zeros(2, dtype=np.complex128), "complex128 numpy array", ".real and .imag"),
        (np.array([1, "a"], dtype=object), "object numpy array", "numeric array"),
        (torch.eye(2).to_sparse(), "sparse_coo torch tensor", ".to_dense()"),
        (torch.ones(2, dtype=torch.complex64), "complex64 torch tensor", ".real and .imag"),
    ],
    ids=["complex", "object", "sparse", "torch-complex"],
)
def test_tree_format_names_the_leaf_it_cannot_store(run_dir, leaf, found, fix):
    with CheckpointManager(run_dir, format="tree") as mgr:
        before = listing(run_dir)
        with pytest.raises(TypeError) as err:
            mgr.save(1, {"a": np.ones(2), "x": {"y": leaf}})
        assert listing(run_dir) == before
    message = str(err.value)
    assert "'x/y'" in message and found in message and fix in message, message


@pytest.mark.parametrize(
    ("leaf", "found"),
    [
        (np.zeros(2, dtype=np.complex64), "complex64 numpy array"),
        (np.array([{}, None], dtype=object), "object numpy array"),
    ],
    ids=["complex", "object"],
)
def test_auto_names_the_leaf_when_no_format_takes_the_state(run_dir, leaf, found):
    with CheckpointManager(run_dir) as mgr, pytest.raises(TypeError) as err:
        mgr.save(1, {"a": np.ones(2), "x": {"y": leaf}})
    message = str(err.value)
    assert message.startswith("format='auto' cannot save this state")
    assert "'x/y'" in message and found in message and "format='pickle'" in message, message
    assert not (run_dir / "step_00000001").exists()


def test_auto_explains_both_formats_when_each_refuses_a_different_leaf(run_dir):
    state = {"a": np.ones(2), "s": torch.eye(2).to_sparse()}  # tree: not `s`; torch: not `a`
    with CheckpointManager(run_dir) as mgr, pytest.raises(TypeError) as err:
        mgr.save(1, state)
    message = str(err.value)
    assert "sparse_coo torch tensor at 's'" in message and ".to_dense()" in message, message
    assert "the numpy.ndarray at 'a'" in message, message
    assert len(message) < 500, message


def test_a_refused_step_on_disk_restores_with_a_plain_message(run_dir, monkeypatch):
    # a step written before save checked (or by hand): restore says what torch refused
    with monkeypatch.context() as patch:
        patch.setattr(torch_format, "check_restorable", lambda state: None)
        with CheckpointManager(run_dir, format="torch") as mgr:
            mgr.save(1, {"w": torch.ones(2), "p": pathlib.Path("/d")})
    with CheckpointManager(run_dir, read_only=True) as mgr:
        with pytest.raises(UnsafeFormatError) as err:
            mgr.restore(1)
    message = str(err.value)
    assert "\x1b" not in message, repr(message)
    assert "pathlib.PosixPath" in message and "add_safe_globals([pathlib.PosixPath])" in message
    with pytest.raises(UnsafeFormatError) as err:
        load_checkpoint(run_dir / "step_00000001")
    assert "\x1b" not in str(err.value)


def test_lightning_style_checkpoints_pass_without_running_the_unpickler(monkeypatch):
    """Plain containers, numbers and dense tensors skip torch's (slow, pure-Python) unpickler."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    checkpoint = {
        "epoch": 1,
        "state_dict": model.state_dict(),
        "optimizer_states": [optimizer.state_dict()],
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 2}}}},
        "hparams_name": None,
        "rng": torch.get_rng_state(),
        "pytorch-lightning_version": "2.6.6",
    }

    def fail(*args: object) -> None:
        raise AssertionError("the exact check ran for a plain checkpoint")

    monkeypatch.setattr(torch_format, "_refusal", fail)
    assert torch_format.restore_refusal(checkpoint) is None
