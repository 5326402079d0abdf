"""Proving a training loop resumes exactly: an interrupted run against an uninterrupted one, leaf by leaf.

A user's test hands `check_resume_is_exact` their own training function; the helper runs it
once straight through and once cut in two (stopped after a checkpoint, then started again
on the same directory), and compares the two final states bit for bit. Leaves are compared
as host bytes, so numpy, torch and JAX arrays (typed PRNG keys by their key data) and Python
scalars are all handled without importing a framework here.
"""

from __future__ import annotations

import math
import os
import pickle
import signal
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._tree import (
    is_jax_array,
    is_jax_key,
    is_leaf,
    is_numpy,
    is_torch_tensor,
    iter_leaves_lenient,
    path_str,
)
from .errors import CheckpointError, ResumeNotExactError

TrainFn = Callable[[Path, int], Any]
"""`train(directory, total_steps) -> state`: the user's loop, see `check_resume_is_exact`."""

UNINTERRUPTED = "uninterrupted"
INTERRUPTED = "interrupted"
MAX_NAMED = 5  # differing leaves named in an error message; the report holds them all


@dataclass(frozen=True)
class ResumeReport:
    """What `check_resume_is_exact` compared.

    Attributes:
        steps_before: steps run before the interruption.
        steps_after: steps run after the resume.
        leaves: how many leaves were compared.
        differences: `"path: why"` for every leaf that differs (empty when exact).
    """

    steps_before: int
    steps_after: int
    leaves: int
    differences: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not self.differences


@dataclass(frozen=True)
class _Leaf:
    """A leaf reduced to what bit-for-bit equality needs: picklable, framework-free."""

    kind: str  # "numpy", "torch", "jax", "jax key", or a Python type's name
    dtype: str
    shape: tuple[int, ...]
    data: bytes | str  # an array's raw bytes, a scalar's repr


def check_resume_is_exact(
    train: TrainFn,
    *,
    steps_before: int,
    steps_after: int,
    directory: str | os.PathLike[str] | None = None,
    in_subprocess: bool = False,
) -> ResumeReport:
    """Check that `train` ends bit for bit the same whether or not it was interrupted.

    `train(directory, total_steps)` is the user's own loop: it trains until `total_steps`
    steps have run in all, continuing from the checkpoints in `directory` when there are
    some (e.g. `CkptHook(directory, resume=True)`, `CkptCallback(directory, resume=True)` with
    `max_steps=total_steps`, `run(env, agent, RunnerConfig(total_steps, directory,
    resume=True))`), checkpoints at its last step at the latest, and returns the state to
    compare: any tree of numpy/torch/JAX arrays and Python scalars; `flax.nnx` objects and
    objects with a `state_dict()` (torch modules and optimizers, agents) are compared by
    their state. It must seed itself at its start, as a fresh process would.

    The helper calls `train(a, steps_before + steps_after)`, then `train(b, steps_before)`
    and `train(b, steps_before + steps_after)` (the resume), and compares the results leaf by
    leaf, bit for bit.

    Example::

        def test_my_loop_resumes_exactly():
            check_resume_is_exact(my_train, steps_before=20, steps_after=10)

    Args:
        train: the loop, as above. With `in_subprocess`, a module-level function.
        steps_before: steps run before the interruption (at least 1).
        steps_after: steps run after the resume (at least 1).
        directory: where the two runs write (`<directory>/uninterrupted`,
            `<directory>/interrupted`, which must not exist yet); a temporary directory,
            removed afterwards, by default.
        in_subprocess: run each of the three calls in a fresh Python process, and kill the
            interrupted one with SIGKILL as soon as `train` returns (no exit handlers, no
            finalizers): what the resume needs must be committed by then, and nothing held
            by the test process (a module-level cache, a global RNG) can leak into the runs.

    Returns:
        The `ResumeReport` (`exact` is True).

    Raises:
        ResumeNotExactError: an `AssertionError` naming every leaf path that differs (its
            `report` has the whole list).
        TypeError, ValueError: a step count is not a positive int.
        ValueError: `directory` already holds the runs, `train` returned nothing to compare,
            or it wrote nothing in the interrupted run's directory.
        CheckpointError: with `in_subprocess`, `train` failed in its process.
    """
    for name, value in (("steps_before", steps_before), ("steps_after", steps_after)):
        wrong_type = isinstance(value, bool) or not isinstance(value, int)
        if wrong_type or value < 1:
            raise (TypeError if wrong_type else ValueError)(
                f"check_resume_is_exact({name}={value!r}): expected a positive int. HINT: "
                "pass the number of training steps before and after the interruption."
            )
    if directory is None:
        with tempfile.TemporaryDirectory(prefix="ckpt-exactness-") as scratch:
            return _check(train, steps_before, steps_after, Path(scratch), in_subprocess)
    return _check(train, steps_before, steps_after, Path(directory), in_subprocess)


