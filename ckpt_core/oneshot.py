"""One-shot functions for code without a manager: save and load one checkpoint.

`path` is one checkpoint's directory (payload + manifest, committed atomically, the shape of
a manager's step, so `load_checkpoint(mgr.path(step))` reads a managed step too) or a run
directory, whose steps `step=` picks; `run/best` and `run/latest` name its pointers.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from typing import Any, Literal

from . import layout
from .commit import write_step
from .errors import (
    CheckpointExistsError,
    CheckpointLockedError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
)
from .formats import Format, StepReader, get_format, resolve_format
from .listing import find_runs_and_checkpoints
from .manager import CheckpointManager
from .manifest import Manifest, check_metadata, to_float_metrics
from .options import check_bool, describe
from .replication import replicate, strip_device_axis
from .retention import RetentionPolicy
from .run_doc import read_run_doc, recorded_policy
from .storage import Storage, open_storage

StepSpec = int | Literal["latest", "best"] | None


def _parent_and_name(path: str | os.PathLike[str]) -> tuple[str, str]:
    """`path`'s parent directory (or URL) and its last name; no I/O."""
    text = os.fspath(path).rstrip("/")
    if "://" in text:
        protocol, rest = text.split("://", 1)
        inside, name = posixpath.split(rest)
        parent = f"{protocol}://{inside}" if inside or protocol == "memory" else ""
    else:
        parent, name = os.path.split(text)
        parent = parent or "."
    if not name or not parent:
        raise ValueError(
            f"{path!r} does not name a checkpoint directory inside a directory or bucket; "
            "HINT: e.g. 'runs/model' or 's3://bucket/model'."
        )
    return parent, name


def _split(path: str | os.PathLike[str]) -> tuple[Storage, str]:
    """The storage of `path`'s parent and `path`'s name; interrupted replacements repaired."""
    parent, name = _parent_and_name(path)
    storage = open_storage(parent, None)
    for entry in storage.list_names():
        if layout.replaced_entry_of(entry) == name:  # a save killed between its two renames
            storage.repair_replacement(entry)
    return storage, name


Kind = Literal["checkpoint", "run", "empty", "other"]


def _kind(path: str | os.PathLike[str]) -> Kind:
    """What `path` holds: one checkpoint (a manifest), a run (steps, `run.json` or the library's
    pointers), nothing (missing or empty: `step=` decides), or only other files."""
    storage = open_storage(path, None)
    names = set(storage.list_names())
    if layout.MANIFEST in names:
        return "checkpoint"
    if names & {layout.RUN_FILE, layout.LATEST_POINTER, layout.BEST_POINTER} or any(
        layout.parse_step(n) is not None for n in names
    ):
        return "run"
    return "other" if names else "empty"


def _pointer(path: str | os.PathLike[str]) -> tuple[str, Literal["latest", "best"]] | None:
    """For `run/best` or `run/latest` naming a run's pointer (not a directory): the run and it."""
    parent, name = _parent_and_name(path)
    if name not in (layout.BEST_POINTER, layout.LATEST_POINTER):
        return None
    storage = open_storage(parent, None)
    if storage.exists(f"{name}/{layout.MANIFEST}") or _kind(parent) != "run":
        return None
    return parent, "best" if name == layout.BEST_POINTER else "latest"


def _target(
    path: str | os.PathLike[str], step: Any, who: str
) -> tuple[str | os.PathLike[str], StepSpec, bool]:
    """`(directory, step, is_run)` for a one-shot call; `run/best` becomes `(run, "best")`."""
    try:
        pointer = _pointer(path)
    except ValueError:  # a bucket root: a run with step=, never one checkpoint
        if step is None:
            raise
        pointer = None
    if pointer is not None:
        if step is not None:
            raise ValueError(
                f"{who} got {os.fspath(path)!r}, the run's {pointer[1]!r} pointer, and step="
                f"{describe(step)}; they both pick the step. HINT: pass the run directory "
                f"{pointer[0]!r} with step=, or the pointer alone."
            )
        return pointer[0], pointer[1], True
    text = os.fspath(path)
    if who != "save_checkpoint" and "://" not in text and os.path.isfile(text):
        raise NotADirectoryError(
            f"{who} got {text!r}, a file, not a checkpoint directory (nothing is created on "
            "a read). HINT: pass the directory save_checkpoint or a manager wrote, a run "
            "directory, or its latest/best pointer."
        )
    kind = _kind(path)
    if kind == "checkpoint" and step is not None:
        raise ValueError(
            f"{who} got step={describe(step)} but {os.fspath(path)!r} is one checkpoint's "
            f"directory (it holds {layout.MANIFEST}), not a run directory of steps. HINT: drop "
            "step=, or pass the run directory that holds step_* directories."
        )
    if kind == "other" and step is not None and who == "save_checkpoint":
        raise CheckpointExistsError(
            f"{os.fspath(path)!r} holds files but no checkpoints; save_checkpoint(step=...) "
            "writes into a new or empty directory or an existing run. HINT: choose another "
            "directory, or open CheckpointManager(path, on_existing='resume') to start a run "
            "beside your files."
        )
    return path, step, kind == "run" or (kind != "checkpoint" and step is not None)


