"""How a Gymnasium run meets the checkpoint manager: its options, its metadata, its restore.

The runner records itself under one metadata key, `gym`, both in the run document (the env's
spaces, the agent's class, the seed: checked when resuming) and in each step's manifest (the
exact timestep, the episode count that sizes the restore template, whether torch's generator
and an open episode are in the step). The manager does everything else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ckpt_core import CheckpointManager, StructureMismatchError
from ckpt_core.optimizer_state import complete_optimizer_state
from ckpt_core.options import on_existing_from_flags

from ._gym_config import RunnerConfig

# Key under which the runner records itself in the run-level and per-step metadata.
META_KEY = "gym"


def open_manager(config: RunnerConfig) -> CheckpointManager:
    """The manager of `config.checkpoint_dir`, with the config's retention and resume flags."""
    c = config
    assert c.checkpoint_dir is not None
    on_existing = on_existing_from_flags(c.resume, c.overwrite, caller="RunnerConfig")
    return CheckpointManager(
        c.checkpoint_dir,
        max_to_keep=c.max_checkpoints,
        keep_period=c.keep_period,
        max_bytes=c.max_bytes,
        incremental=c.incremental,
        best_fn=c.best_metric,
        best_mode=c.best_mode,
        on_existing=on_existing,
        format="tree",
        storage_options=dict(c.storage_options) if c.storage_options else None,
        save_on_signals=c.save_on_signals,
    )


def run_metadata(env: Any, agent: Any, config: RunnerConfig) -> dict[str, Any]:
    """What a resume checks against: the env's spaces, the agent's class, the run's setup."""
    spec = getattr(env, "spec", None)
    return {
        "env_id": getattr(spec, "id", None),
        "observation_space": str(env.observation_space),
        "action_space": str(env.action_space),
        "agent": f"{type(agent).__module__}.{type(agent).__qualname__}",
        "seed": config.seed,
        "total_timesteps": config.total_timesteps,
        "checkpoint_interval": config.checkpoint_interval,
    }


def stored_run(manager: CheckpointManager) -> Mapping[str, Any]:
    """The runner's part of the run document (empty if another writer made the run)."""
    return (manager.run_metadata or {}).get(META_KEY) or {}


def step_metadata(manager: CheckpointManager, step: int, config: RunnerConfig) -> dict[str, Any]:
    """The runner's metadata of `step`; refuses a step the runner did not write."""
    meta = (manager.metadata(step) or {}).get(META_KEY)
    if not meta:
        raise ValueError(
            f"cannot resume from step {step} of {config.checkpoint_dir}: it was not written by "
            "the gym runner (no runner metadata). HINT: point checkpoint_dir at a directory of "
            "`run`/`CkptRunnerHook` checkpoints, or a new directory."
        )
    return dict(meta)


def restore_tree(
    manager: CheckpointManager, step: int, like: Any, *, agent: Any, config: RunnerConfig
) -> Any:
    """Restore `step` into `like`, filling in lazily created torch optimizer state.

    Raises:
        StructureMismatchError: the agent's `state_dict()` differs from the saved one; the
            message names the saving agent and every differing leaf.
    """
    try:
        try:
            return manager.restore(step, like=like)
        except StructureMismatchError as first:
            # A fresh agent's Adam has no moments yet: take that part's structure from the step.
            like, filled = complete_optimizer_state(like, manager.restore(step))
            if not filled:
                raise first from None
            return manager.restore(step, like=like)
    except StructureMismatchError as e:
        raise StructureMismatchError(
            f"cannot resume from step {step} of {config.checkpoint_dir}: the checkpoint was "
            f"written by agent {stored_run(manager).get('agent')}, and this "
            f"{type(agent).__qualname__}'s state_dict() differs from it. Nothing was changed on "
            f"disk.\n{e}\n"
            "HINT: build the agent with the same architecture and buffer sizes as the saving "
            "run (torch optimizer state created lazily is filled in by itself); or use a "
            "new checkpoint_dir."
        ) from e
