"""`ckpt prune`: apply a retention policy to a run once, holding the run's lock.

The policy is the run's recorded retention with the command line's options over it; applying
it deletes the steps it does not keep and repairs the pointers, through the run model
(`Run.apply_retention`), exactly as the run's writer does after a commit. Nothing is recorded:
`run.json` is left as it was.
"""

from __future__ import annotations

import argparse

from ..listing import OtherEntry, RunListing, scan_run
from ..options import human_bytes
from ..retention import DEFAULT_POLICY, OVER_BUDGET, committed_bytes
from ..run import Run, acquire_writer_lock
from ..run_doc import ranking_unknown
from ..storage import Storage
from ._arguments import Retention, _retention
from ._output import EXIT_OK, BadInput, Output, _print_json, _ranges
from ._targets import _single_run


def cmd_prune(args: argparse.Namespace, out: Output) -> int:
    rules = ("max_to_keep", "keep_period", "metric", "keep_best", "max_bytes")
    if all(getattr(args, k) is None for k in rules):
        raise BadInput(
            "say which retention to apply: --max-to-keep N|all, --keep-period P|none, "
            "--max-bytes SIZE|none and/or --metric NAME|none [--mode min|max --keep-best K] "
            "(unset options take the run's recorded retention, else the CheckpointManager "
            "defaults)"
        )
    storage = _single_run(args.directory, "prune")
    before = scan_run(storage)
    _refuse_without_recorded_rules(args, before)
    retention = _retention(args, before.run_doc, before.run_doc_error)
    if args.dry_run:
        doomed, over_budget = _plan(before, retention)
        return _report(args, out, storage, before, retention, doomed, over_budget, before.others)
    # The single-writer lock: a live run makes this fail (CheckpointLockedError) instead of
    # deleting steps under it. Temporaries of killed writers are swept first, as a writer does.
    lock = acquire_writer_lock(storage)
    try:
        swept = set(storage.sweep())
        listing = scan_run(storage)
        _, over_budget = _plan(listing, retention)
        run = Run(
            storage,
            listing.recorded_policy or DEFAULT_POLICY,
            pointer_ranks=ranking_unknown(listing.run_doc, listing.run_doc_error),
        )
        doomed = run.apply_retention(retention.policy)
    finally:
        lock.release()
        storage.drain()
    temporaries = [o for o in before.others if o.name in swept]
    return _report(args, out, storage, listing, retention, doomed, over_budget, temporaries)


def _plan(listing: RunListing, retention: Retention) -> tuple[list[int], list[int]]:
    """The steps `retention` deletes, and those of them it deletes for the byte budget."""
    over_budget = retention.policy.over_budget(listing.steps, listing.files)
    why = listing.kept_because(retention.policy)
    return sorted([s for s, r in why.items() if not r] + over_budget), over_budget


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


def _report(
    args: argparse.Namespace,
    out: Output,
    storage: Storage,
    listing: RunListing,
    retention: Retention,
    doomed: list[int],
    over_budget: list[int],
    others: list[OtherEntry],
) -> int:
    """What was (or, a dry run, would be) deleted and what is kept, and why."""
    why = listing.kept_because(retention.policy)
    kept_steps = set(why) - set(doomed)
    freed = committed_bytes(listing.files.values()) - committed_bytes(
        f for s, f in listing.files.items() if s in kept_steps
    )
    temporaries = [o for o in others if o.kind == "temporary"]
    freed += sum(o.bytes or 0 for o in temporaries)
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
