"""Flax/JAX adapter: `CkptHook`, one object and one call per step of a plain JAX training loop.

The hook maps a JAX training state onto `ckpt_core.CheckpointManager` and back; retention,
best tracking, atomic commits and async writes all belong to the core.

What it accepts as a state:

- any JAX pytree: `flax.training.train_state.TrainState` (with any optax optimizer), dicts,
  lists and tuples of arrays, numbers and PRNG keys, typed (`jax.random.key`) or raw
  (`jax.random.PRNGKey`);
- `flax.nnx` objects (modules, `nnx.Optimizer`, `nnx.Rngs`), alone or inside dicts, lists
  and tuples, e.g. `hook(step, (model, optimizer))`. Their state is saved as the pure dict of
  `nnx.state(obj)`; on restore the objects are updated in place with `nnx.update` and the
  same objects are returned, so `model, optimizer = hook.restore_or((model, optimizer))` and
  plain `hook.restore_or((model, optimizer))` are equivalent.

The default format is orbax: a step's payload is an orbax `StandardCheckpointer` checkpoint in
`<step dir>/orbax`, readable without this library::

    import orbax.checkpoint as ocp
    tree = ocp.StandardCheckpointer().restore(hook.manager.path(step) / "orbax")
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import jax
import numpy as np
from flax import nnx

from ckpt_core import CheckpointManager
from ckpt_core.options import check_bool, check_int, check_seconds, on_existing_from_flags
from ckpt_core.replication import replicate
from ckpt_core.replication import strip_device_axis as _strip_device_axis
from ckpt_core.signals import check_save_on_signals

__all__ = ["CkptHook"]

# flax >= 0.11 calls the base of every NNX object `Pytree`; older releases call it `Object`.
_NNX_BASE: type = getattr(nnx, "Pytree", None) or nnx.Object

Metrics = Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None


class CkptHook:
    """Checkpoints a plain JAX/Flax training loop with one call per step.

    Example::

        hook = CkptHook("runs/mlp", every_n_steps=100, max_to_keep=3,
                        best_fn="eval_loss", resume=True, async_save=True)
        state = hook.restore_or(state)
        for step in range(hook.start_step, total_steps):
            state, metrics = train_step(state, batch)
            hook(step, state, metrics=metrics, force=step == total_steps - 1)
            if hook.preempted:  # with save_on_signals: saved, now stop
                break
        hook.close()

    The checkpoint of step `s` holds the state after the loop body of step `s` ran, so a
    resumed run continues at `s + 1` (`start_step`).

    Args:
        directory: local path or fsspec URL of the run.
        every_n_steps: save when `step % every_n_steps == 0`.
        every_n_seconds: also save when this many seconds passed since the last save.
        max_to_keep: keep the N most recent steps (`None`: keep all).
        keep_period: steps divisible by this are never pruned.
        best_fn: a metric name (e.g. `"eval_loss"`) or a callable of the metrics mapping.
        best_mode: `"min"` or `"max"`.
        keep_best: with `best_fn`, also keep the K best steps.
        max_bytes: a disk budget for the run's steps (int bytes or e.g. `"20GB"`); see
            `CheckpointManager(max_bytes=...)`.
        resume: continue from the latest committed step of `directory`.
        overwrite: remove the checkpoints already in `directory` and start fresh.
        async_save: `hook(...)` returns once the state is snapshotted; a thread writes it.
        format: the core's payload format; `"orbax"` by default (see the module docstring).
        unreplicate: the live state carries a leading device axis (pmap-era training); it is
            stripped on save, and on restore the state is broadcast back onto as many devices
            as the given state's leading axis (or `replicate_to`).
        replicate_to: on restore (also of a fresh state), broadcast every leaf onto the first
            N local devices with a leading axis of size N, like `flax.jax_utils.replicate`.
        save_on_signals: signals (e.g. `(signal.SIGTERM,)`, or one signal) after which the
            next call saves, whatever the step; `preempted` is then True: stop the loop.
        storage_options: fsspec options for URL directories.

    Raises:
        ValueError: both `resume` and `overwrite`, or an invalid `replicate_to`.
        ckpt_core.CheckpointExistsError: `directory` holds checkpoints and neither `resume`
            nor `overwrite` is set.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        every_n_steps: int = 1,
        every_n_seconds: float | None = None,
        max_to_keep: int | None = 5,
        keep_period: int | None = None,
        best_fn: str | Callable[[Mapping[str, float]], float] | None = None,
        best_mode: str = "min",
        keep_best: int = 1,
        max_bytes: int | str | None = None,
        resume: bool = False,
        overwrite: bool = False,
        async_save: bool = False,
        format: Any = "orbax",
        unreplicate: bool = False,
        replicate_to: int | None = None,
        save_on_signals: Iterable[int] | int | None = (),
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        on_existing = on_existing_from_flags(resume, overwrite, caller="CkptHook")
        # Checked under the hook's own names (the manager would name save_interval_steps).
        check_int("every_n_steps", every_n_steps, minimum=1, none="only by time", example=100)
        check_seconds("every_n_seconds", every_n_seconds)
        check_bool("unreplicate", unreplicate)
        check_int("replicate_to", replicate_to, minimum=1, none="no broadcast", example=1)
        signals = check_save_on_signals(save_on_signals, caller="CkptHook")
        if replicate_to is not None and not 1 <= replicate_to <= jax.local_device_count():
            raise ValueError(
                f"CkptHook(replicate_to={replicate_to}) but this process has "
                f"{jax.local_device_count()} local devices. HINT: pass a number from 1 to "
                "jax.local_device_count()."
            )
        self.async_save = async_save
        self.unreplicate = unreplicate
        self.replicate_to = replicate_to
        self._rng_streams_checked = False  # at the first save only: walks the NNX graphs
        self.manager = CheckpointManager(
            directory,
            max_to_keep=max_to_keep,
            keep_period=keep_period,
            best_fn=best_fn,
            best_mode=best_mode,
            keep_best=keep_best,
            max_bytes=max_bytes,
            save_interval_steps=every_n_steps,
            save_interval_secs=every_n_seconds,
            save_on_signals=signals,
            on_existing=on_existing,
            format=format,
            async_save=async_save,
            storage_options=dict(storage_options) if storage_options is not None else None,
        )
        latest = self.manager.latest_step() if self.manager.resuming else None
        self._start_step = 0 if latest is None else latest + 1

    # ------------------------------------------------------------------ properties

    @property
    def start_step(self) -> int:
        """The first loop step to run: 0 on a fresh run, the latest saved step + 1 on resume."""
        return self._start_step

    @property
    def preempted(self) -> bool:
        """True once a signal in `save_on_signals` arrived and the save it triggered is
        committed (also with `async_save`): break out of the loop, then `close()`."""
        return self.manager.preempted

    @property
    def is_complete(self) -> bool:
        """True when the run in `directory` was marked complete (see `mark_complete`)."""
        return self.manager.is_complete

    def mark_complete(self) -> None:
        """Record that the run finished, so a later `resume=True` start can skip training."""
        self.manager.mark_complete()

    # ------------------------------------------------------------------ saving

    def __call__(
        self,
        step: int,
        state: Any,
        *,
        metrics: Metrics = None,
        metadata: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Save `state` as `step` when it is due (every `every_n_steps`, time or signal).

        Nothing is read from the devices on a step that does not save. On a step that saves,
        all metrics are fetched with one `jax.device_get`.

        Args:
            step: the loop step that just ran (a Python int, or a scalar array).
            state: the training state (see the module docstring for what is accepted).
            metrics: scalar metrics (Python, numpy or jax), or a zero-argument callable
                returning them, called only when a save is due (e.g. an evaluation).
            metadata: JSON-serialisable data stored in the step's manifest.
            force: save even when the step is not due (e.g. the last step).

        Returns:
            True if a checkpoint was written (or, with `async_save`, is being written).

        Raises:
            ValueError: a metric is not a scalar.
            ckpt_core.CheckpointError: a previous async write failed, or the write failed.
        """
        step = int(step)
        if not force and not self.manager.should_save(step):
            return False
        tree = _nnx_to_pure(state)
        if not self._rng_streams_checked:
            self._rng_streams_checked = True
            _warn_if_dropout_stream_is_not_saved(step, state, tree)
        if self.unreplicate:
            tree = _strip_device_axis(tree)
        return self.manager.save(
            step, tree, metrics=self._host_metrics(metrics), metadata=metadata, force=True
        )

    def save(
        self,
        step: int,
        state: Any,
        *,
        metrics: Metrics = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        """Save `state` as `step` now, whether or not it is due; see `__call__`."""
        return self(step, state, metrics=metrics, metadata=metadata, force=True)

    def _host_metrics(self, metrics: Metrics) -> dict[str, float] | None:
        if metrics is None:
            return None
        if callable(metrics):
            metrics = metrics()
        # One device_get for the whole mapping: it starts every transfer before waiting on any.
        host = jax.device_get(dict(metrics))
        floats: dict[str, float] = {}
        for name, value in host.items():
            array = np.asarray(value)
            if self.unreplicate and array.ndim >= 1:
                array = array[0]
            if array.size != 1 or not np.issubdtype(array.dtype, np.number):
                raise ValueError(
                    f"CkptHook metric {name!r} is {array.dtype} with shape {list(array.shape)}; "
                    "metrics must be numeric scalars. HINT: reduce it first (e.g. "
                    "`metrics[name].mean()`), or pass it in `metadata` instead."
                )
            floats[str(name)] = float(array.reshape(()))
        return floats

    # ------------------------------------------------------------------ restoring

    def restore_or(self, state: Any) -> Any:
        """The latest checkpoint in `state`'s structure and shardings, or `state` if none.

        JAX arrays come back with the shardings of the corresponding leaves of `state`, so a
        state sharded over a different device mesh than the saving run's is re-sharded on
        load. NNX objects in `state` are updated in place and returned.

        Args:
            state: the freshly initialised training state; it serves as the template.

        Returns:
            The restored state, or `state` itself on a fresh run (broadcast when
            `replicate_to` is set).

        Raises:
            ckpt_core.StructureMismatchError: the checkpoint's paths, shapes or dtypes differ
                from `state`'s; the message names each difference.
        """
        if self.manager.latest_step() is None:
            if self.replicate_to is None or (
                self.unreplicate and _leading_axis(state) == self.replicate_to
            ):
                return state
            template = _strip_device_axis(state) if self.unreplicate else state
            return _replicate(template, self.replicate_to)
        return self.restore(state)

    def restore(self, state: Any, step: int | Literal["latest", "best"] = "latest") -> Any:
        """Restore `step` (an int, `"latest"` or `"best"`) in `state`'s structure and shardings.

        Args:
            state: the template, as for `restore_or`.
            step: which checkpoint to load.

        Returns:
            The restored state; NNX objects in `state` are updated in place and returned.

        Raises:
            ckpt_core.CheckpointNotFoundError: there is no such step.
            ckpt_core.StructureMismatchError: the checkpoint does not match `state`.
        """
        like = _nnx_to_pure(state)
        n_devices = self.replicate_to
        if self.unreplicate:
            n_devices = n_devices or _leading_axis(like)
            like = _strip_device_axis(like)
        restored = self.manager.restore(step, like=like)
        if n_devices is not None:
            restored = _replicate(restored, n_devices)
        return _pure_to_nnx(state, restored)

    # ------------------------------------------------------------------ lifecycle

    def wait(self) -> None:
        """Block until a pending async save is committed; raise its error if it failed."""
        self.manager.wait()

    def close(self) -> None:
        """Finish a pending async save, then release the directory."""
        self.manager.close()

    def __enter__(self) -> CkptHook:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---------------------------------------------------------------------- nnx objects


def _is_nnx(x: Any) -> bool:
    return isinstance(x, _NNX_BASE)


def _is_plain_container(x: Any) -> bool:
    # Namedtuples and registered pytree classes (TrainState) are leaves of this walk: only
    # the builtin containers a user groups objects in, like `(model, optimizer)`.
    return isinstance(x, dict | list) or (isinstance(x, tuple) and not hasattr(x, "_fields"))


def _nnx_to_pure(state: Any) -> Any:
    """Replace every NNX object in the top-level containers by its pure state dict."""
    if _is_nnx(state):
        return nnx.to_pure_dict(nnx.state(state))
    if isinstance(state, dict):
        return {k: _nnx_to_pure(v) for k, v in state.items()}
    if _is_plain_container(state):
        return type(state)(_nnx_to_pure(v) for v in state)
    return state


def _pure_to_nnx(template: Any, restored: Any) -> Any:
    """Write restored pure dicts back into the NNX objects of `template` (in place)."""
    if _is_nnx(template):
        graph_state = nnx.state(template)
        nnx.replace_by_pure_dict(graph_state, restored)
        nnx.update(template, graph_state)
        return template
    if isinstance(template, dict):
        return type(template)({k: _pure_to_nnx(v, restored[k]) for k, v in template.items()})
    if _is_plain_container(template):
        return type(template)(_pure_to_nnx(t, r) for t, r in zip(template, restored))
    return restored


def _nnx_objects(state: Any, path: tuple[Any, ...] = ()) -> Iterable[tuple[tuple[Any, ...], Any]]:
    """`(path, object)` of every NNX object in the top-level containers, as `_nnx_to_pure` walks."""
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


def _warn_if_dropout_stream_is_not_saved(step: int, state: Any, tree: Any) -> None:
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


# ---------------------------------------------------------------------- device axis


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray)


def _leading_axis(tree: Any) -> int | None:
    """The size of the device axis of a replicated state (its first array leaf's axis 0)."""
    for leaf in jax.tree.leaves(_nnx_to_pure(tree)):
        if _is_array(leaf) and leaf.ndim >= 1:
            return int(leaf.shape[0])
    return None


def _replicate(tree: Any, n_devices: int) -> Any:
    """Broadcast every leaf onto the first `n_devices` local devices along a new axis 0."""
    return replicate(tree, n_devices, caller="CkptHook", on_devices=True)
