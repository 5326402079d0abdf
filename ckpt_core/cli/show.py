"""`ckpt show`: a step's manifest and its tree of arrays, without loading any array."""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from .. import layout
from ..errors import CorruptCheckpointError
from ..formats import TreeEntry, TreeListing
from ..inspect import list_tree
from ..listing import scan_run
from ..manifest import CHECKSUM, Manifest
from ..options import human_bytes
from ..run import open_directory, read_manifest, read_pointer
from ..storage import Storage
from ._output import (
    EXIT_DAMAGED,
    EXIT_OK,
    BadInput,
    Output,
    _json_safe,
    _metrics_text,
    _plural,
    _print_json,
    _run_doc_warning,
    _warn,
    _when,
)
from ._targets import (
    _is_url,
    _no_step_for_a_single_checkpoint,
    _parse_step,
    _refuse_mode_without_metric,
    _resolve_step,
    _single_checkpoint,
    _single_run,
)


def cmd_show(args: argparse.Namespace, out: Output) -> int:
    storage, name, manifest, run = _show_target(args)
    listing = scan_run(storage) if run else None
    latest = best = False
    if listing is not None:
        latest = bool(listing.steps) and listing.steps[-1].step == manifest.step
        best = listing.run_best() == manifest.step
        if listing.run_doc_error:
            _warn(_run_doc_warning(listing.run_doc_error))
    try:
        tree = list_tree(storage, manifest, name)
        tree_error = None
    except CorruptCheckpointError as e:
        tree, tree_error = TreeListing([], "nothing"), str(e)
    leaves = len(tree.entries)
    tree.entries = _filter_tree(tree.entries, args.path, args.depth)
    doc = {
        "directory": storage.root,
        "step": manifest.step,
        "path": storage.join(name),
        "format": manifest.format,
        "time": manifest.time,
        "bytes": manifest.nbytes,
        "metrics": dict(manifest.metrics),
        "metadata": manifest.metadata,
        "versions": dict(manifest.versions),
        "latest": latest,
        "best": best,
        "files": [
            {"name": f, "size": rec.size, CHECKSUM: rec.checksum}
            for f, rec in sorted(manifest.files.items())
        ],
        "tree": {
            "source": tree.source,
            "error": tree_error,
            "leaves": leaves,
            "filter": {"path": args.path, "depth": args.depth},
            "notes": tree.notes,
            "entries": [
                {
                    "path": e.path,
                    "kind": e.kind,
                    "dtype": e.dtype,
                    "shape": e.shape,
                    "bytes": e.nbytes,
                    "value": e.value,
                    **({"leaves": e.leaves} if isinstance(e, _Subtree) else {}),
                }
                for e in tree.entries
            ],
            "records": [{"name": n, "size": s} for n, s in tree.records],
            "summary": tree.summary,
        },
    }
    if args.json:
        _print_json(doc)
    else:
        _render_show(out, doc)
    return EXIT_DAMAGED if tree_error else EXIT_OK


@dataclass(frozen=True)
class _Subtree(TreeEntry):
    """The leaves below `path` that `ckpt show --depth` folds into one row."""

    leaves: int = 0


def _filter_tree(
    entries: list[TreeEntry], pattern: str | None, depth: int | None
) -> list[TreeEntry]:
    """The leaves `ckpt show --path/--depth` asks for: those under `pattern` (a path prefix or
    a glob matching a leaf or any of its parents), and below `depth` levels one row per subtree.
    """
    if pattern is not None:
        pattern = pattern.strip("/")
        is_glob = any(c in pattern for c in "*?[")

        def wanted(path: str) -> bool:
            if not is_glob:
                return path == pattern or path.startswith(pattern + "/")
            parts = path.split("/")
            return any(
                fnmatch.fnmatchcase("/".join(parts[:n]), pattern) for n in range(1, len(parts) + 1)
            )

        entries = [e for e in entries if wanted(e.path)]
    if depth is None:
        return entries
    shown: list[TreeEntry] = []
    folded: dict[str, list[TreeEntry]] = {}
    for e in entries:
        parts = e.path.split("/")
        if len(parts) <= depth:
            shown.append(e)
            continue
        prefix = "/".join(parts[:depth])
        if prefix not in folded:
            folded[prefix] = []
            shown.append(TreeEntry(prefix, "subtree"))  # placeholder, keeps the tree's order
        folded[prefix].append(e)
    out: list[TreeEntry] = []
    for e in shown:
        below = folded.get(e.path) if e.kind == "subtree" else None
        if below is None:
            out.append(e)
            continue
        arrays = [b for b in below if b.shape is not None]
        nbytes = sum(b.nbytes or 0 for b in arrays)
        out.append(
            _Subtree(
                e.path + "/",
                "subtree",
                nbytes=nbytes if arrays else None,
                value=f"{len(below)} {'leaf' if len(below) == 1 else 'leaves'}, "
                f"{_plural(len(arrays), 'array')}",
                leaves=len(below),
            )
        )
    return out


