"""Host copies of a state's arrays for async saves, into buffers reused from one save to the next."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

from .. import _tree
from .jax_pinning import jax_pinned


def host_copy(x: Any) -> Any:
    """A copy of an array leaf that the training loop cannot change; other leaves as they are.

    numpy arrays and torch tensors are copied (the loop mutates them in place), into the
    buffers of the previous async save when `SnapshotBuffers.reuse` is active. JAX arrays are
    immutable and are not copied, only made safe from buffer donation (`jax_pinned`).
    """
    buffers = _ACTIVE_BUFFERS.get()
    if _tree.is_numpy(x):
        return buffers.copy(x) if buffers is not None and x.ndim else x.copy()
    if _tree.is_sharded_tensor(x):
        return _sharded_host_copy(x)
    if _tree.is_torch_tensor(x):
        if buffers is not None and _is_dense_tensor(x):
            return buffers.copy(x)
        return x.detach().to("cpu", copy=True)  # sparse and quantized tensors too
    if _tree.is_jax_array(x):
        return jax_pinned(x)
    return x


def _sharded_host_copy(x: Any) -> Any:
    """A host copy of a `ShardedTensor` (FSDP1's), as DCP's own staging makes one: its `cpu()`
    copies local shards on a device into fresh memory (placements rewritten), and returns a
    host one as it is. Not into the reused buffers: a ShardedTensor is rebuilt around its
    shards with their metadata, which its own `cpu()` and `deepcopy` do."""
    import copy

    host = x.cpu()
    return copy.deepcopy(x) if host is x else host


def _is_dense_tensor(x: Any) -> bool:
    """A tensor a plain buffer can hold: strided, not quantized (a sparse one is not)."""
    import torch

    return x.layout is torch.strided and not x.is_quantized


_ACTIVE_BUFFERS: contextvars.ContextVar[SnapshotBuffers | None] = contextvars.ContextVar(
    "ckpt_snapshot_buffers", default=None
)


class SnapshotBuffers:
    """Host buffers that one async save after another copies its arrays into.

    A manager has at most one save in flight and waits for it before taking the next
    snapshot, so the previous snapshot's buffers are free by then. Reusing them saves the
    page faults of fresh allocations (as costly as the copy itself), and for CUDA tensors
    they are pinned, so the device-to-host copy runs at full speed.
    """

    def __init__(self) -> None:
        self._buffers: list[Any] = []
        self._used = 0
        self._devices: set[Any] = set()  # the GPUs copied from, each synchronized at the end

    @contextlib.contextmanager
    def reuse(self) -> Iterator[None]:
        """Within this block, `host_copy` copies into these buffers (in call order)."""
        self._used = 0
        self._devices.clear()
        token = _ACTIVE_BUFFERS.set(self)
        try:
            yield
        finally:
            _ACTIVE_BUFFERS.reset(token)
            del self._buffers[self._used :]  # the state shrank: let go of what is left over
            if self._devices:
                import torch

                for device in self._devices:  # the non-blocking device-to-host copies are done
                    torch.cuda.synchronize(device)

    def copy(self, x: Any) -> Any:
        index = self._used
        self._used += 1
        buf: Any = self._buffers[index] if index < len(self._buffers) else None
        if _tree.is_torch_tensor(x):
            x = x.detach()
            if not _fits(buf, x):
                import torch

                buf = torch.empty(x.shape, dtype=x.dtype, pin_memory=x.is_cuda)
            buf.copy_(x, non_blocking=x.is_cuda)
            if x.is_cuda:
                self._devices.add(x.device)
        else:
            if not _fits(buf, x):
                import numpy as np

                buf = np.empty_like(x, order="C")
            buf[...] = x
        if index < len(self._buffers):
            self._buffers[index] = buf
        else:
            self._buffers.append(buf)
        return buf


def _fits(buf: Any, x: Any) -> bool:
    return (
        buf is not None
        and type(buf) is type(x)
        and buf.shape == x.shape
        and buf.dtype == x.dtype
        and (not _tree.is_torch_tensor(x) or buf.device.type == "cpu")
    )
