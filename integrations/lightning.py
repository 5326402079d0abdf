"""Lightning adapter: `CkptCallback`, one callback that makes `Trainer.fit` survive crashes.

```python
cb = CkptCallback("runs/exp", monitor="val_loss", mode="min", save_top_k=2, max_to_keep=3,
                  every_n_train_steps=50, resume=True)
trainer = Trainer(max_epochs=10, callbacks=[cb])
trainer.fit(model, datamodule=dm)      # continues from the latest checkpoint by itself
trainer.test(ckpt_path="best")
```

Each checkpoint is Lightning's own checkpoint dict (what `trainer.save_checkpoint` would write,
plus the Python, numpy and torch RNG states), committed atomically by a
`ckpt_core.CheckpointManager` in the torch format: `best_model_path` and `last_model_path` point
at `<dirpath>/step_XXXXXXXX/state.pt`, which `torch.load(path, weights_only=True)`,
`MyModule.load_from_checkpoint(path)` and `trainer.fit/validate/test(ckpt_path=...)` open.
Retention, best tracking and the paths are the manager's: nothing is kept in the callback.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from ckpt_core import (
    CheckpointError,
    CheckpointManager,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    UnrankedStepWarning,
)
from ckpt_core.layout import parse_step
from ckpt_core.options import (
    check_bool,
    check_int,
    check_mapping,
    check_seconds,
    describe,
    on_existing_from_flags,
    parse_size,
)
from ckpt_core.signals import check_save_on_signals
from integrations._torch_data import EpochReplay, describe_loader, unreplayable_reason

__all__ = ["CkptCallback"]

# `max_to_keep` when not given: the latest only when checkpoints are ranked (with `save_top_k`
# best ones, what `ModelCheckpoint(save_top_k=k, save_last=True)` keeps), else this many newest.
_UNRANKED_MAX_TO_KEEP = 3


class _NotGiven:
    """`max_to_keep`'s default, which depends on `monitor` and `save_top_k`."""

    def __repr__(self) -> str:
        return "<1 with monitor or save_top_k, None with save_top_k=-1, else 3>"


_NOT_GIVEN: Any = _NotGiven()

# Lightning versions whose internals `_lightning_checkpoint`, `_find_last_checkpoints` and
# `_on_train_loaders_ready` were checked against (trainer/connectors/checkpoint_connector.py,
# loops/fit_loop.py).
LIGHTNING_VERSIONS_CHECKED = ("2.6.6",)


def _lightning_checkpoint(
    trainer: Trainer, restore: dict[str, Any] | None = None, *, weights_only: bool = False
) -> dict[str, Any]:
    """Build the trainer's checkpoint dict, or hand `restore` to Lightning's own restore path.

    This is the one function in this module that calls into Lightning internals (checked against
    the versions in `LIGHTNING_VERSIONS_CHECKED`; the only other contact is the
    `CkptCallback._find_last_checkpoints` override, which Lightning calls), because Lightning has
    no public API for either job:

    * Building: `trainer.save_checkpoint(path)` both builds the dict and writes it to a file, but
      the core must do the writing (atomic commit, retention, async). The private
      `_CheckpointConnector.dump_checkpoint` is the builder it uses, hooks included.
    * Restoring: a callback cannot pass `ckpt_path` to `fit`; its `setup` hook runs after the
      path was chosen. `_CheckpointConnector.resume_start(None)` leaves a dict already in
      `_loaded_checkpoint` in place, so Lightning's own code then restores the model, datamodule,
      callbacks, precision plugin, loops, optimizers and LR schedulers from it, exactly as for
      `fit(ckpt_path=...)`. The dict goes through Lightning's checkpoint migration first, as
      `resume_start` does, so a checkpoint written by an older Lightning loads too.

    Args:
        trainer: the trainer.
        restore: a checkpoint dict to restore at the next `fit` restore point; None to build one.
        weights_only: when building, leave out optimizer, scheduler, callback and precision states.

    Returns:
        The checkpoint dict built, or `restore` as Lightning will see it.
    """
    connector = trainer._checkpoint_connector
    if restore is None:
        return connector.dump_checkpoint(weights_only)
    from lightning.pytorch.utilities.migration.utils import _pl_migrate_checkpoint

    connector._loaded_checkpoint = _pl_migrate_checkpoint(restore)
    return connector._loaded_checkpoint


def _check_is_lightning_checkpoint(checkpoint: Any, where: Any) -> None:
    """Refuse to resume from a step some other code saved into the directory."""
    if not isinstance(checkpoint, Mapping) or "pytorch-lightning_version" not in checkpoint:
        found = sorted(map(str, checkpoint))[:5] if isinstance(checkpoint, Mapping) else None
        raise CheckpointError(
            f"CkptCallback cannot resume from {where}: it is not a Lightning checkpoint (found "
            f"{'the keys ' + str(found) if found is not None else type(checkpoint).__name__}, "
            "no 'pytorch-lightning_version'). HINT: give CkptCallback a dirpath of its own, or "
            "pass overwrite=True to delete these checkpoints and start over."
        )


def _on_train_loaders_ready(
    trainer: Trainer, prepare: Callable[[Sequence[Any]], None]
) -> Callable[[], None]:
    """Call `prepare(train_loaders)` each time `fit` has set up its train loaders, before it
    loads their saved states and creates their iterator; returns the function that undoes it.

    Lightning has no hook there (`setup` is too early: the loaders do not exist yet, and
    `on_train_start` too late: the first epoch's iterator exists), so the fit loop's private
    `_load_combined_loader_states`, which `FitLoop.setup_data` calls at exactly that point, is
    wrapped on this trainer's loop only (see LIGHTNING_VERSIONS_CHECKED).
    """
    fit_loop = trainer.fit_loop
    load_states = fit_loop._load_combined_loader_states

    def prepare_then_load_states() -> None:
        if fit_loop._combined_loader is not None:
            prepare(fit_loop._combined_loader.flattened)
        load_states()

    fit_loop._load_combined_loader_states = prepare_then_load_states  # type: ignore[method-assign]
    return lambda: fit_loop.__dict__.pop("_load_combined_loader_states", None)


