"""The `dcp` format: a torch.distributed.checkpoint (DCP) directory at `<step>/dcp`.

For sharded torch states: DTensors of FSDP2 (`fully_shard`) and tensor parallelism, e.g. the
model and optimizer state dicts of `torch.distributed.checkpoint.state_dict.get_state_dict`.
In a `torch.distributed` job every process calls `save` with its own shards and writes them
itself (`__<rank>_<n>.distcp`; rank 0 also DCP's `.metadata`). DCP reshards on load, so a
step restores onto another world size, also onto one process without a process group:
`restore(like={"model": model.state_dict()})` loads what `like` asks for (DCP's convention)
and skips the rest. The payload opens with DCP alone:
`torch.distributed.checkpoint.load(state_dict, checkpoint_id="<step>/dcp")`.

Nothing in a payload is fully unpickled: DCP's `.metadata` (a pickle) is read by an
unpickler that builds DCP's own metadata classes and nothing else, and values that are not
tensors (a step counter, the optimizer's param groups) with `torch.load(weights_only=True)`;
a state holding something that cannot come back that way is refused at save.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import pickle
import re
import threading
import warnings
from collections.abc import Iterator
from typing import Any

from .. import _tree
from ..errors import CheckpointError, CorruptCheckpointError, StructureMismatchError
from ..storage import StepWriter
from .frameworks import framework_missing, require
from .protocol import TreeEntry, TreeListing
from .reader import StepReader
from .snapshot import host_copy

PAYLOAD_DIR = "dcp"
_SHARD_FILE = re.compile(rf"^{PAYLOAD_DIR}/__([0-9]+)_[0-9]+\.distcp$")


def _dcp() -> Any:
    return require(
        "torch.distributed.checkpoint", package="torch", extra="torch", why="the dcp format"
    )


class DcpFormat:
    """Sharded torch states (DTensor) through torch.distributed.checkpoint."""

    name = "dcp"
    main_file = PAYLOAD_DIR
    collective = True  # every process of a torch.distributed job writes its own shards

    def __init__(self) -> None:
        self._groups: dict[int, Any] = {}
        self._lock = threading.Lock()

    def accepts(self, state: Any) -> bool:
        return False  # chosen explicitly (sharded states), never by "auto"

    def process_of(self, name: str) -> int:
        """The rank that wrote payload file `name`: DCP names each rank's file `__<rank>_*`."""
        m = _SHARD_FILE.match(name)
        return int(m.group(1)) if m else 0

    def snapshot(self, state: Any) -> Any:
        """A host copy that later training steps cannot change (DTensors stay DTensors)."""
        _check_restorable(state)
        self._save_group()  # made here, on the training thread: creating a group is collective
        return _HostSnapshot.take(state)

    def write(self, state: Any, writer: StepWriter) -> None:
        dcp = _dcp()
        if isinstance(state, _HostSnapshot):
            state = state.state()  # checked when the snapshot was taken
        else:
            _check_restorable(state)
        leaves = _tree.iter_leaves_lenient(state)
        tensors = sum(1 for _, leaf in leaves if _tree.is_torch_tensor(leaf))
        storage = _shard_writer(writer, threads=max(1, min(SHARD_THREADS, tensors)))
        with _one_process_is_fine():
            dcp.save(state, storage_writer=storage, process_group=self._save_group())

    def _save_group(self) -> Any:
        """A gloo group of all ranks for DCP's own exchanges, so a background save never
        interleaves with the training loop's collectives on the default group (DCP's advice
        for `async_save`); None without a process group."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return None
        key = id(dist.distributed_c10d._get_default_group())
        with self._lock:
            if key not in self._groups:
                self._groups[key] = dist.new_group(backend="gloo")
            return self._groups[key]

    def read(self, reader: StepReader, like: Any = None) -> Any:
        where = reader.display(PAYLOAD_DIR)
        if f"{PAYLOAD_DIR}/.metadata" not in reader.manifest.files:
            raise CorruptCheckpointError(
                f"step {reader.manifest.step} says it is in the dcp format, but its manifest "
                f"lists no {PAYLOAD_DIR}/.metadata under {where}. HINT: restore an earlier step.",
                path=where,
            )
        reader.verify_all()
        try:
            with reader.fetch_dir(PAYLOAD_DIR) as path:
                return _load(path, like, f"step {reader.manifest.step}")
        except (StructureMismatchError, CheckpointError):
            raise
        except Exception as e:  # DCP's own errors on a payload that verified but lies
            raise CorruptCheckpointError(
                f"torch.distributed.checkpoint could not read {where} ({type(e).__name__}: "
                f"{str(e)[:300]}); every file matches the manifest, so the step was written "
                "inconsistently. HINT: restore an earlier step.",
                path=where,
            ) from e

    def describe(self, reader: StepReader) -> TreeListing:
        """Every leaf from DCP's `.metadata` (safely unpickled); no shard is read."""
        path = reader.local_path(PAYLOAD_DIR)
        if path is None:
            note = "the DCP tree of a step on an object store is not read; files only"
            return TreeListing([], "nothing", [note])
        try:
            metadata = _read_metadata(path)
        except ImportError:
            missing = framework_missing("torch", "torch", "reading a DCP tree")
            return TreeListing([], "nothing", [str(missing)])
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
            raise CorruptCheckpointError(
                f"{reader.display(PAYLOAD_DIR)}/.metadata cannot be read ({e}).",
                path=reader.display(f"{PAYLOAD_DIR}/.metadata"),
            ) from e
        paths = getattr(metadata, "planner_data", None) or {}
        entries = []
        for fqn, meta in metadata.state_dict_metadata.items():
            where = _tree.path_str(tuple(paths[fqn])) if fqn in paths else fqn
            size = getattr(meta, "size", None)
            if size is None:
                entries.append(TreeEntry(where, "object", value="a value saved by torch.save"))
                continue
            dtype = meta.properties.dtype
            shape = tuple(size)
            nbytes = math.prod(shape) * dtype.itemsize
            entries.append(
                TreeEntry(where, "torch", str(dtype).removeprefix("torch."), shape, nbytes)
            )
        ranks = {self.process_of(f) for f in reader.manifest.files if _SHARD_FILE.match(f)}
        summary = (
            f"{PAYLOAD_DIR}/: shards written by {len(ranks)} process(es), ranks {sorted(ranks)}"
        )
        return TreeListing(entries, "DCP's .metadata", summary=summary)


