"""The retention, best-step and pointer rules the `ckpt` commands apply to a run's steps.

To be replaced by the run model (`ckpt_core/run.py`): these functions rebuild from run.json and
the manifests what a run keeps, ranks best and points at, as `CheckpointManager` does. They are
grouped here so that moving the CLI onto the run model changes this one module.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import layout
from ..inspect import RunListing, human_bytes, scan_run
from ..retention import OVER_BUDGET, RetentionPolicy, committed_bytes
from ..storage import Storage
from ._arguments import OFF
from ._output import EXIT_OK, BadInput, Output, _print_json, _ranges

if TYPE_CHECKING:
    from ..manager import CheckpointManager


# What `CheckpointManager` uses when it is given nothing: the policy `ls` explains by default.
DEFAULT_RETENTION: dict[str, Any] = {
    "max_to_keep": 5,
    "keep_period": None,
    "best_fn": None,
    "best_mode": "min",
    "keep_best": 1,
    "max_bytes": None,
}


@dataclass
class Retention:
    """The retention policy a command applies, and where its options came from."""

    policy: RetentionPolicy
    source: str

    def describe(self, has_best_pointer: bool = True) -> str:
        p = self.policy
        parts = [f"max_to_keep={'all' if p.max_to_keep is None else p.max_to_keep}"]
        if p.keep_period is not None:
            parts.append(f"keep_period={p.keep_period}")
        if p.best_fn is not None:
            parts.append(f"keep_best={p.keep_best} by {p.best_fn!s} ({p.best_mode})")
        elif p.keep_best and has_best_pointer:
            parts.append("the run's best pointer")
        if p.max_bytes is not None:
            parts.append(f"within max_bytes={human_bytes(p.max_bytes)}")
        return " + ".join(parts) + f" ({self.source})"

    def as_json(self) -> dict[str, Any]:
        p = self.policy
        return {
            "max_to_keep": p.max_to_keep,
            "keep_period": p.keep_period,
            "best_fn": p.best_fn if isinstance(p.best_fn, str) else None,
            "best_mode": p.best_mode,
            "keep_best": p.keep_best,
            "max_bytes": p.max_bytes,
            "source": self.source,
        }

    def reasons(self, listing: RunListing) -> dict[int, tuple[str, ...]]:
        """Why each committed step is kept; without a metric, the run's `best` pointer ranks."""
        why = self.policy.reasons(listing.steps)
        pointer = listing.best_pointer
        if self.policy.best_fn is None and self.policy.keep_best != 0 and pointer in why:
            assert pointer is not None
            why[pointer] = (*why[pointer], "best")
        return why

    def over_budget(self, listing: RunListing) -> list[int]:
        """The steps the byte budget deletes (their rules keep them), in deletion order."""
        return self.policy.over_budget(listing.steps, listing.files)

    def best(self, listing: RunListing) -> int | None:
        if self.policy.best_fn is not None:
            return self.policy.best_step(listing.steps)
        committed = {i.step for i in listing.steps}
        return listing.best_pointer if listing.best_pointer in committed else None


def _retention(
    args: argparse.Namespace, run_doc: dict[str, Any], run_doc_error: str | None = None
) -> Retention:
    """Command-line options over the run's recorded retention over the manager's defaults."""
    options = dict(DEFAULT_RETENTION)
    source = "CheckpointManager defaults; pass the run's options to match it"
    if run_doc_error is not None:
        source = "CheckpointManager defaults: run.json is unreadable; pass the run's options"
    recorded = run_doc.get("retention")
    if isinstance(recorded, dict):
        options.update({k: v for k, v in recorded.items() if k in options})
        if not isinstance(options["best_fn"], str):
            options["best_fn"] = None
        source = "recorded in run.json"
    given = {
        "max_to_keep": getattr(args, "max_to_keep", None),
        "keep_period": getattr(args, "keep_period", None),
        "best_fn": getattr(args, "metric", None),
        "best_mode": getattr(args, "mode", None),
        "keep_best": getattr(args, "keep_best", None),
        "max_bytes": getattr(args, "max_bytes", None),
    }
    given = {k: v for k, v in given.items() if v is not None}
    if given:
        options.update(given)
        options["max_to_keep"] = None if options["max_to_keep"] == "all" else options["max_to_keep"]
        for off in ("keep_period", "best_fn", "max_bytes"):
            options[off] = None if options[off] == OFF else options[off]
        recorded_too = isinstance(recorded, dict)
        source = f"command line + {source}" if recorded_too else "from the command line"
    try:
        return Retention(RetentionPolicy(**options), source)
    except (TypeError, ValueError) as e:  # e.g. a hand-edited run.json
        raise BadInput(str(e)) from None


def _run_doc_warning(error: str) -> str:
    return (
        f"{error}; its recorded retention and completion are not used. HINT: restore run.json, "
        "or give `ckpt prune` every rule: --max-to-keep, --keep-period and --metric"
    )


