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
When to save is `ckpt_core.schedule.SaveSchedule`'s, the RNG states are `ckpt_core.rng`'s;
`_lightning_args`, `_lightning_loop` and `_lightning_view` beside this module hold the argument
mapping, the contact with Lightning's loop and the derived attributes.

A `ckpt_path=` of `fit`, `validate`, `test` or `predict` that names a file of a committed
step in `dirpath` ("best" and "last" included) is checked against the step's checksums
before Lightning loads it, on a trainer that has this callback; a damaged file raises
`ckpt_core.CorruptCheckpointError` naming it.

With neither `resume` nor `overwrite`, `fit` raises `ckpt_core.CheckpointExistsError` when
`dirpath` already holds checkpoints, rather than mixing two runs. `trainer.fit(model,
ckpt_path="last")` continues the run in `dirpath` like `resume=True`; an explicit
`ckpt_path=<file>` wins over `resume=True`.

Notes on behaviour:

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
* Under DDP only global rank 0 writes; the other ranks wait at a barrier after each save.
  Under a sharded strategy (`ModelParallelStrategy`, `FSDPStrategy`) every rank writes its
  shards of the model and optimizers in the `dcp` format (see `_lightning_sharded`): the paths
  are then step directories (`step_XXXXXXXX/dcp`), which `ckpt_path=` loads, but
  `MyModule.load_from_checkpoint` cannot (it reads one file). The RNG states saved are global
  rank 0's; every rank resumes with them.