# Files per process (no more than its tensors), written at once: one serialises while the
# other writes.
SHARD_THREADS = 2


def _shard_writer(writer: StepWriter, threads: int) -> Any:
    """DCP's `FileSystemWriter` for the step, its shard files (`*.distcp`) opened through
    `writer.open`: written around the page cache (`O_DIRECT`), checksummed while written and
    fsynced on close. DCP's own streams fill the page cache, and every byte would be read
    back to be checksummed. The files' contents and names are DCP's own, so DCP reads the
    step. `.metadata` (small) is written by DCP's stream; the step's seal fsyncs and
    checksums it. Measured against DCP's own save: benchmarks/RESULTS.md, multiprocess."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.filesystem import FileSystem

    class ShardFiles(FileSystem):
        @contextlib.contextmanager
        def create_stream(self, path: Any, mode: str) -> Iterator[Any]:
            name = os.path.basename(path)
            if mode != "wb" or not name.endswith(".distcp"):
                with super().create_stream(path, mode) as stream:
                    yield stream
                return
            with _Positioned(writer.open(f"{PAYLOAD_DIR}/{name}")) as stream:
                yield stream

    # sync_files=False: every file is fsynced by this project (on close, or by the seal).
    storage = dcp.FileSystemWriter(
        writer.local_dir() / PAYLOAD_DIR, sync_files=False, thread_count=threads
    )
    storage.fs = ShardFiles()
    return storage


class _Positioned(io.RawIOBase):
    """A write-only stream that knows its position (DCP records each tensor's offset)."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._position = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def write(self, data: Any) -> int:
        n = self._raw.write(data)
        self._position += n
        return int(n)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


@dataclasses.dataclass(frozen=True)
class _HostSnapshot:
    """An async save's host copy of a state: each process copies its own shards (into the
    reused, and for GPU tensors pinned, buffers of `host_copy`) on the training thread, and
    `state()` makes the copies of DTensor shards DTensors again in the background, as DCP's
    own staging does: a DTensor of the same mesh and placements whose local shard is on the
    host, which DCP writes as it is. (`DTensor.from_local` would move the shard back to the
    mesh's GPU; on the training thread it would also cost about 0.3 ms a leaf.)"""

    tree: Any  # the state's structure, each DTensor replaced by a copy of its local shard
    specs: dict[_tree.Path, Any]  # each DTensor's `_spec`: mesh, placements, shape, stride

    @classmethod
    def take(cls, state: Any) -> _HostSnapshot:
        from torch.distributed.tensor import DTensor

        specs: dict[_tree.Path, Any] = {}

        def copy(path: _tree.Path, leaf: Any) -> Any:
            if not isinstance(leaf, DTensor):
                return host_copy(leaf)
            specs[path] = leaf._spec
            return host_copy(leaf.to_local())

        return cls(_tree.rebuild_like(state, copy), specs)

    def state(self) -> Any:
        from torch.distributed.tensor import DTensor

        def wrap(path: _tree.Path, leaf: Any) -> Any:
            spec = self.specs.get(path)
            return leaf if spec is None else DTensor(leaf, spec, requires_grad=False)

        return _tree.rebuild_like(self.tree, wrap)


@contextlib.contextmanager
def _one_process_is_fine() -> Iterator[None]:
    """Silence DCP's warning that it saves or loads in one process: that is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _load(path: Any, like: Any, where: str) -> Any:
    dcp = _dcp()
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict

    storage = _reader(path)
    if like is None:
        planner = _safe_planner(everything=True)
        with _one_process_is_fine():
            dcp.load({}, storage_reader=storage, planner=planner)
        return planner.original_state_dict  # the whole state, rebuilt from the metadata
    if not isinstance(like, dict):
        raise TypeError(
            f"the dcp format restores into a dict (a state dict), found {_tree.describe(like)}; "
            "HINT: restore(like={'model': model.state_dict()})."
        )
    _check_like(flatten_state_dict(like)[0], storage.read_metadata().state_dict_metadata, where)
    target = _tree.rebuild_like(like, lambda _, leaf: _empty_like(leaf))
    # DCP's planner drops a ShardedTensor of which this process holds no shard (FSDP1 leaves a
    # rank without one of a small tensor) when it flattens ShardedTensors, then takes the
    # missing key for a checkpoint older than torch 2.4 and misreads the whole state: it is
    # flattened only when it must be, for ShardedTensors nested in ShardedTensors (2D FSDP1).
    nested = any(_holds_sharded_tensor(leaf) for _, leaf in _tree.iter_leaves_lenient(target))
    planner = _safe_planner(everything=False, flatten_sharded_tensors=nested)
    with _one_process_is_fine():
        dcp.load(target, storage_reader=storage, planner=planner)
    return target


def _holds_sharded_tensor(leaf: Any) -> bool:
    """A ShardedTensor whose local shards are ShardedTensors themselves."""
    return _tree.is_sharded_tensor(leaf) and any(
        _tree.is_sharded_tensor(shard.tensor) for shard in leaf.local_shards()
    )


def _reader(path: Any) -> Any:
    """DCP's FileSystemReader, reading `.metadata` with `_MetadataUnpickler`."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            metadata = _read_metadata(self.path)
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(path)


def _read_metadata(directory: Any) -> Any:
    with open(f"{directory}/.metadata", "rb") as f:
        return _MetadataUnpickler(io.BytesIO(f.read())).load()


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP's metadata records and the torch/pathlib values in them; refuses any other
    class, so a forged `.metadata` cannot run code."""

    _ALLOWED = {
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch.serialization", "_get_layout"),
        ("torch", "Size"),
        ("collections", "OrderedDict"),
        ("pathlib", "PosixPath"),
        ("pathlib", "PurePosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib", "PureWindowsPath"),
    }

    def find_class(self, module: str, name: str) -> Any:
        import torch

        if module == "torch.distributed.checkpoint.metadata" or (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(
            f"DCP's .metadata names {module}.{name}, which is not one of DCP's metadata "
            "classes; refusing to build it (it could run code)."
        )


def _check_like(wanted: dict[str, Any], saved: dict[str, Any], where: str) -> None:
    """Raise StructureMismatchError naming every key of `like` (DCP's flattened names) that the
    step lacks or holds with another shape, dtype or kind; keys `like` leaves out are fine."""

    problems = []
    for fqn, value in wanted.items():
        meta = saved.get(fqn)
        if meta is None:
            problems.append(f"  {fqn}: in `like` but not in the checkpoint")
            continue
        size = getattr(meta, "size", None)  # None: BytesStorageMetadata, not a tensor
        is_tensor = _tree.is_torch_tensor(value)
        if size is None or not is_tensor:
            if is_tensor != (size is not None):
                held = "a tensor" if size is not None else "a value that is not a tensor"
                problems.append(f"  {fqn}: the checkpoint holds {held}, `like` does not")
            continue
        on_disk = (str(meta.properties.dtype).removeprefix("torch."), tuple(size))
        wants = _tree.describe_leaf(value)
        if wants != on_disk:
            problems.append(
                f"  {fqn}: shape {list(on_disk[1])} dtype {on_disk[0]} on disk, "
                f"shape {list(value.shape)} dtype {str(value.dtype).removeprefix('torch.')} "
                "in `like`"
            )
    if problems:
        raise StructureMismatchError(
            f"the checkpoint {where} does not match `like` ({len(problems)} "
            f"difference{'s' if len(problems) != 1 else ''}, by DCP's flattened names):\n"
            + "\n".join(problems)
            + "\nHINT: build `like` from the same model and optimizer configuration as the "
            "saving run (restore without `like` to see what was saved)."
        )


def _empty_like(leaf: Any) -> Any:
    """A fresh tensor for DCP to load into (DTensors and ShardedTensors keep their layout, an
    abstract one on the meta device becomes a plain tensor of its shape); other leaves as they
    are (DCP replaces them)."""
    if not _tree.is_torch_tensor(leaf):
        return leaf
    import torch

    if _tree.is_torch_meta(leaf):
        return torch.empty(leaf.shape, dtype=leaf.dtype)
    fresh = torch.empty_like(leaf)
    if isinstance(leaf, torch.nn.Parameter):
        return torch.nn.Parameter(fresh, requires_grad=leaf.requires_grad)
    return fresh


def _safe_planner(*, everything: bool, flatten_sharded_tensors: bool = True) -> Any:
    """DCP's load planner, reading values that are not tensors with `weights_only=True` (DCP's
    own uses a full unpickle); `everything`: rebuild the whole saved state (no `like`)."""

    import torch
    from torch.distributed.checkpoint.default_planner import (
        DefaultLoadPlanner,
        _EmptyStateDictLoadPlanner,
    )

    base = _EmptyStateDictLoadPlanner if everything else DefaultLoadPlanner

    class SafeLoadPlanner(base):  # type: ignore[misc, valid-type]
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            obj = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                from torch.distributed.checkpoint._traverse import set_element

                fqn = read_item.dest_index.fqn
                set_element(self.original_state_dict, self.mappings[fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return SafeLoadPlanner(flatten_sharded_tensors=flatten_sharded_tensors)


def _check_restorable(state: Any) -> None:
    """Refuse a state whose values that are not tensors `torch.load(weights_only=True)` would
    not give back, naming the first such value and the fix."""
    from .torch import restore_refusal

    values = {
        _tree.path_str(path): leaf
        for path, leaf in _tree.iter_leaves_lenient(state)
        if not _tree.is_torch_tensor(leaf)
    }
    refusal = restore_refusal(values) if values else None
    if refusal is not None:
        raise TypeError(f"the dcp format cannot save this state: {refusal.message}")
