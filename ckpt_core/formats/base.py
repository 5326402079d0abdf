"""The `Format` protocol (snapshot, write, read), the registry, and what all formats share."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, cast, runtime_checkable

from .. import _tree
from ..errors import CheckpointError
from ..manifest import Manifest
from ..storage import StepWriter, Storage, VerifyingReader, check_record

if TYPE_CHECKING:
    import numpy as np


@runtime_checkable
class Format(Protocol):
    """How a state becomes payload files of a step, and back.

    A format never commits or names steps: the manager hands it a `StepWriter` (files go in,
    the manager commits) and a `StepReader` (verified access to a committed step's files).
    """

    name: str

    def accepts(self, state: Any) -> bool:
        """Whether `format="auto"` may pick this format for `state`."""
        ...

    def snapshot(self, state: Any) -> Any:
        """A host copy of `state` that later mutation of `state` cannot change (for async saves).

        Called on the training thread: it should cost no more than a memory copy.
        """
        ...

    def write(self, state: Any, writer: StepWriter) -> None:
        """Write `state` (or a `snapshot` of it) as payload files through `writer`."""
        ...

    def read(self, reader: StepReader, like: Any = None) -> Any:
        """Read the step back, verifying every byte against the manifest.

        With `like`, the result has `like`'s structure and leaf types, or
        StructureMismatchError names every difference.
        """
        ...


_REGISTRY: dict[str, Format] = {}


def register_format(fmt: Format, *, replace: bool = False) -> None:
    """Make `fmt` available by `fmt.name` to `CheckpointManager(format=...)` and to restore."""
    if not isinstance(fmt, Format):
        raise TypeError(
            f"{fmt!r} is not a Format: it needs a `name` and the methods accepts, snapshot, "
            "write and read (see ckpt_core.Format)."
        )
    if fmt.name in _REGISTRY and not replace and _REGISTRY[fmt.name] is not fmt:
        raise ValueError(
            f"a format named {fmt.name!r} is already registered; pass replace=True to override it."
        )
    _REGISTRY[fmt.name] = fmt


def get_format(name: str) -> Format:
    _load_builtin_formats()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CheckpointError(
            f"unknown checkpoint format {name!r}; registered formats: {sorted(_REGISTRY)}. "
            "HINT: a custom format must be registered with ckpt_core.register_format() "
            "before restoring steps written with it."
        ) from None


PICKLE_HINT = "save with format='pickle' (restore then needs allow_pickle=True)"


class Refusal(NamedTuple):
    """Why a format cannot save a state: the first part it refuses, and a message with the fix."""

    path: str  # of the refused leaf (or container), as `_tree.path_str` writes it
    found: str  # what is there, e.g. "the pathlib.PosixPath"
    message: str  # what was found, what the format takes, and a HINT


def auto_format(state: Any) -> Format:
    """`tree` when the state fits it; `torch` for other torch checkpoints that
    `torch.load(weights_only=True)` gives back; otherwise an error naming the leaf and the fix.

    Raises:
        TypeError: neither format can save `state` so that it restores.
    """
    _load_builtin_formats()
    for name in ("tree", "torch"):
        if _REGISTRY[name].accepts(state):
            return _REGISTRY[name]
    from .torch import restore_refusal
    from .tree import storable_refusal

    problem = "cannot save this state"
    tree_says = storable_refusal(state) or Refusal("", "", "the tree format refused it.")
    torch_says = restore_refusal(state) if has_torch_tensor(state) else None
    if torch_says is None:
        raise TypeError(f"format='auto' {problem}: {tree_says.message}")
    if torch_says.path == tree_says.path:  # one culprit: the torch message names every fix
        raise TypeError(f"format='auto' {problem}: {torch_says.message}")
    raise TypeError(
        f"format='auto' {problem}: {tree_says.message} (Nor can the torch format: "
        f"torch.load(weights_only=True) would refuse {torch_says.found} at {torch_says.path!r}.)"
    )


def has_torch_tensor(state: Any) -> bool:
    """Whether any leaf of `state` is a torch tensor (the torch format's domain)."""
    return any(_tree.is_torch_tensor(leaf) for _, leaf in _tree.iter_leaves_lenient(state))


def resolve_format(fmt: str | Format, state: Any) -> Format:
    """The format object for a `format=` argument: "auto" picks from `state`.

    Raises:
        TypeError: `state` holds abstract leaves (`jax.eval_shape` output, torch `meta`
            tensors), which no format can save.
    """
    _tree.check_concrete(state)
    if fmt == "auto":
        return auto_format(state)
    return get_format(fmt) if isinstance(fmt, str) else fmt


_BUILTIN_FORMATS = frozenset({"tree", "torch", "orbax", "pickle"})


def _load_builtin_formats() -> None:
    # All four, not only "tree": a program that imported one format module first (e.g.
    # ckpt_core.formats.tree) has that one registered and must still find the others.
    if not _REGISTRY.keys() >= _BUILTIN_FORMATS:
        from . import orbax, pickle, torch, tree  # noqa: F401  (each module registers itself)


# ---------------------------------------------------------------- reading a step


@dataclass
class StepReader:
    """Verified read access to the payload of one committed step."""

    storage: Storage
    step_dir: str
    manifest: Manifest
    allow_pickle: bool = False
    lazy: bool = False

    def rel(self, name: str) -> str:
        """`name`'s path relative to the run directory."""
        if name == "manifest.json":
            return f"{self.step_dir}/{name}"
        parts = [self.step_dir, self.manifest.payload_dir, name]
        return "/".join(p for p in parts if p)

    def display(self, name: str) -> str:
        return self.storage.join(self.rel(name))

    def _record(self, name: str) -> Any:
        try:
            return self.manifest.files[name]
        except KeyError:
            raise CheckpointError(
                f"step {self.manifest.step} ({self.manifest.format} format) has no file {name!r}; "
                f"its manifest lists {sorted(self.manifest.files)}."
            ) from None

    def open(self, name: str) -> VerifyingReader:
        """A stream over `name` that checksums as it is read; call `.verify()` after reading."""
        expected = self._record(name)
        try:
            raw = self.storage.open_read(self.rel(name))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise _missing(self.display(name)) from None
        return VerifyingReader(raw, self.display(name), expected)

    def verify(self, name: str) -> None:
        """Check the size and checksum of one file."""
        expected = self._record(name)
        try:
            found = self.storage.hash_file(self.rel(name))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise _missing(self.display(name)) from None
        check_record(self.display(name), found, expected)

    def verify_all(self) -> None:
        for name in sorted(self.manifest.files):
            self.verify(name)

    def local_path(self, name: str) -> Path | None:
        return self.storage.local_path(self.rel(name))

    @contextlib.contextmanager
    def fetch_dir(self, subdir: str) -> Iterator[Path]:
        with self.storage.fetch_dir(self.rel(subdir)) as path:
            yield path

    def url(self, name: str, schemes: Collection[str]) -> str | None:
        """The URL of `name` if the store's scheme is one of `schemes` (else None), for a
        library that reads it itself; verify the files first (`verify_all`)."""
        return self.storage.url(self.rel(name), schemes)

    def read_bytes(self, name: str) -> bytes:
        with self.open(name) as f:
            out = f.read()
            f.verify()
        return bytes(out)


def _missing(display: str) -> CheckpointError:
    from ..errors import CorruptCheckpointError

    return CorruptCheckpointError(
        f"{display} is listed in the manifest but missing (or not a file): the step was "
        "damaged after it was committed. HINT: restore an earlier step.",
        path=display,
    )


# ---------------------------------------------------------------- leaves


def host_copy(x: Any) -> Any:
    """A copy of an array leaf that the training loop cannot change; other leaves as they are.

    numpy arrays and torch tensors are copied (the loop mutates them in place), into the
    buffers of the previous async save when `SnapshotBuffers.reuse` is active. JAX arrays are
    immutable and are not copied, only made safe from buffer donation (`jax_pinned`).
    """
    buffers = _ACTIVE_BUFFERS.get()
    if _tree.is_numpy(x):
        return buffers.copy(x) if buffers is not None and x.ndim else x.copy()
    if _tree.is_torch_tensor(x):
        if buffers is not None and _is_dense_tensor(x):
            return buffers.copy(x)
        return x.detach().to("cpu", copy=True)  # sparse and quantized tensors too
    if _tree.is_jax_array(x):
        return jax_pinned(x)
    return x


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
        self._cuda = False

    @contextlib.contextmanager
    def reuse(self) -> Iterator[None]:
        """Within this block, `host_copy` copies into these buffers (in call order)."""
        self._used, self._cuda = 0, False
        token = _ACTIVE_BUFFERS.set(self)
        try:
            yield
        finally:
            _ACTIVE_BUFFERS.reset(token)
            del self._buffers[self._used :]  # the state shrank: let go of what is left over
            if self._cuda:
                import torch

                torch.cuda.synchronize()  # the non-blocking device-to-host copies are done

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
            self._cuda |= x.is_cuda
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


def jax_pinned(x: Any) -> Any:
    """`x`'s values, safe from a later `jit(..., donate_argnums=...)` step that donates `x`.

    Donation hands an array's buffers to the next step, which would pull them from under a
    background write. On CPU, each shard is aliased by a zero-copy numpy view: XLA never
    donates a buffer with an outside reference (it copies instead), so this costs no copy.
    On accelerators the array is copied on the device, asynchronously; the loop does not wait.
    """
    import jax
    import numpy as np

    if not x.is_fully_addressable:
        return x
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = jax_pinned(jax.random.key_data(x))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    if any(device.platform != "cpu" for device in x.sharding.device_set):
        return jax.numpy.copy(x)
    shards = [jax.device_put(np.asarray(s.data), s.device) for s in x.addressable_shards]
    return jax.make_array_from_single_device_arrays(x.shape, x.sharding, shards)


def convert_to_like(value: Any, like: Any) -> Any:
    """A restored leaf (numpy array, torch tensor or scalar) in the type and placement of `like`.

    An abstract `like` leaf is filled: a `jax.ShapeDtypeStruct` becomes a jax array placed by
    its sharding (the default device without one), a torch `meta` tensor a CPU tensor.
    """
    import numpy as np

    if _tree.is_jax_key(like):
        import jax

        data = value if not _tree.is_torch_tensor(value) else value.numpy()
        if _tree.is_jax_key(data):
            data = jax.random.key_data(data)
        keys = jax.random.wrap_key_data(cast(Any, np.asarray(data)), impl=_key_impl(like))
        return jax.device_put(keys, jax_placement(like))
    if _tree.is_jax_array(like) or _tree.is_jax_struct(like):
        import jax

        if _tree.is_torch_tensor(value):
            value = value.numpy()
        if isinstance(value, bool | int | float):
            value = np.asarray(value, dtype=like.dtype)
        return jax.device_put(value, jax_placement(like))
    if _tree.is_torch_tensor(like):
        import torch

        if isinstance(value, bool | int | float):  # a Python number saved for a 0-d tensor
            t = torch.as_tensor(value, dtype=like.dtype)
        elif isinstance(value, torch.Tensor):
            t = value
        else:
            t = torch.from_numpy(_as_torchable(np.asarray(value)))
        if t.dtype != like.dtype:
            t = t.view(like.dtype) if t.element_size() == like.element_size() else t.to(like.dtype)
        device = torch.device("cpu") if like.is_meta else like.device
        if t.device != device:
            t = t.to(device)
        if isinstance(like, torch.nn.Parameter):
            return torch.nn.Parameter(t, requires_grad=like.requires_grad)
        return t
    if isinstance(like, np.ndarray):
        if isinstance(value, bool | int | float):
            return np.asarray(value, dtype=like.dtype)
        return np.asarray(value.numpy() if _tree.is_torch_tensor(value) else value)
    if isinstance(like, np.generic):
        return like.dtype.type(np.asarray(value).item() if hasattr(value, "shape") else value)
    if isinstance(like, bool | int | float) and not isinstance(value, str | bytes | type(None)):
        return type(like)(value.item() if hasattr(value, "item") else value)
    return value


def jax_placement(like: Any) -> Any:
    """Where a jax leaf restored for `like` (an array or a struct) goes: `like`'s sharding, or
    the default device for a struct without one (`jax.eval_shape` output)."""
    return like.sharding if like.sharding is not None else default_sharding()


def default_sharding() -> Any:
    """The sharding of an array put on JAX's default device (`jax_default_device` or the first)."""
    import jax

    device = cast(Any, jax.config).jax_default_device
    if isinstance(device, str):  # a platform name
        device = jax.devices(device)[0]
    return jax.sharding.SingleDeviceSharding(device or jax.devices()[0])


def _key_impl(like: Any) -> Any:
    """The PRNG implementation of a typed key array or key struct."""
    import jax

    if _tree.is_jax_array(like):
        return jax.random.key_impl(like)
    # A struct has no public impl: read it from a key of its type while tracing (no allocation).
    found: list[Any] = []
    jax.eval_shape(lambda key: found.append(jax.random.key_impl(key)), like)
    return found[0]


def _as_torchable(arr: np.ndarray) -> np.ndarray:
    # torch.from_numpy has no bfloat16/float8: hand it the same bytes as an integer array.
    if arr.dtype.kind == "V" or arr.dtype.name in ("bfloat16",) or "float8" in arr.dtype.name:
        return arr.view(f"u{arr.dtype.itemsize}")
    return arr


def fit_like(loaded: Any, like: Any, where: str) -> Any:
    """Check a fully loaded tree against `like`, then give it `like`'s structure and leaf types."""
    values: dict[str, Any] = {}
    for path, leaf in _tree.iter_leaves_lenient(loaded):
        values[_tree.path_str(path)] = leaf
    _tree.check_structure(like, {k: _tree.describe(v) for k, v in values.items()}, where)
    return _tree.rebuild_like(like, lambda p, leaf: value_for(values, p, leaf))


def value_for(values: Mapping[str, Any], path: Any, like_leaf: Any) -> Any:
    """The restored value at `path` in `like_leaf`'s type; `like_leaf` itself for an empty slot."""
    key = _tree.path_str(path)
    if key not in values:  # an empty slot (None) in `like` that the checkpoint does not have
        return like_leaf
    return convert_to_like(values[key], like_leaf)


def framework_missing(package: str, extra: str, why: str) -> ImportError:
    return ImportError(
        f"{why} needs {package!r}, which is not installed. HINT: pip install 'ckpt-core[{extra}]'"
    )


def torch_module() -> Any:
    try:
        import torch
    except ImportError:
        raise framework_missing("torch", "torch", "the torch format") from None
    return torch
