"""Which runs and which step a `ckpt` command acts on, from the DIR and STEP it was given."""

from __future__ import annotations

import argparse
import os

from .. import layout
from ..listing import MAX_RUN_DEPTH, RunListing, find_runs_and_checkpoints
from ..run import open_directory
from ..storage import Storage
from ._arguments import _retention
from ._output import BadInput, _ranges


def _is_url(directory: str) -> bool:
    return "://" in directory and not directory.startswith("file://")


def _runs(directory: str) -> list[str]:
    """Every run at or below `directory` (URLs: the directory itself)."""
    runs, _ = _runs_and_checkpoints(directory, single_checkpoints=False)
    return runs


def _runs_and_checkpoints(
    directory: str, *, single_checkpoints: bool = True
) -> tuple[list[str], list[str]]:
    """`(runs, single checkpoints)` at or below `directory` (URLs: the directory, as a run);
    bad input when there is nothing to act on (with `single_checkpoints`, runs or checkpoints).
    """
    if _is_url(directory):
        return [directory], []
    path = directory.removeprefix("file://")
    try:
        runs, checkpoints = find_runs_and_checkpoints(path)
    except FileNotFoundError:
        raise BadInput(f"{directory} does not exist") from None
    except NotADirectoryError:
        if os.path.basename(path) == layout.MANIFEST:
            raise BadInput(
                f"{directory} is a manifest file; HINT: pass the run directory (or its step "
                "directory to `ckpt show` or `ckpt verify`)"
            ) from None
        raise BadInput(f"{directory} is a file, not a checkpoint directory") from None
    itself = [os.path.normpath(path)] == [os.path.normpath(c) for c in checkpoints]
    if runs or (single_checkpoints and checkpoints and not itself):
        return runs, checkpoints
    if os.path.isfile(os.path.join(path, layout.MANIFEST)):
        raise BadInput(
            f"{directory} is a single checkpoint step, not a run. HINT: `ckpt show "
            f"{directory}` or `ckpt verify {directory}`, or `ckpt ls "
            f"{os.path.dirname(path.rstrip('/')) or '.'}`"
        )
    raise BadInput(
        f"{directory} is not a checkpoint directory: no step_* entries in it or in its "
        f"subdirectories (searched {_depth_note()}). HINT: pass the directory given to "
        "CheckpointManager (or the adapter's dirpath)."
    )


def _no_step_for_a_single_checkpoint(directory: str) -> BadInput:
    return BadInput(
        f"{directory} is a single checkpoint (it holds {layout.MANIFEST}); drop STEP, or pass "
        "the run directory that holds it"
    )


def _single_checkpoint(directory: str) -> tuple[Storage, str] | None:
    """For a local directory holding a manifest itself (a `save_checkpoint` directory or a
    run's step directory): the storage of its parent and its name; else None."""
    local = None if _is_url(directory) else directory.removeprefix("file://")
    if local is None or not os.path.isfile(os.path.join(local, layout.MANIFEST)):
        return None
    parent, name = os.path.split(os.path.abspath(local))
    return open_directory(parent), name


def _depth_note() -> str:
    return f"{MAX_RUN_DEPTH} levels deep"


def _single_run(directory: str, command: str) -> Storage:
    """The storage of `directory`, which must itself be a run (not only hold nested ones)."""
    runs = _runs(directory)
    own = directory if _is_url(directory) else directory.removeprefix("file://")
    if any(os.path.normpath(r) == os.path.normpath(own) for r in runs):
        return open_directory(directory)
    listed = ", ".join(os.path.relpath(r, own) for r in runs[:5])
    more = f" and {len(runs) - 5} more" if len(runs) > 5 else ""
    raise BadInput(
        f"{directory} holds no steps itself but {len(runs)} nested run(s): {listed}{more}. "
        f"HINT: `ckpt {command}` takes one run, e.g. `ckpt {command} {runs[0]}`."
    )


def _parse_step(text: str | None) -> int | str | None:
    if text is None or text in ("latest", "best"):
        return text
    try:
        step = int(text)
    except ValueError:
        raise BadInput(f"STEP must be a step number, 'latest' or 'best', got {text!r}") from None
    if step < 0:
        raise BadInput(f"STEP must be non-negative, got {step}")
    return step


def _resolve_step(listing: RunListing, wanted: int | str | None, args: argparse.Namespace) -> int:
    committed = [i.step for i in listing.steps]
    if wanted is None or wanted == "latest":
        if not committed:
            raise BadInput(f"{listing.directory} has no committed step")
        return committed[-1]
    if wanted == "best":
        step = listing.best_step(_retention(args, listing.run_doc, listing.run_doc_error).policy)
        if step is None:
            raise BadInput(_no_best_message(listing, getattr(args, "metric", None)))
        return step
    assert isinstance(wanted, int)
    if wanted in committed:
        return wanted
    invalid = next((o for o in listing.others if o.step == wanted and o.kind == "invalid"), None)
    if invalid is not None:
        raise BadInput(f"step {wanted} is not a committed step: {invalid.detail}")
    raise BadInput(
        f"no step {wanted} in {listing.directory}; committed steps: {_ranges(committed) or 'none'}"
    )


def _no_best_message(listing: RunListing, metric: str | None) -> str:
    if metric is not None:
        found = sorted({k for i in listing.steps for k in i.metrics})
        return (
            f"no step of {listing.directory} has a number for metric {metric!r}; metrics found: "
            f"{found}"
        )
    return (
        f"{listing.directory} has no best pointer (its run had no best_fn, or no step was "
        "ranked). HINT: rank by a metric: --metric val_loss [--mode max]"
    )


def _refuse_mode_without_metric(args: argparse.Namespace, command: str, step: str = "") -> None:
    """`--mode` orders the `--metric` given beside it; alone it would be silently ignored."""
    if args.mode is not None and args.metric is None:
        raise BadInput(
            f"--mode {args.mode} needs --metric NAME (the run's own best keeps its recorded "
            f"mode). HINT: `ckpt {command} {args.directory}{step} --metric NAME --mode "
            f"{args.mode}`, or drop --mode"
        )
