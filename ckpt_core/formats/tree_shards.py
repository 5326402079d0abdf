"""The sharded layout of incremental tree saves: shards of row blocks, and their index.

A save writes shards of about SHARD_BYTES; a shard equal to the previous step's is shared
instead of written, so a save rewrites only what changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _tree
from ..errors import CorruptCheckpointError
from ..storage import StepWriter
from .reader import StepReader
from .safetensors_file import (
    NAMES,
    StoredArray,
    allocate,
    as_bytes,
    entry_bytes,
    header_bytes,
    kind_of,
    numpy_dtype,
    read_header,
    start_of,
)
from .tree_structure import STRUCTURE_FILE, leaf_descriptions

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


# In `tree.json`, each array node of a sharded step also says how it is stored:
# "stored": [safetensors dtype, shape] and "tensors": [[tensor name, rows], ...], its row
# blocks in order (one entry, the array's own name, for an array that was not cut). The
# reader allocates every array from these and checks each shard's header against them, so
# every shard is opened once.


@dataclass
class _Piece:
    """One tensor of a shard: a whole small array, or one row block of a large one."""

    tensor: StoredArray
    data: memoryview


def _pieces(arrays: list[StoredArray]) -> tuple[list[_Piece], dict[str, list[list[Any]]]]:
    """Every tensor to store, in order, and each array's tensors as [name, rows]."""
    pieces: list[_Piece] = []
    tensors: dict[str, list[list[Any]]] = {}
    names = {a.name for a in arrays}
    for a in arrays:
        data = as_bytes(a.data)
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
            block = StoredArray(name, a.code, (stop - start, *a.shape[1:]), None)
            pieces.append(_Piece(block, data[start * row_bytes : stop * row_bytes]))
    return pieces, tensors


def write_shards(arrays: list[StoredArray], structure: Any, writer: StepWriter) -> None:
    """Write the arrays as shards plus an index; a shard equal (size and xxh3) to the one of
    the same name in the previous step is shared with it instead of written.

    Marks every array node of `structure` (the `tree.json` document, written after this)
    with how the array is stored.
    """
    import xxhash

    from ..manifest import FileRecord

    pieces, tensors = _pieces(arrays)
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
        header = header_bytes([p.tensor for p in shard])
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
    stored = {a.name: [a.code, list(a.shape)] for a in arrays}
    _mark_stored(structure, stored, tensors)
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
        itemsize = numpy_dtype(NAMES[code]).itemsize
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
    stored = sum(entry_bytes(entry) for entry in full.values())
    if stored > sum(reader.manifest.files[shard].size for shard in shards):
        raise bad(f"its arrays need {stored} bytes, more than the shards hold")
    return ShardLayout(shards, full, tensors)


def read_shards(
    reader: StepReader, structure: Any, saved_arrays: dict[str, Any], like: Any
) -> dict[str, Any]:
    """Every array of a sharded step by name, each shard checksummed as it is read."""
    layout = shard_layout(reader, saved_arrays)
    like_leaves: dict[str, Any] = {}
    if like is not None:
        _tree.check_structure(
            like, leaf_descriptions(structure, layout.full), f"step {reader.manifest.step}"
        )
        like_leaves = {_tree.path_str(p): leaf for p, leaf in _tree.iter_leaves_lenient(like)}
    targets: dict[str, Any] = {}
    views: dict[str, memoryview] = {}
    for name, node in saved_arrays.items():
        target_kind = kind_of(like_leaves.get(node["path"])) or node["kind"]
        targets[name], views[name] = allocate(layout.full[name], target_kind)
    unread = set(layout.tensors)
    for shard in layout.shards:
        with reader.open(shard) as f:
            for tensor, entry in sorted(read_header(f).items(), key=lambda kv: start_of(kv[1])):
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