def _before_checkpoint_loads(trainer: Trainer, check: Callable[[Any], None]) -> Callable[[], None]:
    """Call `check(path)` each time the trainer's strategy is about to load a checkpoint file
    (`fit/validate/test/predict(ckpt_path=...)`, "last" and "best" included); returns the function
    that undoes it. `Strategy.load_checkpoint` is public; it is wrapped on this trainer's strategy
    only."""
    strategy = trainer.strategy
    load = strategy.load_checkpoint

    def check_then_load(checkpoint_path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        check(checkpoint_path)
        return load(checkpoint_path, *args, **kwargs)

    strategy.load_checkpoint = check_then_load  # type: ignore[method-assign]
    return lambda: strategy.__dict__.pop("load_checkpoint", None)


def _epoch_trained(trainer: Trainer) -> bool:
    """Every batch of the current epoch was trained (False when `max_steps` or `should_stop`
    ended `fit` mid-epoch, although Lightning then calls the epoch-end hooks all the same)."""
    progress = trainer.fit_loop.epoch_loop.batch_progress
    return bool(progress.is_last_batch) or progress.current.ready >= trainer.num_training_batches


def _settle_loop_progress(checkpoint: dict[str, Any], epoch_trained: bool | None) -> None:
    """Make the loop counters of a checkpoint taken where `fit` ended say where training stood.

    At an epoch end Lightning's counters have the epoch processed but not yet completed, and
    with `max_steps` set its restore treats every checkpoint as mid-epoch: it then fetches one
    more batch of the finished epoch. When `max_steps` stopped `fit` mid-epoch, the epoch was
    counted as processed, so a resume skips its remaining batches. So a finished epoch is
    completed (the next starts afresh, as with `max_epochs` alone) and an unfinished one is
    reopened (a resume trains its remaining batches). Checked against LIGHTNING_VERSIONS_CHECKED.

    `epoch_trained` is what the saving callback knew (None, from another writer: read the
    batch counters, which miss an epoch shortened by `limit_train_batches`).
    """
    loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    epochs, batches = loop.get("epoch_progress"), loop.get("epoch_loop.batch_progress")
    if not epochs or not batches or epochs["total"]["processed"] != epochs["total"]["ready"]:
        return  # mid-epoch at a batch end (or before a first epoch): Lightning resumes it
    current = batches["current"]
    if epoch_trained is None:
        epoch_trained = bool(batches.get("is_last_batch"))
    if epoch_trained and current["ready"] == current["completed"]:
        for part in ("total", "current"):
            epochs[part]["completed"] = epochs[part]["processed"]
        batches["current"] = dict.fromkeys(current, 0)
        batches["is_last_batch"] = False
    elif not epoch_trained and current["ready"] > 0:
        for part in ("total", "current"):
            epochs[part]["processed"] = epochs[part]["completed"] = epochs[part]["ready"] - 1


def _capture_rng_states() -> dict[str, Any]:
    """The Python, numpy and torch (and, when in use, CUDA) RNG states, as torch.load-safe data."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    states: dict[str, Any] = {
        "python": {"version": version, "internal": torch.tensor(internal), "gauss": gauss},
        # numpy arrays need allow-listed globals under weights_only=True; a tensor does not.
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _apply_rng_states(states: Mapping[str, Any]) -> None:
    """Set the RNG states captured by `_capture_rng_states`."""
    py = states["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    npy = states["numpy"]
    np.random.set_state(
        (
            npy["kind"],
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The scalar numbers among logged metrics, as floats (tensors with one element included)."""
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor):
            if value.numel() == 1 and not value.is_complex():
                out[name] = float(value.detach().reshape(()).item())
        elif isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


