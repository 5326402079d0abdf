"""The `ckpt` command: see, verify and prune checkpoint directories.

    ckpt ls DIR [DIR ...]       steps of every run at or below each DIR, and why each is kept
    ckpt show DIR [STEP]        a step's manifest and its tree of arrays (no array loaded);
                                --depth N and --path PREFIX|GLOB keep a big tree short
    ckpt verify DIR [STEP]      sizes and checksums of every file; exit status 1 on damage
    ckpt prune DIR --max-to-keep N|all --keep-period P|none ... [--dry-run]
    ckpt best DIR [--metric NAME --mode min|max]   what to load: torch steps' state.pt, else
                                the step directory; never a step that fails its checksums

Exit status: 0 success, 1 damage found, 2 bad input (one line on stderr, never a traceback).
Human output is a rich table on a terminal and plain columns when piped; `--json` for scripts.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__, layout
from .errors import CheckpointError, CorruptCheckpointError
from .formats.base import StepReader
from .info import CheckpointInfo
from .inspect import (
    RunListing,
    TreeEntry,
    TreeListing,
    age,
    find_runs,
    human_bytes,
    list_tree,
    open_directory,
    read_manifest,
    scan_run,
)
from .manifest import CHECKSUM, Manifest
from .options import parse_size
from .retention import OVER_BUDGET, RetentionPolicy, committed_bytes
from .storage import Storage

if TYPE_CHECKING:
    from .manager import CheckpointManager

EXIT_OK = 0
EXIT_DAMAGED = 1
EXIT_BAD_INPUT = 2
RICH_TABLE_MAX_ROWS = 500  # longer tables are printed as coloured columns, not a rich Table

# What `CheckpointManager` uses when it is given nothing: the policy `ls` explains by default.
DEFAULT_RETENTION: dict[str, Any] = {
    "max_to_keep": 5,
    "keep_period": None,
    "best_fn": None,
    "best_mode": "min",
    "keep_best": 1,
    "max_bytes": None,
}


OFF = "none"  # `--keep-period none`, `--metric none`: turn off a rule the run recorded


class BadInput(Exception):
    """Input the command cannot work with: printed as one line on stderr, exit status 2."""


# ---------------------------------------------------------------- output


class Output:
    """Rich tables and colour on a terminal; plain aligned columns when piped."""

    def __init__(self) -> None:
        self.rich = sys.stdout.isatty() or bool(os.environ.get("FORCE_COLOR"))
        self.console: Any = None
        if self.rich:
            from rich.console import Console

            self.console = Console(highlight=False, soft_wrap=False)

    def width(self) -> int | None:
        """The columns a table should fit in: the terminal's (`COLUMNS` overrides it), or None
        when piped, where one line per row keeps the output easy to grep."""
        return None if self.console is None else int(self.console.width)

    def table_overhead(self, n_columns: int, n_rows: int) -> int:
        """The columns `table` adds to the widths of its cells: indent, gaps, rich's borders."""
        if self.console is None or n_rows > RICH_TABLE_MAX_ROWS:
            return 2 + 2 * (n_columns - 1)
        return 2 + 3 * (n_columns - 1)

    def line(self, text: str = "", style: str | None = None) -> None:
        if self.console is None:
            print(text)
        else:
            from rich.padding import Padding
            from rich.text import Text

            # an indented line wraps under its own indent on a narrow terminal
            indent = len(text) - len(text.lstrip(" "))
            self.console.print(Padding(Text(text[indent:], style=style or ""), (0, 0, 0, indent)))

    def table(
        self,
        columns: Sequence[tuple[str, str]],
        rows: Sequence[Sequence[str]],
        styles: Sequence[str | None] | None = None,
        wrap: Sequence[str] = (),
    ) -> None:
        """`columns`: (title, "left" | "right"); `styles`: one rich style per row (or None).

        Only the columns named in `wrap` may wrap on a narrow terminal; the others never do.
        """
        if not rows:
            return
        if self.console is None or len(rows) > RICH_TABLE_MAX_ROWS:
            widths = plain_widths(columns, rows)
            lines = []
            line_styles: list[str | None] = ["bold"]
            for r, row in enumerate([[title.upper() for title, _ in columns], *rows]):
                # A cell with newlines spans several lines (e.g. one metric per line).
                parts = [cell.split("\n") for cell in row]
                for k in range(max(len(p) for p in parts)):
                    cells = [
                        (p[k] if k < len(p) else "").rjust(w)
                        if justify == "right"
                        else (p[k] if k < len(p) else "").ljust(w)
                        for p, w, (_, justify) in zip(parts, widths, columns)
                    ]
                    lines.append("  " + "  ".join(cells).rstrip())
                    if r:
                        line_styles.append(styles[r - 1] if styles else None)
            if self.console is not None:
                # A long table on a terminal: the same columns, coloured line by line (a rich
                # Table lays out 10,000 rows in seconds; this takes milliseconds).
                from rich.style import Style

                system = self.console.color_system
                paint = {s: Style.parse(s) for s in {*line_styles} if s}
                for i, style in enumerate(line_styles):
                    if style:
                        lines[i] = paint[style].render(lines[i], color_system=system)
            print("\n".join(lines))
            return
        from rich import box
        from rich.table import Table
        from rich.text import Text

        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold")
        for title, justify in columns:
            table.add_column(
                title.upper(),
                justify=justify,  # type: ignore[arg-type]
                no_wrap=title not in wrap,
                overflow="fold" if title in wrap else "ellipsis",
            )
        for i, row in enumerate(rows):
            style = styles[i] if styles else None
            table.add_row(*(Text(cell) for cell in row), style=style or "")
        self.console.print(table)


