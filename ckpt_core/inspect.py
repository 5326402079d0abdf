"""Reading what a checkpoint directory holds without loading a payload: runs, steps, array trees.

Everything here reads manifests, pointers and payload *headers* only (the safetensors header and
`tree.json` of the tree format, orbax's metadata, the zip directory and pickle opcodes of a torch
file). It never imports a framework except orbax, lazily, for orbax steps, and it never runs code
from a file: a torch pickle is decoded by a reader that imports nothing and calls nothing it finds.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pickle
import re
import struct
import time
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from . import layout
from .errors import CheckpointError, CorruptCheckpointError
from .formats.base import StepReader
from .info import CheckpointInfo
from .manifest import Manifest
from .retention import StepFiles
from .storage import Storage, open_storage, step_files

MAX_RUN_DEPTH = 8  # how deep `find_runs` looks for nested runs below the directory it is given
MAX_TREE_ENTRIES = 100_000  # a hostile pickle can name one object 2**50 times: stop listing early
MAX_HEADER_BYTES = 256 << 20  # safetensors header / torch data.pkl read for inspection


# ---------------------------------------------------------------- runs and steps


@dataclass(frozen=True)
class OtherEntry:
    """A library-owned entry of a run directory that is not a committed step.

    Attributes:
        name: the entry's name in the run directory.
        kind: "temporary" (a step being written, or left by a killed writer), "replaced"
            (an old copy kept until its replacement is committed), "quarantined" (a damaged
            step moved aside on resume) or "invalid" (a `step_*` directory without a valid
            manifest).
        step: the step the entry belongs to, when its name says.
        detail: a human sentence: what it is and what happens to it.
        mtime: its modification time (local directories only).
        bytes: the size of every file in it (local directories only; None when unknown).
    """

    name: str
    kind: str
    step: int | None
    detail: str
    mtime: float | None = None
    bytes: int | None = None


@dataclass
class RunListing:
    """Everything `ckpt ls` shows about one run, read from manifests and pointers only."""

    directory: str
    steps: list[CheckpointInfo]
    others: list[OtherEntry]
    latest_pointer: int | None
    best_pointer: int | None
    run_doc: dict[str, Any] = field(default_factory=dict)
    run_doc_error: str | None = None  # why run.json could not be read (None: fine or absent)
    files: dict[int, StepFiles] = field(default_factory=dict)  # per step: identity -> size

    @property
    def complete(self) -> bool:
        return bool(self.run_doc.get("complete", False))


def open_directory(directory: str | os.PathLike[str]) -> Storage:
    """The storage of a local path or fsspec URL (no lock taken, nothing written)."""
    return open_storage(directory, None)


def read_manifest(storage: Storage, name: str) -> Manifest:
    """The validated manifest of the step directory `name`.

    Raises:
        CorruptCheckpointError: it is missing or invalid, or names another step.
    """
    return _ManifestReader(storage).read(name)


class _ManifestReader:
    """Reads manifests; on local disks with plain `open` (pathlib costs half of a 10k-step scan)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.local_root = storage.root if storage.is_local else None

    def join(self, *parts: str) -> str:
        if self.local_root is not None:
            return "/".join((self.local_root, *parts))
        return self.storage.join(*parts)

    def read(self, name: str) -> Manifest:
        where = self.join(name, layout.MANIFEST)
        try:
            if self.local_root is not None:
                with open(where, "rb") as f:
                    raw = f.read()
            else:
                raw = self.storage.read_bytes(f"{name}/{layout.MANIFEST}")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise CorruptCheckpointError(f"{where} is missing", path=where) from None
        except OSError as e:  # e.g. permissions: this step cannot be used either
            raise CorruptCheckpointError(f"{where} is unreadable: {e}", path=where) from None
        manifest = Manifest.from_json(raw, where)
        expected = layout.parse_step(name)
        if expected is not None and manifest.step != expected:
            raise CorruptCheckpointError(
                f"{where} records step {manifest.step}, but its directory is step {expected}",
                path=where,
            )
        return manifest


