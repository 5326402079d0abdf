"""The `torch` format: one `torch.save` file, `state.pt`, loaded back with `weights_only=True`.

`torch.load(<step dir>/state.pt, weights_only=True)` opens a payload with torch alone, so
Lightning's `load_from_checkpoint` and `Trainer(ckpt_path=...)` read it as their own.

The file is written without torch's per-record CRC32: the manifest's xxh3 checksum already
covers every byte and is checked on every restore, and skipping the CRC makes the save
CPU-cheap enough to keep up with the disk. `torch.load` does not need it; zip tools that
test archives (`unzip -t`) will report the missing CRCs.

A state is saved only if it comes back: before anything is written, the pickle `torch.save`
makes of it (tensor data left out) is run through torch's own `weights_only` unpickler, the
one `torch.load(weights_only=True)` uses, with the classes allowed at that moment
(`torch.serialization.add_safe_globals`). What it refuses is refused at `save`, naming the leaf.
"""

from __future__ import annotations

import collections
import contextlib
import io
import pickle
import re
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

from .. import _tree
from ..errors import UnsafeFormatError, plain_text
from ..storage import StepWriter
from .frameworks import torch_module
from .like import fit_like
from .protocol import TreeListing
from .reader import StepReader
from .refusal import PICKLE_HINT, Refusal
from .snapshot import host_copy
from .torch_listing import describe_torch_file

PAYLOAD = "state.pt"