def _open_run(run: str | os.PathLike[str], allow_pickle: bool = False) -> CheckpointManager:
    """A read-only manager of `run`: ranks "best" by the run's recorded retention."""
    try:
        return CheckpointManager(run, read_only=True, allow_pickle=allow_pickle)
    except CheckpointNotFoundError:
        raise CheckpointNotFoundError(
            f"no checkpoint at {os.fspath(run)!r}: the directory does not exist. HINT: check "
            "the path, e.g. the run directory that holds step_* directories."
        ) from None


def save_checkpoint(
    path: str | os.PathLike[str],
    state: Any,
    *,
    step: int | None = None,
    metadata: Any = None,
    metrics: Mapping[str, Any] | None = None,
    format: str | Format = "auto",
    unreplicate: bool = False,
) -> None:
    """Save `state` atomically as one checkpoint directory, or as a step of a run directory.

    Example:
        >>> save_checkpoint("runs/dqn", state, step=1000, metadata={"env": "CartPole-v1"})
        >>> state = load_checkpoint("runs/dqn", like=state, step=1000)

    Args:
        path: the checkpoint directory to create (replacing an earlier checkpoint there), or
            with `step=` a run directory (local path or fsspec URL).
        state: the tree to save.
        step: write `path/step_<step>` as a manager would: its retention (recorded in
            run.json) applies and `CheckpointManager(path, on_existing="resume")`, `ckpt` and
            `load_checkpoint(path, step=...)` read it.
        metadata: JSON-serialisable metadata, read back by `load_metadata`.
        metrics: numbers stored with the step (ranked by the run's best_fn, if any).
        format: "auto", "tree", "torch", "orbax", "pickle" or a `Format`.
        unreplicate: drop the leading device axis of every array leaf (save the first
            replica), so the checkpoint loads on any device count.

    Raises:
        CheckpointLockedError: a manager is writing to the run directory.
        CheckpointExistsError: `path` exists and is neither a checkpoint nor a run.
        ValueError: `step=` with one checkpoint's directory, or a run directory without it.
    """
    check_bool("unreplicate", unreplicate)
    check_metadata(metadata)
    floats = to_float_metrics(metrics)
    directory, where, is_run = _target(path, step, "save_checkpoint")
    if is_run and not isinstance(where, int):
        raise ValueError(
            f"save_checkpoint got the run directory {os.fspath(directory)!r} and step="
            f"{describe(where)}; saving into a run needs the step number. HINT: e.g. "
            "save_checkpoint(run, state, step=1000)."
        )
    if unreplicate:
        state = strip_device_axis(state)
    if is_run:
        assert isinstance(where, int)
        _save_step(directory, where, state, metadata, floats, format)
        return
    storage, name = _split(directory)
    if storage.exists(name) and not storage.exists(f"{name}/{layout.MANIFEST}"):
        raise CheckpointExistsError(
            f"{storage.join(name)} exists and is not a checkpoint; save_checkpoint replaces "
            "only an earlier checkpoint. HINT: choose another path, or remove it yourself."
        )
    fmt = resolve_format(format, state)
    try:
        write_step(storage, name, fmt, state, step=0, metrics=floats, metadata=metadata)
    finally:
        storage.drain()  # a replaced checkpoint's files are gone when this returns


def _save_step(
    run: str | os.PathLike[str],
    step: int,
    state: Any,
    metadata: Any,
    metrics: dict[str, float],
    format: str | Format,
) -> None:
    """Save one step into `run` through a manager holding its lock, with its recorded retention
    (none recorded: keep every step)."""
    recorded = (
        recorded_policy(read_run_doc(open_storage(run, None))) if _kind(run) == "run" else None
    )
    recorded = recorded or RetentionPolicy(max_to_keep=None)
    try:
        mgr = CheckpointManager(
            run,
            on_existing="resume",
            format=format,
            max_to_keep=recorded.max_to_keep,
            keep_period=recorded.keep_period,
            best_fn=recorded.best_fn,
            best_mode=recorded.best_mode,
            keep_best=recorded.keep_best,
            max_bytes=recorded.max_bytes,
        )
    except CheckpointLockedError as e:
        raise CheckpointLockedError(f"save_checkpoint cannot add step {step}: {e}") from None
    with mgr:
        mgr.save(step, state, metrics=metrics, metadata=metadata, force=True)


