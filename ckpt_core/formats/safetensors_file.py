"""The safetensors file layout: dtype codes, writing a header, reading one that is not trusted,
and array memory seen as bytes (read into and written from without a copy).

The files are standard: `safetensors.safe_open(path, "np")` reads them.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _tree
from ..errors import CorruptCheckpointError

# numpy / torch dtype name <-> safetensors dtype code
CODES = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "int16": "I16",
    "uint16": "U16",
    "int32": "I32",
    "uint32": "U32",
    "int64": "I64",
    "uint64": "U64",
    "float16": "F16",
    "bfloat16": "BF16",
    "float32": "F32",
    "float64": "F64",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
}
NAMES = {code: name for name, code in CODES.items()}


def numpy_dtype(name: str) -> np.dtype[Any]:
    if name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


@dataclass
class StoredArray:
    """One tensor entry of a safetensors file, its bytes taken from `data` when written."""

    name: str
    code: str
    shape: tuple[int, ...]
    data: Any  # numpy array, torch tensor or jax array; turned into bytes only when written


def torch_as_numpy(t: Any) -> np.ndarray:
    """A numpy view of a CPU tensor's memory; dtypes numpy lacks are viewed as same-size ints."""
    if t.dtype.is_floating_point and t.element_size() <= 2 and str(t.dtype) != "torch.float16":
        import torch

        t = t.view(torch.int16 if t.element_size() == 2 else torch.uint8)
    return t.numpy()


def as_bytes(data: Any) -> memoryview:
    """A flat byte view of an array's memory (a copy only for non-contiguous arrays)."""
    if _tree.is_torch_tensor(data):
        arr = torch_as_numpy(data.detach().contiguous())
    else:
        arr = np.asarray(data)  # a CPU jax array is not copied here
    arr = np.ascontiguousarray(arr)
    return arr.reshape(-1).view(np.uint8).data


def header_bytes(arrays: list[StoredArray]) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"writer": "ckpt_core"}}
    offset = 0
    for a in arrays:
        nbytes = int(np.prod(a.shape, dtype=np.int64)) * numpy_dtype(NAMES[a.code]).itemsize
        header[a.name] = {
            "dtype": a.code,
            "shape": list(a.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def read_header(f: Any) -> dict[str, Any]:
    """The safetensors header, checked against itself and the file's recorded size.

    The header is read before the file's checksum can be checked, so nothing in it is
    trusted: every entry must have a known dtype, a shape of non-negative ints, and offsets
    that tile the data exactly.
    """

    def bad(what: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"{f.name}: invalid safetensors header ({what}); the file was damaged or was not "
            "written by ckpt-core. HINT: restore an earlier step.",
            path=f.name,
        )

    lenbuf = bytearray(8)
    f.read_exactly(lenbuf)
    (n,) = struct.unpack("<Q", lenbuf)
    data_size = f.expected_size - 8 - n
    if n > 1 << 30 or data_size < 0:
        raise bad(f"a header of {n} bytes in a file of {f.expected_size}")
    raw = bytearray(n)
    f.read_exactly(raw)
    try:
        header = json.loads(bytes(raw))
    except ValueError as e:
        raise bad(f"not JSON: {e}") from None
    if not isinstance(header, dict):
        raise bad("not a JSON object")
    header.pop("__metadata__", None)
    end = 0
    for name, info in sorted(header.items(), key=lambda kv: start_of(kv[1])):
        if not isinstance(info, dict) or info.get("dtype") not in NAMES:
            raise bad(f"array {name!r} has no known dtype")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not isinstance(shape, list) or not all(is_count(d) for d in shape):
            raise bad(f"array {name!r} has shape {shape!r}")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(is_count, offsets)):
            raise bad(f"array {name!r} has offsets {offsets!r}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * numpy_dtype(NAMES[info["dtype"]]).itemsize
        if offsets[0] != end or offsets[1] - offsets[0] != nbytes:
            raise bad(f"array {name!r} at {offsets} does not follow byte {end} with {nbytes} bytes")
        end = offsets[1]
    if end != data_size:
        raise bad(f"the arrays cover {end} bytes of {data_size}")
    return header


def start_of(info: Any) -> int:
    try:
        return int(info["data_offsets"][0])
    except (TypeError, KeyError, IndexError, ValueError):
        return -1


def is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 62


def kind_of(like_leaf: Any) -> str | None:
    if like_leaf is None:
        return None
    if _tree.is_torch_tensor(like_leaf):
        return "torch"
    if _tree.is_jax_array(like_leaf) or _tree.is_jax_struct(like_leaf):
        return "jax"
    return "numpy"


def allocate(info: dict[str, Any], kind: str) -> tuple[Any, memoryview]:
    """An empty array of `kind` for a safetensors entry, and a writable byte view of its memory."""
    name = NAMES[info["dtype"]]
    shape = tuple(info["shape"])
    if kind == "torch":
        import torch

        t = torch.empty(shape, dtype=getattr(torch, name))
        return t, torch_as_numpy(t.reshape(-1)).view(np.uint8).data
    arr = np.empty(shape, dtype=numpy_dtype(name))
    return arr, arr.reshape(-1).view(np.uint8).data


def entry_bytes(entry: dict[str, Any]) -> int:
    return (
        int(np.prod(entry["shape"], dtype=np.int64)) * numpy_dtype(NAMES[entry["dtype"]]).itemsize
    )
