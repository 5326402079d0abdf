"""The `tree` format: arrays in one safetensors file, the nesting and scalars in `tree.json`.

Arrays are streamed from their own memory straight into the file (no intermediate buffer)
and read back straight into freshly allocated arrays of the requested kind (numpy, torch or
jax), checksummed on the way. Nothing is ever unpickled. The safetensors file is standard:
`safetensors.safe_open(path, "np")` reads it. Incremental saves use the sharded layout of
`tree_shards`; `tree.json` is read and checked by `tree_structure`.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from .. import _tree
from ..errors import CorruptCheckpointError
from ..storage import StepWriter
from .jax_pinning import jax_pinned
from .like import convert_to_like
from .listing_values import short_value
from .protocol import TreeEntry, TreeListing
from .reader import StepReader
from .refusal import PICKLE_HINT, Refusal
from .safetensors_file import (
    CODES,
    StoredArray,
    allocate,
    as_bytes,
    entry_bytes,
    header_bytes,
    kind_of,
    read_header,
)
from .snapshot import host_copy
from .tree_shards import INDEX_FILE, read_shards, shard_layout, write_shards
from .tree_structure import (
    STRUCTURE_FILE,
    STRUCTURE_VERSION,
    collect_arrays,
    leaf_descriptions,
    leaf_value,
    read_structure,
    saved_by_path,
)

ARRAYS_FILE = "arrays.safetensors"


@dataclass
class Encoded:
    """A state taken apart: the JSON structure and the arrays it points to."""

    structure: Any
    arrays: list[StoredArray] = field(default_factory=list)


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
    out.arrays.append(StoredArray(name, CODES[dtype_name], tuple(int(d) for d in data.shape), data))
    return doc


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
            write_shards(enc.arrays, enc.structure, writer)
        else:
            with writer.open(ARRAYS_FILE) as f:
                f.write(header_bytes(enc.arrays))
                for a in enc.arrays:
                    f.write(as_bytes(a.data))
        doc = {"tree_format": STRUCTURE_VERSION, "structure": enc.structure}
        with writer.open(STRUCTURE_FILE) as f:
            f.write(json.dumps(doc, separators=(",", ":")).encode())

    def read(self, reader: StepReader, like: Any = None) -> Any:
        structure = read_structure(reader)
        saved_arrays: dict[str, Any] = {}  # name -> node
        collect_arrays(structure, saved_arrays)
        if INDEX_FILE in reader.manifest.files:
            arrays = read_shards(reader, structure, saved_arrays, like)
            if like is None:
                return _decode(structure, arrays)
            by_path = saved_by_path(structure)
            return _tree.rebuild_like(like, lambda p, leaf: _from_saved(by_path, arrays, p, leaf))
        with reader.open(ARRAYS_FILE) as f:
            header = read_header(f)
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
                    like, leaf_descriptions(structure, header), f"step {reader.manifest.step}"
                )
                like_leaves = {
                    _tree.path_str(p): leaf for p, leaf in _tree.iter_leaves_lenient(like)
                }
            order = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
            for name, info in order:
                node = saved_arrays[name]
                target_kind = kind_of(like_leaves.get(node["path"])) or node["kind"]
                buf, view = allocate(info, target_kind)
                f.read_exactly(view)
                targets[name] = buf
            f.verify()
        if like is None:
            return _decode(structure, targets)
        saved = saved_by_path(structure)
        return _tree.rebuild_like(like, lambda p, leaf: _from_saved(saved, targets, p, leaf))

    def describe(self, reader: StepReader) -> TreeListing:
        """Every leaf from `tree.json` and the validated safetensors header; no array is read."""
        structure = read_structure(reader)  # small; checksummed as a whole
        if INDEX_FILE in reader.manifest.files:  # an incremental save: shards, row blocks
            saved: dict[str, Any] = {}
            collect_arrays(structure, saved)
            full = shard_layout(reader, saved).full  # from tree.json: no shard is opened
            header = {
                name: {**entry, "data_offsets": [0, entry_bytes(entry)]}
                for name, entry in full.items()
            }
        else:
            with reader.open(ARRAYS_FILE) as f:  # the header only: the arrays stay on disk
                header = read_header(f)
        try:
            described = leaf_descriptions(structure, header)
        except (KeyError, TypeError, ValueError) as e:
            where = reader.display(ARRAYS_FILE)
            raise CorruptCheckpointError(
                f"{where} and {STRUCTURE_FILE} disagree: the header lacks {e}", path=where
            ) from None
        entries = []
        for path, node in saved_by_path(structure).items():
            t = node["t"]
            if t != "array":
                value = None if t == "none" else node.get("v")
                if t == "bytes" and isinstance(value, str):
                    value = f"<{len(value) * 3 // 4} bytes>"
                kind = t if t != "none" else "None"
                entries.append(TreeEntry(path, kind, value=short_value(value)))
                continue
            dtype, shape = cast(tuple[str, tuple[int, ...]], described[path])
            offsets = header.get(node["name"], {}).get("data_offsets", [0, 0])
            nbytes = int(offsets[1]) - int(offsets[0])
            entries.append(TreeEntry(path, node.get("kind", "numpy"), dtype, tuple(shape), nbytes))
        return TreeListing(entries, f"the safetensors header of {ARRAYS_FILE} and {STRUCTURE_FILE}")


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
    if dtype in CODES:
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
    return leaf_value(node)


def _from_saved(saved: dict[str, Any], arrays: dict[str, Any], path: Any, like_leaf: Any) -> Any:
    node = saved.get(_tree.path_str(path))
    if node is None:  # an empty slot (None) in `like` that the checkpoint does not have
        return like_leaf
    if node["t"] != "array":
        return convert_to_like(leaf_value(node), like_leaf)
    buf = arrays[node["name"]]
    if node.get("kind") == "jax_key" and not _tree.is_jax_key(like_leaf):
        return _restore_array(node, buf)
    return convert_to_like(buf, like_leaf)