def _manifest(storage: Storage, name: str) -> Manifest:
    where = storage.join(name, layout.MANIFEST)
    try:
        raw = storage.read_bytes(f"{name}/{layout.MANIFEST}")
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointNotFoundError(_no_checkpoint_message(storage, name)) from None
    return Manifest.from_json(raw, where)


def _no_checkpoint_message(storage: Storage, name: str) -> str:
    """Why the directory `name` is no checkpoint: missing, a parent of runs, or no manifest."""
    directory = storage.join(name)
    if not storage.exists(name):
        return (
            f"no checkpoint at {directory}: the directory does not exist. HINT: check the path "
            "for a typo (load_checkpoint reads what save_checkpoint or a manager wrote)."
        )
    local = storage.local_path(name)
    runs, checkpoints = find_runs_and_checkpoints(local) if local is not None else ([], [])
    below = [os.path.relpath(p, local) for p in runs + checkpoints]
    if local is not None and below:
        listed = ", ".join(below[:5]) + (f" and {len(below) - 5} more" if len(below) > 5 else "")
        return (
            f"no checkpoint at {directory}: it holds no steps itself, but these runs or "
            f"checkpoints below it: {listed}. HINT: pass one of them, e.g. "
            f"load_checkpoint({os.path.join(os.fspath(local), below[0])!r})."
        )
    return (
        f"no checkpoint at {directory}: {layout.MANIFEST} is missing (a save that never "
        "committed leaves none). HINT: pass the directory save_checkpoint wrote, a run "
        "directory or run/best."
    )


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    like: Any = None,
    step: StepSpec = None,
    allow_pickle: bool = False,
    replicate_to: int | None = None,
) -> Any:
    """Load one checkpoint directory, or a step of a run directory, verifying every file.

    Args:
        path: a directory written by `save_checkpoint`, a manager's step directory, a run
            directory, or `run/best` / `run/latest`.
        like: a tree whose structure and leaf types the result takes.
        step: with a run directory: an int, "latest" (also None) or "best" (ranked by the
            run's recorded best_fn, else its `best` pointer).
        allow_pickle: allow loading a `pickle` checkpoint (unpickling can run code).
        replicate_to: broadcast every array leaf to `(replicate_to, *shape)` (jax arrays one
            copy per local device), for a state trained with a leading device axis.

    Raises:
        CheckpointNotFoundError: no checkpoint there, or no such step.
        StructureMismatchError: `like` differs; the message names every differing path.
        CorruptCheckpointError: a file is missing or damaged; the message names it.
    """
    directory, where, is_run = _target(path, step, "load_checkpoint")
    if is_run:
        with _open_run(directory, allow_pickle) as mgr:
            state = mgr.restore(where, like)
    else:
        storage, name = _split(directory)
        manifest = _manifest(storage, name)
        reader = StepReader(storage, name, manifest, allow_pickle=allow_pickle)
        state = get_format(manifest.format).read(reader, like)
    return (
        state if replicate_to is None else replicate(state, replicate_to, caller="load_checkpoint")
    )


def load_metadata(path: str | os.PathLike[str], *, step: StepSpec = None) -> Any:
    """The metadata saved with a checkpoint (None if none), read from its manifest only.

    Args:
        path: as for `load_checkpoint`.
        step: with a run directory: an int, "latest" (also None) or "best".
    """
    directory, where, is_run = _target(path, step, "load_metadata")
    if is_run:
        with _open_run(directory) as mgr:
            return mgr.metadata(where)
    storage, name = _split(directory)
    return _manifest(storage, name).metadata


def checkpoint_exists(path: str | os.PathLike[str], *, step: StepSpec = None) -> bool:
    """Whether `path` holds a committed checkpoint (with a run directory: `step` of it)."""
    try:
        directory, where, is_run = _target(path, step, "checkpoint_exists")
        if is_run:
            with _open_run(directory) as mgr:
                mgr.info(where)
            return True
        storage, name = _split(directory)
        _manifest(storage, name)
    except (CheckpointNotFoundError, CorruptCheckpointError, NotADirectoryError):
        return False
    return True