def _show_target(args: argparse.Namespace) -> tuple[Storage, str, Manifest, bool]:
    """(storage of the run, step directory name, manifest, whether it is a managed run)."""
    directory = args.directory.rstrip("/") or "/"
    wanted = _parse_step(args.step)
    if wanted != "best" and (args.metric is not None or args.mode is not None):
        given = "--metric" if args.metric is not None else "--mode"
        raise BadInput(
            f"{given} ranks steps only for STEP 'best' (got STEP {args.step or 'latest'!r}). "
            f"HINT: `ckpt show {directory} best {given} ...`, or drop {given}"
        )
    _refuse_mode_without_metric(args, "show", " best")
    local = None if _is_url(directory) else directory.removeprefix("file://")
    if local is not None and os.path.isfile(local):
        # `ckpt show $(ckpt best DIR)`: a payload file; `ckpt show run/latest`: a pointer file.
        directory, wanted = _step_of_file(local, wanted)
        local = directory
    single = _single_checkpoint(directory)
    if single is not None:
        # A step directory (or a `save_checkpoint` directory) given directly.
        if wanted is not None:
            raise _no_step_for_a_single_checkpoint(directory)
        storage, name = single
        return (
            storage,
            name,
            _manifest_or_bad_input(storage, name),
            layout.parse_step(name) is not None,
        )
    storage = _single_run(directory, "show")
    listing = scan_run(storage)
    step = _resolve_step(listing, wanted, args)
    name = layout.step_dirname(step)
    return storage, name, _manifest_or_bad_input(storage, name), True


def _step_of_file(path: str, wanted: int | str | None) -> tuple[str, int | str | None]:
    """The directory and STEP a file names: a run's `latest`/`best` pointer names a step of its
    run; a file inside a checkpoint (`.../step_X/state.pt`) names that checkpoint."""
    parent, name = os.path.split(os.path.abspath(path))
    if name in (layout.LATEST_POINTER, layout.BEST_POINTER) and _runs_here(parent):
        if wanted is not None:
            raise BadInput(
                f"{path} is the run's {name!r} pointer, which picks the step itself; drop STEP, "
                f"or pass the run directory {parent}"
            )
        step = read_pointer(open_directory(parent), name)
        if step is None:
            raise BadInput(f"{path} names no step of {parent}: it holds no step_* name")
        return os.path.join(parent, layout.step_dirname(step)), None
    here = parent
    while True:
        if os.path.isfile(os.path.join(here, layout.MANIFEST)):
            return here, wanted
        up = os.path.dirname(here)
        if up == here:
            break
        here = up
    raise BadInput(
        f"{path} is a file, neither in a checkpoint directory (no {layout.MANIFEST} beside or "
        "above it) nor a run's latest/best pointer. HINT: pass a run directory or a step "
        "directory"
    )


def _runs_here(directory: str) -> bool:
    return any(layout.parse_step(n) is not None for n in os.listdir(directory))


def _manifest_or_bad_input(storage: Storage, name: str) -> Manifest:
    try:
        return read_manifest(storage, name)
    except CorruptCheckpointError as e:
        raise BadInput(str(e).split(" HINT")[0]) from None


METADATA_VALUE_CHARS = 40  # a longer metadata value is shown by its size; `--json` has it all


