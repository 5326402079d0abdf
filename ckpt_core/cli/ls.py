"""`ckpt ls`: the steps of every run at or below each DIR, and why each is kept."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from ..errors import CorruptCheckpointError
from ..listing import RunListing, scan_run
from ..options import human_bytes
from ..retention import OVER_BUDGET, RetentionPolicy, committed_bytes
from ..run import open_directory, read_manifest
from ._arguments import Retention, _retention
from ._output import (
    EXIT_OK,
    BadInput,
    Output,
    _plural,
    _print_json,
    _run_doc_warning,
    _when,
    plain_widths,
)
from ._targets import _is_url, _runs_and_checkpoints


def cmd_ls(args: argparse.Namespace, out: Output) -> int:
    runs: list[str] = []
    checkpoints: list[str] = []
    for directory in args.directories:
        found, found_checkpoints = _runs_and_checkpoints(directory)
        if _is_url(directory) and not _has_entries(found[0]):
            raise BadInput(f"{directory} holds no checkpoint steps")
        # `ckpt ls runs runs/a`: a run named twice is listed once
        seen = {os.path.normpath(r) for r in runs + checkpoints}
        runs += [r for r in found if os.path.normpath(r) not in seen]
        checkpoints += [c for c in found_checkpoints if os.path.normpath(c) not in seen]
    listings = [scan_run(open_directory(run)) for run in runs]
    now = time.time()
    docs = []
    for listing in listings:
        retention = _retention(args, listing.run_doc, listing.run_doc_error)
        docs.append(_ls_doc(listing, retention))
    if args.json:
        head: dict[str, Any] = {"directories": list(args.directories)}
        if len(args.directories) == 1:
            head["directory"] = args.directories[0]
        singles = [_checkpoint_doc(c) for c in checkpoints]
        _print_json({**head, "runs": docs, "checkpoints": singles})
        return EXIT_OK
    for i, (run, listing, doc) in enumerate(zip(runs, listings, docs)):
        if i:
            out.line()
        _render_run(out, run, listing, doc, now)
    if checkpoints and runs:
        out.line()
    for checkpoint in checkpoints:
        _render_checkpoint(out, checkpoint, _checkpoint_doc(checkpoint), now)
    return EXIT_OK


def _checkpoint_doc(checkpoint: str) -> dict[str, Any]:
    """A single checkpoint (`save_checkpoint` without `step=`), read from its manifest only."""
    parent, name = os.path.split(os.path.abspath(checkpoint.removeprefix("file://")))
    storage = open_directory(parent)
    doc: dict[str, Any] = {"path": storage.join(name), "error": None}
    try:
        manifest = read_manifest(storage, name)
    except CorruptCheckpointError as e:
        return {**doc, "error": str(e).split(" HINT")[0]}
    return {
        **doc,
        "step": manifest.step,
        "time": manifest.time,
        "bytes": manifest.nbytes,
        "format": manifest.format,
        "metrics": dict(manifest.metrics),
    }


def _render_checkpoint(out: Output, checkpoint: str, doc: dict[str, Any], now: float) -> None:
    """One line of `ckpt ls` for a single checkpoint: what it is and how to look inside."""
    if doc["error"] is not None:
        out.line(f"{checkpoint}  ·  INVALID single checkpoint: {doc['error']}", style="red")
        return
    saved, ago = _when(doc["time"], now)
    metrics = ", ".join(_metric_items(doc["metrics"], None)) if doc["metrics"] else ""
    out.line(
        f"{checkpoint}  ·  a single checkpoint (save_checkpoint), not a run  ·  "
        f"{human_bytes(doc['bytes'])}, {doc['format']}, saved {saved} ({ago} ago)"
        + (f"  ·  {metrics}" if metrics else ""),
        style="bold",
    )


def _has_entries(url: str) -> bool:
    listing = scan_run(open_directory(url))
    return bool(listing.steps or listing.others)


def _ls_doc(listing: RunListing, retention: Retention) -> dict[str, Any]:
    why = listing.kept_because(retention.policy)
    over_budget = set(retention.policy.over_budget(listing.steps, listing.files))
    latest = listing.steps[-1].step if listing.steps else None
    best = listing.best_step(retention.policy)
    steps = [
        {
            "step": i.step,
            "time": i.time,
            "bytes": i.bytes,
            "format": i.format,
            "metrics": dict(i.metrics),
            "path": str(i.path),
            "latest": i.step == latest,
            "best": i.step == best,
            "kept_because": list(why.get(i.step, ())),
            "over_budget": i.step in over_budget,
        }
        for i in listing.steps
    ]
    doc = listing.run_doc
    return {
        "directory": listing.directory,
        "run_json_error": listing.run_doc_error,
        "complete": listing.complete,
        "completed_at": doc.get("completed_at"),
        "final_step": doc.get("final_step"),
        "latest": latest,
        "best": best,
        "retention": retention.as_json(),
        "total_bytes": committed_bytes(listing.files.values()),
        "steps": steps,
        "other": [
            {
                "name": o.name,
                "kind": o.kind,
                "step": o.step,
                "detail": o.detail,
                "mtime": o.mtime,
                "bytes": o.bytes,
            }
            for o in listing.others
        ],
    }


def _render_run(
    out: Output, run: str, listing: RunListing, doc: dict[str, Any], now: float
) -> None:
    """One section of `ckpt ls`: a heading line for the run (as the user named it), a table."""
    steps = doc["steps"]
    if listing.complete:
        state = "complete" + (f" (final step {doc['final_step']})" if doc["final_step"] else "")
    else:
        state = "not marked complete" if steps else "no committed steps"
    size = human_bytes(doc["total_bytes"])
    if (budget := doc["retention"]["max_bytes"]) is not None:
        size += f" of {human_bytes(budget)} budget"
    head = [state, f"{_plural(len(steps), 'step')}, {size}"]
    if doc["latest"] is not None:
        head.append(f"latest {doc['latest']}")
    if doc["best"] is not None:
        head.append(f"best {doc['best']}")
    out.line(f"{run}  ·  " + "  ·  ".join(head), style="bold")
    retention = Retention(RetentionPolicy.from_json(doc["retention"]), doc["retention"]["source"])
    out.line(f"  why kept: {retention.describe(listing.run_best() is not None)}", style="dim")
    if doc["run_json_error"]:
        out.line(f"  {_run_doc_warning(doc['run_json_error'])}", style="bold red")
    monitored = doc["retention"]["best_fn"]
    entries: list[tuple[int, int, dict[str, Any]]] = [(s["step"], 0, s) for s in steps]
    entries += [(o["step"] if o["step"] is not None else -1, 1, o) for o in doc["other"]]
    if doc["other"]:
        entries.sort(key=lambda e: (e[0], e[1]))
    kinds_seen: dict[str, str] = {}
    cells: list[list[list[str]]] = []  # per row, per column: the items of the cell
    styles: list[str | None] = []
    for _, is_other, entry in entries:
        if is_other:
            saved, ago = _when(entry["mtime"], now)
            step = "?" if entry["step"] is None else str(entry["step"])
            kind = entry["kind"].upper()
            kinds_seen[kind] = entry["detail"]
            size = "-" if entry["bytes"] is None else human_bytes(entry["bytes"])
            cells.append([[step], [saved], [ago], [size], ["-"], [kind], [entry["name"]]])
            styles.append("yellow" if entry["kind"] in ("temporary", "replaced") else "red")
            continue
        saved, ago = _when(entry["time"], now)
        marks = [m for m in ("latest", "best") if entry[m]]
        cells.append(
            [
                [str(entry["step"])],
                [saved],
                [ago],
                [human_bytes(entry["bytes"])],
                _metric_items(entry["metrics"], monitored),
                marks,
                [OVER_BUDGET] if entry["over_budget"] else entry["kept_because"] or ["-"],
            ]
        )
        kept = entry["kept_because"] and not entry["over_budget"]
        styles.append("bold green" if marks else None if kept else "dim")
    columns = [
        ("step", "right"),
        ("saved", "left"),
        ("age", "right"),
        ("size", "right"),
        ("metrics", "left"),
        ("mark", "left"),
        ("kept because", "left"),
    ]
    shown, rows = _fit_ls_table(columns, cells, out)
    out.table(shown, rows, styles)
    for kind, detail in kinds_seen.items():
        if kind != "INVALID":
            out.line(f"  {kind}: {detail}", style="dim")
    for entry in doc["other"]:
        if entry["kind"] == "invalid":
            out.line(f"  INVALID {entry['name']}: {entry['detail']}", style="red")


def _metric_items(metrics: dict[str, float], monitored: str | None) -> list[str]:
    """`name=value` per metric, the monitored one (the run's best_fn) first."""
    names = sorted(metrics, key=lambda k: k != monitored)  # stable: saved order otherwise
    return [f"{k}={metrics[k]:.4g}" for k in names] or ["-"]


# How `ckpt ls` narrows its table until it fits the terminal: (keep SAVED, separator of the
# metrics, of the marks, of the reasons). A cell's items never break mid-word: a narrower
# table drops SAVED (AGE says when), then puts one item per line, before anything is cut.
_LS_LAYOUTS: tuple[tuple[bool, str, str, str], ...] = (
    (True, "  ", " ", ", "),
    (False, "  ", " ", ", "),
    (False, "\n", " ", ", "),
    (False, "\n", "\n", ",\n"),
)


def _fit_ls_table(
    columns: list[tuple[str, str]], cells: list[list[list[str]]], out: Output
) -> tuple[list[tuple[str, str]], list[list[str]]]:
    """The first of `_LS_LAYOUTS` whose table fits the terminal (else the narrowest)."""
    width = out.width()
    separator_at = {"metrics": 1, "mark": 2, "kept because": 3}
    for shape in _LS_LAYOUTS:
        keep_saved = shape[0]
        shown = [c for c in columns if keep_saved or c[0] != "saved"]
        rows = []
        for row in cells:
            texts = []
            for items, (title, _) in zip(row, columns):
                if title == "saved" and not keep_saved:
                    continue
                separator = shape[separator_at[title]] if title in separator_at else ""
                texts.append(str(separator).join(items))
            rows.append(texts)
        total = sum(plain_widths(shown, rows)) + out.table_overhead(len(shown), len(rows))
        if width is None or total <= width:
            break
    return shown, rows
