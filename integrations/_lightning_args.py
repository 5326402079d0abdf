"""`CkptCallback`'s arguments: `ModelCheckpoint`'s mapped onto the core's options, or refused.

Every `ModelCheckpoint` argument is either honoured or refused with a `ValueError` naming the
equivalent, so code written for `ModelCheckpoint` runs or says what to change; the callback's own
arguments are checked here too, before any directory is touched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ckpt_core.options import (
    check_bool,
    check_int,
    check_mapping,
    check_seconds,
    describe,
    on_existing_from_flags,
    parse_size,
)
from ckpt_core.schedule import SaveSchedule
from ckpt_core.signals import check_save_on_signals

__all__ = ["NOT_GIVEN", "Resolved", "resolve_arguments"]

# `max_to_keep` when not given: the latest only when checkpoints are ranked (with `save_top_k`
# best ones, what `ModelCheckpoint(save_top_k=k, save_last=True)` keeps), else this many newest.
UNRANKED_MAX_TO_KEEP = 3


class _NotGiven:
    """`max_to_keep`'s default, which depends on `monitor` and `save_top_k`."""

    def __repr__(self) -> str:
        return "<1 with monitor or save_top_k, None with save_top_k=-1, else 3>"


NOT_GIVEN: Any = _NotGiven()


def default_max_to_keep(monitor: str | None, save_top_k: int | None) -> int | None:
    """`max_to_keep` when not given: keep what the equivalent `ModelCheckpoint(save_top_k=k,
    save_last=True)` keeps (the k best and the latest; all with save_top_k=-1)."""
    if save_top_k == -1:
        return None
    if monitor is not None or save_top_k is not None:
        return 1
    return UNRANKED_MAX_TO_KEEP


@dataclass(frozen=True)
class Resolved:
    """The checked arguments that shape the manager and the schedule, defaults resolved."""

    monitor: str | None
    mode: str
    save_top_k: int  # ModelCheckpoint's default, 1, when not given
    max_to_keep: int | None  # the default resolved (`default_max_to_keep`)
    keep_period: int | None
    max_bytes: int | None  # in bytes
    storage_options: dict[str, Any] | None
    save_on_signals: tuple[int, ...]
    every_n_train_steps: int | None
    every_n_epochs: int | None  # 1 when no trigger is given
    train_time_interval: timedelta | None  # seconds given as a number, as a timedelta

    def manager_options(self) -> dict[str, Any]:
        """The `CheckpointManager` options for every manager opened on the callback's directory,
        writer or reader, so that both rank checkpoints the same way. `save_top_k=-1` ("all")
        ranks every step; without `monitor` nothing is ranked."""
        keep_best = self.save_top_k if self.monitor else 0
        return dict(
            max_to_keep=self.max_to_keep,
            keep_period=self.keep_period,
            max_bytes=self.max_bytes,
            best_fn=self.monitor,
            best_mode=self.mode,
            keep_best=None if keep_best == -1 else keep_best,
            format="torch",
            storage_options=self.storage_options,
        )

    def schedule(self) -> SaveSchedule:
        """When to save, by the Lightning triggers (at most one is given)."""
        interval = self.train_time_interval
        return SaveSchedule(
            every_n_steps=self.every_n_train_steps,
            every_n_epochs=self.every_n_epochs,
            every_seconds=None if interval is None else interval.total_seconds(),
        )


def resolve_arguments(
    *,
    dirpath: Any,
    filename: str | None,
    monitor: str | None,
    verbose: bool,
    save_last: bool | str | None,
    save_top_k: int | None,
    save_on_exception: bool,
    save_weights_only: bool,
    mode: str,
    auto_insert_metric_name: bool,
    every_n_train_steps: int | None,
    train_time_interval: timedelta | float | None,
    every_n_epochs: int | None,
    save_on_train_epoch_end: bool | None,
    enable_version_counter: bool,
    max_to_keep: int | None,
    keep_period: int | None,
    max_bytes: int | str | None,
    resume: bool,
    overwrite: bool,
    async_save: bool,
    storage_options: Any,
    save_on_signals: Any,
) -> Resolved:
    """Check `CkptCallback`'s arguments (the same names) and resolve the defaults that depend on
    others; raise, with the fix, for arguments that conflict, are out of range or are refused.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: an argument out of range, conflicting ones, or a `ModelCheckpoint`
            argument that has no meaning here (the message names the equivalent).
    """
    _check_values(
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
    if max_to_keep is NOT_GIVEN:
        max_to_keep = default_max_to_keep(monitor, save_top_k)
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
    signals = check_save_on_signals(save_on_signals, caller="CkptCallback")
    if every_n_train_steps is None and every_n_epochs is None and train_time_interval is None:
        every_n_epochs = 1
    if isinstance(train_time_interval, int | float):
        train_time_interval = timedelta(seconds=train_time_interval)
    return Resolved(
        monitor=monitor,
        mode=mode,
        save_top_k=1 if save_top_k is None else save_top_k,
        max_to_keep=max_to_keep,
        keep_period=keep_period,
        max_bytes=max_bytes,
        storage_options=storage_options,
        save_on_signals=signals,
        every_n_train_steps=every_n_train_steps,
        every_n_epochs=every_n_epochs,
        train_time_interval=train_time_interval,
    )


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


def _check_values(
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
    given_triggers = {
        "every_n_train_steps": every_n_train_steps,
        "every_n_epochs": every_n_epochs,
        "train_time_interval": train_time_interval,
    }
    given = {name: value for name, value in given_triggers.items() if value is not None}
    if len(given) > 1:
        found = ", ".join(f"{name}={value!r}" for name, value in given.items())
        raise ValueError(
            f"CkptCallback got conflicting triggers {found}; expected at most one. HINT: keep"
            f" one of {', '.join(given)} (use max_to_keep/keep_period to keep more checkpoints)."
        )
    for name in ("every_n_train_steps", "every_n_epochs"):
        value = given_triggers[name]
        wrong_type = not isinstance(value, int) or isinstance(value, bool)
        if value is not None and (wrong_type or value < 1):
            raise (TypeError if wrong_type else ValueError)(
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
        wrong_type = not isinstance(save_top_k, int) or isinstance(save_top_k, bool)
        if wrong_type or save_top_k < -1:
            raise (TypeError if wrong_type else ValueError)(
                f"CkptCallback got save_top_k={save_top_k!r}; expected -1 (keep all), 0 or a"
                " positive integer."
            )
        if monitor is None and save_top_k > 1:  # -1, 0 and 1 need no ranking, as in Lightning
            raise ValueError(
                f"CkptCallback got save_top_k={save_top_k!r} without monitor; ranking needs a"
                " metric. HINT: pass monitor='val_loss' (a key you log), or use"
                f" max_to_keep={save_top_k} to keep the {save_top_k} newest checkpoints."
            )