def _metadata_text(metadata: Any) -> str:
    """Metadata on one short line: each top-level key with its value, a long value (e.g. the
    hex of an RNG state) as its size; `ckpt show --json` prints every value in full."""
    shortened = []

    def short(value: Any) -> str:
        text = json.dumps(_json_safe(value))
        if len(text) <= METADATA_VALUE_CHARS:
            return text
        shortened.append(text)
        if isinstance(value, dict):
            keys = ", ".join(map(str, value))
            keys = (
                keys if len(keys) <= METADATA_VALUE_CHARS else keys[:METADATA_VALUE_CHARS] + "..."
            )
            return f"{{{keys}}} <{len(text)} chars>"
        return f"{text[:12]}... <{len(text)} chars>"

    if isinstance(metadata, dict) and metadata:
        text = "  ".join(f"{k}={short(v)}" for k, v in metadata.items())
    else:
        text = short(metadata)
    return text + ("  (full values: --json)" if shortened else "")


def _render_show(out: Output, doc: dict[str, Any]) -> None:
    marks = [m for m in ("latest", "best") if doc[m]]
    title = f"step {doc['step']}  ·  {doc['path']}" + (f"  ·  {' '.join(marks)}" if marks else "")
    out.line(title, style="bold")
    saved, ago = _when(doc["time"], time.time())
    fields = [
        ("format", doc["format"]),
        ("saved", f"{saved} ({ago} ago)"),
        ("size", f"{human_bytes(doc['bytes'])} in {_plural(len(doc['files']), 'file')}"),
        ("metrics", _metrics_text(doc["metrics"])),
        *([("metadata", _metadata_text(doc["metadata"]))] if doc["metadata"] is not None else []),
        ("versions", ", ".join(f"{k} {v}" for k, v in doc["versions"].items()) or "-"),
    ]
    for key, value in fields:
        out.line(f"  {key:<9} {value}")
    out.line()
    out.line("files", style="bold")
    out.table(
        [("file", "left"), ("size", "right"), (CHECKSUM, "left")],
        [[f["name"], human_bytes(f["size"]), f[CHECKSUM]] for f in doc["files"]],
        wrap=("file",),
    )
    tree = doc["tree"]
    out.line()
    if tree["error"]:
        out.line(f"tree: unreadable: {tree['error']}", style="bold red")
        return
    entries = tree["entries"]
    arrays = [e for e in entries if e["shape"] is not None]
    total = sum(e["bytes"] or 0 for e in arrays)
    if tree["leaves"] != len(entries) or any(e["kind"] == "subtree" for e in entries):
        wanted = [f"under {tree['filter']['path']!r}"] if tree["filter"]["path"] else []
        if tree["filter"]["depth"] is not None:
            depth = _plural(tree["filter"]["depth"], "level")
            wanted.append(f"{depth} deep, deeper ones folded per subtree")
        shown = [e for e in entries if e["kind"] != "subtree"]
        out.line(
            f"tree  ·  {len(shown)} of {tree['leaves']} leaves shown ({'; '.join(wanted)})  ·  "
            f"read from {tree['source']}; no array loaded",
            style="bold",
        )
        if not entries:
            out.line(f"  no leaf path matches {tree['filter']['path']!r}", style="yellow")
    elif entries:
        others = len(entries) - len(arrays)
        out.line(
            f"tree  ·  {_plural(len(arrays), 'array')}, {human_bytes(total)}; {others} other "
            f"{'leaf' if others == 1 else 'leaves'}  ·  read from {tree['source']}; "
            "no array loaded",
            style="bold",
        )
    rows = []
    for e in entries:
        if e["shape"] is not None or (e["value"] is None and e["kind"] != "None"):
            value = ""  # an array, or a scalar whose value the header does not hold (orbax)
        else:
            plain = e["kind"] in ("object", "subtree")
            value = str(e["value"]) if plain else repr(e["value"])
        rows.append(
            [
                e["path"],
                e["kind"],
                e["dtype"] or "",
                str(tuple(e["shape"])) if e["shape"] is not None else "",
                human_bytes(e["bytes"]) if e["bytes"] is not None else "",
                value,
            ]
        )
    out.table(
        [
            ("path", "left"),
            ("kind", "left"),
            ("dtype", "left"),
            ("shape", "left"),
            ("bytes", "right"),
            ("value", "left"),
        ],
        rows,
        wrap=("path", "value"),
    )
    if tree["summary"]:
        out.line(f"  {tree['summary']}", style="dim")
    for note in tree["notes"]:
        out.line(f"  note: {note}", style="yellow")
