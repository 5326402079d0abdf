"""`RunnerConfig`: what a Gymnasium run trains for and how it is checkpointed, checked once."""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ckpt_core.options import check_bool, check_mapping, describe, parse_size
from ckpt_core.signals import check_save_on_signals


def _check_int(
    name: str, value: Any, minimum: int, example: str, *, optional: bool = False
) -> None:
    if optional and value is None:
        return
    wrong_type = isinstance(value, bool) or not isinstance(value, int | np.integer)
    if wrong_type or value < minimum:
        allowed = f"an int >= {minimum}" + (" or None" if optional else "")
        error = TypeError if wrong_type else ValueError  # as the core's option checks
        raise error(
            f"RunnerConfig({name}={value!r}): expected {allowed}. HINT: e.g. {name}={example}."
        )


@dataclasses.dataclass(frozen=True)
class RunnerConfig:
    """What to train for and how to checkpoint it.

    Args:
        total_timesteps: env steps to train for, counted over the whole run (resumes included).
        checkpoint_dir: local path or fsspec URL of the run's checkpoints; `None` turns
            checkpointing off.
        checkpoint_interval: env timesteps between checkpoints; each is taken at the first
            episode boundary at or after a multiple of this (see the module docstring).
        max_checkpoints: keep this many most recent checkpoints (`None`: keep all).
        keep_period: checkpoints whose step is a multiple of this are never deleted.
        max_bytes: a disk budget for the run's checkpoints (int bytes or e.g. `"20GB"`); see
            `CheckpointManager(max_bytes=...)`.
        incremental: write only the parts of a checkpoint that changed since the previous one
            (a replay buffer's new rows, the weights that moved); see
            `CheckpointManager(incremental=...)`.
        resume: continue from the latest checkpoint in `checkpoint_dir` if there is one.
        overwrite: delete the checkpoints already in `checkpoint_dir` and start over.
            `resume` and `overwrite` together are an error; with neither, an existing run in
            `checkpoint_dir` raises `CheckpointExistsError`.
        best_metric: a metric to keep the best checkpoint by: `"episode_return"` (mean return
            of the last `metric_window` episodes), `"episode_length"`, or a key of the mapping
            the agent's `learn` returns (averaged since the previous checkpoint). A checkpoint
            without it is saved unranked, with a warning; a name that `learn` never returned
            while it returned others raises `ValueError` at that checkpoint.
        seed: seeds, on a fresh start, the runner's generator, the env (`reset(seed=...)`), its
            action space, Python's `random`, numpy's global `np.random` and torch's global
            generator if torch is imported.
        best_mode: `"max"` (default: a higher return is better) or `"min"` (e.g. a loss).
        metric_window: how many of the most recent episodes the episode metrics average.
        storage_options: fsspec options (endpoint, credentials) for a URL `checkpoint_dir`;
            never written to disk.
        save_on_signals: signals (e.g. `(signal.SIGTERM,)`, or one signal) after which the
            run checkpoints at the next episode boundary (a step named by its exact timestep)
            and stops: `run` returns a result with `preempted=True`, `hook.done` turns True.

    Raises:
        ValueError: a count is not a positive int, `resume` and `overwrite` are both set, or
            `best_mode` is not "max"/"min".
    """

    total_timesteps: int
    checkpoint_dir: str | os.PathLike[str] | None = None
    checkpoint_interval: int = 5_000
    max_checkpoints: int | None = 5
    keep_period: int | None = None
    max_bytes: int | str | None = None
    incremental: bool = False
    resume: bool = False
    overwrite: bool = False
    best_metric: str | None = None
    seed: int = 0
    best_mode: str = "max"
    metric_window: int = 100
    storage_options: Mapping[str, Any] | None = dataclasses.field(default=None, repr=False)
    save_on_signals: Iterable[int] | int | None = ()

    def __post_init__(self) -> None:
        signals = check_save_on_signals(self.save_on_signals, caller="RunnerConfig")
        object.__setattr__(self, "save_on_signals", signals)  # frozen: store the checked tuple
        _check_int("total_timesteps", self.total_timesteps, 1, "50_000")
        _check_int("checkpoint_interval", self.checkpoint_interval, 1, "5_000 (timesteps)")
        _check_int("max_checkpoints", self.max_checkpoints, 1, "5 (None keeps all)", optional=True)
        _check_int("keep_period", self.keep_period, 1, "20_000 (None: off)", optional=True)
        object.__setattr__(self, "max_bytes", parse_size("max_bytes", self.max_bytes))
        _check_int("seed", self.seed, 0, "0")
        _check_int("metric_window", self.metric_window, 1, "100 (episodes)")
        check_bool("incremental", self.incremental)
        check_bool("resume", self.resume)
        check_bool("overwrite", self.overwrite)
        check_mapping("storage_options", self.storage_options)
        directory = self.checkpoint_dir
        if directory is not None and (
            not isinstance(directory, str | os.PathLike) or not os.fspath(directory)
        ):
            raise ValueError(
                f"RunnerConfig(checkpoint_dir={describe(directory)}): expected a directory path "
                "or URL, or None for no checkpointing. HINT: e.g. checkpoint_dir='runs/ppo'."
            )
        if self.resume and self.overwrite:
            raise ValueError(
                "RunnerConfig(resume=True, overwrite=True): these contradict each other "
                "(continue the checkpoints in checkpoint_dir vs. delete them). "
                "HINT: pass resume=True to continue a run, or overwrite=True to start it over."
            )
        if self.keep_period is not None and self.keep_period % self.checkpoint_interval:
            # Steps are multiples of checkpoint_interval, so only common multiples are kept.
            every = math.lcm(self.keep_period, self.checkpoint_interval)
            warnings.warn(
                f"RunnerConfig(keep_period={self.keep_period}) is not a multiple of "
                f"checkpoint_interval={self.checkpoint_interval}: checkpoint steps are multiples "
                f"of the interval, so only every {every} timesteps is one kept for good. "
                "HINT: make keep_period a multiple of checkpoint_interval.",
                stacklevel=3,
            )
        if self.best_mode not in ("max", "min"):
            raise ValueError(
                f"RunnerConfig(best_mode={self.best_mode!r}): expected 'max' or 'min'. "
                "HINT: 'max' for returns, 'min' for losses."
            )
        if self.best_metric is not None and not isinstance(self.best_metric, str):
            raise ValueError(
                f"RunnerConfig(best_metric={self.best_metric!r}): expected a metric name (str) or "
                "None. HINT: best_metric='episode_return'."
            )
