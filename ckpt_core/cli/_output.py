"""What the `ckpt` commands print: tables, JSON and warnings, and the exit status they end with."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ..inspect import age

EXIT_OK = 0
EXIT_DAMAGED = 1
EXIT_BAD_INPUT = 2
RICH_TABLE_MAX_ROWS = 500  # longer tables are printed as coloured columns, not a rich Table


class BadInput(Exception):
    """Input the command cannot work with: printed as one line on stderr, exit status 2."""


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


def _warn(message: str) -> None:
    print(f"ckpt: warning: {' '.join(message.split())}", file=sys.stderr)


def _run_doc_warning(error: str) -> str:
    return (
        f"{error}; its recorded retention and completion are not used. HINT: restore run.json, "
        "or give `ckpt prune` every rule: --max-to-keep, --keep-period and --metric"
    )
