"""Keeping a JAX array's values safe from buffer donation while a background write reads them."""

from __future__ import annotations

from typing import Any


def jax_pinned(x: Any) -> Any:
    """`x`'s values, safe from a later `jit(..., donate_argnums=...)` step that donates `x`.

    Donation hands an array's buffers to the next step, which would pull them from under a
    background write. On CPU, each shard is aliased by a zero-copy numpy view: XLA never
    donates a buffer with an outside reference (it copies instead), so this costs no copy.
    On accelerators the array is copied on the device, asynchronously; the loop does not wait.
    """
    import jax
    import numpy as np

    if not x.is_fully_addressable:
        return x
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = jax_pinned(jax.random.key_data(x))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    if any(device.platform != "cpu" for device in x.sharding.device_set):
        return jax.numpy.copy(x)
    shards = [jax.device_put(np.asarray(s.data), s.device) for s in x.addressable_shards]
    return jax.make_array_from_single_device_arrays(x.shape, x.sharding, shards)