def _policy_of(doc: dict[str, Any]) -> RetentionPolicy:
    return RetentionPolicy(
        doc["max_to_keep"],
        doc["keep_period"],
        doc["best_fn"],
        doc["best_mode"],
        doc["keep_best"],
        doc.get("max_bytes"),
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


def _refuse_without_recorded_rules(args: argparse.Namespace, listing: RunListing) -> None:
    """A damaged run.json hides the rules that protect steps: only explicit ones are applied."""
    if listing.run_doc_error is None:
        return
    missing = [
        flag
        for flag, value in (
            ("--max-to-keep N|all", args.max_to_keep),
            ("--keep-period P|none", args.keep_period),
            ("--metric NAME|none", args.metric),
        )
        if value is None
    ]
    if missing:
        raise BadInput(
            f"{listing.run_doc_error}, so the retention the run recorded is unknown and defaults "
            "could delete steps it protects; nothing was deleted. HINT: pass the rules "
            f"explicitly: {' '.join(missing)}"
        )


def _recorded_options(recorded: Any) -> dict[str, Any]:
    """The CheckpointManager retention options a run recorded in run.json ({} if none/invalid)."""
    if not isinstance(recorded, dict):
        return {}
    options = {k: recorded[k] for k in DEFAULT_RETENTION if k in recorded}
    try:
        RetentionPolicy(**options)
    except (TypeError, ValueError):
        return {}
    return options


def _prune(
    args: argparse.Namespace,
    out: Output,
    storage: Storage,
    mgr: CheckpointManager | None,
    before: RunListing,
) -> int:
    listing = before if mgr is None else scan_run(storage)  # the manager may have swept
    retention = _retention(args, before.run_doc, before.run_doc_error)
    why = retention.reasons(listing)
    over_budget = retention.over_budget(listing)
    doomed = sorted([s for s, r in why.items() if not r] + over_budget)
    kept_steps = set(why) - set(doomed)
    freed = committed_bytes(listing.files.values()) - committed_bytes(
        f for s, f in listing.files.items() if s in kept_steps
    )
    # Temporaries of killed writers: the manager swept them when it opened (a dry run: would).
    remaining = set(storage.list_names())
    temporaries = [
        o
        for o in before.others
        if o.kind == "temporary" and (mgr is None or o.name not in remaining)
    ]
    freed += sum(o.bytes or 0 for o in temporaries)
    if mgr is not None:
        for step in doomed:
            storage.delete_step(layout.step_dirname(step))
        _repair_best_pointer(storage, listing, retention, set(doomed))
        mgr.reload()
    kept = [(s, r) for s, r in why.items() if s in kept_steps]
    if args.json:
        _print_json(
            {
                "directory": storage.root,
                "dry_run": bool(args.dry_run),
                "retention": retention.as_json(),
                "deleted": doomed,
                "over_budget": sorted(over_budget),
                "deleted_temporaries": [{"name": o.name, "bytes": o.bytes} for o in temporaries],
                "bytes_freed": freed,
                "kept": [{"step": s, "kept_because": list(r)} for s, r in kept],
            }
        )
        return EXIT_OK
    verb = "would delete" if args.dry_run else "deleted"
    n_temporaries = len(temporaries)
    extra = f" and {n_temporaries} temporar{'y' if n_temporaries == 1 else 'ies'}"
    extra = extra if temporaries else ""
    out.line(
        f"{args.directory}: {verb} {len(doomed)} of {len(why)} steps{extra} ({human_bytes(freed)})"
        f" under {retention.describe()}",
        style="bold",
    )
    colour = "red" if not args.dry_run else "yellow"
    if doomed:
        out.line(f"  {verb}: {_ranges(doomed)}", style=colour)
    if over_budget:
        out.line(f"  {OVER_BUDGET}: {_ranges(sorted(over_budget))}", style=colour)
    for o in temporaries:
        size = "size unknown" if o.bytes is None else human_bytes(o.bytes)
        out.line(f"  {verb}: {o.name} ({size}, left by a killed writer)", style=colour)
    out.table(
        [("kept", "right"), ("because", "left")],
        [[str(s), ", ".join(r)] for s, r in kept],
        wrap=("because",),
    )
    return EXIT_OK


def _repair_best_pointer(
    storage: Storage, listing: RunListing, retention: Retention, doomed: set[int]
) -> None:
    """Keep the `best` pointer naming a committed step after steps were deleted by hand."""
    if listing.best_pointer is None or listing.best_pointer not in doomed:
        return
    remaining = [i for i in listing.steps if i.step not in doomed]
    best = retention.policy.best_step(remaining) if retention.policy.best_fn is not None else None
    if best is None:
        storage.remove(layout.BEST_POINTER)
    else:
        storage.write_small(layout.BEST_POINTER, f"{layout.step_dirname(best)}\n".encode())


def _best_candidates(
    listing: RunListing, metric: str | None, mode: str | None
) -> tuple[list[int], str]:
    """The committed steps, best first, by the rules the run's own best tracking uses.

    `--metric` ranks by that metric; else by the metric the run recorded (its `best_fn`), with
    the run's `best` pointer first; a run with neither has its pointer only.
    """
    if metric is not None:
        policy = RetentionPolicy(best_fn=metric, best_mode=mode or "min")  # type: ignore[arg-type]
        return policy.ranked(listing.steps), f"metric {metric!r}"
    committed = {i.step for i in listing.steps}
    pointer = [listing.best_pointer] if listing.best_pointer in committed else []
    recorded = listing.run_doc.get("retention")
    options = _recorded_options(recorded)
    if isinstance(options.get("best_fn"), str):
        ranked = RetentionPolicy(**options).ranked(listing.steps)
        return [*pointer, *(s for s in ranked if s not in pointer)], "best pointer"
    return pointer, "best pointer"
