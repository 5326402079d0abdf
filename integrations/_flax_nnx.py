"""NNX objects inside a training state: saved as their pure state, restored in place.

`CkptHook` accepts `flax.nnx` modules, optimizers and `nnx.Rngs`, alone or inside the builtin
containers a user groups them in (`(model, optimizer)`); these helpers swap each object for
the pure dict of `nnx.state(obj)` before a save and write restored dicts back into the same
objects after a load. They also warn when a Dropout's random stream is left out of the state.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np
from flax import nnx

# flax >= 0.11 calls the base of every NNX object `Pytree`; older releases call it `Object`.
_NNX_BASE: type = getattr(nnx, "Pytree", None) or nnx.Object


def _is_nnx(x: Any) -> bool:
    return isinstance(x, _NNX_BASE)


def _is_plain_container(x: Any) -> bool:
    # Namedtuples and registered pytree classes (TrainState) are leaves of this walk: only
    # the builtin containers a user groups objects in, like `(model, optimizer)`.
    return isinstance(x, dict | list) or (isinstance(x, tuple) and not hasattr(x, "_fields"))


def nnx_to_pure(state: Any) -> Any:
    """Replace every NNX object in the top-level containers by its pure state dict."""
    if _is_nnx(state):
        return nnx.to_pure_dict(nnx.state(state))
    if isinstance(state, dict):
        return {k: nnx_to_pure(v) for k, v in state.items()}
    if _is_plain_container(state):
        return type(state)(nnx_to_pure(v) for v in state)
    return state


def pure_to_nnx(template: Any, restored: Any) -> Any:
    """Write restored pure dicts back into the NNX objects of `template` (in place)."""
    if _is_nnx(template):
        graph_state = nnx.state(template)
        nnx.replace_by_pure_dict(graph_state, restored)
        nnx.update(template, graph_state)
        return template
    if isinstance(template, dict):
        return type(template)({k: pure_to_nnx(v, restored[k]) for k, v in template.items()})
    if _is_plain_container(template):
        return type(template)(pure_to_nnx(t, r) for t, r in zip(template, restored))
    return restored


def _nnx_objects(state: Any, path: tuple[Any, ...] = ()) -> Iterable[tuple[tuple[Any, ...], Any]]:
    """`(path, object)` of every NNX object in the top-level containers, as `nnx_to_pure` walks."""
    if _is_nnx(state):
        yield path, state
    elif isinstance(state, dict):
        for key, value in state.items():
            yield from _nnx_objects(value, (*path, key))
    elif _is_plain_container(state):
        for index, value in enumerate(state):
            yield from _nnx_objects(value, (*path, index))


def _holds_a_key(tree: Any) -> bool:
    """A typed PRNG key, or a raw one (`uint32[..., 2]`), among the leaves of `tree`."""
    for leaf in jax.tree.leaves(tree):
        dtype, shape = getattr(leaf, "dtype", None), getattr(leaf, "shape", ())
        if dtype is None:
            continue
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            return True
        if dtype == np.uint32 and len(shape) >= 1 and shape[-1] == 2:
            return True
    return False


def warn_if_dropout_stream_is_not_saved(step: int, state: Any, tree: Any) -> None:
    """Warn when an `nnx.Dropout` draws from an `nnx.Rngs` that the saved state leaves out.

    A Dropout built without `rngs=` takes its stream at call time; if that `nnx.Rngs` is not
    handed to the hook, the checkpoint holds no key at all, and a resumed run draws other
    masks than an uninterrupted one: a silent divergence worth a warning at the first save.
    """
    if _holds_a_key(tree):
        return
    for outer, obj in _nnx_objects(state):
        for inner, node in nnx.iter_graph(obj):
            if isinstance(node, nnx.Dropout) and node.rate > 0:
                where = "/".join(str(k) for k in (*outer, *inner)) or "the model"
                warnings.warn(
                    f"CkptHook: the state saved at step {step} holds no PRNG key, but "
                    f"{where!r} is an nnx.Dropout (rate {node.rate}) whose random stream is "
                    "not in it, so a resumed run draws other dropout masks than an "
                    "uninterrupted one. HINT: hand the nnx.Rngs to the hook with the model, "
                    "e.g. hook(step, (model, optimizer, rngs)) and "
                    "hook.restore_or((model, optimizer, rngs)).",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return
