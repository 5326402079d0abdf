"""`ckpt prune`: delete the steps a retention policy does not keep, holding the run's lock."""

from __future__ import annotations

import argparse

from .. import layout
from ..inspect import scan_run
from ..storage import Storage
from ._output import BadInput, Output
from ._run_rules import _prune, _recorded_options, _refuse_without_recorded_rules
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
    if args.dry_run:
        return _prune(args, out, storage, None, before)
    from ..manager import CheckpointManager

    # A writable manager takes the directory's single-writer lock: a live run makes this fail
    # (CheckpointLockedError) instead of deleting steps under it. Opening it sweeps temporaries
    # and records its retention in run.json, so it is opened with the run's own, and run.json
    # is put back byte for byte afterwards.
    run_json = _read_raw(storage, layout.RUN_FILE)
    with CheckpointManager(
        args.directory,
        on_existing="resume",
        **_recorded_options(before.run_doc.get("retention")),
    ) as mgr:
        try:
            return _prune(args, out, mgr.storage, mgr, before)
        finally:
            if _read_raw(mgr.storage, layout.RUN_FILE) != run_json:
                if run_json is None:
                    mgr.storage.remove(layout.RUN_FILE)
                else:
                    mgr.storage.write_small(layout.RUN_FILE, run_json)


def _read_raw(storage: Storage, name: str) -> bytes | None:
    try:
        return storage.read_bytes(name)
    except (FileNotFoundError, NotADirectoryError):
        return None
