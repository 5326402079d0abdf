"""`ckpt best`: what to load for the best intact step, printed for shell scripts."""

from __future__ import annotations

import argparse
import sys

from .. import layout
from ..info import CheckpointInfo
from ..listing import RunListing, scan_run
from ..retention import DEFAULT_POLICY, RetentionPolicy
from ..run_doc import ranking_unknown
from ..storage import Storage
from ._output import (
    EXIT_DAMAGED,
    EXIT_OK,
    BadInput,
    Output,
    _plural,
    _print_json,
    _run_doc_warning,
    _warn,
)
from ._targets import _no_best_message, _refuse_mode_without_metric, _single_run
from .verify import verify_step


def cmd_best(args: argparse.Namespace, out: Output) -> int:
    _refuse_mode_without_metric(args, "best")
    storage = _single_run(args.directory, "best")
    listing = scan_run(storage)
    if listing.run_doc_error:
        _warn(_run_doc_warning(listing.run_doc_error))
    candidates, source = _best_candidates(listing, args.metric, args.mode)
    if not candidates:
        raise BadInput(_no_best_message(listing, args.metric))
    infos = {i.step: i for i in listing.steps}
    skipped = []
    for step in candidates:
        check = verify_step(storage, infos[step])
        if check.status == "ok":
            break
        first = check.damaged[0][1] if check.damaged else check.status
        skipped.append({"step": step, "damaged": [m for _, m in check.damaged]})
        _warn(
            f"step {step} fails its checks ({first}); skipped. HINT: `ckpt verify "
            f"{args.directory}` lists the damage"
        )
    else:
        print(
            f"ckpt best: error: no intact step among the {_plural(len(candidates), 'ranked step')} "
            f"of {args.directory} ({source}). HINT: `ckpt verify {args.directory}`",
            file=sys.stderr,
        )
        return EXIT_DAMAGED
    info = infos[step]
    path = _best_path(storage, info)
    if args.json:
        _print_json(
            {
                "step": step,
                "path": path,
                "step_path": str(info.path),
                "format": info.format,
                "metrics": dict(info.metrics),
                "source": source,
                "skipped": skipped,
            }
        )
    else:
        print(path)
    return EXIT_OK


def _best_candidates(
    listing: RunListing, metric: str | None, mode: str | None
) -> tuple[list[int], str]:
    """The committed steps, best first, and what ranked them: `--metric`, else the run's own
    ranking (the one meaning of best, `ckpt_core.run`: its recorded best_fn, else its pointer)."""
    if metric is not None:
        policy = RetentionPolicy(best_fn=metric, best_mode=mode or "min")  # type: ignore[arg-type]
        return policy.ranked(listing.steps), f"metric {metric!r}"
    policy = listing.recorded_policy or DEFAULT_POLICY
    if policy.best_fn is None or ranking_unknown(listing.run_doc, listing.run_doc_error):
        return listing.ranked_steps(policy), "best pointer"
    return listing.ranked_steps(policy), f"recorded best_fn {policy.best_fn!r}"


def _best_path(storage: Storage, info: CheckpointInfo) -> str:
    """What a user of the step loads: the payload file of a one-file format (torch: the file
    `ckpt_path=` and `torch.load` take), else the step directory."""
    from ..formats.torch import PAYLOAD

    if info.format == "torch":
        return storage.join(layout.step_dirname(info.step), PAYLOAD)
    return str(info.path)