def _read_pointer(storage: Storage, pointer: str) -> int | None:
    try:
        text = storage.read_bytes(pointer).decode("utf-8", "replace").strip()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    return layout.parse_step(text)


def read_run_doc(storage: Storage) -> dict[str, Any]:
    """`run.json` (run metadata, completion mark), or {} when absent or unreadable."""
    return read_run_doc_checked(storage)[0]


def read_run_doc_checked(storage: Storage) -> tuple[dict[str, Any], str | None]:
    """`run.json` and, when it exists but cannot be used, why: ({}, "<path> is ...").

    A damaged `run.json` must be told apart from an absent one: its recorded retention is
    what protects steps from `ckpt prune`, and defaults in its place could delete them.
    """
    where = storage.join(layout.RUN_FILE)
    try:
        raw = storage.read_bytes(layout.RUN_FILE)
    except (FileNotFoundError, NotADirectoryError):
        return {}, None
    except OSError as e:  # e.g. permissions
        return {}, f"{where} is unreadable ({e.strerror or e})"
    try:
        doc = json.loads(raw)
    except ValueError as e:
        return {}, f"{where} is damaged (not JSON: {e})"
    if not isinstance(doc, dict):
        return {}, f"{where} is damaged (a JSON {type(doc).__name__}, not an object)"
    return doc, None


def entry_bytes(storage: Storage, name: str) -> int | None:
    """The size of every file under the entry `name` (local directories only, else None)."""
    try:
        root = storage.local_path(name)
    except (OSError, CheckpointError):
        return None
    if root is None:
        return None
    total = 0
    try:
        if not root.is_dir():
            return root.stat().st_size
        for parent, _, files in os.walk(root):
            for file in files:
                with contextlib.suppress(OSError):  # a writer may be deleting it right now
                    total += os.lstat(os.path.join(parent, file)).st_size
    except OSError:
        return None
    return total


def _mtime(storage: Storage, name: str) -> float | None:
    try:
        path = storage.local_path(name)
        return None if path is None else path.stat().st_mtime
    except (OSError, CheckpointError):
        return None


_STEP_IN_NAME = re.compile(r"step_(\d+)")


def _step_in(name: str) -> int | None:
    m = _STEP_IN_NAME.search(name)
    return int(m.group(1)) if m else None


def scan_run(storage: Storage) -> RunListing:
    """Read every manifest of one run directory (never a payload) and classify every entry.

    A `step_*` directory is a committed step exactly when the manager would say so: its
    manifest exists, is valid and names the same step. Any other `step_*` directory is
    reported as "invalid" with the reason.
    """
    steps: list[CheckpointInfo] = []
    others: list[OtherEntry] = []
    files: dict[int, StepFiles] = {}
    manifests = _ManifestReader(storage)
    for name in storage.list_names():
        step = layout.parse_step(name)
        if step is not None:
            try:
                manifest = manifests.read(name)
            except CorruptCheckpointError as e:
                # relative to the step: the listing row names the directory already
                detail = str(e).split(". HINT")[0].split(". The step")[0]
                detail = detail.replace(manifests.join(name) + "/", "")
                others.append(OtherEntry(name, "invalid", step, detail, _mtime(storage, name)))
                continue
            files[step] = step_files(storage, manifest)
            steps.append(
                CheckpointInfo(
                    step=step,
                    time=manifest.time,
                    metrics=manifest.metrics,
                    metadata=manifest.metadata,
                    path=manifests.join(name),
                    bytes=manifest.nbytes,
                    format=manifest.format,
                )
            )
        elif layout.is_temporary(name):
            others.append(
                OtherEntry(
                    name,
                    "temporary",
                    _step_in(name),
                    "a step being written or deleted, or left by a killed writer "
                    "(the next writer sweeps it)",
                    _mtime(storage, name),
                    entry_bytes(storage, name),
                )
            )
        elif layout.parse_step(target := layout.replaced_entry_of(name) or "") is not None:
            others.append(
                OtherEntry(
                    name,
                    "replaced",
                    layout.parse_step(target),
                    f"an old copy of {target}, kept until its replacement is committed "
                    "(the next writer sweeps it)",
                    _mtime(storage, name),
                    entry_bytes(storage, name),
                )
            )
        elif layout.is_quarantined(name):
            others.append(
                OtherEntry(
                    name,
                    "quarantined",
                    _step_in(name),
                    "a damaged step moved aside on resume; removed only by overwrite or clear()",
                    _mtime(storage, name),
                    entry_bytes(storage, name),
                )
            )
    steps.sort(key=lambda i: i.step)
    others.sort(key=lambda o: (o.step if o.step is not None else -1, o.name))
    run_doc, run_doc_error = read_run_doc_checked(storage)
    return RunListing(
        directory=storage.root,
        steps=steps,
        others=others,
        latest_pointer=_read_pointer(storage, layout.LATEST_POINTER),
        best_pointer=_read_pointer(storage, layout.BEST_POINTER),
        run_doc=run_doc,
        run_doc_error=run_doc_error,
        files=files,
    )