def plain_widths(columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[str]]) -> list[int]:
    """Each column's width in plain output: its widest line (a cell may hold several lines)."""
    widths = [len(title) for title, _ in columns]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], *(len(part) for part in cell.split("\n")))
    return widths


def _print_json(doc: Any) -> None:
    try:  # the common case, fast: nothing to convert
        text = json.dumps(doc, indent=1, allow_nan=False)
    except (ValueError, TypeError):
        text = json.dumps(_json_safe(doc), indent=1, allow_nan=False)
    print(text)


def _json_safe(x: Any) -> Any:
    """Standard JSON: NaN and infinities become null, tuples lists, unknown objects strings."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if x is None or isinstance(x, bool | int | str):
        return x
    return str(x)


def _when(stamp: float | None, now: float) -> tuple[str, str]:
    if stamp is None:
        return "-", "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp)), age(stamp, now)


def _metrics_text(metrics: dict[str, float] | Any) -> str:
    return "  ".join(f"{k}={v:.4g}" for k, v in metrics.items()) or "-"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _ranges(steps: Iterable[int]) -> str:
    """[1, 2, 3, 7] -> "1-3, 7" (consecutive runs of steps)."""
    out: list[str] = []
    ordered = sorted(steps)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ", ".join(out)


# ---------------------------------------------------------------- directories and runs


def _is_url(directory: str) -> bool:
    return "://" in directory and not directory.startswith("file://")


def _runs(directory: str) -> list[str]:
    """Every run at or below `directory` (URLs: the directory itself)."""
    if _is_url(directory):
        return [directory]
    path = directory.removeprefix("file://")
    try:
        runs = find_runs(path)
    except FileNotFoundError:
        raise BadInput(f"{directory} does not exist") from None
    except NotADirectoryError:
        if os.path.basename(path) == layout.MANIFEST:
            raise BadInput(
                f"{directory} is a manifest file; HINT: pass the run directory (or its step "
                "directory to `ckpt show`)"
            ) from None
        raise BadInput(f"{directory} is a file, not a checkpoint directory") from None
    if not runs:
        if os.path.isfile(os.path.join(path, layout.MANIFEST)):
            raise BadInput(
                f"{directory} is a single checkpoint step, not a run. HINT: `ckpt show "
                f"{directory}`, or `ckpt ls {os.path.dirname(path.rstrip('/')) or '.'}`"
            )
        raise BadInput(
            f"{directory} is not a checkpoint directory: no step_* entries in it or in its "
            f"subdirectories (searched {_depth_note()}). HINT: pass the directory given to "
            "CheckpointManager (or the adapter's dirpath)."
        )
    return runs


def _depth_note() -> str:
    from .inspect import MAX_RUN_DEPTH

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


# ---------------------------------------------------------------- retention


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


# ---------------------------------------------------------------- ckpt ls


def cmd_ls(args: argparse.Namespace, out: Output) -> int:
    runs: list[str] = []
    for directory in args.directories:
        found = _runs(directory)
        if _is_url(directory) and not _has_entries(found[0]):
            raise BadInput(f"{directory} holds no checkpoint steps")
        # `ckpt ls runs runs/a`: a run named twice is listed once
        seen = {os.path.normpath(r) for r in runs}
        runs += [r for r in found if os.path.normpath(r) not in seen]
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
        _print_json({**head, "runs": docs})
        return EXIT_OK
    for i, (run, listing, doc) in enumerate(zip(runs, listings, docs)):
        if i:
            out.line()
        _render_run(out, run, listing, doc, now)
    return EXIT_OK


def _has_entries(url: str) -> bool:
    listing = scan_run(open_directory(url))
    return bool(listing.steps or listing.others)


def _ls_doc(listing: RunListing, retention: Retention) -> dict[str, Any]:
    why = retention.reasons(listing)
    over_budget = set(retention.over_budget(listing))
    latest = listing.steps[-1].step if listing.steps else None
    best = retention.best(listing)
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
    retention = Retention(_policy_of(doc["retention"]), doc["retention"]["source"])
    has_pointer = listing.best_pointer is not None
    out.line(f"  why kept: {retention.describe(has_pointer)}", style="dim")
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


# ---------------------------------------------------------------- ckpt show


def cmd_show(args: argparse.Namespace, out: Output) -> int:
    storage, name, manifest, run = _show_target(args)
    listing = scan_run(storage) if run else None
    latest = best = False
    if listing is not None:
        latest = bool(listing.steps) and listing.steps[-1].step == manifest.step
        best = listing.best_pointer == manifest.step
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
    local = None if _is_url(directory) else directory.removeprefix("file://")
    if local is not None and os.path.isfile(os.path.join(local, layout.MANIFEST)):
        # A step directory (or a `save_checkpoint` directory) given directly.
        if wanted is not None:
            raise BadInput(
                f"{directory} is a single checkpoint (it holds {layout.MANIFEST}); drop STEP, "
                "or pass the run directory that holds it"
            )
        parent, name = os.path.split(os.path.abspath(local))
        storage = open_directory(parent)
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


def _manifest_or_bad_input(storage: Storage, name: str) -> Manifest:
    try:
        return read_manifest(storage, name)
    except CorruptCheckpointError as e:
        raise BadInput(str(e).split(" HINT")[0]) from None


def _resolve_step(listing: RunListing, wanted: int | str | None, args: argparse.Namespace) -> int:
    committed = [i.step for i in listing.steps]
    if wanted is None or wanted == "latest":
        if not committed:
            raise BadInput(f"{listing.directory} has no committed step")
        return committed[-1]
    if wanted == "best":
        step = _retention(args, {}).best(listing)
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
        ("metadata", json.dumps(_json_safe(doc["metadata"]))),
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
            wanted.append(f"{tree['filter']['depth']} levels deep, deeper ones folded per subtree")
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
    if tree["records"]:
        storages = [r for r in tree["records"] if "/data/" in r["name"]]
        out.line(
            f"  state.pt: {len(tree['records'])} zip records, {len(storages)} tensor storages "
            f"({human_bytes(sum(r['size'] for r in storages))})",
            style="dim",
        )
    for note in tree["notes"]:
        out.line(f"  note: {note}", style="yellow")


# ---------------------------------------------------------------- ckpt verify


@dataclass
class StepCheck:
    step: int
    status: str  # "ok", "damaged", "invalid"
    files: int = 0
    bytes: int = 0
    damaged: tuple[tuple[str, str], ...] = ()  # (path, message) per damaged file


def verify_step(storage: Storage, info: CheckpointInfo) -> StepCheck:
    """Check every file of one committed step, naming each damaged file (not only the first)."""
    name = layout.step_dirname(info.step)
    try:
        manifest = read_manifest(storage, name)
    except CorruptCheckpointError as e:
        return StepCheck(info.step, "invalid", damaged=((e.path or name, str(e)),))
    reader = StepReader(storage, name, manifest)
    damaged = []
    for file in sorted(manifest.files):
        try:
            reader.verify(file)
        except CorruptCheckpointError as e:
            damaged.append((e.path or reader.display(file), str(e)))
        except OSError as e:
            damaged.append((reader.display(file), f"{reader.display(file)} is unreadable: {e}"))
    status = "damaged" if damaged else "ok"
    return StepCheck(info.step, status, len(manifest.files), manifest.nbytes, tuple(damaged))


def _invalid_check(storage: Storage, name: str, step: int | None) -> StepCheck:
    try:
        read_manifest(storage, name)
        message = f"{storage.join(name)} changed while it was being checked"
        where = storage.join(name)
    except CorruptCheckpointError as e:
        message, where = str(e), e.path or storage.join(name)
    return StepCheck(step or 0, "invalid", damaged=((where, message),))


def cmd_verify(args: argparse.Namespace, out: Output) -> int:
    wanted = _parse_step(args.step)
    if wanted is not None:
        _single_run(args.directory, "verify")
        names = [args.directory]
    else:
        names = _runs(args.directory)
    docs = []
    intact = True
    for run in names:
        storage = open_directory(run)
        listing = scan_run(storage)
        infos = listing.steps
        invalid = [o for o in listing.others if o.kind == "invalid"]
        if wanted is not None:
            invalid_step = next((o for o in invalid if o.step == wanted), None)
            infos, invalid = [], [invalid_step] if invalid_step else []
            if invalid_step is None:
                step = _resolve_step(listing, wanted, args)
                infos = [i for i in listing.steps if i.step == step]
        checks = [verify_step(storage, i) for i in infos]
        checks += [_invalid_check(storage, o.name, o.step) for o in invalid]
        checks.sort(key=lambda c: c.step)
        intact &= all(c.status == "ok" for c in checks)
        docs.append(
            {
                "directory": storage.root,
                "run": run,
                "steps": [
                    {
                        "step": c.step,
                        "status": c.status,
                        "files": c.files,
                        "bytes": c.bytes,
                        "damaged": [{"path": p, "error": m} for p, m in c.damaged],
                    }
                    for c in checks
                ],
                "quarantined": [
                    o.name for o in listing.others if o.kind == "quarantined" and wanted is None
                ],
            }
        )
    if args.json:
        _print_json({"intact": intact, "runs": docs})
    else:
        _render_verify(out, docs)
    return EXIT_OK if intact else EXIT_DAMAGED


def _render_verify(out: Output, docs: list[dict[str, Any]]) -> None:
    n_steps = n_ok = n_files_bad = n_invalid = 0
    for i, doc in enumerate(docs):
        if i:
            out.line()
        out.line(doc["run"], style="bold")
        rows, styles = [], []
        for s in doc["steps"]:
            n_steps += 1
            if s["status"] == "ok":
                n_ok += 1
                rows.append(
                    [
                        str(s["step"]),
                        "ok",
                        f"{_plural(s['files'], 'file')}, {human_bytes(s['bytes'])}",
                    ]
                )
                styles.append("green")
                continue
            if s["status"] == "invalid":
                n_invalid += 1
            else:
                n_files_bad += len(s["damaged"])
            for j, d in enumerate(s["damaged"]):
                rows.append(
                    [
                        str(s["step"]) if j == 0 else "",
                        s["status"].upper() if j == 0 else "",
                        d["error"],
                    ]
                )
                styles.append("bold red")
        out.table(
            [("step", "right"), ("status", "left"), ("detail", "left")],
            rows,
            styles,
            wrap=("detail",),
        )
        for name in doc["quarantined"]:
            out.line(
                f"  note: {name} is quarantined (a damaged step moved aside on resume; "
                "not checked)",
                style="yellow",
            )
    problems = []
    if n_files_bad:
        problems.append(_plural(n_files_bad, "damaged file"))
    if n_invalid:
        problems.append(_plural(n_invalid, "invalid manifest"))
    summary = f"{n_ok} of {n_steps} steps intact"
    out.line(
        summary + (f"; {', '.join(problems)}." if problems else "."),
        style="bold red" if problems else "bold green",
    )


# ---------------------------------------------------------------- ckpt prune


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
    from .manager import CheckpointManager

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


def _read_raw(storage: Storage, name: str) -> bytes | None:
    try:
        return storage.read_bytes(name)
    except (FileNotFoundError, NotADirectoryError):
        return None


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


# ---------------------------------------------------------------- ckpt best


def cmd_best(args: argparse.Namespace, out: Output) -> int:
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


def _best_path(storage: Storage, info: CheckpointInfo) -> str:
    """What a user of the step loads: the payload file of a one-file format (torch: the file
    `ckpt_path=` and `torch.load` take), else the step directory."""
    from .formats.torch import PAYLOAD

    if info.format == "torch":
        return storage.join(layout.step_dirname(info.step), PAYLOAD)
    return str(info.path)


# ---------------------------------------------------------------- the parser


def _count_or_all(text: str) -> int | str:
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'all', got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {value}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_or_none(text: str) -> int | str:
    """A positive integer, or 'none' to turn off a rule the run recorded."""
    if text.lower() == OFF:
        return OFF
    try:
        return _positive(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or {OFF!r} (no such rule), got {text!r}"
        ) from None


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _size_or_none(text: str) -> int | str:
    """A byte budget such as 20GB or 500MiB, or 'none' to turn off one the run recorded."""
    if text.lower() == OFF:
        return OFF
    try:
        size = parse_size("--max-bytes", text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a size such as 20GB, 500MiB or 1000000 (bytes), or {OFF!r}, got {text!r}"
        ) from None
    assert size is not None
    return size


def _directory(text: str) -> str:
    # `ckpt prune "$RUN" ...` with RUN unset must not act on the current directory.
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"DIR is {text!r}, which names no directory (an unset variable?); pass '.' for the "
            "current directory"
        )
    return text


def _add_retention(p: argparse.ArgumentParser, *, explain: str) -> None:
    g = p.add_argument_group("retention", explain)
    g.add_argument(
        "--max-to-keep", type=_count_or_all, metavar="N|all", help="keep the N newest steps"
    )
    g.add_argument(
        "--keep-period",
        type=_positive_or_none,
        metavar="P|none",
        help="keep steps divisible by P ('none': turn a recorded keep_period off)",
    )
    g.add_argument(
        "--metric",
        metavar="NAME|none",
        help="rank steps by this metric ('none': no ranking; the run's best pointer is kept)",
    )
    g.add_argument(
        "--mode", choices=("min", "max"), help="which metric values are better (default min)"
    )
    g.add_argument(
        "--keep-best", type=_non_negative, metavar="K", help="keep the K best (default 1)"
    )
    g.add_argument(
        "--max-bytes",
        type=_size_or_none,
        metavar="SIZE|none",
        help="then delete steps until the run fits SIZE, e.g. 20GB or 500MiB (recent first, "
        "then period, then worst ranked; never the latest or best); 'none': turn it off",
    )


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line on stderr, exit status 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ckpt",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Exit status: 0 success, 1 damage found, 2 bad input.",
    )
    parser.add_argument("--version", action="version", version=f"ckpt-core {__version__}")
    # Global flags work before the command (`ckpt --json ls DIR`) and after it: the command's
    # own copy defaults to SUPPRESS, so it never resets a flag given before the command.
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(
        name: str, help: str, run: Callable[..., int], several: bool = False
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument(
            "directories" if several else "directory",
            metavar="DIR",
            type=_directory,
            nargs="+" if several else None,
            help="checkpoint directories (local paths or URLs)"
            if several
            else "a checkpoint directory (local path or URL)",
        )
        p.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts"
        )
        p.set_defaults(run=run)
        return p

    ls = command(
        "ls",
        "list the steps of every run at or below each DIR, and why each is kept",
        cmd_ls,
        several=True,
    )
    _add_retention(
        ls,
        explain="the policy the KEPT BECAUSE column explains. Default: the one the run recorded "
        "in run.json (else the CheckpointManager defaults); options given here override it, to "
        "preview another policy",
    )
    show = command(
        "show", "a step's manifest and its tree of arrays, without loading them", cmd_show
    )
    show.add_argument(
        "step", metavar="STEP", nargs="?", help="a step number, 'latest' (default) or 'best'"
    )
    show.add_argument(
        "--metric", help="with STEP 'best': rank by this metric instead of the run's best pointer"
    )
    show.add_argument(
        "--path",
        metavar="PREFIX|GLOB",
        help="only the leaves under this path (e.g. state_dict/layer.0) or matching this glob "
        "(e.g. 'optimizer_states/*')",
    )
    show.add_argument(
        "--depth",
        type=_positive,
        metavar="N",
        help="show N levels of the tree; deeper leaves are folded into one row per subtree",
    )
    show.add_argument(
        "--mode", choices=("min", "max"), help="with --metric: which values are better"
    )
    verify = command(
        "verify", "check the size and checksum of every file; exit status 1 on damage", cmd_verify
    )
    verify.add_argument(
        "step", metavar="STEP", nargs="?", help="only this step (default: every step of every run)"
    )
    prune = command("prune", "delete the steps a retention policy does not keep", cmd_prune)
    _add_retention(
        prune,
        explain="a step is kept if any rule keeps it; the newest step always is. Options not "
        "given take the run's recorded retention (else the CheckpointManager defaults)",
    )
    prune.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    best = command(
        "best",
        "print what to load for the best intact step (a torch step's state.pt, else the step "
        "directory), for shell scripts",
        cmd_best,
    )
    best.add_argument("--metric", help="rank by this metric (default: the run's best pointer)")
    best.add_argument(
        "--mode", choices=("min", "max"), help="which metric values are better (default min)"
    )
    return parser


def _one_line(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, KeyError | ModuleNotFoundError) or not isinstance(
        error, BadInput | CheckpointError | OSError
    ):
        text = f"{type(error).__name__}: {text}"
    return " ".join(text.split())


def _warn(message: str) -> None:
    print(f"ckpt: warning: {' '.join(message.split())}", file=sys.stderr)


def _warn_in_one_line(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    # e.g. the core moving a damaged step aside when `prune` opens the directory
    print(f"ckpt: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the `ckpt` command; returns its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    warnings.showwarning = _warn_in_one_line
    try:
        return int(args.run(args, Output()))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `ckpt ls | head`: the reader left; say nothing more (and not on the closed pipe).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as e:  # never a traceback: one line saying what went wrong
        if os.environ.get("CKPT_DEBUG"):
            raise
        print(f"ckpt {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
