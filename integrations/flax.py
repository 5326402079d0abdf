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

JAX PRNG keys belong in the state itself, and the hook leaves the process's global generators
alone by default, as orbax does. With `save_global_rng=True`, Python's `random` and numpy's
global `np.random` (which data pipelines draw from) are saved with every step, in its metadata
under `"ckpt_core.global_rng"`, and put back by `restore_or` when a run resumes.

The default format is orbax: a step's payload is an orbax standard checkpoint in
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

from ckpt_core import CheckpointManager
from ckpt_core.options import check_bool, check_int, check_seconds, on_existing_from_flags
from ckpt_core.replication import replicate
from ckpt_core.replication import strip_device_axis as _strip_device_axis
from ckpt_core.rng import global_rng_state, set_global_rng_state
from ckpt_core.signals import check_save_on_signals

from ._flax_nnx import nnx_to_pure, pure_to_nnx, warn_if_dropout_stream_is_not_saved

__all__ = ["CkptHook"]

# Key of the global generators' states in a step's metadata (save_global_rng=True): namespaced,
# so that no key of the user's own is mistaken for it.
GLOBAL_RNG_KEY = "ckpt_core.global_rng"

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
        save_global_rng: save Python's and numpy's global generator states with each step (in
            its metadata, under `"ckpt_core.global_rng"`) and restore them in `restore_or`, so
            that a resumed loop drawing from `random`/`np.random` continues the same streams;
            `restore_or` then overrides any seeding done before it. Off by default. In a
            multi-process job each process has its own streams and only one writes the
            metadata: nothing is saved.

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
        save_global_rng: bool = False,
    ) -> None:
        on_existing = on_existing_from_flags(resume, overwrite, caller="CkptHook")
        # Checked under the hook's own names (the manager would name save_interval_steps).
        check_int("every_n_steps", every_n_steps, minimum=1, none="only by time", example=100)
        check_seconds("every_n_seconds", every_n_seconds)
        check_bool("unreplicate", unreplicate)
        check_bool("save_global_rng", save_global_rng)
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
        self.save_global_rng = save_global_rng
        self._rng_streams_checked = False  # at the first save only: walks the NNX graphs
        self._warned_metadata = False  # a non-dict metadata leaves the global streams out
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
            ValueError: a metric is not a scalar, or (with `save_global_rng`) `metadata` has
                the key `"ckpt_core.global_rng"`; nothing is written then.
            TypeError: a metric is not a number (a bool or a string included).
            ckpt_core.CheckpointError: a previous async write failed, or the write failed.
        """
        step = int(step)
        if not force and not self.manager.should_save(step):
            return False
        tree = nnx_to_pure(state)
        if not self._rng_streams_checked:
            self._rng_streams_checked = True
            warn_if_dropout_stream_is_not_saved(step, state, tree)
        if self.unreplicate:
            tree = _strip_device_axis(tree)
        return self.manager.save(
            step,
            tree,
            metrics=self._metrics_to_save(metrics),
            metadata=self._metadata_to_save(metadata),
            force=True,
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

    def _metrics_to_save(self, metrics: Metrics) -> Mapping[str, Any] | None:
        """The metrics as the manager takes them (it converts them, one device transfer for
        all); only the device axis of a replicated state is dropped here."""
        if metrics is None:
            return None
        if callable(metrics):
            metrics = metrics()
        if self.unreplicate:  # device 0's copy, still on the device
            metrics = {k: v[0] if getattr(v, "ndim", 0) >= 1 else v for k, v in metrics.items()}
        for name, value in metrics.items():
            shape = tuple(getattr(value, "shape", ()))
            if int(np.prod(shape)) != 1:  # kept a ValueError: a value, not a type, is wrong
                raise ValueError(
                    f"CkptHook metric {name!r} has shape {list(shape)}; metrics must be numeric "
                    "scalars. HINT: reduce it first (e.g. `metrics[name].mean()`), or pass it "
                    "in `metadata` instead."
                )
        return metrics

    def _metadata_to_save(self, metadata: Any) -> Any:
        """The user's metadata, with the global generators' states under `GLOBAL_RNG_KEY`."""
        if not self._saves_global_rng():
            return metadata
        if metadata is not None and not isinstance(metadata, Mapping):
            if self._warned_metadata:
                return metadata
            self._warned_metadata = True
            warnings.warn(
                f"CkptHook(save_global_rng=True) keeps the global generators' states in the "
                f"step's metadata, but metadata is {type(metadata).__qualname__}, not a dict: "
                "they are not saved with such steps. HINT: pass metadata as a dict, or "
                "save_global_rng=False.",
                RuntimeWarning,
                stacklevel=3,
            )
            return metadata
        if metadata is not None and GLOBAL_RNG_KEY in metadata:
            raise ValueError(
                f"CkptHook metadata has the key {GLOBAL_RNG_KEY!r}, where the hook keeps the "
                "global generators' states (save_global_rng=True); nothing was saved. HINT: "
                "rename the key, or pass save_global_rng=False."
            )
        return {**(metadata or {}), GLOBAL_RNG_KEY: global_rng_state()}

    def _saves_global_rng(self) -> bool:
        # Per process streams cannot be restored from the one manifest the primary writes.
        return self.save_global_rng and jax.process_count() == 1

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
            `replicate_to` is set). With `save_global_rng`, Python's and numpy's global
            generators are put back as they were when the step was saved.

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
        step = self.manager.latest_step()
        assert step is not None
        restored = self.restore(state, step)
        if self._saves_global_rng():
            metadata = self.manager.metadata(step)
            saved = metadata.get(GLOBAL_RNG_KEY) if isinstance(metadata, Mapping) else None
            if isinstance(saved, Mapping):
                set_global_rng_state(saved)
        return restored

    def restore(self, state: Any, step: int | Literal["latest", "best"] = "latest") -> Any:
        """Restore `step` (an int, `"latest"` or `"best"`) in `state`'s structure and shardings.

        Unlike `restore_or`, this leaves the global generators alone: loading a step to look
        at it does not reseed the process.

        Args:
            state: the template, as for `restore_or`.
            step: which checkpoint to load.

        Returns:
            The restored state; NNX objects in `state` are updated in place and returned.

        Raises:
            ckpt_core.CheckpointNotFoundError: there is no such step.
            ckpt_core.StructureMismatchError: the checkpoint does not match `state`.
        """
        like = nnx_to_pure(state)
        n_devices = self.replicate_to
        if self.unreplicate:
            n_devices = n_devices or _leading_axis(like)
            like = _strip_device_axis(like)
        restored = self.manager.restore(step, like=like)
        if n_devices is not None:
            restored = _replicate(restored, n_devices)
        return pure_to_nnx(state, restored)

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


# ---------------------------------------------------------------------- device axis


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray)


def _leading_axis(tree: Any) -> int | None:
    """The size of the device axis of a replicated state (its first array leaf's axis 0)."""
    for leaf in jax.tree.leaves(nnx_to_pure(tree)):
        if _is_array(leaf) and leaf.ndim >= 1:
            return int(leaf.shape[0])
    return None


def _replicate(tree: Any, n_devices: int) -> Any:
    """Broadcast every leaf onto the first `n_devices` local devices along a new axis 0."""
    return replicate(tree, n_devices, caller="CkptHook", on_devices=True)
