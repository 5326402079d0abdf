"""`tree.json`: the nesting and scalars of a tree-format step, each node checked before use.

Array nodes name their tensor in the safetensors payload; everything else (containers, None,
numbers, text, bytes) is stored in the JSON itself.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from .. import _tree
from ..errors import CheckpointError, CorruptCheckpointError
from .reader import StepReader
from .safetensors_file import NAMES, is_count

STRUCTURE_FILE = "tree.json"
STRUCTURE_VERSION = 1


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
        and stored[0] in NAMES
        and isinstance(stored[1], list)
        and all(is_count(d) for d in stored[1])
    ):
        raise TypeError(f"the array at {where} has no valid stored dtype and shape")
    if not (
        isinstance(tensors, list)
        and tensors
        and all(
            isinstance(t, list) and len(t) == 2 and isinstance(t[0], str) and is_count(t[1])
            for t in tensors
        )
        and (len(tensors) == 1 or len(stored[1]) > 0)
    ):
        raise TypeError(f"the array at {where} has tensors that are not [name, rows] pairs")


def collect_arrays(node: Any, out: dict[str, Any]) -> None:
    if node["t"] == "array":
        out[node["name"]] = node
    elif node["t"] in ("dict", "list", "tuple", "node"):
        for v in node["v"]:
            collect_arrays(v, out)


def leaf_value(node: Any) -> Any:
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


def leaf_descriptions(structure: Any, header: dict[str, Any]) -> dict[str, _tree.Description]:
    """path -> the `Description` of every saved leaf: what `check_structure` compares."""
    out: dict[str, _tree.Description] = {}
    for path, node in saved_by_path(structure).items():
        if node["t"] != "array":
            out[path] = _SCALAR_KINDS.get(node["t"], node["t"])
        elif node.get("kind") == "jax_key":
            out[path] = (node["dtype"], tuple(node["key_shape"]))
        else:
            info = header[node["name"]]
            out[path] = (NAMES.get(info["dtype"], info["dtype"]), tuple(info["shape"]))
    return out
