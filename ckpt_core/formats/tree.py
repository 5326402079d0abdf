"""The `tree` format: arrays in one safetensors file, the nesting and scalars in `tree.json`.

Arrays are streamed from their own memory straight into the file (no intermediate buffer)
and read back straight into freshly allocated arrays of the requested kind (numpy, torch or
jax), checksummed on the way. Nothing is ever unpickled. The safetensors file is standard:
`safetensors.safe_open(path, "np")` reads it.
"""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _tree
from ..errors import CheckpointError, CorruptCheckpointError
from ..storage import StepWriter
from .base import (
    PICKLE_HINT,
    Refusal,
    StepReader,
    convert_to_like,
    host_copy,
    jax_pinned,
    register_format,
)

ARRAYS_FILE = "arrays.safetensors"
STRUCTURE_FILE = "tree.json"
STRUCTURE_VERSION = 1
# The sharded layout of incremental saves, as Hugging Face ships large models: shard files
# `arrays-00001.safetensors`, ... and an index mapping every tensor to its shard.
INDEX_FILE = "arrays.safetensors.index.json"
SHARD_FILE = "arrays-{:05d}.safetensors"
# Arrays above CUT_BYTES are cut along their first axis into row blocks of BLOCK_BYTES, each
# its own tensor, so a ring buffer where a band of rows changed rewrites only the blocks of
# that band (a 10,000-row band of a (1M, 8) float32 buffer: at most two blocks). Smaller
# leaves stay whole, packed into shards of about SHARD_BYTES: every file costs an open and an
# fsync, so a state of 8 MiB leaves is not split into four times as many files.
CUT_BYTES = 8 << 20
BLOCK_BYTES = 2 << 20
SHARD_BYTES = 2 << 20

