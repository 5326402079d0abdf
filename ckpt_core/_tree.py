"""Pytree walking shared by every format: leaf paths, leaf kinds, and fitting a restored tree to `like`.

Builtin containers (dict, list, tuple, namedtuple) are walked here; any other registered
JAX pytree node (a Flax `TrainState`, an `nnx.State`, ...) is walked through
`jax.tree_util`, and only if JAX is already imported: the core never imports a framework.

Abstract leaves (a `jax.ShapeDtypeStruct`, a torch tensor on the `meta` device) have a
shape and dtype but no values: they are leaves of a `like` template, never of a saved state.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

from .errors import StructureMismatchError

Path = tuple[Any, ...]

SCALAR_TYPES = (bool, int, float, str, bytes, type(None))


def path_str(path: Path) -> str:
    """`("opt", 0, "exp_avg")` -> `"opt/0/exp_avg"`; a `/` inside a key is written `%2F`."""
    if not path:
        return "<root>"
    return "/".join(str(k).replace("%", "%25").replace("/", "%2F") for k in path)


def is_numpy(x: Any) -> bool:
    """A numpy array or scalar; like the frameworks, numpy is only looked at once imported."""
    np = sys.modules.get("numpy")
    return np is not None and isinstance(x, np.ndarray | np.generic)


def is_torch_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def is_sharded_tensor(x: Any) -> bool:
    """A torch `ShardedTensor` (FSDP1's sharded state dicts): its values are its local shards,
    of which a process may hold none, and most tensor attributes (`is_meta`) refuse it."""
    api = sys.modules.get("torch.distributed._shard.sharded_tensor.api")
    return api is not None and isinstance(x, api.ShardedTensor)


def is_jax_array(x: Any) -> bool:
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(x, jax.Array)


def is_jax_struct(x: Any) -> bool:
    """A `jax.ShapeDtypeStruct` (e.g. from `jax.eval_shape`): an abstract jax array."""
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(x, jax.ShapeDtypeStruct)


def is_torch_meta(x: Any) -> bool:
    """A torch tensor on the `meta` device: a shape and dtype without storage."""
    if is_sharded_tensor(x):  # by its global metadata, alike in every process
        shards = x.metadata().shards_metadata
        return any(s.placement is not None and s.placement.device().type == "meta" for s in shards)
    return is_torch_tensor(x) and bool(x.is_meta)


def is_abstract(x: Any) -> bool:
    """A leaf with a shape and dtype but no values, which `like` may hold to be filled."""
    return is_jax_struct(x) or is_torch_meta(x)


def is_jax_key(x: Any) -> bool:
    """A typed PRNG key array (`jax.random.key`) or its abstract struct; keys have no plain
    dtype to store."""
    if not (is_jax_array(x) or is_jax_struct(x)):
        return False
    import jax

    return bool(jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key))


def is_array(x: Any) -> bool:
    return is_numpy(x) or is_torch_tensor(x) or is_jax_array(x)


def is_leaf(x: Any) -> bool:
    return isinstance(x, SCALAR_TYPES) or is_array(x) or is_jax_struct(x)


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _jax_children(node: Any) -> tuple[list[tuple[Any, Any]], Any] | None:
    """One level of a registered JAX pytree node: `([(key, child)], treedef)`, or None."""
    jax = sys.modules.get("jax")
    if jax is None:
        return None
    tu = jax.tree_util
    with_path, treedef = tu.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
    if treedef.num_leaves == 1 and with_path and with_path[0][1] is node:
        return None  # jax sees an opaque leaf: not a pytree node
    children = [(_key_name(entries[0]), child) for entries, child in with_path]
    return children, treedef


def _key_name(entry: Any) -> Any:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return str(entry)


def children(node: Any) -> list[tuple[Any, Any]] | None:
    """The `(key, child)` pairs of a container node, or None for a leaf or unknown object."""
    if isinstance(node, Mapping):
        return list(node.items())
    if _is_namedtuple(node):
        return list(zip(type(node)._fields, node))
    if isinstance(node, list | tuple):
        return list(enumerate(node))
    if is_leaf(node):
        return None
    found = _jax_children(node)
    return found[0] if found is not None else None


def iter_leaves(tree: Any, path: Path = (), *, strict: bool = True) -> Iterator[tuple[Path, Any]]:
    """Yield `(path, leaf)` for every leaf, depth first in container order.

    Raises:
        TypeError: with `strict`, a node is neither a known container nor a storable leaf.
    """
    kids = children(tree)
    if kids is None:
        if strict and is_abstract(tree):
            raise TypeError(_abstract_message(tree, path))
        if strict and not is_leaf(tree):
            raise TypeError(
                f"cannot store the object at {path_str(path)!r} of type {type(tree).__qualname__}: "
                "the tree format takes dict/list/tuple containers (and JAX pytree nodes) of "
                "numpy/torch/jax arrays, numbers, strings, bytes and None. HINT: convert it to one "
                "of those, or save with format='pickle' (restore then needs allow_pickle=True)."
            )
        yield path, tree
        return
    for key, child in kids:
        yield from iter_leaves(child, (*path, key), strict=strict)


def _abstract_message(leaf: Any, path: Path) -> str:
    kind = "a jax.ShapeDtypeStruct" if is_jax_struct(leaf) else "a torch tensor on the meta device"
    return (
        f"cannot save the leaf at {path_str(path)!r}: it is {kind} (a shape and dtype without "
        "values), as built by jax.eval_shape or under torch.device('meta'). Such templates are "
        "for restore(like=...). HINT: save the initialised state, with real arrays."
    )


def check_concrete(tree: Any) -> None:
    """Refuse a state to save that holds abstract leaves, naming the first one.

    Raises:
        TypeError: a leaf is a `jax.ShapeDtypeStruct` or a torch `meta` tensor.
    """
    for path, leaf in iter_leaves_lenient(tree):
        if is_abstract(leaf):
            raise TypeError(_abstract_message(leaf, path))


def iter_leaves_lenient(tree: Any) -> Iterator[tuple[Path, Any]]:
    """Like `iter_leaves`, taking unknown objects as leaves (for trees loaded by a framework)."""
    return iter_leaves(tree, strict=False)


def rebuild_like(like: Any, leaf_fn: Callable[[Path, Any], Any], path: Path = ()) -> Any:
    """Rebuild `like`'s structure, replacing each of its leaves by `leaf_fn(path, like_leaf)`."""
    if isinstance(like, Mapping):
        items = {k: rebuild_like(v, leaf_fn, (*path, k)) for k, v in like.items()}
        try:
            return cast(Any, type(like))(items)
        except TypeError:
            return items
    if _is_namedtuple(like):
        return type(like)(
            *(rebuild_like(v, leaf_fn, (*path, f)) for f, v in zip(type(like)._fields, like))
        )
    if isinstance(like, list | tuple):
        return type(like)(rebuild_like(v, leaf_fn, (*path, i)) for i, v in enumerate(like))
    if is_leaf(like):
        return leaf_fn(path, like)
    found = _jax_children(like)
    if found is None:
        # An object the tree cannot describe (a function, a module): keep the caller's.
        return like
    kids, treedef = found
    return treedef.unflatten([rebuild_like(c, leaf_fn, (*path, k)) for k, c in kids])


# ---------------------------------------------------------------- leaf descriptions


def describe_leaf(x: Any) -> tuple[str, tuple[int, ...]] | None:
    """`(dtype_name, shape)` of an array leaf, or None for a scalar leaf."""
    if is_numpy(x):
        return str(x.dtype), tuple(x.shape)
    if is_torch_tensor(x):
        return str(x.dtype).removeprefix("torch."), tuple(x.shape)
    if is_jax_array(x) or is_jax_struct(x):  # typed keys print as key<fry>, key<rbg>, ...
        return str(x.dtype), tuple(x.shape)
    return None


Description = tuple[str, tuple[int, ...]] | str | None
"""What `check_structure` compares: `(dtype, shape)` for an array, a scalar kind ("number",
"str", "bytes", "none") for a scalar, None for a scalar of unknown kind."""


def describe(x: Any) -> Description:
    """The `Description` of a leaf."""
    return describe_leaf(x) or scalar_kind(x)


def scalar_kind(x: Any) -> str | None:
    if x is None:
        return "none"
    if isinstance(x, bool | int | float):
        return "number"
    if isinstance(x, str):
        return "str"
    if isinstance(x, bytes):
        return "bytes"
    return None


def check_structure(like: Any, saved: Mapping[str, Description], where: str) -> None:
    """Raise StructureMismatchError naming every path, shape, dtype and kind that differs.

    A Python number and a 0-d array stand for each other (a fresh TrainState's step is the
    int 0, a trained one's an int32 array). A None in `like` is an empty slot that matches
    anything, and an object the tree cannot store (a function) is kept as the caller's.

    Args:
        like: the tree the caller wants back.
        saved: path string -> `Description` of every saved leaf.
        where: the checkpoint, for the message.
    """
    problems: list[str] = []
    seen: set[str] = set()
    for path, leaf in iter_leaves_lenient(like):
        key = path_str(path)
        seen.add(key)
        if leaf is None or not is_leaf(leaf):
            continue
        if key not in saved:
            problems.append(f"  {key}: in `like` but not in the checkpoint")
            continue
        problem = _difference(describe(leaf), saved[key])
        if problem:
            problems.append(f"  {key}: {problem}")
    problems.extend(
        f"  {key}: in the checkpoint but not in `like`" for key in saved if key not in seen
    )
    if problems:
        raise StructureMismatchError(
            f"the checkpoint {where} does not match the structure of `like` "
            f"({len(problems)} difference{'s' if len(problems) != 1 else ''}):\n"
            + "\n".join(problems)
            + "\nHINT: restore without `like` to inspect what was saved, or build `like` "
            "from the same model and optimizer configuration as the saving run."
        )


def _difference(want: Description, got: Description) -> str:
    """Why a saved leaf (`got`) cannot become `like`'s leaf (`want`); '' if it can."""
    if isinstance(want, tuple) and isinstance(got, tuple):
        why = []
        if tuple(got[1]) != tuple(want[1]):
            why.append(f"shape {list(got[1])} on disk, {list(want[1])} in `like`")
        if got[0] != want[0]:
            why.append(f"dtype {got[0]} on disk, {want[0]} in `like`")
        return "; ".join(why)
    if isinstance(want, tuple) or isinstance(got, tuple):
        array, kind = (want, got) if isinstance(want, tuple) else (got, want)
        if _is_0d(array) and kind in ("number", None):
            return ""
        on_disk = "an array" if isinstance(got, tuple) else f"a {got or 'scalar'}"
        return f"the checkpoint holds {on_disk}, `like` does not"
    if want is None or got is None or want == got:
        return ""
    return f"the checkpoint holds a {got}, `like` a {want}"


def _is_0d(described: Description) -> bool:
    return isinstance(described, tuple) and tuple(described[1]) == () and "key<" not in described[0]
