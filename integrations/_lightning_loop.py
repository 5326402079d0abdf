"""Where `CkptCallback` meets Lightning's loop: its checkpoint dict, loop progress, train loaders.

Lightning has no public API for some of what an exact, crash-safe resume needs: building the
checkpoint dict without writing it, handing one to `fit`'s own restore, a hook where the train
loaders exist but have no iterator yet, and loop counters that say where an epoch ended. This
module holds every such contact with Lightning's internals, each checked against the versions in
`LIGHTNING_VERSIONS_CHECKED`, and the per-`fit` pieces `CkptCallback` composes around them:
`TrainLoaders` (plain train dataloaders made resumable mid-epoch through `EpochReplay`),
`ResumedRng` (the RNG states put back at the loop point where they were taken), `step_metrics`,
the writer's opening (`open_writer`: on global rank 0, or on every rank under a sharded strategy,
see `_lightning_sharded`) and the decisions global rank 0 makes for every rank
(`decided_on_global_zero`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from ckpt_core import CheckpointError, CheckpointManager
from ckpt_core.manifest import to_float_metrics
from ckpt_core.rng import set_global_rng_state
from integrations._lightning_sharded import DCP_FORMAT, is_sharded, load_sharded, sharded_state
from integrations._torch_data import EpochReplay, describe_loader, unreplayable_reason

__all__ = [
    "LIGHTNING_VERSIONS_CHECKED",
    "ResumedRng",
    "TrainLoaders",
    "before_checkpoint_loads",
    "decided_on_global_zero",
    "epoch_trained",
    "lightning_checkpoint",
    "load_if_sharded",
    "open_writer",
    "resume_from",
    "settle_loop_progress",
    "step_metrics",
]

# Lightning versions whose internals `lightning_checkpoint`, `CkptCallback._find_last_checkpoints`,
# `_on_train_loaders_ready` and `_restore_after_setup` were checked against
# (trainer/connectors/checkpoint_connector.py, loops/fit_loop.py, trainer/trainer.py `_run`, and
# strategies/model_parallel.py and fsdp.py: `restore_checkpoint_after_setup`, and their
# `load_model_state_dict`/`load_optimizer_state_dict` that leave loading to `load_checkpoint`).
LIGHTNING_VERSIONS_CHECKED = ("2.6.6",)


def lightning_checkpoint(
    trainer: Trainer, restore: dict[str, Any] | None = None, *, weights_only: bool = False
) -> dict[str, Any]:
    """Build the trainer's checkpoint dict, or hand `restore` to Lightning's own restore path.

    The one place that calls into Lightning's checkpoint connector (checked against the versions
    in `LIGHTNING_VERSIONS_CHECKED`), because Lightning has no public API for either job:

    * Building: `trainer.save_checkpoint(path)` both builds the dict and writes it to a file, but
      the core must do the writing (atomic commit, retention, async). The private
      `_CheckpointConnector.dump_checkpoint` is the builder it uses, hooks included.
    * Restoring: a callback cannot pass `ckpt_path` to `fit`; its `setup` hook runs after the
      path was chosen. `_CheckpointConnector.resume_start(None)` leaves a dict already in
      `_loaded_checkpoint` in place, so Lightning's own code then restores the model, datamodule,
      callbacks, precision plugin, loops, optimizers and LR schedulers from it, exactly as for
      `fit(ckpt_path=...)`. The dict goes through Lightning's checkpoint migration first, as
      `resume_start` does, so a checkpoint written by an older Lightning loads too.

    Under a sharded strategy the dict built is `_lightning_sharded.sharded_state`'s, on every rank.

    Args:
        trainer: the trainer.
        restore: a checkpoint dict to restore at the next `fit` restore point; None to build one.
        weights_only: when building, leave out optimizer, scheduler, callback and precision states.

    Returns:
        The checkpoint dict built, or `restore` as Lightning will see it.
    """
    connector = trainer._checkpoint_connector
    if restore is None:
        checkpoint = connector.dump_checkpoint(weights_only)
        return sharded_state(trainer, checkpoint) if is_sharded(trainer.strategy) else checkpoint
    from lightning.pytorch.utilities.migration.utils import _pl_migrate_checkpoint

    connector._loaded_checkpoint = _pl_migrate_checkpoint(restore)
    return connector._loaded_checkpoint


def resume_from(
    trainer: Trainer, manager: CheckpointManager, step: int, *, restore: bool
) -> dict[str, float]:
    """Resume `fit` from `step` of `manager`'s run: hand its checkpoint to Lightning's restore
    (when `restore`), and return the metrics to carry over.

    Lightning forgets logged metrics on restart, while an uninterrupted run would still hold the
    last values logged; so later checkpoints start from those of the step resumed.

    Raises:
        CheckpointError: the step is not a Lightning checkpoint (another program saved it).
    """
    carried = {k: v for k, v in manager.metrics(step).items() if k not in ("epoch", "step")}
    if restore and is_sharded(trainer.strategy):
        # The sharded model and optimizers do not exist yet: they are loaded after setup.
        _restore_after_setup(trainer, lambda: load_sharded(trainer, manager, step))
    elif restore:
        load_if_sharded(trainer, manager, step)  # a dcp step raises: it needs a sharded strategy
        checkpoint = manager.restore(step)
        if not isinstance(checkpoint, Mapping) or "pytorch-lightning_version" not in checkpoint:
            found = sorted(map(str, checkpoint))[:5] if isinstance(checkpoint, Mapping) else None
            raise CheckpointError(
                f"CkptCallback cannot resume from {manager.path(step)}: it is not a Lightning "
                f"checkpoint (found "
                f"{'the keys ' + str(found) if found is not None else type(checkpoint).__name__}"
                ", no 'pytorch-lightning_version'). HINT: give CkptCallback a dirpath of its "
                "own, or pass overwrite=True to delete these checkpoints and start over."
            )
        lightning_checkpoint(trainer, restore=checkpoint)
    return carried


def _restore_after_setup(trainer: Trainer, load: Callable[[], dict[str, Any]]) -> None:
    """Have this `fit` restore the checkpoint dict `load()` returns once its strategy set the
    model and optimizers up, where Lightning restores a `ckpt_path` for strategies with
    `restore_checkpoint_after_setup` (see LIGHTNING_VERSIONS_CHECKED): `_run` calls
    `_CheckpointConnector.resume_start` there, with no path (the callback resumes by itself).
    The connector's method is wrapped on this trainer for that one call; `before_checkpoint_loads`'
    undo removes it if `fit` never got there."""
    connector = trainer._checkpoint_connector
    resume_start = connector.resume_start

    def load_then_resume(checkpoint_path: Any = None, weights_only: Any = None) -> None:
        connector.__dict__.pop("resume_start", None)
        resume_start(checkpoint_path, weights_only)
        if not checkpoint_path:
            lightning_checkpoint(trainer, restore=load())

    connector.resume_start = load_then_resume  # type: ignore[method-assign]


def decided_on_global_zero(trainer: Trainer, value: Any) -> Any:
    """`value` as global rank 0 has it, on every rank (with one process: `value`)."""
    return value if trainer.world_size == 1 else trainer.strategy.broadcast(value, src=0)


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


def before_checkpoint_loads(
    trainer: Trainer, check: Callable[[Any], dict[str, Any] | None]
) -> Callable[[], None]:
    """Call `check(path)` each time the trainer's strategy is about to load a checkpoint file
    (`fit/validate/test/predict(ckpt_path=...)`, "last" and "best" included): when it returns a
    checkpoint dict (a `dcp` step it loaded itself), the strategy's own loading is skipped.
    Returns the function that undoes it (and a pending `_restore_after_setup`).
    `Strategy.load_checkpoint` is public; it is wrapped on this trainer's strategy only."""
    strategy = trainer.strategy
    load = strategy.load_checkpoint

    def check_then_load(checkpoint_path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        loaded = check(checkpoint_path)
        return load(checkpoint_path, *args, **kwargs) if loaded is None else loaded

    def undo() -> None:
        strategy.__dict__.pop("load_checkpoint", None)
        trainer._checkpoint_connector.__dict__.pop("resume_start", None)

    strategy.load_checkpoint = check_then_load  # type: ignore[method-assign]
    return undo


def load_if_sharded(trainer: Trainer, manager: CheckpointManager, step: int) -> Any:
    """`step` loaded into `trainer` if it is a `dcp` step (see `_lightning_sharded`), else None
    (a torch step: Lightning's strategy loads the file)."""
    if manager.info(step).format != DCP_FORMAT:
        return None
    if not is_sharded(trainer.strategy):
        raise CheckpointError(
            f"{manager.path(step)} is a sharded (dcp) checkpoint, saved under a sharded "
            f"strategy, but this trainer's strategy is {type(trainer.strategy).__name__}. "
            "HINT: load it with ModelParallelStrategy or FSDPStrategy, or in one process with "
            "ckpt_core.load_checkpoint(<step directory>, like={'state_dict': ...})."
        )
    return load_sharded(trainer, manager, step)


def epoch_trained(trainer: Trainer) -> bool:
    """Every batch of the current epoch was trained (False when `max_steps` or `should_stop`
    ended `fit` mid-epoch, although Lightning then calls the epoch-end hooks all the same)."""
    progress = trainer.fit_loop.epoch_loop.batch_progress
    return bool(progress.is_last_batch) or progress.current.ready >= trainer.num_training_batches


def settle_loop_progress(checkpoint: dict[str, Any], epoch_trained: bool | None) -> None:
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


class TrainLoaders:
    """The train dataloaders of one `fit`: plain `DataLoader`s made resumable mid-epoch.

    A loader with `state_dict`/`load_state_dict` is Lightning's to save and restore. A plain
    `DataLoader` that `unreplayable_reason` accepts gets an `EpochReplay`, which gives it those
    methods; any other restarts at its first batch when a run resumes mid-epoch, and the first
    mid-epoch save of the `fit` warns, naming it.
    """

    def __init__(self) -> None:
        self._replays: list[EpochReplay] = []
        self._unreplayable: list[str] = []  # loaders that restart mid-epoch, and why
        self._undo_hook: Callable[[], None] | None = None
        self._warned = False

    def attach(self, trainer: Trainer) -> None:
        """Prepare `trainer`'s train loaders each time its `fit` sets them up."""
        self.release()
        self._undo_hook = _on_train_loaders_ready(trainer, self._prepare)

    def release(self) -> None:
        """Undo `attach` and every replay (at the end of `fit`, however it ended)."""
        if self._undo_hook is not None:
            self._undo_hook()
            self._undo_hook = None
        for replay in self._replays:
            replay.detach()
        self._replays = []
        self._unreplayable = []
        self._warned = False  # once per `fit`

    def warn_if_inexact(self, step: int) -> None:
        """Before a mid-epoch save: warn, once per `fit`, if a loader will not resume exactly."""
        if not self._unreplayable or self._warned:
            return
        self._warned = True
        rank_zero_warn(
            f"CkptCallback: the checkpoint at step {step} is mid-epoch, but a run resumed"
            f" from it restarts the train dataloader {'; '.join(self._unreplayable)} at its"
            " first batch while the epoch's batch count goes on, so it is not exact. HINT:"
            " give the loader `state_dict()`/`load_state_dict()` (Lightning restores it),"
            " use a map-style dataset with shuffle=True/False or a RandomSampler, or save at"
            " epoch ends (every_n_epochs)."
        )

    def _prepare(self, loaders: Sequence[Any]) -> None:
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


def open_writer(
    trainer: Trainer,
    where: str,
    manager: CheckpointManager | None,
    open_manager: Callable[..., CheckpointManager],
) -> tuple[CheckpointManager | None, int | None]:
    """Open the run's writer (unless `manager` is open already) with `open_manager(**options)`:
    on every rank, in the `dcp` format, under a sharded strategy (each rank saves its shards;
    the manager's multi-process protocol makes one step of them, and an error in opening on rank
    0 reaches every rank); otherwise on global rank 0 only (DDP: it holds the whole state).

    Returns:
        The manager (None on the other ranks under DDP) and, on every rank, the step to resume from
        (None: a fresh start).

    Raises:
        Exception: opening failed on rank 0: its error there, a RuntimeError naming it on the
            other ranks (told first, so that none waits for the others forever).
    """
    if is_sharded(trainer.strategy):
        if manager is None:
            # None: the job's ranks when there are several; one device is a single process.
            manager = open_manager(format=DCP_FORMAT, multiprocess=None)
        return manager, manager.latest_step() if manager.resuming else None
    failure: BaseException | None = None
    if trainer.is_global_zero and manager is None:
        try:
            manager = open_manager(multiprocess=False)  # the other ranks never open it
        except Exception as e:  # raised below, after the other ranks were told
            failure = e
    resume_step = manager.latest_step() if manager is not None and manager.resuming else None
    told = (None if failure is None else f"{type(failure).__name__}: {failure}", resume_step)
    failure_text, resume_step = trainer.strategy.broadcast(told, src=0)
    if failure is not None:
        raise failure
    if failure_text is not None:
        raise RuntimeError(
            f"CkptCallback could not open {where!r} on global rank 0: {failure_text}"
        )
    return manager, resume_step


class ResumedRng:
    """The RNG states of the checkpoint a `fit` resumes from, put back where they were taken.

    Lightning restores callback states before its loops run, earlier than the point where the
    states were captured. Saved at an epoch end, the next thing that draws random numbers in the
    uninterrupted run is the next epoch's dataloader iterator, which a resumed run creates
    before `on_train_start`: the states go back at `on_fit_start`. Saved mid-epoch, the resumed
    run creates a fresh iterator for the restored (stateful) dataloader, which the uninterrupted
    run never did: the states go back after it, at `on_train_start`.
    """

    def __init__(self) -> None:
        self._states: Mapping[str, Any] | None = None
        self._at_epoch_end = False
        self._fit_started = False

    def load(self, callback_state: Mapping[str, Any]) -> None:
        """Keep the states of `CkptCallback.state_dict()` as restored (from `load_state_dict`)."""
        self._states = callback_state.get("rng")
        self._at_epoch_end = bool(callback_state.get("rng_at_epoch_end", False))
        if self._fit_started:  # restored after setup (sharded strategies): nothing drew since
            self.at_fit_start()

    def clear(self) -> None:
        self._states = None
        self._fit_started = False

    def at_fit_start(self) -> None:
        self._fit_started = True
        if self._states is not None and self._at_epoch_end:
            self._apply()

    def at_train_start(self) -> None:
        if self._states is not None:
            self._apply()

    def _apply(self) -> None:
        assert self._states is not None
        set_global_rng_state(self._states)
        self._states = None


def step_metrics(
    trainer: Trainer, carried: Mapping[str, float], monitor: str | None, *, check: bool
) -> dict[str, float]:
    """The metrics of the checkpoint taken now: those Lightning holds, `epoch` and `step`.

    Args:
        trainer: the trainer.
        carried: values of the step resumed from, under those logged since (Lightning forgets
            logged metrics on restart, which an uninterrupted run would still hold).
        monitor: the metric that ranks checkpoints, or None.
        check: raise if `monitor` is missing (once validation ran: before, a validation metric
            cannot be there yet and such steps are saved unranked).

    Raises:
        MisconfigurationException: `check` and `monitor` is not among the metrics.
    """
    # Lightning's logged values are tensors; what is not a number is no metric of the step.
    logged = to_float_metrics(trainer.callback_metrics, drop_non_numbers=True)
    metrics = {**carried, **logged}
    # ModelCheckpoint lets `monitor` name these too.
    metrics.setdefault("epoch", float(trainer.current_epoch))
    metrics.setdefault("step", float(trainer.global_step))
    if check and monitor is not None and monitor not in metrics:
        raise MisconfigurationException(
            f"`CkptCallback(monitor={monitor!r})` could not find the monitored key in"
            f" the logged metrics: {sorted(metrics)}. HINT: Did you call"
            f" `self.log({monitor!r}, value)` in the `LightningModule`?"
        )
    return metrics