class CkptCallback(ModelCheckpoint):
    """Crash-proof checkpointing for `Trainer.fit`, with Lightning's `ModelCheckpoint` arguments.

    Saves Lightning's full checkpoint dict (model, optimizers, LR schedulers, precision state,
    loop progress, datamodule and other callbacks' states) plus the Python, numpy and torch RNG
    states through a `ckpt_core.CheckpointManager`, so every checkpoint is committed atomically
    and a `SIGKILL` at any moment leaves the previous ones intact. With `resume=True`,
    `trainer.fit(model)` continues from the latest checkpoint by itself: an interrupted and
    resumed run ends with the same weights, bit for bit on CPU, as an uninterrupted one, from epoch
    ends and from mid-epoch steps alike (mid-epoch: see the notes on train dataloaders).

    Only global rank 0 writes; the other ranks wait at a barrier after each save.

    It takes every `ModelCheckpoint` argument: it honours them as described below, and refuses
    `filename`, `auto_insert_metric_name=False` and `save_on_train_epoch_end=False` with a
    `ValueError` naming the equivalent.

    Args:
        dirpath: the checkpoint directory (a local path or an fsspec URL such as `s3://b/run`);
            None: `<trainer.default_root_dir>/checkpoints`, resolved at `setup`.
        filename: only None: checkpoints are named by global step (`step_XXXXXXXX/state.pt`).
        monitor: a logged metric to rank checkpoints by ("best"); None: no ranking, and "best"
            means the latest.
        verbose: log one line per committed save (step, `monitor`'s value, best so far, path).
        save_last: None, True, False or "link", all accepted: the latest checkpoint is always
            kept (it is what `resume` continues from) and is `last_model_path`.
        save_top_k: keep the k best checkpoints by `monitor` besides the latest, as
            `ModelCheckpoint(save_top_k=k, save_last=True)` does (default 1; -1: keep all; 0:
            the latest only). Without `monitor`: -1, 0 or 1 (keep all, the latest, the latest).
        mode: "min" or "max": which values of `monitor` are better.
        auto_insert_metric_name: only True (names are fixed; the metrics are in the manifest).
        enable_version_counter: True or False: names never collide within a run, and a step
            saved again replaces itself atomically (what False asks for).
        save_on_train_epoch_end: None or True: saves are at train epoch ends, after that
            epoch's validation; False (save at every validation end) is refused.
        max_to_keep: also keep the N newest checkpoints (None: keep all). Default: 1 (the latest)
            with `monitor` or `save_top_k`, all with `save_top_k=-1`, else 3.
        keep_period: checkpoints at a global step divisible by this are never deleted.
        max_bytes: a disk budget for the run's checkpoints (int bytes or e.g. `"20GB"`); see
            `CheckpointManager(max_bytes=...)`.
        every_n_train_steps: save when the global step is a multiple of this.
        every_n_epochs: save at the end of every N-th training epoch (the default, with 1, when
            no trigger is given).
        train_time_interval: save at the first batch end after this much time (a `timedelta` or
            seconds) since the last save.
        save_weights_only: save only the model weights and loop progress (no optimizer, LR
            scheduler, callback or RNG states); such checkpoints cannot resume training.
        save_on_exception: also save when `fit` is interrupted by an exception.
        resume: continue from the latest checkpoint in `dirpath` if there is one.
        overwrite: delete the checkpoints already in `dirpath` and start over.
        async_save: write in a background thread; training stalls only for a memory copy.
        storage_options: passed to fsspec for URL directories (endpoint, credentials).
        save_on_signals: signals (e.g. `(signal.SIGTERM,)`, or one signal) after which the
            next batch end saves, whatever the triggers, and the trainer stops
            (`trainer.should_stop`; for SIGTERM Lightning itself then raises its
            `SIGTERMException`, a `SystemExit` with status 0, once the save is committed).
            `preempted` says so afterwards.

    Raises:
        ValueError: conflicting or out-of-range arguments; each message says how to fix them.

    Attributes:
        best_model_path: the payload file of the best checkpoint ("" before the first save).
        best_model_score: `monitor`'s value at the best checkpoint (a tensor), or None.
        best_k_models: payload file -> score of the checkpoints kept for their rank.
        last_model_path: the payload file of the latest checkpoint ("").
        resumed_step: the global step `fit` resumed from, or None.
        preempted: a signal in `save_on_signals` stopped the last `fit` after its save.

    A `ckpt_path=` of `fit`, `validate`, `test` or `predict` that names a file of a committed
    step in `dirpath` ("best" and "last" included) is checked against the step's checksums
    before Lightning loads it, on a trainer that has this callback; a damaged file raises
    `ckpt_core.CorruptCheckpointError` naming it.

    With neither `resume` nor `overwrite`, `fit` raises `ckpt_core.CheckpointExistsError` when
    `dirpath` already holds checkpoints, rather than mixing two runs. `trainer.fit(model,
    ckpt_path="last")` continues the run in `dirpath` like `resume=True`; an explicit
    `ckpt_path=<file>` wins over `resume=True`.

    Notes:
        * A step or time trigger that fires at an epoch's last batch saves at the epoch end
          instead: the same weights, with that epoch's validation metrics logged.
        * With `monitor`, checkpoints saved before the first validation logged it are kept
          unranked; if it is still missing after a validation, saving raises.
        * Metrics are those Lightning holds at save time (`trainer.callback_metrics`, plus
          `epoch` and `step`); after a resume, those not yet logged again are carried over from
          the checkpoint resumed, as an uninterrupted run would still hold them.
        * Mid-epoch, a train dataloader resumes at the next batch when it has
          `state_dict`/`load_state_dict` (Lightning restores it), or when it is a plain
          `DataLoader` over a map-style dataset with a `RandomSampler`, `SequentialSampler` or
          `DistributedSampler` (`shuffle=True/False`, with or without a `generator`), alone or
          in a `BatchSampler`: the callback re-creates the epoch's order from the random states
          recorded when it began and skips the batches already trained without loading them.
          Random transforms in worker processes (`num_workers > 0`) are not replayed. Other
          loaders (an `IterableDataset`, a custom sampler) restart at their first batch; the
          first mid-epoch save warns, naming them.
        * The RNG states saved are global rank 0's; under DDP every rank resumes with them.
        * It subclasses `ModelCheckpoint` only so that Lightning's `ckpt_path="last"` finds it;
          every hook is its own (a test checks that none of ModelCheckpoint's runs).
    """

    def __init__(
        self,
        dirpath: str | Path | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        verbose: bool = False,
        save_last: bool | Literal["link"] | None = None,
        save_top_k: int | None = None,
        save_on_exception: bool = False,
        save_weights_only: bool = False,
        mode: Literal["min", "max"] = "min",
        auto_insert_metric_name: bool = True,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | float | None = None,
        every_n_epochs: int | None = None,
        save_on_train_epoch_end: bool | None = None,
        enable_version_counter: bool = True,
        *,
        max_to_keep: int | None = _NOT_GIVEN,
        keep_period: int | None = None,
        max_bytes: int | str | None = None,
        resume: bool = False,
        overwrite: bool = False,
        async_save: bool = False,
        storage_options: dict[str, Any] | None = None,
        save_on_signals: Iterable[int] | int | None = (),
    ) -> None:
        # ModelCheckpoint.__init__ is deliberately not called: this class subclasses it only so
        # that Lightning's `ckpt_path="last"` resolution asks it for its last checkpoint (see
        # `_find_last_checkpoints`), and overrides every hook ModelCheckpoint implements, so none
        # of ModelCheckpoint's own file naming, top-k or state logic ever runs.
        _validate_arguments(
            monitor=monitor,
            mode=mode,
            save_top_k=save_top_k,
            every_n_train_steps=every_n_train_steps,
            every_n_epochs=every_n_epochs,
            train_time_interval=train_time_interval,
            save_weights_only=save_weights_only,
            resume=resume,
            overwrite=overwrite,
        )
        _check_model_checkpoint_arguments(
            filename=filename,
            verbose=verbose,
            save_last=save_last,
            auto_insert_metric_name=auto_insert_metric_name,
            save_on_train_epoch_end=save_on_train_epoch_end,
            enable_version_counter=enable_version_counter,
        )
        # Checked here, not first at `fit`: the manager is opened only then.
        if dirpath is not None and (
            not isinstance(dirpath, str | os.PathLike) or not os.fspath(dirpath)
        ):
            raise ValueError(
                f"CkptCallback got dirpath={describe(dirpath)}; expected a directory path or URL. "
                "HINT: CkptCallback('checkpoints/run1')."
            )
        if max_to_keep is _NOT_GIVEN:
            max_to_keep = _default_max_to_keep(monitor, save_top_k)
        check_int("max_to_keep", max_to_keep, minimum=1, none="keep all", example=3)
        check_int("keep_period", keep_period, minimum=1, none="off", example=1000)
        max_bytes = parse_size("max_bytes", max_bytes)
        for name, flag in (
            ("save_weights_only", save_weights_only),
            ("save_on_exception", save_on_exception),
            ("async_save", async_save),
        ):
            check_bool(name, flag)
        check_mapping("storage_options", storage_options)
        self.save_on_signals = check_save_on_signals(save_on_signals, caller="CkptCallback")
        if every_n_train_steps is None and every_n_epochs is None and train_time_interval is None:
            every_n_epochs = 1
        if isinstance(train_time_interval, (int, float)):
            train_time_interval = timedelta(seconds=train_time_interval)
        # None: Lightning's default, `<default_root_dir>/checkpoints`, resolved at `setup`.
        self._dirpath_given = None if dirpath is None else str(dirpath)
        self.dirpath: str | None = self._dirpath_given
        self.monitor = monitor
        self.mode = mode
        self.verbose = verbose
        self.save_last = save_last
        self.filename = filename  # always None (refused otherwise); ModelCheckpoint has it
        self.auto_insert_metric_name = auto_insert_metric_name
        # ModelCheckpoint's default is 1; loggers read it (save_top_k == -1: upload every save).
        self.save_top_k = 1 if save_top_k is None else save_top_k
        self.max_to_keep = max_to_keep
        self.keep_period = keep_period
        self.max_bytes = max_bytes
        self.every_n_train_steps = every_n_train_steps
        self._every_n_epochs = every_n_epochs
        self.train_time_interval = train_time_interval
        self.save_weights_only = save_weights_only
        self.save_on_exception = save_on_exception
        self.resume = resume
        self.overwrite = overwrite
        self.async_save = async_save
        self.storage_options = storage_options
        self.resumed_step: int | None = None
        self.preempted = False
        # Options forwarded to every manager opened on `dirpath`, writer or reader, so that both
        # rank checkpoints the same way. save_top_k=-1 ("all") ranks every step.
        keep_best = self.save_top_k if monitor else 0
        self._manager_options: dict[str, Any] = dict(
            max_to_keep=max_to_keep,
            keep_period=keep_period,
            max_bytes=max_bytes,
            best_fn=monitor,
            best_mode=mode,
            keep_best=None if keep_best == -1 else keep_best,
            format="torch",
            storage_options=storage_options,
        )
        # Run-time state: none of it is checkpoint state, which lives in the manager's manifests.
        self._manager: CheckpointManager | None = None  # the writer, rank 0, during `fit` only
        self._opened_before = False  # a later `fit` of the same callback continues its own run
        self._last_requested = False  # Lightning resolved fit(ckpt_path="last") through us
        self._last_saved_step: int | None = None
        self._carried_metrics: dict[str, float] = {}
        self._last_save_time = time.monotonic()
        self._validation_ran = False
        self._saving_at_epoch_end = False
        self._saving_epoch_trained = False  # every batch of the epoch saved in was trained
        self._due_at_epoch_end: str | None = None  # a step trigger fired at an epoch's last batch
        self._pending_rng: dict[str, Any] | None = None
        self._pending_rng_at_epoch_end = False
        self._replays: list[EpochReplay] = []  # train loaders made resumable mid-epoch
        self._unreplayable: list[str] = []  # train loaders that restart mid-epoch, and why
        self._undo_loader_hook: Callable[[], None] | None = None
        self._warned_unreplayable = False
        self._unannounced_step: int | None = None  # committed (or being), loggers not yet told
        self._undo_load_check: Callable[[], None] | None = None

    # ------------------------------------------------------------------ identity

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor)

    @property
    def every_n_epochs(self) -> int | None:
        return self._every_n_epochs

    def __repr__(self) -> str:
        return f"CkptCallback({self.dirpath!r}, monitor={self.monitor!r}, resume={self.resume})"

    # ------------------------------------------------------------------ derived attributes

    @contextlib.contextmanager
    def _reading(self) -> Iterator[CheckpointManager | None]:
        """The writer while `fit` runs on rank 0; otherwise a read-only view of `dirpath`, or
        None while `dirpath` does not exist (nothing saved yet)."""
        if self._manager is not None:
            yield self._manager
            return
        if self.dirpath is None:  # Lightning's default directory, not resolved before `setup`
            yield None
            return
        try:
            view = CheckpointManager(self.dirpath, read_only=True, **self._manager_options)
        except CheckpointNotFoundError:
            yield None
            return
        with view:
            yield view

    @staticmethod
    def _best(manager: CheckpointManager) -> int | None:
        # Without a monitor Lightning's "best" is the latest checkpoint.
        best = manager.best_step()
        return manager.latest_step() if best is None and manager.policy.best_fn is None else best

    @property
    def best_model_path(self) -> str:
        with self._reading() as manager:
            step = None if manager is None else self._best(manager)
            return "" if manager is None or step is None else str(manager.payload_path(step))

    @best_model_path.setter
    def best_model_path(self, value: str) -> None:
        # Lightning's spawn launchers copy the worker's value back into the main process; the
        # value is derived from the directory, so there is nothing to store.
        pass

    @property
    def best_model_score(self) -> torch.Tensor | None:
        if self.monitor is None:
            return None
        with self._reading() as manager:
            step = None if manager is None else manager.best_step()
            if manager is None or step is None:
                return None
            return torch.tensor(manager.metrics(step)[self.monitor])

    @property
    def best_k_models(self) -> dict[str, torch.Tensor]:
        if self.monitor is None:
            return {}
        with self._reading() as manager:
            if manager is None:
                return {}
            infos = [manager.info(step) for step in manager.all_steps()]
            return {
                str(manager.payload_path(info.step)): torch.tensor(info.metrics[self.monitor])
                for info in infos
                if "best" in info.kept_because
            }

    @property
    def last_model_path(self) -> str:
        with self._reading() as manager:
            step = None if manager is None else manager.latest_step()
            return "" if manager is None or step is None else str(manager.payload_path(step))

    @property
    def current_score(self) -> torch.Tensor | None:
        """`monitor`'s value at the latest checkpoint, or None."""
        if self.monitor is None:
            return None
        with self._reading() as manager:
            step = None if manager is None else manager.latest_step()
            value = None if manager is None or step is None else manager.metrics(step)
            return (
                None
                if value is None or self.monitor not in value
                else torch.tensor(value[self.monitor])
            )

    @property
    def kth_best_model_path(self) -> str:
        """The worst-ranked of `best_k_models` ("" when there is none)."""
        kth = self._kth_best()
        return "" if kth is None else kth[0]

    @property
    def kth_value(self) -> torch.Tensor:
        """The score of `kth_best_model_path`; before it exists, the worst possible score."""
        kth = self._kth_best()
        if kth is None:
            return torch.tensor(float("inf") if self.mode == "min" else float("-inf"))
        return kth[1]

    def _kth_best(self) -> tuple[str, torch.Tensor] | None:
        best = self.best_k_models
        if not best:
            return None
        pick = max if self.mode == "min" else min
        path = pick(best, key=lambda p: float(best[p]))
        return path, best[path]

    def to_yaml(self, filepath: str | os.PathLike[str] | None = None) -> None:
        """Write `best_k_models` (payload path -> score) as YAML, as `ModelCheckpoint` does.

        Args:
            filepath: where; default `<dirpath>/best_k_models.yaml`.
        """
        import fsspec
        import yaml

        if filepath is None:
            if self.dirpath is None:
                raise ValueError(
                    "CkptCallback.to_yaml() needs a file path: dirpath=None is resolved when "
                    "`fit` sets up. HINT: call it after `fit`, or pass to_yaml('best_k.yaml')."
                )
            filepath = f"{self.dirpath.rstrip('/')}/best_k_models.yaml"
        best_k = {path: float(score) for path, score in self.best_k_models.items()}
        with fsspec.open(os.fspath(filepath), "w", **(self.storage_options or {})) as f:
            yaml.dump(best_k, f)

    def _resolve_dirpath(self, trainer: Trainer) -> None:
        # ModelCheckpoint's default with dirpath=None, without its logger-version subfolder: a
        # resumed run must find the same directory.
        if self._dirpath_given is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")

    def _find_last_checkpoints(self, trainer: Trainer) -> set[str]:
        # Lightning's `fit/validate/test(ckpt_path="last")` asks each ModelCheckpoint for its
        # last checkpoint through this (private) method; see LIGHTNING_VERSIONS_CHECKED. A
        # `fit` that asked for "last" continues this run, so `setup` resumes the directory.
        if trainer.state.fn == "fit":
            self._last_requested = True
        self._resolve_dirpath(trainer)
        last = self.last_model_path
        return {last} if last else set()

    # ------------------------------------------------------------------ opening and resuming

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._pending_rng = None
        self._resolve_dirpath(trainer)
        self._stop_checking_loads()
        self._undo_load_check = _before_checkpoint_loads(trainer, self._verify_before_load)
        if stage != "fit":
            self._last_requested = False
            return
        self.resumed_step = None
        self.preempted = False
        self._unannounced_step = None
        self._due_at_epoch_end = None
        self._validation_ran = False
        self._release_train_loaders()
        self._undo_loader_hook = _on_train_loaders_ready(trainer, self._prepare_train_loaders)
        continuing = self._last_requested or self._opened_before
        lightning_restores = self._last_requested
        self._last_requested = False
        # ckpt_path="last", or a second fit with this callback, continues the directory.
        resume = self.resume or continuing
        on_existing = on_existing_from_flags(
            resume, self.overwrite and not resume, caller="CkptCallback"
        )
        resume_step = self._open_writer(trainer, on_existing)
        self._opened_before = True
        self._last_saved_step = resume_step
        self._last_save_time = time.monotonic()
        self._carried_metrics = {}
        if resume_step is None or not (self.resume or lightning_restores):
            return
        with self._reading() as manager:  # the writer on rank 0, a read-only view elsewhere
            assert manager is not None  # resume_step was found in it
            # Lightning forgets logged metrics on restart; an uninterrupted run would still hold
            # the last logged values, so later checkpoints start from those of the resumed step.
            self._carried_metrics = {
                k: v for k, v in manager.metrics(resume_step).items() if k not in ("epoch", "step")
            }
            checkpoint = None if lightning_restores else manager.restore(resume_step)
        if checkpoint is not None:
            _check_is_lightning_checkpoint(checkpoint, manager.path(resume_step))
            _lightning_checkpoint(trainer, restore=checkpoint)
        self.resumed_step = resume_step
        rank_zero_info(f"CkptCallback: resuming from step {resume_step} in {self.dirpath}")

    def _verify_before_load(self, path: Any) -> None:
        """A file of a committed step in `dirpath` is checked against its manifest's checksums
        before Lightning loads it (raises CorruptCheckpointError naming the file)."""
        if self.dirpath is None or not isinstance(path, str | os.PathLike):
            return
        path = os.fspath(path)
        step = parse_step(os.path.basename(os.path.dirname(path.rstrip("/"))))
        if step is None:
            return
        with self._reading() as manager:
            if manager is None or step not in manager.all_steps():
                return
            ours = str(manager.payload_path(step))
            if "://" not in ours:
                ours, path = os.path.realpath(ours), os.path.realpath(path)
            if ours == path:
                try:
                    manager.verify(step)
                except CorruptCheckpointError as e:
                    e.add_note(
                        f"CkptCallback refused to load it as ckpt_path. HINT: `ckpt verify "
                        f"{self.dirpath}` lists the intact steps; pass one of their files."
                    )
                    raise

    def _stop_checking_loads(self) -> None:
        if self._undo_load_check is not None:
            self._undo_load_check()
            self._undo_load_check = None

    def _open_writer(self, trainer: Trainer, on_existing: str) -> int | None:
        """Open the manager on global rank 0; returns, on every rank, the step to resume from."""
        failure: BaseException | None = None
        resume_step = None
        if trainer.is_global_zero and self._manager is None:
            assert self.dirpath is not None  # resolved at `setup`
            try:
                self._manager = CheckpointManager(
                    self.dirpath,
                    on_existing=on_existing,
                    async_save=self.async_save,
                    save_on_signals=self.save_on_signals,  # the writer only: readers don't save
                    **self._manager_options,
                )
            except Exception as e:  # raised below, after the other ranks were told
                failure = e
        if self._manager is not None and self._manager.resuming:
            resume_step = self._manager.latest_step()
        told = (None if failure is None else f"{type(failure).__name__}: {failure}", resume_step)
        failure_text, resume_step = trainer.strategy.broadcast(told, src=0)
        if failure is not None:
            raise failure
        if failure_text is not None:
            raise RuntimeError(
                f"CkptCallback could not open {self.dirpath!r} on global rank 0: {failure_text}"
            )
        return resume_step

    def _close_writer(self) -> None:
        manager, self._manager = self._manager, None
        if manager is not None:
            manager.close()  # finishes a pending async save; raises if it failed

    def _prepare_train_loaders(self, loaders: Sequence[Any]) -> None:
        self._unreplayable = []
        for loader in loaders:
            if callable(getattr(loader, "state_dict", None)) and callable(
                getattr(loader, "load_state_dict", None)
            ):
                continue  # stateful (or already made so): Lightning saves and restores it
            reason = unreplayable_reason(loader)
            if reason is None:
                replay = EpochReplay(loader)
                replay.attach()
                self._replays.append(replay)
            else:
                self._unreplayable.append(f"{describe_loader(loader)} ({reason})")

    def _release_train_loaders(self) -> None:
        if self._undo_loader_hook is not None:
            self._undo_loader_hook()
            self._undo_loader_hook = None
        for replay in self._replays:
            replay.detach()
        self._replays = []
        self._unreplayable = []
        self._warned_unreplayable = False  # once per `fit`

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Called by Lightning's restore, before the loops run. The RNG states are applied later,
        # at the point of the loop that matches where they were captured (see `on_fit_start`).
        self._pending_rng = state_dict.get("rng")
        self._pending_rng_at_epoch_end = bool(state_dict.get("rng_at_epoch_end", False))

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": _capture_rng_states(),
            "rng_at_epoch_end": self._saving_at_epoch_end,
            "epoch_trained": self._saving_epoch_trained,
        }

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Called with the dict Lightning then restores its loops from (any `ckpt_path` too).
        own = (checkpoint.get("callbacks") or {}).get(self.state_key) or {}
        _settle_loop_progress(checkpoint, own.get("epoch_trained"))

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Saved at an epoch end: the next thing that draws random numbers in the uninterrupted
        # run is the next epoch's dataloader iterator, which a resumed run creates before
        # `on_train_start`; so the states go back now.
        if self._pending_rng is not None and self._pending_rng_at_epoch_end:
            self._apply_pending_rng()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Saved mid-epoch: the resumed run creates a fresh iterator for the restored (stateful)
        # dataloader, which the uninterrupted run never did; the states go back after it.
        if self._pending_rng is not None:
            self._apply_pending_rng()
        self._last_save_time = time.monotonic()

    def _apply_pending_rng(self) -> None:
        assert self._pending_rng is not None
        _apply_rng_states(self._pending_rng)
        self._pending_rng = None

    # ------------------------------------------------------------------ saving

    def _skip(self, trainer: Trainer) -> bool:
        return (
            bool(trainer.fast_dev_run)
            or trainer.state.fn != "fit"
            or trainer.sanity_checking
            or self._last_saved_step == trainer.global_step
        )

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._skip(trainer) or trainer.global_step == 0:
            return
        if self._preemption_due(trainer):
            self._save(trainer, trigger="preemption", check_monitor=False)
            self._stop_after_preemption(trainer)
            return
        trigger = None
        if self.every_n_train_steps is not None:
            if trainer.global_step % self.every_n_train_steps == 0:
                trigger = "every_n_train_steps"
        elif self.train_time_interval is not None:
            due = (
                time.monotonic() - self._last_save_time >= self.train_time_interval.total_seconds()
            )
            if trainer.world_size > 1:  # clocks differ: rank 0 decides for everyone
                due = trainer.strategy.broadcast(due, src=0)
            trigger = "train_time_interval" if due else None
        if trigger is None:
            return
        if batch_idx + 1 == trainer.num_training_batches:
            # The epoch's last batch: save at the epoch end instead, the same weights with the
            # validation that runs in between logged, and a clean epoch boundary to resume at.
            self._due_at_epoch_end = trigger
            return
        self._save(trainer, trigger=trigger)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        trigger, self._due_at_epoch_end = self._due_at_epoch_end, None
        # `max_steps` can end `fit` mid-epoch, and the epoch-end hooks run then too: that is
        # no epoch end (the final save in `on_train_end` keeps that state).
        trained = _epoch_trained(trainer)
        if (
            self._every_n_epochs is not None
            and (trainer.current_epoch + 1) % self._every_n_epochs == 0
            and trained
        ):
            trigger = "every_n_epochs"
        if self._preemption_due(trainer) and not self._skip(trainer):
            self._save(trainer, trigger="preemption", at_epoch_end=trained, check_monitor=False)
            self._stop_after_preemption(trainer)
        elif trigger is not None and not self._skip(trainer):
            self._save(trainer, trigger=trigger, at_epoch_end=True)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validation_ran = True

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The final state is always the last checkpoint, whatever the trigger; the run is then
        # marked complete (resuming it again restores this state and trains no further).
        if self.preempted:  # stopped early: the run is not complete, a resume continues it
            return
        if not self._skip(trainer) and trainer.global_step > 0:
            self._save(trainer, trigger="train_end", at_epoch_end=_epoch_trained(trainer))
        self._announce_committed(trainer)
        if self._manager is not None:
            self._manager.mark_complete()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        try:
            # Lightning's SIGTERM handling raised at a batch or epoch end that came before ours.
            preempting = (
                isinstance(exception, SIGTERMException)
                and self._manager is not None
                and self._manager.preemption_signal is not None
            )
            if (
                (self.save_on_exception or preempting)
                and self._manager is not None
                and trainer.state.fn == "fit"
                and trainer.global_step > 0
                and self._last_saved_step != trainer.global_step
            ):
                # No barrier: the other ranks may never reach it after this rank failed.
                trigger = "preemption" if preempting else "exception"
                self._save(trainer, trigger=trigger, check_monitor=False, barrier=False)
            self.preempted = self.preempted or preempting
            self._close_writer()
            self._release_train_loaders()  # no `teardown` follows an exception
            self._stop_checking_loads()
        except Exception as e:  # never hide the exception that stopped training
            exception.add_note(f"CkptCallback: the checkpoint on exception failed: {e!r}")
            rank_zero_warn(f"CkptCallback: the checkpoint on exception failed: {e!r}")

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            try:
                self._announce_committed(trainer)  # a preemption's async save, say
            finally:
                self._close_writer()
                self._release_train_loaders()
        self._stop_checking_loads()
        self._pending_rng = None

    def _preemption_due(self, trainer: Trainer) -> bool:
        """A signal in `save_on_signals` arrived on global rank 0 (the one that saves)."""
        if not self.save_on_signals:
            return False
        due = self._manager is not None and self._manager.preemption_signal is not None
        if trainer.world_size > 1:  # every rank must stop at the same batch
            due = trainer.strategy.broadcast(due, src=0)
        return due

    def _stop_after_preemption(self, trainer: Trainer) -> None:
        # The save above is committed (the core waits for a preemption save, also async).
        self.preempted = True
        trainer.should_stop = True
        rank_zero_info(
            f"CkptCallback: preempted by a signal; step {trainer.global_step} is saved in "
            f"{self.dirpath}; stopping. Run again with resume=True to continue."
        )

    def _announce_committed(self, trainer: Trainer) -> None:
        """Once the last save is committed: the `verbose` line, and `after_save_checkpoint` for
        every logger (model uploads read the paths then), as `ModelCheckpoint` does. Rank 0."""
        step, self._unannounced_step = self._unannounced_step, None
        if step is None or self._manager is None:
            return
        self._manager.wait()  # an async save: its step is committed before anyone is told
        if self.verbose:
            rank_zero_info(_describe_save(self._manager, step, self.monitor))
        for logger in trainer.loggers:
            logger.after_save_checkpoint(weakref.proxy(self))

    def _metrics(self, trainer: Trainer, *, check_monitor: bool) -> dict[str, float]:
        metrics = {**self._carried_metrics, **_numeric_metrics(trainer.callback_metrics)}
        # ModelCheckpoint lets `monitor` name these too.
        metrics.setdefault("epoch", float(trainer.current_epoch))
        metrics.setdefault("step", float(trainer.global_step))
        # Before the first validation a validation metric cannot be there yet: such steps are
        # saved, unranked. Once validation ran, a missing key is a mistake.
        missing = self.monitor is not None and self.monitor not in metrics
        if check_monitor and missing and self._validation_ran:
            raise MisconfigurationException(
                f"`CkptCallback(monitor={self.monitor!r})` could not find the monitored key in"
                f" the logged metrics: {sorted(metrics)}. HINT: Did you call"
                f" `self.log({self.monitor!r}, value)` in the `LightningModule`?"
            )
        return metrics

    def _save(
        self,
        trainer: Trainer,
        *,
        trigger: str,
        at_epoch_end: bool = False,
        check_monitor: bool = True,
        barrier: bool = True,
    ) -> None:
        step = trainer.global_step
        metrics = self._metrics(trainer, check_monitor=check_monitor)
        if not at_epoch_end and self._unreplayable and not self._warned_unreplayable:
            self._warned_unreplayable = True
            rank_zero_warn(
                f"CkptCallback: the checkpoint at step {step} is mid-epoch, but a run resumed"
                f" from it restarts the train dataloader {'; '.join(self._unreplayable)} at its"
                " first batch while the epoch's batch count goes on, so it is not exact. HINT:"
                " give the loader `state_dict()`/`load_state_dict()` (Lightning restores it),"
                " use a map-style dataset with shuffle=True/False or a RandomSampler, or save at"
                " epoch ends (every_n_epochs)."
            )
        self._saving_at_epoch_end = at_epoch_end
        self._saving_epoch_trained = _epoch_trained(trainer)
        try:
            # Every rank builds the dict: its hooks may talk to the other ranks.
            checkpoint = _lightning_checkpoint(trainer, weights_only=self.save_weights_only)
        finally:
            self._saving_at_epoch_end = False
        if self._manager is not None:
            self._announce_committed(trainer)  # the async save before this one
            with warnings.catch_warnings():
                if self.monitor is not None and self.monitor not in metrics:
                    # Expected before the first validation (see `_metrics`); the core would
                    # warn at every such step.
                    warnings.simplefilter("ignore", UnrankedStepWarning)
                self._manager.save(
                    step,
                    checkpoint,
                    metrics=metrics,
                    metadata={
                        "epoch": trainer.current_epoch,
                        "global_step": step,
                        "trigger": trigger,
                    },
                    force=True,
                )
            self._unannounced_step = step
            if not self.async_save:
                self._announce_committed(trainer)
        if barrier:
            trainer.strategy.barrier("CkptCallback.save")
        self._last_saved_step = step
        self._last_save_time = time.monotonic()


