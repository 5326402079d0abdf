"""Giving restored leaves the type, dtype and placement of a `like` template (abstract ones too)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from .. import _tree

if TYPE_CHECKING:
    import numpy as np


def convert_to_like(value: Any, like: Any) -> Any:
    """A restored leaf (numpy array, torch tensor or scalar) in the type and placement of `like`.

    An abstract `like` leaf is filled: a `jax.ShapeDtypeStruct` becomes a jax array placed by
    its sharding (the default device without one), a torch `meta` tensor a CPU tensor.
    """
    import numpy as np

    if _tree.is_jax_key(like):
        import jax

        data = value if not _tree.is_torch_tensor(value) else value.numpy()
        if _tree.is_jax_key(data):
            data = jax.random.key_data(data)
        keys = jax.random.wrap_key_data(cast(Any, np.asarray(data)), impl=_key_impl(like))
        return jax.device_put(keys, jax_placement(like))
    if _tree.is_jax_array(like) or _tree.is_jax_struct(like):
        import jax

        if _tree.is_torch_tensor(value):
            value = value.numpy()
        if isinstance(value, bool | int | float):
            value = np.asarray(value, dtype=like.dtype)
        return jax.device_put(value, jax_placement(like))
    if _tree.is_torch_tensor(like):
        import torch

        if isinstance(value, bool | int | float):  # a Python number saved for a 0-d tensor
            t = torch.as_tensor(value, dtype=like.dtype)
        elif isinstance(value, torch.Tensor):
            t = value
        else:
            t = torch.from_numpy(_as_torchable(np.asarray(value)))
        if t.dtype != like.dtype:
            t = t.view(like.dtype) if t.element_size() == like.element_size() else t.to(like.dtype)
        device = torch.device("cpu") if like.is_meta else like.device
        if t.device != device:
            t = t.to(device)
        if isinstance(like, torch.nn.Parameter):
            return torch.nn.Parameter(t, requires_grad=like.requires_grad)
        return t
    if isinstance(like, np.ndarray):
        if isinstance(value, bool | int | float):
            return np.asarray(value, dtype=like.dtype)
        return np.asarray(value.numpy() if _tree.is_torch_tensor(value) else value)
    if isinstance(like, np.generic):
        return like.dtype.type(np.asarray(value).item() if hasattr(value, "shape") else value)
    if isinstance(like, bool | int | float) and not isinstance(value, str | bytes | type(None)):
        return type(like)(value.item() if hasattr(value, "item") else value)
    return value


def jax_placement(like: Any) -> Any:
    """Where a jax leaf restored for `like` (an array or a struct) goes: `like`'s sharding, or
    the default device for a struct without one (`jax.eval_shape` output)."""
    return like.sharding if like.sharding is not None else default_sharding()


def default_sharding() -> Any:
    """The sharding of an array put on JAX's default device (`jax_default_device` or the first)."""
    import jax

    device = cast(Any, jax.config).jax_default_device
    if isinstance(device, str):  # a platform name
        device = jax.devices(device)[0]
    return jax.sharding.SingleDeviceSharding(device or jax.devices()[0])


def _key_impl(like: Any) -> Any:
    """The PRNG implementation of a typed key array or key struct."""
    import jax

    if _tree.is_jax_array(like):
        return jax.random.key_impl(like)
    # A struct has no public impl: read it from a key of its type while tracing (no allocation).
    found: list[Any] = []
    jax.eval_shape(lambda key: found.append(jax.random.key_impl(key)), like)
    return found[0]


def _as_torchable(arr: np.ndarray) -> np.ndarray:
    # torch.from_numpy has no bfloat16/float8: hand it the same bytes as an integer array.
    if arr.dtype.kind == "V" or arr.dtype.name in ("bfloat16",) or "float8" in arr.dtype.name:
        return arr.view(f"u{arr.dtype.itemsize}")
    return arr


def fit_like(loaded: Any, like: Any, where: str) -> Any:
    """Check a fully loaded tree against `like`, then give it `like`'s structure and leaf types."""
    values: dict[str, Any] = {}
    for path, leaf in _tree.iter_leaves_lenient(loaded):
        values[_tree.path_str(path)] = leaf
    _tree.check_structure(like, {k: _tree.describe(v) for k, v in values.items()}, where)
    return _tree.rebuild_like(like, lambda p, leaf: value_for(values, p, leaf))


def value_for(values: Mapping[str, Any], path: Any, like_leaf: Any) -> Any:
    """The restored value at `path` in `like_leaf`'s type; `like_leaf` itself for an empty slot."""
    key = _tree.path_str(path)
    if key not in values:  # an empty slot (None) in `like` that the checkpoint does not have
        return like_leaf
    return convert_to_like(values[key], like_leaf)