def _check(
    train: TrainFn, before: int, after: int, root: Path, in_subprocess: bool
) -> ResumeReport:
    straight, cut = root / UNINTERRUPTED, root / INTERRUPTED
    for run_dir in (straight, cut):
        if run_dir.exists():
            raise ValueError(
                f"check_resume_is_exact(directory={str(root)!r}): {run_dir.name!r} already "
                "exists there, and a resume from it would not start from scratch. HINT: pass "
                "an empty directory, or none (a temporary one)."
            )
        run_dir.mkdir(parents=True)
    call = _call_in_subprocess if in_subprocess else _call_here
    expected = call(train, straight, before + after, kill=False) or {}
    if not expected:
        raise ValueError(
            f"check_resume_is_exact: train(directory, {before + after}) returned no leaves, so "
            "there is nothing to compare. HINT: return the trained state (weights, optimizer "
            "state, counters), e.g. {'model': model, 'optimizer': optimizer}."
        )
    call(train, cut, before, kill=True)
    if not any(cut.iterdir()):
        raise ValueError(
            f"check_resume_is_exact: train(directory, {before}) wrote nothing in the "
            "directory it was given, so there is no checkpoint to resume from. HINT: "
            "checkpoint into `directory` and save at the last step (e.g. `force=True`)."
        )
    resumed = call(train, cut, before + after, kill=False) or {}
    differences = _compare(expected, resumed)
    report = ResumeReport(before, after, len(expected), differences)
    if differences:
        named = "; ".join(differences[:MAX_NAMED])
        more = len(differences) - MAX_NAMED
        raise ResumeNotExactError(
            f"a run interrupted after {before} steps and resumed for {after} differs from an "
            f"uninterrupted one in {len(differences)} of {len(expected)} leaves: {named}"
            + (f"; and {more} more (see .report.differences)" if more > 0 else "")
            + ". HINT: the checkpoint misses what these leaves depend on: save every RNG "
            "stream, the data position and the optimizer state, and restore them on resume.",
            report,
        )
    return report


# ---------------------------------------------------------------------- running train


def _call_here(
    train: TrainFn, directory: Path, steps: int, *, kill: bool
) -> dict[str, _Leaf] | None:
    return _host_leaves(train(directory, steps))


def _call_in_subprocess(
    train: TrainFn, directory: Path, steps: int, *, kill: bool
) -> dict[str, _Leaf] | None:
    try:
        pickle.dumps(train)
    except Exception as e:
        raise ValueError(
            f"check_resume_is_exact(in_subprocess=True) cannot send {train!r} to a new "
            f"process ({type(e).__name__}: {e}). HINT: pass a function defined at module level."
        ) from None
    import multiprocessing  # only here: the in-process check needs none of it

    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(train, directory, steps, kill, send))
    child.start()
    send.close()
    try:
        leaves = receive.recv() if not kill else None
    except EOFError:
        leaves = None
    child.join()
    receive.close()
    want = -signal.SIGKILL if kill else 0
    if child.exitcode != want:
        raise CheckpointError(
            f"check_resume_is_exact(in_subprocess=True): train(directory, {steps}) failed in "
            f"its process (exit code {child.exitcode}, expected {want}); its traceback is on "
            "stderr. HINT: run with in_subprocess=False to debug it in this process."
        )
    return leaves


def _child(train: TrainFn, directory: Path, steps: int, kill: bool, send: Any) -> None:
    state = train(directory, steps)
    if kill:
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    send.send(_host_leaves(state))
    send.close()


# ---------------------------------------------------------------------- comparing leaves