* It subclasses `ModelCheckpoint` only so that Lightning's `ckpt_path="last"` finds it;
  every hook is its own (a test checks that none of ModelCheckpoint's runs).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from ckpt_core import CheckpointManager, UnrankedStepWarning
from ckpt_core.options import on_existing_from_flags
from ckpt_core.rng import global_rng_state
from ckpt_core.schedule import Trigger
from integrations._lightning_args import NOT_GIVEN, resolve_arguments
from integrations._lightning_loop import (
    ResumedRng,
    TrainLoaders,
    decided_on_global_zero,
    epoch_trained,
    lightning_checkpoint,
    open_writer,
    resume_from,
    settle_loop_progress,
    step_metrics,
)
from integrations._lightning_view import CheckpointAttributes

__all__ = ["CkptCallback"]

# The trigger a step's metadata names, in this callback's argument names.
_TRIGGER_NAMES: dict[Trigger, str] = {
    "steps": "every_n_train_steps",
    "epochs": "every_n_epochs",
    "seconds": "train_time_interval",
    "signal": "preemption",
}


class CkptCallback(CheckpointAttributes, ModelCheckpoint):
    """Crash-proof checkpointing for `Trainer.fit`, with Lightning's `ModelCheckpoint` arguments.

    Saves Lightning's full checkpoint dict (model, optimizers, LR schedulers, precision state,
    loop progress, datamodule and other callbacks' states) plus the Python, numpy and torch RNG
    states through a `ckpt_core.CheckpointManager`, so every checkpoint is committed atomically
    and a `SIGKILL` at any moment leaves the previous ones intact. With `resume=True`,
    `trainer.fit(model)` continues from the latest checkpoint by itself: an interrupted and
    resumed run ends with the same weights, bit for bit on CPU, as an uninterrupted one, from epoch
    ends and from mid-epoch steps alike (mid-epoch: see the notes on train dataloaders).

    It takes every `ModelCheckpoint` argument: it honours them as described below, and refuses
    the others with a `ValueError` naming the equivalent. See the module's notes on behaviour.

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
        max_to_keep: int | None = NOT_GIVEN,
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
        arguments = {name: value for name, value in locals().items() if name != "self"}
        given = resolve_arguments(**arguments)  # every argument, by name; raises with the fix
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
        self.save_top_k = given.save_top_k
        self.max_to_keep = given.max_to_keep
        self.keep_period = keep_period
        self.max_bytes = given.max_bytes
        self.every_n_train_steps = given.every_n_train_steps
        self._every_n_epochs = given.every_n_epochs
        self.train_time_interval = given.train_time_interval
        self.save_weights_only = save_weights_only
        self.save_on_exception = save_on_exception
        self.resume = resume
        self.overwrite = overwrite
        self.async_save = async_save
        self.storage_options = storage_options
        self.save_on_signals = given.save_on_signals
        self.resumed_step: int | None = None
        self.preempted = False
        self._manager_options = given.manager_options()  # for the writer and every reader
        self._schedule = given.schedule()  # the same on every rank
        # Run-time state: none of it is checkpoint state, which lives in the manager's manifests.
        self._manager: CheckpointManager | None = None  # the writer(s), during `fit` only
        self._opened_before = False  # a later `fit` of the same callback continues its own run
        self._last_requested = False  # Lightning resolved fit(ckpt_path="last") through us
        self._carried_metrics: dict[str, float] = {}
        self._validation_ran = False
        self._saving_at_epoch_end = False
        self._saving_epoch_trained = False  # every batch of the epoch saved in was trained
        self._resumed_rng = ResumedRng()  # the states of the checkpoint `fit` resumes from
        self._train_loaders = TrainLoaders()  # made resumable mid-epoch during `fit`
        self._unannounced_step: int | None = None  # committed (or being), loggers not yet told
        self._undo_load_check = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor)

    @property
    def every_n_epochs(self) -> int | None:
        return self._every_n_epochs

    def __repr__(self) -> str:
        return f"CkptCallback({self.dirpath!r}, monitor={self.monitor!r}, resume={self.resume})"

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._resumed_rng.clear()
        self._resolve_dirpath(trainer)
        self._check_loads(trainer)
        if stage != "fit":
            self._last_requested = False
            return
        self.resumed_step = None
        self.preempted = False
        self._unannounced_step = None
        self._validation_ran = False
        self._train_loaders.attach(trainer)
        continuing = self._last_requested or self._opened_before
        lightning_restores = self._last_requested
        self._last_requested = False
        # ckpt_path="last", or a second fit with this callback, continues the directory.
        resume = self.resume or continuing
        on_existing = on_existing_from_flags(
            resume, self.overwrite and not resume, caller="CkptCallback"
        )
        assert self.dirpath is not None  # resolved above
        self._manager, resume_step = open_writer(
            trainer,
            self.dirpath,
            self._manager,
            lambda **how: CheckpointManager(
                self.dirpath,
                on_existing=on_existing,
                async_save=self.async_save,
                save_on_signals=self.save_on_signals,  # the writer only: readers don't save
                # `self._schedule` decides when on every rank (under DDP the manager lives on
                # rank 0 only), so every save it asks for is due: `save` needs no `force`.
                save_interval_steps=1,
                # `how`: rank 0 alone (DDP), or every rank in the dcp format (sharded).
                **{**self._manager_options, **how},
            ),
        )
        self._opened_before = True
        self._schedule.restart(last_saved_step=resume_step)  # the step resumed from is saved
        self._carried_metrics = {}
        if resume_step is None or not (self.resume or lightning_restores):
            return
        with self._reading() as manager:  # the writer on rank 0, a read-only view elsewhere
            assert manager is not None  # resume_step was found in it
            # Lightning restores the checkpoint itself for fit(ckpt_path="last").
            self._carried_metrics = resume_from(
                trainer, manager, resume_step, restore=not lightning_restores
            )
        self.resumed_step = resume_step
        rank_zero_info(f"CkptCallback: resuming from step {resume_step} in {self.dirpath}")

    def _close_writer(self) -> None:
        manager, self._manager = self._manager, None
        if manager is not None:
            manager.close()  # finishes a pending async save; raises if it failed

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Called by Lightning's restore, before the loops run.
        self._resumed_rng.load(state_dict)

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": global_rng_state(include_torch=True),  # and CUDA's, once initialised
            "rng_at_epoch_end": self._saving_at_epoch_end,
            "epoch_trained": self._saving_epoch_trained,
        }

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Called with the dict Lightning then restores its loops from (any `ckpt_path` too).
        own = (checkpoint.get("callbacks") or {}).get(self.state_key) or {}
        settle_loop_progress(checkpoint, own.get("epoch_trained"))

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._resumed_rng.at_fit_start()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._resumed_rng.at_train_start()
        self._schedule.restart_clock()

    def _skip(self, trainer: Trainer) -> bool:
        """Not a step of training to checkpoint: a dev run, another stage, a sanity check."""
        return bool(trainer.fast_dev_run) or trainer.state.fn != "fit" or trainer.sanity_checking

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
        pending = self._preemption_due(trainer)
        timed = self._schedule.every_seconds is not None  # rank 0's clock decides for all
        seconds = (
            decided_on_global_zero(trainer, self._schedule.seconds_elapsed()) if timed else None
        )
        # A step or time trigger at the epoch's last batch is put off to the epoch end: the same
        # weights, with the epoch's validation logged and a clean boundary to resume at.
        last = batch_idx + 1 == trainer.num_training_batches
        trigger = self._schedule.at_step(
            trainer.global_step, signal_pending=pending, last_in_epoch=last, seconds_elapsed=seconds
        )
        if trigger == "signal":
            self._save(trainer, trigger="preemption", check_monitor=False)
            self._stop_after_preemption(trainer)
        elif trigger is not None:
            self._save(trainer, trigger=_TRIGGER_NAMES[trigger])

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # `max_steps` can end `fit` mid-epoch, and the epoch-end hooks run then too: that is
        # no epoch end (the final save in `on_train_end` keeps that state).
        trained = epoch_trained(trainer)
        trigger = self._schedule.at_epoch_end(
            trainer.current_epoch,
            trainer.global_step,
            signal_pending=self._preemption_due(trainer),
            epoch_complete=trained,
        )
        if trigger is None or self._skip(trainer):
            return
        if trigger == "signal":
            self._save(trainer, trigger="preemption", at_epoch_end=trained, check_monitor=False)
            self._stop_after_preemption(trainer)
        else:
            self._save(trainer, trigger=_TRIGGER_NAMES[trigger], at_epoch_end=True)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validation_ran = True

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The final state is always the last checkpoint, whatever the trigger; the run is then
        # marked complete (resuming it again restores this state and trains no further).
        if self.preempted:  # stopped early: the run is not complete, a resume continues it
            return
        step = trainer.global_step
        if not self._skip(trainer) and step not in (0, self._schedule.last_saved_step):
            self._save(trainer, trigger="train_end", at_epoch_end=epoch_trained(trainer))
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
                and self._schedule.last_saved_step != trainer.global_step
            ):
                # No barrier: the other ranks may never reach it after this rank failed.
                trigger = "preemption" if preempting else "exception"
                self._save(trainer, trigger=trigger, check_monitor=False, barrier=False)
            self.preempted = self.preempted or preempting
            self._close_writer()
            self._train_loaders.release()  # no `teardown` follows an exception
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
                self._train_loaders.release()
        self._stop_checking_loads()
        self._resumed_rng.clear()

    def _preemption_due(self, trainer: Trainer) -> bool:
        """A signal in `save_on_signals` arrived on global rank 0 (the one that saves)."""
        pending = self._manager is not None and self._manager.preemption_signal is not None
        return bool(self.save_on_signals) and decided_on_global_zero(trainer, pending)

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
        check = check_monitor and self._validation_ran
        metrics = step_metrics(trainer, self._carried_metrics, self.monitor, check=check)
        if not at_epoch_end:
            self._train_loaders.warn_if_inexact(step)
        self._saving_at_epoch_end = at_epoch_end
        self._saving_epoch_trained = epoch_trained(trainer)
        try:
            # Every rank builds the dict: its hooks may talk to the other ranks.
            checkpoint = lightning_checkpoint(trainer, weights_only=self.save_weights_only)
        finally:
            self._saving_at_epoch_end = False
        if self._manager is not None:
            self._announce_committed(trainer)  # the async save before this one
            metadata = {"epoch": trainer.current_epoch, "global_step": step, "trigger": trigger}
            with warnings.catch_warnings():
                if self.monitor is not None and self.monitor not in metrics:
                    # Expected before the first validation (see `step_metrics`); the core
                    # would warn at every such step.
                    warnings.simplefilter("ignore", UnrankedStepWarning)
                self._manager.save(step, checkpoint, metrics=metrics, metadata=metadata)
            self._unannounced_step = step
            if not self.async_save:
                self._announce_committed(trainer)
        if barrier:
            trainer.strategy.barrier("CkptCallback.save")
        self._schedule.saved(step)


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