def _is_step_entry(name: str) -> bool:
    return (
        layout.parse_step(name) is not None
        or layout.is_temporary(name)
        or layout.is_quarantined(name)
        or layout.parse_step(layout.replaced_entry_of(name) or "") is not None
    )


def _natural_key(name: str) -> list[Any]:
    """`trial_2` before `trial_10`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def find_runs(directory: str | os.PathLike[str]) -> list[str]:
    """Every run at or below a local `directory`: each directory holding `step_*` entries.

    The directory itself also counts when it holds any file the library writes (an emptied
    run). Step directories, hidden directories and symlinks are never entered.

    Raises:
        FileNotFoundError, NotADirectoryError: `directory` is not a directory.
    """
    root = Path(directory)
    if not root.is_dir():
        if root.exists():
            raise NotADirectoryError(f"{directory} is a file, not a checkpoint directory")
        raise FileNotFoundError(f"{directory} does not exist")
    runs: list[str] = []

    def walk(d: Path, depth: int) -> None:
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError:
            return
        is_run = False
        subdirs = []
        for e in entries:
            if _is_step_entry(e.name):
                is_run = True  # a run's steps are never entered: payloads hold no runs
            elif depth == 0 and (layout.is_owned(e.name) or e.name == layout.LOCK_FILE):
                is_run = True
            elif not e.name.startswith(".") and depth < MAX_RUN_DEPTH:
                try:
                    if e.is_dir(follow_symlinks=False):
                        subdirs.append(e.name)
                except OSError:
                    pass
        if is_run:
            runs.append(str(d))
        for name in sorted(subdirs, key=_natural_key):
            walk(d / name, depth + 1)

    walk(root, 0)
    return runs


# ---------------------------------------------------------------- array trees


@dataclass(frozen=True)
class TreeEntry:
    """One leaf of a saved state, described without loading it.

    Attributes:
        path: the leaf's path, keys joined by "/" (as in `StructureMismatchError` messages).
        kind: what it was saved as: "numpy", "torch", "jax", "jax_key", "parameter",
            "array", or a scalar type ("int", "float", "str", ...) or "object".
        dtype: the array's dtype name (None for scalars and objects).
        shape: the array's shape (None for scalars and objects).
        nbytes: the array's size in bytes (None when unknown).
        value: a scalar's value, or a short description of an object.
    """

    path: str
    kind: str
    dtype: str | None = None
    shape: tuple[int, ...] | None = None
    nbytes: int | None = None
    value: Any = None


@dataclass
class TreeListing:
    """The leaves of a step, how they were read, and what could not be shown."""

    entries: list[TreeEntry]
    source: str
    notes: list[str] = field(default_factory=list)
    records: list[tuple[str, int]] = field(default_factory=list)  # torch: zip records, sizes


def list_tree(storage: Storage, manifest: Manifest, step_dir: str | None = None) -> TreeListing:
    """Describe every leaf of a committed step from its headers; no array is loaded.

    Args:
        storage: the run directory.
        manifest: the step's manifest.
        step_dir: the step's directory name (default: the managed name of `manifest.step`;
            a `save_checkpoint` directory has its own name).

    Raises:
        CorruptCheckpointError: a header the listing needs is missing or damaged.
    """
    reader = StepReader(storage, step_dir or layout.step_dirname(manifest.step), manifest)
    if manifest.format == "tree":
        return _tree_listing(reader)
    if manifest.format == "torch":
        return _torch_listing(reader)
    if manifest.format == "orbax":
        return _orbax_listing(reader)
    if manifest.format == "pickle":
        return TreeListing(
            [],
            "nothing",
            [
                "a pickle step: its tree is not shown, because reading it means unpickling, which "
                "can run code (restore it with allow_pickle=True if you trust it)"
            ],
        )
    return TreeListing(
        [], "nothing", [f"format {manifest.format!r} has no header reader; files only"]
    )


def _short_value(value: Any) -> Any:
    if isinstance(value, str) and len(value) > 60:
        return value[:57] + "..."
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return value


def _shape_bytes(shape: tuple[int, ...], itemsize: int | None) -> int | None:
    if itemsize is None:
        return None
    return math.prod(shape) * itemsize


# -- tree format: the safetensors header and tree.json


def _tree_listing(reader: StepReader) -> TreeListing:
    from .formats import tree

    structure = tree.read_structure(reader)  # small; checksummed as a whole
    if tree.INDEX_FILE in reader.manifest.files:  # an incremental save: shards, row blocks
        saved: dict[str, Any] = {}
        tree._collect_arrays(structure, saved)
        full = tree.shard_layout(reader, saved).full  # from tree.json: no shard is opened
        header = {
            name: {**entry, "data_offsets": [0, tree._entry_bytes(entry)]}
            for name, entry in full.items()
        }
    else:
        header = _safetensors_header(reader, tree.ARRAYS_FILE)
    try:
        described = tree.describe(structure, header)
    except (KeyError, TypeError, ValueError) as e:
        where = reader.display(tree.ARRAYS_FILE)
        raise CorruptCheckpointError(
            f"{where} and {tree.STRUCTURE_FILE} disagree: the header lacks {e}", path=where
        ) from None
    entries = []
    for path, node in tree.saved_by_path(structure).items():
        t = node["t"]
        if t != "array":
            value = None if t == "none" else node.get("v")
            if t == "bytes" and isinstance(value, str):
                value = f"<{len(value) * 3 // 4} bytes>"
            entries.append(TreeEntry(path, t if t != "none" else "None", value=_short_value(value)))
            continue
        dtype, shape = cast(tuple[str, tuple[int, ...]], described[path])
        offsets = header.get(node["name"], {}).get("data_offsets", [0, 0])
        entries.append(
            TreeEntry(
                path,
                node.get("kind", "numpy"),
                dtype=dtype,
                shape=tuple(shape),
                nbytes=int(offsets[1]) - int(offsets[0]),
            )
        )
    return TreeListing(
        entries, f"the safetensors header of {tree.ARRAYS_FILE} and {tree.STRUCTURE_FILE}"
    )


def _safetensors_header(reader: StepReader, name: str) -> dict[str, Any]:
    """The JSON header of a safetensors file: the first 8 bytes say how long it is."""
    where = reader.display(name)
    with reader.open(name) as f:  # reads only the header; the payload stays on disk
        length = bytearray(8)
        f.read_exactly(length)
        n = int.from_bytes(length, "little")
        if n > MAX_HEADER_BYTES:
            raise CorruptCheckpointError(f"{where}: a safetensors header of {n} bytes", path=where)
        raw = bytearray(n)
        f.read_exactly(raw)
    try:
        header = json.loads(bytes(raw))
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except ValueError as e:
        raise CorruptCheckpointError(
            f"{where}: unreadable safetensors header ({e})", path=where
        ) from None
    header.pop("__metadata__", None)
    return header


# -- orbax format: orbax's own metadata


def _orbax_listing(reader: StepReader) -> TreeListing:
    from .formats.orbax import PAYLOAD_DIR

    path = reader.local_path(PAYLOAD_DIR)
    if path is None:
        return TreeListing(
            [], "nothing", ["the orbax tree of a step on an object store is not read; files only"]
        )
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        return TreeListing(
            [],
            "nothing",
            [
                "reading an orbax tree needs orbax-checkpoint, which is not installed. "
                "HINT: pip install 'ckpt-core[flax]'"
            ],
        )
    try:
        meta = ocp.StandardCheckpointer().metadata(path)
    except Exception as e:  # orbax raises many kinds; the manifest is still worth showing
        return TreeListing([], "nothing", [f"orbax could not read its metadata: {e}"])
    tree_meta = getattr(meta, "item_metadata", meta)
    tree_meta = getattr(tree_meta, "tree", tree_meta)
    entries = []
    for keys, leaf in _walk_plain(tree_meta, ()):
        key = _path_str(keys)
        shape, dtype = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
        if type(leaf).__name__ == "ScalarMetadata" or shape is None or dtype is None:
            entries.append(TreeEntry(key, "scalar", dtype=None if dtype is None else str(dtype)))
            continue
        itemsize = getattr(dtype, "itemsize", None)
        if itemsize is None:
            try:
                import numpy as np

                itemsize = np.dtype(dtype).itemsize
            except TypeError:
                itemsize = None
        shape_t = tuple(int(d) for d in shape)
        kind = "jax" if getattr(leaf, "sharding", None) is not None else "numpy"
        entries.append(TreeEntry(key, kind, str(dtype), shape_t, _shape_bytes(shape_t, itemsize)))
    return TreeListing(entries, "orbax's checkpoint metadata")


def _walk_plain(node: Any, path: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from _walk_plain(v, (*path, k))
    elif isinstance(node, list | tuple) and not hasattr(type(node), "_fields"):
        for i, v in enumerate(node):
            yield from _walk_plain(v, (*path, i))
    else:
        yield path, node


def _path_str(path: tuple[Any, ...]) -> str:
    from ._tree import path_str

    return path_str(path)


# -- torch format: the zip directory and the pickle's opcodes, nothing imported or called

_STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "UntypedStorage": "uint8",
}
_ITEMSIZE = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "uint16": 2,
    "uint32": 4,
    "uint64": 8,
    "bool": 1,
    "complex128": 16,
    "complex64": 8,
    "complex32": 4,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1,
}
_TENSOR_REBUILDERS = {
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
}
_PARAMETER_REBUILDERS = {
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
}
_NUMPY_RECONSTRUCT = {"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct"}


class _Placeholder:
    """Stands for an object of a class or function named in a pickle; nothing is imported.

    The pickle machine calls it where it would call the real class or function, so every
    call, `__setstate__`, item and append is merely recorded.
    """

    qualname = "?"
    args: tuple[Any, ...]
    state: Any
    items: dict[Any, Any]
    list: list[Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> _Placeholder:
        self = object.__new__(cls)
        self.args = args
        self.state = None
        self.items = {}
        self.list = []
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.list.append(value)

    def extend(self, values: Any) -> None:
        self.list.extend(values)


class _RecordedDict(dict[Any, Any]):
    """An `OrderedDict` in a pickle (torch state dicts): a dict that takes and drops attributes."""

    def __setstate__(self, state: Any) -> None:
        pass


@dataclass(frozen=True)
class _StorageRef:
    type_name: str
    key: str
    location: str
    numel: int


def _latin1(text: Any, encoding: Any = "latin1") -> Any:
    # protocol 2 pickles write bytes as `_codecs.encode(str, "latin1")`: a pure conversion
    if isinstance(text, str) and encoding in ("latin1", "latin-1"):
        return text.encode("latin1")
    return _placeholder_class("_codecs.encode")(text, encoding)


_PLAIN_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _RecordedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "list"): list,
    ("builtins", "dict"): dict,
    ("builtins", "tuple"): tuple,
    ("builtins", "bytearray"): bytearray,
    ("_codecs", "encode"): _latin1,
}
_PLACEHOLDER_CLASSES: dict[str, type[_Placeholder]] = {}


def _placeholder_class(qualname: str) -> type[_Placeholder]:
    cls = _PLACEHOLDER_CLASSES.get(qualname)
    if cls is None:
        cls = type(qualname.rsplit(".", 1)[-1], (_Placeholder,), {"qualname": qualname})
        _PLACEHOLDER_CLASSES[qualname] = cls
    return cls


class _SymbolicUnpickler(pickle.Unpickler):
    """Decodes a pickle into plain containers and placeholders; imports and calls nothing."""

    def find_class(self, module: str, name: str) -> Any:
        return _PLAIN_GLOBALS.get((module, name)) or _placeholder_class(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
            type_name = getattr(pid[1], "qualname", str(pid[1])).rsplit(".", 1)[-1]
            numel = pid[4] if isinstance(pid[4], int) else 0
            return _StorageRef(type_name, str(pid[2]), str(pid[3]), numel)
        return _placeholder_class("persistent_id")(pid)


def _torch_listing(reader: StepReader) -> TreeListing:
    from .formats.torch import PAYLOAD

    how = (
        "the zip directory of state.pt and its pickle, decoded by a reader that imports and "
        "calls nothing (no torch.load)"
    )
    local = reader.local_path(PAYLOAD)
    if local is not None and not local.is_file():
        where = reader.display(PAYLOAD)
        raise CorruptCheckpointError(f"{where} is listed in the manifest but missing", path=where)
    source: Any = local if local is not None else io.BytesIO(reader.read_bytes(PAYLOAD))
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return TreeListing(
            [],
            "nothing",
            [
                f"state.pt is not a readable zip archive ({e}): it is damaged (run `ckpt verify`) "
                "or a legacy torch.save file, whose tree cannot be read without unpickling it"
            ],
        )
    with zf:
        records = [(i.filename, i.file_size) for i in zf.infolist()]
        pkl = next((n for n, _ in records if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            return TreeListing([], "nothing", ["state.pt holds no data.pkl record"], records)
        size = zf.getinfo(pkl).file_size
        if size > MAX_HEADER_BYTES:
            return TreeListing([], "nothing", [f"{pkl} is {size} bytes; not decoded"], records)
        try:
            raw_pickle = _read_record(zf, source, zf.getinfo(pkl))
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            return TreeListing([], "nothing", [f"could not read {pkl}: {e}"], records)
    notes: list[str] = []
    try:
        root = _SymbolicUnpickler(io.BytesIO(raw_pickle)).load()
    except Exception as e:  # any malformed pickle: describe the zip records instead
        return TreeListing([], "nothing", [f"could not decode {pkl}: {e}"], records)
    entries: list[TreeEntry] = []
    _walk_decoded(root, (), entries, notes, [0])
    return TreeListing(entries, how, notes, records)


def _read_record(zf: zipfile.ZipFile, source: Any, info: zipfile.ZipInfo) -> bytes:
    """One zip record's bytes. Stored records are read directly, without zipfile's CRC check:
    the core writes torch payloads without zip CRCs (the manifest's checksum covers them)."""
    if info.compress_type != zipfile.ZIP_STORED:
        return zf.read(info)
    with contextlib.ExitStack() as stack:
        f = source if isinstance(source, io.BytesIO) else stack.enter_context(open(source, "rb"))
        f.seek(info.header_offset)
        head = f.read(30)
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"no local header for {info.filename}")
        name_len, extra_len = struct.unpack("<HH", head[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        data = f.read(info.file_size)
    if len(data) != info.file_size:
        raise zipfile.BadZipFile(f"{info.filename} is truncated")
    return data


def _walk_decoded(
    obj: Any, path: tuple[Any, ...], out: list[TreeEntry], notes: list[str], visits: list[int]
) -> None:
    visits[0] += 1
    if visits[0] > MAX_TREE_ENTRIES or len(path) > 64:
        if visits[0] == MAX_TREE_ENTRIES + 1 or len(path) > 64:
            notes.append(f"listing stopped after {len(out)} leaves (the tree is too large or deep)")
        visits[0] = MAX_TREE_ENTRIES + 2
        return
    key = _path_str(path)
    if isinstance(obj, _Placeholder):
        tensor = _as_tensor(obj)
        if tensor is not None:
            out.append(TreeEntry(key, *tensor))
            return
        array = _as_numpy(obj)
        if array is not None:
            out.append(TreeEntry(key, *array))
            return
        if obj.items:
            obj = obj.items
        elif obj.list:
            obj = obj.list
        else:
            out.append(TreeEntry(key, "object", value=obj.qualname))
            return
    if isinstance(obj, dict):
        for k, v in obj.items():
            _walk_decoded(v, (*path, k), out, notes, visits)
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            _walk_decoded(v, (*path, i), out, notes, visits)
    elif isinstance(obj, set | frozenset):
        out.append(TreeEntry(key, type(obj).__name__, value=f"{len(obj)} items"))
    elif isinstance(obj, _StorageRef):
        out.append(TreeEntry(key, "storage", _STORAGE_DTYPES.get(obj.type_name), (obj.numel,)))
    elif obj is None:
        out.append(TreeEntry(key, "None"))
    elif isinstance(obj, bool | int | float | str | bytes | bytearray | complex):
        out.append(TreeEntry(key, type(obj).__name__, value=_short_value(obj)))
    else:
        out.append(TreeEntry(key, "object", value=type(obj).__name__))


def _as_tensor(obj: _Placeholder) -> tuple[Any, ...] | None:
    """(kind, dtype, shape, nbytes) of a recorded tensor rebuild call, else None."""
    name, args, kind = obj.qualname, obj.args, "torch"
    if name in _PARAMETER_REBUILDERS and args and isinstance(args[0], _Placeholder):
        name, args, kind = args[0].qualname, args[0].args, "parameter"
    elif name == "torch._tensor._rebuild_from_type_v2" and len(args) >= 3:
        func, new_type, inner = args[0], args[1], args[2]
        name = getattr(func, "qualname", "")
        args = inner if isinstance(inner, tuple) else ()
        kind = getattr(new_type, "qualname", "torch").rsplit(".", 1)[-1].lower()
    if name not in _TENSOR_REBUILDERS or len(args) < 3 or not isinstance(args[0], _StorageRef):
        return None
    storage, size = args[0], args[2]
    dtype = _STORAGE_DTYPES.get(storage.type_name)
    if name == "torch._utils._rebuild_tensor_v3" and len(args) >= 7:
        dtype = getattr(args[6], "qualname", str(args[6])).rsplit(".", 1)[-1]
    if not isinstance(size, tuple) or not all(isinstance(d, int) for d in size):
        return None
    return kind, dtype, size, _shape_bytes(size, _ITEMSIZE.get(dtype or ""))


def _as_numpy(obj: _Placeholder) -> tuple[Any, ...] | None:
    """(kind, dtype, shape, nbytes) of a recorded numpy array, else None."""
    state = obj.state
    if obj.qualname not in _NUMPY_RECONSTRUCT or not isinstance(state, tuple) or len(state) < 5:
        return None
    shape, dtype = state[1], state[2]
    code = dtype.args[0] if isinstance(dtype, _Placeholder) and dtype.args else None
    try:
        import numpy as np

        name = np.dtype(code).name if isinstance(code, str) else None
    except TypeError:
        name = code
    raw = state[4]
    nbytes = len(raw) if isinstance(raw, bytes | bytearray) else None
    return "numpy", name, tuple(shape) if isinstance(shape, tuple) else None, nbytes


# ---------------------------------------------------------------- small helpers for callers


def age(seconds_since_epoch: float, now: float | None = None) -> str:
    """`3s`, `5m`, `2h`, `4d`: how long ago."""
    delta = max(0.0, (time.time() if now is None else now) - seconds_since_epoch)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{int(delta // size)}{unit}"
    return f"{int(delta)}s"


def human_bytes(n: int | None) -> str:
    """`1.2 MB`: decimal units, as `ls -h --si` and disk vendors count."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