class TorchFormat:
    """Any state `torch.save` takes and `torch.load(weights_only=True)` gives back."""

    name = "torch"
    main_file = "state.pt"

    def accepts(self, state: Any) -> bool:
        if "torch" not in sys.modules:
            return False
        return has_torch_tensor(state) and restore_refusal(state) is None

    def snapshot(self, state: Any) -> Any:
        check_restorable(state)  # here, so that `save` itself refuses, and before any copy
        return _tree.rebuild_like(state, lambda _, leaf: host_copy(leaf))

    def write(self, state: Any, writer: StepWriter) -> None:
        torch = torch_module()
        check_restorable(state)
        with writer.open(PAYLOAD) as f, _without_zip_crc(torch):
            torch.save(state, f)

    def read(self, reader: StepReader, like: Any = None) -> Any:
        torch = torch_module()
        path = reader.local_path(PAYLOAD)
        try:
            if path is not None:
                reader.verify(PAYLOAD)
                obj = torch.load(path, weights_only=True, map_location="cpu", mmap=reader.lazy)
            else:
                data = io.BytesIO(reader.read_bytes(PAYLOAD))
                obj = torch.load(data, weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as e:
            allow = _refused_global(str(e)) or "..."
            raise UnsafeFormatError(
                f"{reader.display(PAYLOAD)} holds objects that torch.load(weights_only=True) "
                f"refuses to rebuild ({_short_reason(str(e))}). HINT: if you trust this file, "
                f"allow them with torch.serialization.add_safe_globals([{allow}]) before restoring."
            ) from None
        if like is not None:
            return fit_like(obj, like, f"step {reader.manifest.step}")
        return obj

    def describe(self, reader: StepReader) -> TreeListing:
        """Every leaf from the zip directory and pickle of `state.pt`; torch is not imported
        and nothing in the file runs."""
        return describe_torch_file(reader, PAYLOAD)


def has_torch_tensor(state: Any) -> bool:
    """Whether any leaf of `state` is a torch tensor (the torch format's domain)."""
    return any(_tree.is_torch_tensor(leaf) for _, leaf in _tree.iter_leaves_lenient(state))


_CRC_OPTION = threading.Lock()


@contextlib.contextmanager
def _without_zip_crc(torch: Any) -> Iterator[None]:
    serialization = torch.serialization
    if not hasattr(serialization, "set_crc32_options"):  # older torch: always computes it
        yield
        return
    with _CRC_OPTION:
        previous = serialization.get_crc32_options()
        serialization.set_crc32_options(False)
        try:
            yield
        finally:
            serialization.set_crc32_options(previous)


# ---------------------------------------------------------------- will it come back?


def check_restorable(state: Any) -> None:
    """Raise TypeError if `torch.load(weights_only=True)` would refuse any part of `state`.

    The message names the refused leaf, its type, and the fixes.
    """
    refusal = restore_refusal(state)
    if refusal is not None:
        raise TypeError(f"format='torch' cannot save this state: {refusal.message}")


def restore_refusal(state: Any) -> Refusal | None:
    """The first object in `state` that `torch.load(weights_only=True)` would refuse to rebuild
    (or that torch cannot pickle at all), with the fix; None if all of it restores.

    The verdict is torch's own: the pickle `torch.save` makes of `state`, tensor data left out,
    goes through the `weights_only` unpickler with the classes allowed right now. States of
    plain containers, numbers and dense tensors, which it always takes, skip that run.
    """
    torch = torch_module()
    if _plainly_restorable(torch, state):
        return None
    reason = _refusal(torch, state)
    if reason is None:
        return None
    return _refusal_of(*_narrow(torch, state, (), reason))


# Not bytes: b"" pickles as a call of `bytes`, which weights_only refuses. Not every int:
# one of 256 bytes or more pickles with an opcode (LONG4) it does not read.
_PLAIN_SCALARS = (str, float, bool, type(None))


def _plainly_restorable(torch: Any, node: Any) -> bool:
    """Whether `node` holds only what `weights_only` always rebuilds (no class of anyone's)."""
    kind = type(node)
    if kind is torch.Tensor or kind is torch.nn.Parameter:
        return (
            node.layout is torch.strided
            and (node.is_cpu or node.is_cuda)
            and not (node.is_quantized or node.is_nested or node.__dict__)
        )
    if kind in _PLAIN_SCALARS or kind in (torch.dtype, torch.device, torch.Size):
        return True
    if kind is int:
        return node.bit_length() < 2000
    if kind is list or kind is tuple:
        return all([_plainly_restorable(torch, child) for child in node])
    if kind is dict or kind is collections.OrderedDict:
        if kind is collections.OrderedDict and not _plainly_restorable(torch, vars(node)):
            return False  # a state_dict's `_metadata` is pickled with it
        for key, value in node.items():
            if not (_plainly_restorable(torch, key) and _plainly_restorable(torch, value)):
                return False
        return True
    return False


def _narrow(
    torch: Any, node: Any, path: tuple[Any, ...], reason: str
) -> tuple[tuple[Any, ...], Any, str]:
    """The innermost part of `node` (refused for `reason`) that is refused by itself."""
    for key, child in _tree.children(node) or ():
        if _plainly_restorable(torch, child):
            continue
        child_reason = _refusal(torch, child)
        if child_reason is not None:
            return _narrow(torch, child, (*path, key), child_reason)
    return path, node, reason


def _refusal(torch: Any, obj: Any) -> str | None:
    """Why `torch.load(weights_only=True)` would refuse `torch.save(obj)`, or None."""
    try:
        torch.save(obj, _Discard(), pickle_module=_CAPTURE)
    except _Captured as captured:
        return _unpickle_refusal(torch, captured.data)
    except (pickle.PicklingError, TypeError, AttributeError) as e:  # torch.save would fail too
        return f"torch cannot pickle it: {type(e).__name__}: {_short_reason(str(e))}"
    raise AssertionError("torch.save did not pickle through the given pickle_module")


def _unpickle_refusal(torch: Any, data: bytes) -> str | None:
    from torch import _weights_only_unpickler

    pending_sparse = getattr(torch._utils, "_sparse_tensors_to_validate", [])
    before = len(pending_sparse)
    try:
        for device in ("meta", "cpu"):  # meta allocates nothing; some rebuilds need real memory
            unpickler: Any = _weights_only_unpickler.Unpickler(io.BytesIO(data), encoding="utf-8")
            unpickler.persistent_load = _StubStorages(torch, device)
            try:
                unpickler.load()
                return None
            except pickle.UnpicklingError as e:
                return _short_reason(str(e))
            except Exception:  # a rebuild that needs real data: try again with (unread) memory
                continue
        return None  # rebuilt nothing that torch refused; its errors are not about safety
    finally:
        del pending_sparse[before:]  # validated by torch.load; these are not loaded tensors


class _StubStorages:
    """`persistent_load` giving each tensor storage of the pickle an uninitialised stand-in."""

    def __init__(self, torch: Any, device: str) -> None:
        self._torch, self._device = torch, device
        self._made: dict[Any, Any] = {}

    def __call__(self, saved_id: Any) -> Any:
        torch = self._torch
        _, storage_type, key, _location, numel = saved_id
        if key not in self._made:
            dtype = torch.uint8 if storage_type is torch.UntypedStorage else storage_type.dtype
            untyped = torch.UntypedStorage(numel * dtype.itemsize, device=self._device)
            self._made[key] = torch.storage.TypedStorage(
                wrap_storage=untyped, dtype=dtype, _internal=True
            )
        return self._made[key]


class _Captured(Exception):  # the pickle, carried out of torch.save before it writes data
    def __init__(self, data: bytes) -> None:
        super().__init__("pickled")
        self.data = data


class _CapturingPickler(pickle.Pickler):
    """Pickles as torch.save asks, then stops it before a single tensor byte is written."""

    def __init__(self, file: io.BytesIO, protocol: int | None = None) -> None:
        super().__init__(file, protocol=protocol)
        self._file = file

    def dump(self, obj: Any) -> None:
        super().dump(obj)
        raise _Captured(self._file.getvalue())


_CAPTURE = types.SimpleNamespace(__name__="ckpt_core_capture", Pickler=_CapturingPickler)


class _Discard(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return memoryview(data).nbytes


# torch's words for a class that is not on its allowlist, and ours (`_short_reason`)
_NOT_ALLOWED = re.compile(r"(?:GLOBAL )?(\S+) (?:was|is) not an allowed global")


def _refused_global(message: str) -> str | None:
    found = _NOT_ALLOWED.search(message)
    return found.group(1) if found else None


def _short_reason(message: str) -> str:
    """The part of a torch message that says what it refused, without its advice or colours."""
    text = plain_text(message)
    if (name := _refused_global(text)) is not None:
        return f"{name} is not an allowed global"
    text = " ".join(text.split("WeightsUnpickler error:")[-1].split())
    text = text.split(" Please ")[0].split(" Check the documentation")[0]
    return text if len(text) <= 160 else f"{text[:157]}..."


def _refusal_of(path: tuple[Any, ...], culprit: Any, reason: str) -> Refusal:
    kind = type(culprit)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    found = f"the {name}" if _tree.children(culprit) is None else f"the keys or type of the {name}"
    allow = _refused_global(reason)
    why = "" if allow == name else f" ({reason})"
    if _tree.is_numpy(culprit) and culprit.dtype.kind in "OUSV":  # objects, text, records
        fix = "convert it (e.g. to a list, or to a numeric array as a tensor)"
    elif _tree.is_numpy(culprit):  # numpy is not on torch's allowlist
        fix = "convert it to a tensor (torch.from_numpy(x), or x.item() for a scalar)"
    else:
        fix = "convert it (e.g. to a str, number, list or tensor)"
        if allow is not None:
            fix += f", call torch.serialization.add_safe_globals([{allow}]) before saving and restoring"
    where = _tree.path_str(path)
    return Refusal(
        where,
        found,
        f"torch.load(weights_only=True) would refuse {found} at {where!r}{why}. "
        f"HINT: {fix}, or {PICKLE_HINT}.",
    )
