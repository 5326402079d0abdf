"""The `orbax` format: an orbax-checkpoint standard checkpoint directory at `<step>/orbax`.

It is written by orbax's synchronous `Checkpointer(StandardCheckpointHandler())` (the manager
runs async saves itself), which lays it out as `StandardCheckpointer` does:
`orbax.checkpoint.StandardCheckpointer().restore("<step dir>/orbax")` reads a payload with
orbax alone. Restoring with `like` places every array in `like`'s sharding, so a state saved
on 4 devices restores onto 2.

On `gs://` orbax reads and writes the payload itself, through its own GCS support
(tensorstore for the arrays, etils/gcsfs for the rest), authenticating the way orbax does
(Application Default Credentials), not with `storage_options`. On other object stores the
payload is written to a local staging directory and uploaded by the storage layer, and
downloaded to one for a restore.
"""

from __future__ import annotations

import contextlib
import math
import re
from typing import Any, cast

import numpy as np

from .. import _tree, layout
from ..errors import CheckpointError, CorruptCheckpointError, StructureMismatchError
from ..storage import StepWriter
from .frameworks import framework_missing, require
from .like import jax_placement, value_for
from .protocol import TreeEntry, TreeListing
from .reader import StepReader
from .snapshot import host_copy

PAYLOAD_DIR = "orbax"
NATIVE_SCHEMES = ("gs", "gcs")  # object stores orbax writes to itself; others are staged
# What orbax writes for one process of a multi-process save (its shards, its array metadata);
# process 0 writes the rest.
_PROCESS_FILE = re.compile(rf"^{PAYLOAD_DIR}/(?:.+/)?(?:ocdbt\.)?process_([0-9]+)(?:/|$)")


def _ocp() -> Any:
    return require(
        "orbax.checkpoint", package="orbax-checkpoint", extra="flax", why="the orbax format"
    )


class OrbaxFormat:
    """JAX/Flax states through orbax-checkpoint, sharded arrays included."""

    name = "orbax"
    main_file = "orbax"
    collective = True  # under jax.distributed every process writes its own shards

    def __init__(self) -> None:
        self._checkpointer: Any = None

    def _ckptr(self) -> Any:
        # orbax's synchronous checkpointer: the manager runs async saves itself, and orbax's
        # own async workers, left behind by a failed save, can hold interpreter exit for
        # minutes.
        if self._checkpointer is None:
            import jax

            ocp = _ocp()
            # Naming every process makes orbax meet through the jax.distributed client (with
            # a timeout) instead of a device collective, which a background save would run
            # interleaved with the training loop's collectives: a deadlock.
            processes = set(range(jax.process_count())) if jax.process_count() > 1 else None
            self._checkpointer = ocp.Checkpointer(
                ocp.StandardCheckpointHandler(),
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    active_processes=processes
                ),
            )
        return self._checkpointer

    def accepts(self, state: Any) -> bool:
        return False  # chosen explicitly (the Flax adapter's default), never by "auto"

    def process_of(self, name: str) -> int:
        """The process that wrote payload file `name` in a multi-process save."""
        m = _PROCESS_FILE.match(name)
        return int(m.group(1)) if m else 0

    def snapshot(self, state: Any) -> Any:
        # JAX arrays are immutable: kept by reference. numpy leaves are copied.
        return _tree.rebuild_like(state, lambda _, leaf: host_copy(leaf))

    def write(self, state: Any, writer: StepWriter) -> None:
        ocp = _ocp()
        target = _as_gs(writer.url(PAYLOAD_DIR, NATIVE_SCHEMES)) or writer.local_dir() / PAYLOAD_DIR
        _check_shared(target, writer)
        self._ckptr().save(target, args=ocp.args.StandardSave(state))

    def read(self, reader: StepReader, like: Any = None) -> Any:
        where = reader.display(PAYLOAD_DIR)
        if not any(name.startswith(f"{PAYLOAD_DIR}/") for name in reader.manifest.files):
            raise CorruptCheckpointError(
                f"step {reader.manifest.step} says it is in the orbax format, but its manifest "
                f"lists no file under {where}. HINT: restore an earlier step.",
                path=where,
            )
        reader.verify_all()
        try:
            return self._read_verified(reader, like)
        except (StructureMismatchError, CheckpointError):
            raise
        except Exception as e:  # orbax's own errors on a payload that verified but lies
            raise CorruptCheckpointError(
                f"orbax could not read {where} ({type(e).__name__}: {str(e)[:300]}); every file "
                "matches the manifest, so the step was written inconsistently. HINT: restore an "
                "earlier step.",
                path=where,
            ) from e

    def _read_verified(self, reader: StepReader, like: Any) -> Any:
        ckptr = self._ckptr()
        native = _as_gs(reader.url(PAYLOAD_DIR, NATIVE_SCHEMES))
        with contextlib.nullcontext(native) if native else reader.fetch_dir(PAYLOAD_DIR) as path:
            if like is None:
                return self._restore_anywhere(path)
            metadata = _metadata_leaves(ckptr.metadata(path))
            saved = _describe_metadata(metadata, like)
            _tree.check_structure(like, saved, f"step {reader.manifest.step}")
            target = _tree.rebuild_like(
                like, lambda p, leaf: _abstract(leaf, metadata.get(_tree.path_str(p)))
            )
            restored = ckptr.restore(path, args=_ocp().args.StandardRestore(target))
        values = {_tree.path_str(p): v for p, v in _tree.iter_leaves_lenient(restored)}
        return _tree.rebuild_like(like, lambda p, leaf: value_for(values, p, leaf))

    def _restore_anywhere(self, path: Any) -> Any:
        """Restore without a target, onto this process's first device if the saved sharding
        names devices that do not exist here (a 4-device checkpoint read on 2 devices)."""
        import jax

        ocp = _ocp()
        fallback = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        args = ocp.args.StandardRestore(None, fallback_sharding=fallback)
        return self._ckptr().restore(path, args=args)

    def describe(self, reader: StepReader) -> TreeListing:
        """Every leaf from orbax's own metadata of the payload; no array is read."""
        path = reader.local_path(PAYLOAD_DIR)
        if path is None:
            note = "the orbax tree of a step on an object store is not read; files only"
            return TreeListing([], "nothing", [note])
        try:
            ckptr = self._ckptr()
        except ImportError:
            missing = framework_missing("orbax-checkpoint", "flax", "reading an orbax tree")
            return TreeListing([], "nothing", [str(missing)])
        try:
            meta = ckptr.metadata(path)
        except Exception as e:  # orbax raises many kinds; the manifest is still worth showing
            return TreeListing([], "nothing", [f"orbax could not read its metadata: {e}"])
        entries = [_entry(key, leaf) for key, leaf in _metadata_leaves(meta).items()]
        return TreeListing(entries, "orbax's checkpoint metadata")


