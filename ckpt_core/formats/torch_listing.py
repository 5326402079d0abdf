"""Listing a `torch.save` file's tree without torch and without running any of it.

The zip directory of `state.pt` is read, and its pickle (`data.pkl`) is decoded by an
unpickler that imports nothing and calls nothing it finds: every class or function the pickle
names becomes a placeholder that records its arguments, so a tensor shows its dtype and shape
and a hostile `__reduce__` shows as the name of what it would have called.
"""

from __future__ import annotations

import contextlib
import io
import math
import pickle
import struct
import zipfile
from dataclasses import dataclass
from typing import Any

from .. import _tree
from ..errors import CorruptCheckpointError
from ..options import human_bytes
from .listing_values import short_value
from .protocol import TreeEntry, TreeListing
from .reader import StepReader

MAX_TREE_ENTRIES = 100_000  # a hostile pickle can name one object 2**50 times: stop listing early
MAX_PICKLE_BYTES = 256 << 20  # the largest data.pkl decoded for a listing


def describe_torch_file(reader: StepReader, name: str) -> TreeListing:
    """The tree of the `torch.save` file `name` of a step, from its zip directory and pickle;
    its summary counts the zip's records and tensor storages."""
    listing = _decode_torch_file(reader, name)
    if listing.records:
        storages = [size for record, size in listing.records if "/data/" in record]
        listing.summary = (
            f"{name}: {len(listing.records)} zip records, {len(storages)} tensor storages "
            f"({human_bytes(sum(storages))})"
        )
    return listing


def _decode_torch_file(reader: StepReader, name: str) -> TreeListing:
    how = (
        f"the zip directory of {name} and its pickle, decoded by a reader that imports and "
        "calls nothing (no torch.load)"
    )
    local = reader.local_path(name)
    if local is not None and not local.is_file():
        where = reader.display(name)
        raise CorruptCheckpointError(f"{where} is listed in the manifest but missing", path=where)
    source: Any = local if local is not None else io.BytesIO(reader.read_bytes(name))
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return TreeListing(
            [],
            "nothing",
            [
                f"{name} is not a readable zip archive ({e}): it is damaged (run `ckpt verify`) "
                "or a legacy torch.save file, whose tree cannot be read without unpickling it"
            ],
        )
    with zf:
        records = [(i.filename, i.file_size) for i in zf.infolist()]
        pkl = next((n for n, _ in records if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            return TreeListing([], "nothing", [f"{name} holds no data.pkl record"], records)
        size = zf.getinfo(pkl).file_size
        if size > MAX_PICKLE_BYTES:
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


_TEXT_ENCODINGS = ("latin1", "latin-1", "ascii", "utf-8", "utf8")


def _bytearray(*args: Any) -> Any:
    # Only a copy of bytes or text: `bytearray(10**12)` in a 40-byte pickle would allocate it.
    if not args:
        return bytearray()
    if len(args) == 1 and isinstance(args[0], bytes):
        return bytearray(args[0])
    if len(args) == 2 and isinstance(args[0], str) and args[1] in _TEXT_ENCODINGS:
        return bytearray(args[0], args[1])
    return _placeholder_class("builtins.bytearray")(*args)


_PLAIN_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _RecordedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "list"): list,
    ("builtins", "dict"): dict,
    ("builtins", "tuple"): tuple,
    ("builtins", "bytearray"): _bytearray,
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
        if module == "__builtin__":  # protocol 2, torch.save's default, names Python 2's module
            module = "builtins"
        return _PLAIN_GLOBALS.get((module, name)) or _placeholder_class(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
            type_name = getattr(pid[1], "qualname", str(pid[1])).rsplit(".", 1)[-1]
            numel = pid[4] if isinstance(pid[4], int) else 0
            return _StorageRef(type_name, str(pid[2]), str(pid[3]), numel)
        return _placeholder_class("persistent_id")(pid)


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
    key = _tree.path_str(path)
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
        out.append(TreeEntry(key, type(obj).__name__, value=short_value(obj)))
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


def _shape_bytes(shape: tuple[int, ...], itemsize: int | None) -> int | None:
    if itemsize is None:
        return None
    return math.prod(shape) * itemsize