def _describe_save(manager: CheckpointManager, step: int, monitor: str | None) -> str:
    """`verbose=True`'s line for a committed step, in `ModelCheckpoint`'s words."""
    metrics = manager.metrics(step)
    epoch = (manager.metadata(step) or {}).get("epoch", "?")
    head = f"CkptCallback: Epoch {epoch}, global step {step}:"
    where = f"saved to {str(manager.payload_path(step))!r}"
    if monitor is None:
        return f"{head} {where}"
    if monitor not in metrics:
        return f"{head} {monitor!r} not logged yet (unranked), {where}"
    best = manager.best_step()
    so_far = "" if best is None else f" (best {manager.metrics(best)[monitor]:0.5f} at step {best})"
    return f"{head} {monitor!r} reached {metrics[monitor]:0.5f}{so_far}, {where}"


def _default_max_to_keep(monitor: str | None, save_top_k: int | None) -> int | None:
    """`max_to_keep` when not given: keep what the equivalent `ModelCheckpoint(save_top_k=k,
    save_last=True)` keeps (the k best and the latest; all with save_top_k=-1)."""
    if save_top_k == -1:
        return None
    if monitor is not None or save_top_k is not None:
        return 1
    return _UNRANKED_MAX_TO_KEEP


def _check_model_checkpoint_arguments(
    *,
    filename: str | None,
    verbose: bool,
    save_last: bool | str | None,
    auto_insert_metric_name: bool,
    save_on_train_epoch_end: bool | None,
    enable_version_counter: bool,
) -> None:
    """Accept the `ModelCheckpoint` arguments that mean something here; refuse the others with
    the equivalent, so code written for `ModelCheckpoint` runs or says what to change."""
    if filename is not None:
        raise ValueError(
            f"CkptCallback got filename={filename!r}; checkpoints are named by global step "
            "(<dirpath>/step_XXXXXXXX/state.pt) and their metrics are in the manifest. HINT: "
            "drop filename; use cb.best_model_path / cb.last_model_path or `ckpt ls DIR`."
        )
    if auto_insert_metric_name is not True:
        raise ValueError(
            f"CkptCallback got auto_insert_metric_name={auto_insert_metric_name!r}; it only "
            "shapes file names, and names here are fixed (step_XXXXXXXX/state.pt; the metrics "
            "are in the manifest). HINT: drop auto_insert_metric_name."
        )
    if save_on_train_epoch_end is not None and save_on_train_epoch_end is not True:
        raise ValueError(
            f"CkptCallback got save_on_train_epoch_end={save_on_train_epoch_end!r}; it saves "
            "at train epoch ends, after that epoch's validation, not at every validation end. "
            "HINT: drop save_on_train_epoch_end; to save mid-epoch use every_n_train_steps."
        )
    if save_last not in (None, True, False, "link"):
        raise ValueError(
            f"CkptCallback got save_last={save_last!r}; expected None, True, False or 'link'. "
            "HINT: drop save_last; the latest checkpoint is always kept (cb.last_model_path)."
        )
    for name, flag in (("verbose", verbose), ("enable_version_counter", enable_version_counter)):
        check_bool(name, flag)