def _check_shared(target: Any, writer: StepWriter) -> None:
    """Refuse a multi-process save into a per-process staging directory: orbax's process 0
    reads the other processes' files, so they must share the directory."""
    import jax

    if (
        jax.process_count() == 1
        or isinstance(target, str)
        or layout.is_temporary(target.parent.name)
    ):
        return  # one process, gs:// written by orbax itself, or a local temporary directory
    raise CheckpointError(
        f"a multi-process orbax save needs a directory every process shares (a shared "
        f"filesystem, or gs:// which orbax writes itself); {jax.process_count()} processes "
        "would each stage their shards on their own disk here. HINT: save to a shared "
        "filesystem path or a gs:// URL, or use format='tree' with each process's own data."
    )


def _as_gs(url: str | None) -> str | None:
    """A `gcs://` URL as orbax names it (`gs://`)."""
    return None if url is None else f"gs://{url.partition('://')[2]}"


def _abstract(leaf: Any, saved: Any) -> Any:
    """What orbax restores into: a ShapeDtypeStruct carrying `leaf`'s sharding for jax arrays
    and structs (the default device for a struct without one).

    A Python number in `like` saved as a 0-d array (or the reverse) is restored as what was
    saved and converted afterwards.
    """
    if _is_scalar_metadata(saved) and (_tree.is_array(leaf) or _tree.is_jax_struct(leaf)):
        # orbax casts a scalar to the target's Python type: give it the saved one.
        return np.dtype(saved.dtype).type(0).item()
    if _tree.is_jax_array(leaf) or _tree.is_jax_struct(leaf):
        import jax

        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=jax_placement(leaf))
    if isinstance(leaf, bool | int | float) and saved is not None:
        if _is_scalar_metadata(saved):
            return np.dtype(saved.dtype).type(0).item()
        return np.zeros(tuple(saved.shape), dtype=saved.dtype)
    return leaf


def _is_scalar_metadata(saved: Any) -> bool:
    return type(saved).__name__ == "ScalarMetadata"


def _metadata_leaves(meta: Any) -> dict[str, Any]:
    """path -> orbax metadata of each saved leaf; empty pytree nodes (recorded as None) omitted."""
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    return {
        _tree.path_str(p): leaf for p, leaf in _tree.iter_leaves_lenient(tree) if leaf is not None
    }


def _describe_metadata(metadata: dict[str, Any], like: Any) -> dict[str, _tree.Description]:
    """path -> the `Description` of every saved leaf, in `like`'s terms."""
    like_leaves = {_tree.path_str(p): leaf for p, leaf in _tree.iter_leaves_lenient(like)}
    out: dict[str, _tree.Description] = {}
    for key, leaf in metadata.items():
        shape, dtype = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
        if shape is None or dtype is None or _is_scalar_metadata(leaf):
            out[key] = "number" if _is_scalar_metadata(leaf) else None
            continue
        described = (str(dtype), tuple(cast(Any, shape)))
        mine: Any = like_leaves.get(key)
        if _tree.is_jax_key(mine) and described[1][: mine.ndim] == tuple(mine.shape):
            described = (str(mine.dtype), tuple(mine.shape))  # orbax stores keys as key data
        out[key] = described
    return out


def _entry(key: str, leaf: Any) -> TreeEntry:
    """The listing row of one leaf of orbax's metadata."""
    shape, dtype = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
    if _is_scalar_metadata(leaf) or shape is None or dtype is None:
        return TreeEntry(key, "scalar", dtype=None if dtype is None else str(dtype))
    itemsize = getattr(dtype, "itemsize", None)
    if itemsize is None:
        try:
            itemsize = np.dtype(dtype).itemsize
        except TypeError:
            itemsize = None
    shape_t = tuple(int(d) for d in shape)
    nbytes = None if itemsize is None else math.prod(shape_t) * itemsize
    kind = "jax" if getattr(leaf, "sharding", None) is not None else "numpy"
    return TreeEntry(key, kind, str(dtype), shape_t, nbytes)