def _compare(expected: Mapping[str, _Leaf], actual: Mapping[str, _Leaf]) -> list[str]:
    """`"path: why"` for every leaf that is not bit for bit the same in both, in path order."""
    differences = []
    for path in sorted(expected.keys() | actual.keys()):
        want, got = expected.get(path), actual.get(path)
        if want is None:
            differences.append(f"{path}: only in the resumed run")
        elif got is None:
            differences.append(f"{path}: missing from the resumed run")
        elif want != got:
            differences.append(f"{path}: {_why(want, got)}")
    return differences


def _why(want: _Leaf, got: _Leaf) -> str:
    scalar = isinstance(want.data, str) or isinstance(got.data, str)
    if scalar or (want.kind, want.dtype, want.shape) != (got.kind, got.dtype, got.shape):
        return f"{_label(got)} resumed, {_label(want)} uninterrupted"
    count = math.prod(want.shape)
    width = len(want.data) // count
    differ = sum(
        want.data[i : i + width] != got.data[i : i + width] for i in range(0, len(want.data), width)
    )
    if count == 1 and (values := _scalar_values(want, got)) is not None:
        return f"{values[1]} resumed, {values[0]} uninterrupted"
    return f"{differ} of {count} elements differ"


def _scalar_values(*leaves: _Leaf) -> tuple[str, ...] | None:
    """The values of one-element numeric arrays, for the message; None if numpy cannot read them."""
    np = sys.modules.get("numpy")
    if np is None:
        return None
    try:
        return tuple(
            repr(np.frombuffer(leaf.data, dtype=np.dtype(leaf.dtype))[0].item()) for leaf in leaves
        )
    except (TypeError, ValueError):  # a key's data, or a dtype numpy does not know (bfloat16)
        return None


def _label(leaf: _Leaf) -> str:
    if isinstance(leaf.data, str):
        text = leaf.data if len(leaf.data) <= 40 else leaf.data[:37] + "..."
        return f"{leaf.kind} {text}"
    return f"{leaf.kind} {leaf.dtype}{list(leaf.shape)}"


def _host_leaves(tree: Any) -> dict[str, _Leaf]:
    """Every leaf of `tree` by path, reduced to its kind, dtype, shape and bytes on the host."""
    if tree is None:  # a function that returns nothing has nothing to compare
        return {}
    return {path_str(path): _host_leaf(leaf) for path, leaf in iter_leaves_lenient(_states(tree))}


def _states(tree: Any) -> Any:
    """`tree` with NNX objects and objects with a `state_dict()` replaced by their state."""
    nnx = sys.modules.get("flax.nnx")  # only if the user's code imported it
    if nnx is not None and isinstance(tree, getattr(nnx, "Pytree", None) or nnx.Object):
        return nnx.to_pure_dict(nnx.state(tree))
    if not is_leaf(tree) and callable(getattr(tree, "state_dict", None)):
        return _states(tree.state_dict())
    if isinstance(tree, Mapping):
        return {k: _states(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        items = [_states(v) for v in tree]
        return dict(zip(type(tree)._fields, items)) if hasattr(tree, "_fields") else items
    return tree


def _host_leaf(x: Any) -> _Leaf:
    if is_numpy(x):
        import numpy as np

        array = np.ascontiguousarray(x)
        return _Leaf("numpy", str(array.dtype), tuple(array.shape), array.tobytes())
    if is_torch_tensor(x):
        tensor = x.detach().cpu().contiguous()
        raw = tensor.reshape(-1).view(_torch_bytes_dtype())
        return _Leaf(
            "torch",
            str(tensor.dtype).removeprefix("torch."),
            tuple(tensor.shape),
            raw.numpy().tobytes(),
        )
    if is_jax_array(x):
        import jax
        import numpy as np

        kind, dtype = "jax", str(x.dtype)
        if is_jax_key(x):
            kind, x = "jax key", jax.random.key_data(x)
        array = np.ascontiguousarray(jax.device_get(x))
        return _Leaf(kind, dtype, tuple(array.shape), array.tobytes())
    # float repr round-trips exactly; bool and int stay apart by the type's name
    return _Leaf(type(x).__qualname__, "", (), repr(x))


def _torch_bytes_dtype() -> Any:
    import torch

    return torch.uint8