def _validate_arguments(
    *,
    monitor: str | None,
    mode: str,
    save_top_k: int | None,
    every_n_train_steps: int | None,
    every_n_epochs: int | None,
    train_time_interval: timedelta | float | None,
    save_weights_only: bool,
    resume: bool,
    overwrite: bool,
) -> None:
    """Raise ValueError, with the fix, for arguments that conflict or are out of range."""
    on_existing_from_flags(resume, overwrite, caller="CkptCallback")
    if resume and save_weights_only:
        raise ValueError(
            "CkptCallback got resume=True and save_weights_only=True; weights-only checkpoints"
            " hold no optimizer or loop state to resume from. HINT: drop save_weights_only, or"
            " resume=True."
        )
    triggers = {
        "every_n_train_steps": every_n_train_steps,
        "every_n_epochs": every_n_epochs,
        "train_time_interval": train_time_interval,
    }
    given = {name: value for name, value in triggers.items() if value is not None}
    if len(given) > 1:
        found = ", ".join(f"{name}={value!r}" for name, value in given.items())
        raise ValueError(
            f"CkptCallback got conflicting triggers {found}; expected at most one. HINT: keep"
            f" one of {', '.join(given)} (use max_to_keep/keep_period to keep more checkpoints)."
        )
    for name in ("every_n_train_steps", "every_n_epochs"):
        value = triggers[name]
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise ValueError(
                f"CkptCallback got {name}={value!r}; expected a positive integer. HINT: pass None"
                " to use another trigger."
            )
    if not isinstance(train_time_interval, timedelta):
        check_seconds("train_time_interval", train_time_interval)
    seconds = (
        train_time_interval.total_seconds()
        if isinstance(train_time_interval, timedelta)
        else train_time_interval
    )
    if seconds is not None and not seconds > 0:
        raise ValueError(
            f"CkptCallback got train_time_interval={train_time_interval!r}; expected a positive"
            " timedelta or number of seconds."
        )
    if mode not in ("min", "max"):
        raise ValueError(f"CkptCallback got mode={mode!r}; expected 'min' or 'max'.")
    if monitor is not None and not isinstance(monitor, str):
        raise TypeError(
            f"CkptCallback got monitor={describe(monitor)}; expected the name of a logged "
            "metric. HINT: monitor='val_loss'."
        )
    if save_top_k is not None:
        if not isinstance(save_top_k, int) or isinstance(save_top_k, bool) or save_top_k < -1:
            raise ValueError(
                f"CkptCallback got save_top_k={save_top_k!r}; expected -1 (keep all), 0 or a"
                " positive integer."
            )
        if monitor is None and save_top_k > 1:  # -1, 0 and 1 need no ranking, as in Lightning
            raise ValueError(
                f"CkptCallback got save_top_k={save_top_k!r} without monitor; ranking needs a"
                " metric. HINT: pass monitor='val_loss' (a key you log), or use"
                f" max_to_keep={save_top_k} to keep the {save_top_k} newest checkpoints."
            )