# numpy / torch dtype name <-> safetensors dtype code
_CODES = {
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
_NAMES = {code: name for name, code in _CODES.items()}


def numpy_dtype(name: str) -> np.dtype[Any]:
    if name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


@dataclass
class _Array:
    name: str
    code: str
    shape: tuple[int, ...]
    data: Any  # numpy array, torch tensor or jax array; turned into bytes only when written


@dataclass
class Encoded:
    """A state taken apart: the JSON structure and the arrays it points to."""

    structure: Any
    arrays: list[_Array] = field(default_factory=list)


def encode(state: Any, *, copy: bool) -> Encoded:
    """Take `state` apart; with `copy`, arrays are host copies the caller can no longer mutate."""
    out = Encoded(None)
    taken: set[str] = set()
    out.structure = _encode(state, (), out, taken, copy)
    return out


def _encode(node: Any, path: tuple[Any, ...], out: Encoded, taken: set[str], copy: bool) -> Any:
    if _tree.is_array(node):  # before the Python scalars: np.float64 is a float too
        return _encode_array(node, path, out, taken, copy)
    if node is None:
        return {"t": "none"}
    if isinstance(node, bool):
        return {"t": "bool", "v": node}
    if isinstance(node, int):
        return {"t": "int", "v": node}
    if isinstance(node, float):
        return {"t": "float", "v": node}
    if isinstance(node, str):
        return {"t": "str", "v": node}
    if isinstance(node, bytes):
        return {"t": "bytes", "v": base64.b64encode(node).decode()}
    if isinstance(node, dict):
        if (problem := _key_refusal(node, path)) is not None:
            raise TypeError(problem)
        return {
            "t": "dict",
            "k": list(node),
            "v": [_encode(v, (*path, k), out, taken, copy) for k, v in node.items()],
        }
    kids = _tree.children(node)
    if kids is None:
        list(_tree.iter_leaves(node, path))  # raises the descriptive TypeError
    assert kids is not None
    kind = "list" if isinstance(node, list) else "tuple" if isinstance(node, tuple) else "node"
    doc: dict[str, Any] = {
        "t": kind,
        "v": [_encode(c, (*path, k), out, taken, copy) for k, c in kids],
    }
    if kind == "node" or (kind == "tuple" and hasattr(type(node), "_fields")):
        doc["k"] = [k for k, _ in kids]
        doc["type"] = f"{type(node).__module__}.{type(node).__qualname__}"
    return doc


def _encode_array(
    node: Any, path: tuple[Any, ...], out: Encoded, taken: set[str], copy: bool
) -> Any:
    name = _tree.path_str(path)
    if (problem := _array_refusal(node, name)) is not None:
        raise TypeError(problem)
    while name in taken:  # only when int and str keys of one dict print alike
        name += "#"
    taken.add(name)
    doc: dict[str, Any] = {"t": "array", "name": name}
    if _tree.is_jax_key(node):
        import jax

        doc.update(
            kind="jax_key",
            impl=str(jax.random.key_impl(node)),
            dtype=str(node.dtype),
            key_shape=list(node.shape),
        )
        data: Any = jax.random.key_data(node)
        dtype_name = "uint32"
    elif _tree.is_jax_array(node):
        doc["kind"] = "jax"
        data, dtype_name = (jax_pinned(node) if copy else node), str(node.dtype)
    elif _tree.is_torch_tensor(node):
        doc["kind"] = "torch"
        data = host_copy(node) if copy or node.device.type != "cpu" else node.detach()
        dtype_name = str(data.dtype).removeprefix("torch.")
    else:
        doc["kind"] = "numpy" if isinstance(node, np.ndarray) else "numpy_scalar"
        arr = np.asarray(node)
        if not arr.dtype.isnative:  # safetensors is little-endian: write native order
            arr = arr.astype(arr.dtype.newbyteorder("="))
        data = host_copy(arr) if copy and arr is node else arr
        dtype_name = arr.dtype.name
    out.arrays.append(_Array(name, _CODES[dtype_name], tuple(int(d) for d in data.shape), data))
    return doc


def _torch_as_numpy(t: Any) -> np.ndarray:
    """A numpy view of a CPU tensor's memory; dtypes numpy lacks are viewed as same-size ints."""
    if t.dtype.is_floating_point and t.element_size() <= 2 and str(t.dtype) != "torch.float16":
        import torch

        t = t.view(torch.int16 if t.element_size() == 2 else torch.uint8)
    return t.numpy()


def _as_bytes(data: Any) -> memoryview:
    """A flat byte view of an array's memory (a copy only for non-contiguous arrays)."""
    if _tree.is_torch_tensor(data):
        arr = _torch_as_numpy(data.detach().contiguous())
    else:
        arr = np.asarray(data)  # a CPU jax array is not copied here
    arr = np.ascontiguousarray(arr)
    return arr.reshape(-1).view(np.uint8).data


def _safetensors_header(arrays: list[_Array]) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"writer": "ckpt_core"}}
    offset = 0
    for a in arrays:
        nbytes = int(np.prod(a.shape, dtype=np.int64)) * numpy_dtype(_NAMES[a.code]).itemsize
        header[a.name] = {
            "dtype": a.code,
            "shape": list(a.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


class TreeFormat:
    """Nested dict/list/tuple of arrays and scalars; numpy, torch and jax leaves; never unpickles."""

    name = "tree"
    main_file = "arrays.safetensors"

    def accepts(self, state: Any) -> bool:
        return storable_refusal(state) is None

    def snapshot(self, state: Any) -> Encoded:
        return encode(state, copy=True)

    def write(self, state: Any, writer: StepWriter) -> None:
        enc = state if isinstance(state, Encoded) else encode(state, copy=False)
        if writer.incremental:
            _write_shards(enc, writer)
        else:
            with writer.open(ARRAYS_FILE) as f:
                f.write(_safetensors_header(enc.arrays))
                for a in enc.arrays:
                    f.write(_as_bytes(a.data))
        doc = {"tree_format": STRUCTURE_VERSION, "structure": enc.structure}
        with writer.open(STRUCTURE_FILE) as f:
            f.write(json.dumps(doc, separators=(",", ":")).encode())

    def read(self, reader: StepReader, like: Any = None) -> Any:
        structure = read_structure(reader)
        saved_arrays: dict[str, Any] = {}  # name -> node
        _collect_arrays(structure, saved_arrays)
        if INDEX_FILE in reader.manifest.files:
            arrays = _read_shards(reader, structure, saved_arrays, like)
            if like is None:
                return _decode(structure, arrays)
            by_path = saved_by_path(structure)
            return _tree.rebuild_like(like, lambda p, leaf: _from_saved(by_path, arrays, p, leaf))
        with reader.open(ARRAYS_FILE) as f:
            header = _read_header(f)
            where = reader.display(ARRAYS_FILE)
            if set(header) != set(saved_arrays):
                raise CorruptCheckpointError(
                    f"{where} holds arrays {sorted(set(header) ^ set(saved_arrays))[:5]} that "
                    f"{STRUCTURE_FILE} does not describe (or the reverse).",
                    path=where,
                )
            targets: dict[str, Any] = {}
            like_leaves: dict[str, Any] = {}
            if like is not None:
                _tree.check_structure(
                    like, describe(structure, header), f"step {reader.manifest.step}"
                )
                like_leaves = {
                    _tree.path_str(p): leaf for p, leaf in _tree.iter_leaves_lenient(like)
                }
            order = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
            for name, info in order:
                node = saved_arrays[name]
                target_kind = _kind_of(like_leaves.get(node["path"])) or node["kind"]
                buf, view = _allocate(info, target_kind)
                f.read_exactly(view)
                targets[name] = buf
            f.verify()
        if like is None:
            return _decode(structure, targets)
        saved = saved_by_path(structure)
        return _tree.rebuild_like(like, lambda p, leaf: _from_saved(saved, targets, p, leaf))


# ---------------------------------------------------------------- the sharded layout
#
# In `tree.json`, each array node of a sharded step also says how it is stored:
# "stored": [safetensors dtype, shape] and "tensors": [[tensor name, rows], ...], its row
# blocks in order (one entry, the array's own name, for an array that was not cut). The
# reader allocates every array from these and checks each shard's header against them, so
# every shard is opened once.


@dataclass
class _Piece:
    """One tensor of a shard: a whole small array, or one row block of a large one."""

    tensor: _Array
    data: memoryview


def _pieces(enc: Encoded) -> tuple[list[_Piece], dict[str, list[list[Any]]]]:
    """Every tensor to store, in order, and each array's tensors as [name, rows]."""
    pieces: list[_Piece] = []
    tensors: dict[str, list[list[Any]]] = {}
    names = {a.name for a in enc.arrays}
    for a in enc.arrays:
        data = _as_bytes(a.data)
        rows = a.shape[0] if a.shape else 0
        if len(data) <= CUT_BYTES or rows < 2:
            pieces.append(_Piece(a, data))
            tensors[a.name] = [[a.name, rows]]
            continue
        row_bytes = len(data) // rows
        step = max(1, BLOCK_BYTES // max(row_bytes, 1))
        tensors[a.name] = []
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            name = f"{a.name}@rows{start}-{stop}"
            while name in names:  # only if a leaf is itself named like a block
                name += "#"
            names.add(name)
            tensors[a.name].append([name, stop - start])
            block = _Array(name, a.code, (stop - start, *a.shape[1:]), None)
            pieces.append(_Piece(block, data[start * row_bytes : stop * row_bytes]))
    return pieces, tensors


def _write_shards(enc: Encoded, writer: StepWriter) -> None:
    """Write the arrays as shards plus an index; a shard equal (size and xxh3) to the one of
    the same name in the previous step is shared with it instead of written."""
    import xxhash

    from ..manifest import FileRecord

    pieces, tensors = _pieces(enc)
    shards: list[list[_Piece]] = []
    size = 0
    for piece in pieces:
        if not shards or (size and size + len(piece.data) > SHARD_BYTES):
            shards.append([])
            size = 0
        shards[-1].append(piece)
        size += len(piece.data)
    weight_map: dict[str, str] = {}
    for number, shard in enumerate(shards, start=1):
        name = SHARD_FILE.format(number)
        header = _safetensors_header([p.tensor for p in shard])
        # Hashing reads memory at ~10 GB/s, far faster than writing: check before writing.
        hasher = xxhash.xxh3_64(header)
        for p in shard:
            hasher.update(p.data)
            weight_map[p.tensor.name] = name
        record = FileRecord(len(header) + sum(len(p.data) for p in shard), hasher.hexdigest())
        if writer.share(name, record):
            continue
        with writer.open(name) as f:
            f.write(header)
            for p in shard:
                f.write(p.data)
    stored = {a.name: [a.code, list(a.shape)] for a in enc.arrays}
    _mark_stored(enc.structure, stored, tensors)
    total = sum(len(p.data) for p in pieces)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    with writer.open(INDEX_FILE) as f:
        f.write(json.dumps(index, separators=(",", ":")).encode())


def _mark_stored(node: Any, stored: dict[str, Any], tensors: dict[str, Any]) -> None:
    if node["t"] == "array":
        node["stored"] = stored[node["name"]]
        node["tensors"] = tensors[node["name"]]
    elif node["t"] in ("dict", "list", "tuple", "node"):
        for v in node["v"]:
            _mark_stored(v, stored, tensors)


@dataclass
class ShardLayout:
    """What a sharded step holds, from `tree.json` and the index (no shard opened)."""

    shards: list[str]
    full: dict[str, dict[str, Any]]  # array -> {"dtype", "shape"} as one safetensors entry
    tensors: dict[str, tuple[str, int, dict[str, Any]]]  # tensor -> (array, byte offset, entry)


def shard_layout(reader: StepReader, saved_arrays: dict[str, Any]) -> ShardLayout:
    """The layout of a sharded step (`saved_arrays`: name -> node of `tree.json`), its index
    and `tree.json` checked against each other."""
    where = reader.display(INDEX_FILE)

    def bad(what: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"{where} and {STRUCTURE_FILE} disagree: {what}. HINT: restore an earlier step.",
            path=where,
        )

    try:
        weight_map = json.loads(reader.read_bytes(INDEX_FILE))["weight_map"]
        if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) and v in reader.manifest.files for v in weight_map.values()
        ):
            raise ValueError("weight_map names files the manifest does not list")
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpointError(
            f"{where} is not a valid shard index ({type(e).__name__}: {str(e)[:200]}). "
            "HINT: restore an earlier step.",
            path=where,
        ) from None
    full: dict[str, dict[str, Any]] = {}
    tensors: dict[str, tuple[str, int, dict[str, Any]]] = {}
    for name, node in saved_arrays.items():
        if "stored" not in node or "tensors" not in node:
            raise bad(f"array {name!r} has no stored dtype, shape or tensors")
        code, shape = node["stored"]
        itemsize = numpy_dtype(_NAMES[code]).itemsize
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * itemsize
        full[name] = {"dtype": code, "shape": shape}
        whole = len(node["tensors"]) == 1
        offset = 0  # where in the array's bytes each row block goes
        for tensor, rows in node["tensors"]:
            entry = {"dtype": code, "shape": shape if whole else [rows, *shape[1:]]}
            tensors[tensor] = (name, offset, entry)
            offset += rows * row_bytes
        if len(node["tensors"]) > 1 and sum(r for _, r in node["tensors"]) != shape[0]:
            raise bad(f"the row blocks of array {name!r} do not add up to {shape[0]} rows")
    if set(weight_map) != set(tensors):
        raise bad(f"tensors {sorted(set(weight_map) ^ set(tensors))[:5]} are in only one of them")
    shards = sorted(set(weight_map.values()))
    # Nothing is allocated for more bytes than the shards hold (tree.json may be damaged).
    stored = sum(_entry_bytes(entry) for entry in full.values())
    if stored > sum(reader.manifest.files[shard].size for shard in shards):
        raise bad(f"its arrays need {stored} bytes, more than the shards hold")
    return ShardLayout(shards, full, tensors)


def _entry_bytes(entry: dict[str, Any]) -> int:
    return (
        int(np.prod(entry["shape"], dtype=np.int64)) * numpy_dtype(_NAMES[entry["dtype"]]).itemsize
    )


def _read_shards(
    reader: StepReader, structure: Any, saved_arrays: dict[str, Any], like: Any
) -> dict[str, Any]:
    """Every array of a sharded step by name, each shard checksummed as it is read."""
    layout = shard_layout(reader, saved_arrays)
    like_leaves: dict[str, Any] = {}
    if like is not None:
        _tree.check_structure(
            like, describe(structure, layout.full), f"step {reader.manifest.step}"
        )
        like_leaves = {_tree.path_str(p): leaf for p, leaf in _tree.iter_leaves_lenient(like)}
    targets: dict[str, Any] = {}
    views: dict[str, memoryview] = {}
    for name, node in saved_arrays.items():
        target_kind = _kind_of(like_leaves.get(node["path"])) or node["kind"]
        targets[name], views[name] = _allocate(layout.full[name], target_kind)
    unread = set(layout.tensors)
    for shard in layout.shards:
        with reader.open(shard) as f:
            for tensor, entry in sorted(_read_header(f).items(), key=lambda kv: _start_of(kv[1])):
                if tensor not in unread:
                    raise CorruptCheckpointError(
                        f"{f.name} holds tensor {tensor!r}, which {INDEX_FILE} does not place "
                        "there (or twice). HINT: restore an earlier step.",
                        path=f.name,
                    )
                name, offset, expected = layout.tensors[tensor]
                if entry["dtype"] != expected["dtype"] or entry["shape"] != expected["shape"]:
                    raise CorruptCheckpointError(
                        f"{f.name}: tensor {tensor!r} is {entry['dtype']} {entry['shape']}, "
                        f"{STRUCTURE_FILE} records {expected['dtype']} {expected['shape']}. "
                        "HINT: restore an earlier step.",
                        path=f.name,
                    )
                start, stop = entry["data_offsets"]
                f.read_exactly(views[name][offset : offset + stop - start])
                unread.discard(tensor)
            f.verify()
    if unread:
        raise CorruptCheckpointError(
            f"the shards of {reader.display('')} lack tensors {sorted(unread)[:5]} that "
            f"{INDEX_FILE} lists. HINT: restore an earlier step.",
            path=reader.display(INDEX_FILE),
        )
    return targets


def storable_refusal(node: Any, path: tuple[Any, ...] = ()) -> Refusal | None:
    """The first leaf or dict key of `node` that `encode` would refuse, with a message saying
    what was found and the fix; None if the tree format stores `node`.

    Touches no array memory (for `format="auto"`).
    """
    where = _tree.path_str(path)
    found = f"the {type(node).__qualname__}"
    kids = _tree.children(node)
    if kids is None:
        if not _tree.is_leaf(node):
            try:
                list(_tree.iter_leaves(node, path))
            except TypeError as e:  # the descriptive message of an object it cannot store
                return Refusal(where, found, str(e))
        if _tree.is_array(node) and (problem := _array_refusal(node, where)) is not None:
            return Refusal(where, found, problem)
        return None
    if isinstance(node, dict) and (problem := _key_refusal(node, path)) is not None:
        return Refusal(where, f"a key of the {type(node).__qualname__}", problem)
    for key, child in kids:
        if (refused := storable_refusal(child, (*path, key))) is not None:
            return refused
    return None


def _key_refusal(node: dict[Any, Any], path: tuple[Any, ...]) -> str | None:
    for k in node:
        if not isinstance(k, str | int) or isinstance(k, bool):
            return (
                f"the tree format stores dict keys that are str or int; {_tree.path_str(path)!r} "
                f"has key {_short_repr(k)} of type {type(k).__qualname__}. HINT: use str keys, "
                f"format='torch' for a torch checkpoint, or {PICKLE_HINT}."
            )
    return None


_STORED_DTYPES = "bool, (u)int8 to (u)int64, float16/32/64, bfloat16 and float8"


def _array_refusal(node: Any, name: str) -> str | None:
    """Why the tree format cannot store the array leaf `node` at `name`: what was found, what
    it stores, and the fix; None when it can."""
    if _tree.is_torch_tensor(node):
        kind, cast = "torch tensor", ".float()"
        layout = str(node.layout).removeprefix("torch.")
        if layout != "strided":  # sparse, mkldnn: no flat buffer of values
            return (
                f"the tree format cannot store the {layout} torch tensor at {name!r}: it stores "
                f"dense (strided) arrays. HINT: save its .to_dense() (or its indices and values), "
                f"use format='torch', or {PICKLE_HINT}."
            )
        dtype = str(node.dtype).removeprefix("torch.")
    elif _tree.is_jax_array(node):
        kind, cast, dtype = "jax array", ".astype('float32')", str(node.dtype)
        if _tree.is_jax_key(node):
            return None
    else:  # numpy; the name ignores the byte order, which `encode` makes native
        kind, cast, dtype = "numpy array", ".astype('float32')", np.asarray(node).dtype.name
    if dtype in _CODES:
        return None
    if "complex" in dtype:
        fix = "save its .real and .imag as two float arrays"
    elif dtype in ("object", "str", "bytes") or dtype.startswith(("str", "bytes", "void")):
        fix = "convert it to a numeric array, or to a list of numbers and strings"
    else:
        fix = f"cast it to one of those (e.g. {cast})"
    return (
        f"the tree format cannot store the {dtype} {kind} at {name!r}: it stores "
        f"{_STORED_DTYPES}. HINT: {fix}, or {PICKLE_HINT}."
    )


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def read_structure(reader: StepReader) -> Any:
    """`tree.json`, every node checked, array nodes given their paths.

    The file's checksum matches its manifest, but the manifest may lie too: nothing here is
    trusted until `_check_node` has seen it.
    """
    where = reader.display(STRUCTURE_FILE)
    raw = reader.read_bytes(STRUCTURE_FILE)
    try:
        doc = json.loads(raw)
        version = doc["tree_format"] if isinstance(doc, dict) else None
        if version != STRUCTURE_VERSION:
            raise CheckpointError(
                f"{where} is tree format version {version!r}, this ckpt-core reads "
                f"{STRUCTURE_VERSION}: upgrade ckpt-core (or the file is damaged)."
            )
        structure = doc["structure"]
        _check_node(structure, ())
        return structure
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise CorruptCheckpointError(
            f"{where} is not a valid tree structure ({type(e).__name__}: {str(e)[:200]}). "
            "HINT: restore an earlier step.",
            path=where,
        ) from None


_SCALARS: dict[str, Any] = {"bool": bool, "int": int, "float": int | float, "str": str}
_ARRAY_KINDS = ("numpy", "numpy_scalar", "torch", "jax", "jax_key")


def _check_node(node: Any, path: tuple[Any, ...]) -> None:
    """Raise TypeError for any node `_decode` could not decode; annotate array paths."""
    where = _tree.path_str(path)
    if not isinstance(node, dict) or not isinstance(node.get("t"), str):
        raise TypeError(f"the node at {where} is not an object with a type")
    t = node["t"]
    if t == "array":
        if not isinstance(node.get("name"), str) or node.get("kind") not in _ARRAY_KINDS:
            raise TypeError(f"the array at {where} has no name or an unknown kind")
        if node["kind"] == "jax_key" and not (
            isinstance(node.get("impl"), str)
            and isinstance(node.get("dtype"), str)
            and isinstance(node.get("key_shape"), list)
        ):
            raise TypeError(f"the PRNG key at {where} lacks its impl, dtype or shape")
        if "stored" in node or "tensors" in node:  # a sharded step (incremental saves)
            _check_stored(node, where)
        node["path"] = where
    elif t in ("dict", "list", "tuple", "node"):
        values, keys = node.get("v"), node.get("k")
        if not isinstance(values, list):
            raise TypeError(f"the container at {where} has no list of values")
        if t in ("dict", "node") or keys is not None:
            if not isinstance(keys, list) or len(keys) != len(values):
                raise TypeError(f"the container at {where} has keys that do not match its values")
            if not all(isinstance(k, str | int) and not isinstance(k, bool) for k in keys):
                raise TypeError(f"the container at {where} has keys that are not str or int")
        for k, v in zip(keys if keys is not None else range(len(values)), values):
            _check_node(v, (*path, k))
    elif t == "bytes":
        if not isinstance(node.get("v"), str):
            raise TypeError(f"the bytes at {where} are not base64 text")
        base64.b64decode(node["v"], validate=True)  # binascii.Error is a ValueError
    elif t in _SCALARS:
        value = node.get("v")
        if not isinstance(value, _SCALARS[t]) or (t != "bool" and isinstance(value, bool)):
            raise TypeError(f"the {t} at {where} holds {type(value).__name__}")
    elif t != "none":
        raise TypeError(f"unknown node type {t!r} at {where}")


def _check_stored(node: Any, where: str) -> None:
    stored, tensors = node.get("stored"), node.get("tensors")
    if not (
        isinstance(stored, list)
        and len(stored) == 2
        and stored[0] in _NAMES
        and isinstance(stored[1], list)
        and all(_is_count(d) for d in stored[1])
    ):
        raise TypeError(f"the array at {where} has no valid stored dtype and shape")
    if not (
        isinstance(tensors, list)
        and tensors
        and all(
            isinstance(t, list) and len(t) == 2 and isinstance(t[0], str) and _is_count(t[1])
            for t in tensors
        )
        and (len(tensors) == 1 or len(stored[1]) > 0)
    ):
        raise TypeError(f"the array at {where} has tensors that are not [name, rows] pairs")


def _collect_arrays(node: Any, out: dict[str, Any]) -> None:
    if node["t"] == "array":
        out[node["name"]] = node
    elif node["t"] in ("dict", "list", "tuple", "node"):
        for v in node["v"]:
            _collect_arrays(v, out)


def _leaf_value(node: Any) -> Any:
    t = node["t"]
    if t == "none":
        return None
    if t == "bytes":
        return base64.b64decode(node["v"])
    if t in ("bool", "int", "float", "str"):
        return {"bool": bool, "int": int, "float": float, "str": str}[t](node["v"])
    raise CorruptCheckpointError(f"unknown node type {t!r} in {STRUCTURE_FILE}")


def saved_by_path(structure: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        if node["t"] in ("dict", "list", "tuple", "node"):
            keys = node.get("k") or list(range(len(node["v"])))
            for k, v in zip(keys, node["v"]):
                walk(v, (*path, k))
        else:
            out[_tree.path_str(path)] = node

    walk(structure, ())
    return out


_SCALAR_KINDS = {"bool": "number", "int": "number", "float": "number", "str": "str"}


def describe(structure: Any, header: dict[str, Any]) -> dict[str, _tree.Description]:
    """path -> the `Description` of every saved leaf: what `check_structure` compares."""
    out: dict[str, _tree.Description] = {}
    for path, node in saved_by_path(structure).items():
        if node["t"] != "array":
            out[path] = _SCALAR_KINDS.get(node["t"], node["t"])
        elif node.get("kind") == "jax_key":
            out[path] = (node["dtype"], tuple(node["key_shape"]))
        else:
            info = header[node["name"]]
            out[path] = (_NAMES.get(info["dtype"], info["dtype"]), tuple(info["shape"]))
    return out


def _read_header(f: Any) -> dict[str, Any]:
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
    for name, info in sorted(header.items(), key=lambda kv: _start_of(kv[1])):
        if not isinstance(info, dict) or info.get("dtype") not in _NAMES:
            raise bad(f"array {name!r} has no known dtype")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise bad(f"array {name!r} has shape {shape!r}")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_count, offsets)):
            raise bad(f"array {name!r} has offsets {offsets!r}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * numpy_dtype(_NAMES[info["dtype"]]).itemsize
        if offsets[0] != end or offsets[1] - offsets[0] != nbytes:
            raise bad(f"array {name!r} at {offsets} does not follow byte {end} with {nbytes} bytes")
        end = offsets[1]
    if end != data_size:
        raise bad(f"the arrays cover {end} bytes of {data_size}")
    return header


def _start_of(info: Any) -> int:
    try:
        return int(info["data_offsets"][0])
    except (TypeError, KeyError, IndexError, ValueError):
        return -1


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 62


def _kind_of(like_leaf: Any) -> str | None:
    if like_leaf is None:
        return None
    if _tree.is_torch_tensor(like_leaf):
        return "torch"
    if _tree.is_jax_array(like_leaf) or _tree.is_jax_struct(like_leaf):
        return "jax"
    return "numpy"


def _allocate(info: dict[str, Any], kind: str) -> tuple[Any, memoryview]:
    """An empty array of `kind` for a safetensors entry, and a writable byte view of its memory."""
    name = _NAMES[info["dtype"]]
    shape = tuple(info["shape"])
    if kind == "torch":
        import torch

        t = torch.empty(shape, dtype=getattr(torch, name))
        return t, _torch_as_numpy(t.reshape(-1)).view(np.uint8).data
    arr = np.empty(shape, dtype=numpy_dtype(name))
    return arr, arr.reshape(-1).view(np.uint8).data


def _restore_array(node: Any, buf: Any) -> Any:
    kind = node.get("kind")
    if kind == "jax_key":
        import jax

        return jax.random.wrap_key_data(buf, impl=node["impl"])
    if kind == "jax":
        import jax.numpy as jnp

        return jnp.asarray(buf)
    if kind == "numpy_scalar":
        return buf[()]
    return buf


def _decode(node: Any, arrays: dict[str, Any]) -> Any:
    t = node["t"]
    if t == "array":
        return _restore_array(node, arrays[node["name"]])
    if t == "dict":
        return {k: _decode(v, arrays) for k, v in zip(node["k"], node["v"])}
    if t == "node":  # a JAX pytree node: without `like`, its fields come back as a dict
        return {k: _decode(v, arrays) for k, v in zip(node["k"], node["v"])}
    if t == "list":
        return [_decode(v, arrays) for v in node["v"]]
    if t == "tuple":
        return tuple(_decode(v, arrays) for v in node["v"])
    return _leaf_value(node)


def _from_saved(saved: dict[str, Any], arrays: dict[str, Any], path: Any, like_leaf: Any) -> Any:
    node = saved.get(_tree.path_str(path))
    if node is None:  # an empty slot (None) in `like` that the checkpoint does not have
        return like_leaf
    if node["t"] != "array":
        return convert_to_like(_leaf_value(node), like_leaf)
    buf = arrays[node["name"]]
    if node.get("kind") == "jax_key" and not _tree.is_jax_key(like_leaf):
        return _restore_array(node, buf)
    return convert_to_like(buf, like_leaf)


register_format(TreeFormat())
