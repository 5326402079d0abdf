"""The device axis of a replicated state: dropped before a save, broadcast back after a load.

pmap-era training keeps one copy of every array per device along a leading axis. Saving the
first copy makes a checkpoint that loads on any device count; `replicate` puts it back.
Framework-neutral: numpy, torch and jax leaves; jax is only used when the tree holds jax arrays.
"""

from __future__ import annotations

from typing import Any

from . import _tree
from .options import check_int


def strip_device_axis(tree: Any) -> Any:
    """`tree` with the leading device axis of every array leaf dropped (device 0's copy).

    Scalars and 0-d arrays have no device axis and are kept as they are.
    """

    def strip(_path: _tree.Path, x: Any) -> Any:
        if not _tree.is_array(x) or x.ndim == 0:
            return x
        if _tree.is_jax_array(x) and len(x.addressable_shards) > 1:
            # Device 0's shard already is the unreplicated value: no gather, no compute.
            shard = x.addressable_shards[0].data
            return shard if x.sharding.is_fully_replicated else shard.reshape(x.shape[1:])
        return x[0]

    return _tree.rebuild_like(tree, strip)


def replicate(tree: Any, n_devices: int, *, caller: str, on_devices: bool | None = None) -> Any:
    """`tree` with every array leaf broadcast to `(n_devices, *shape)`.

    With `on_devices` (default: when the tree holds a jax array) every array becomes a jax
    array with one copy per local device (the first `n_devices`); otherwise numpy arrays and
    torch tensors are stacked on the host, as they were loaded.

    Raises:
        ValueError: `n_devices` is not a positive int, or jax has fewer local devices.
    """
    check_int("replicate_to", n_devices, minimum=1, example=1)
    if on_devices is None:
        on_devices = any(_tree.is_jax_array(x) for _, x in _tree.iter_leaves_lenient(tree))
    if on_devices:
        return _replicate_jax(tree, n_devices, caller)

    def broadcast(_path: _tree.Path, x: Any) -> Any:
        if _tree.is_torch_tensor(x):
            return x.unsqueeze(0).expand(n_devices, *x.shape).clone()
        if _tree.is_numpy(x):
            import numpy as np

            return np.broadcast_to(np.asarray(x)[None], (n_devices, *np.shape(x))).copy()
        return x

    return _tree.rebuild_like(tree, broadcast)


def _replicate_jax(tree: Any, n_devices: int, caller: str) -> Any:
    import jax
    import numpy as np

    devices = jax.local_devices()[:n_devices]
    if len(devices) < n_devices:
        raise ValueError(
            f"{caller} cannot replicate the state onto {n_devices} devices: this process has "
            f"{len(devices)}. HINT: pass replicate_to=jax.local_device_count()."
        )
    mesh = jax.sharding.Mesh(np.array(devices), ("device",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("device"))

    def broadcast(_path: _tree.Path, x: Any) -> Any:
        if _tree.is_jax_array(x):
            one = jax.device_put(x, devices[0])
            return jax.device_put(
                jax.numpy.broadcast_to(one[None], (n_devices, *x.shape)), sharding
            )
        if _tree.is_array(x) or isinstance(x, bool | int | float | complex):  # as jax.tree.map
            stacked = np.broadcast_to(np.asarray(x)[None], (n_devices, *np.shape(x)))
            return jax.device_put(stacked, sharding)
        return x

    return _tree.rebuild_like(tree, broadcast)
