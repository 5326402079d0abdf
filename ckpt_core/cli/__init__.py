"""The `ckpt` command: see, verify and prune checkpoint directories.

    ckpt ls DIR [DIR ...]       steps of every run at or below each DIR, and why each is kept
    ckpt show DIR [STEP]        a step's manifest and its tree of arrays (no array loaded);
                                --depth N and --path PREFIX|GLOB keep a big tree short
    ckpt verify DIR [STEP]      sizes and checksums of every file; exit status 1 on damage
    ckpt prune DIR [--max-to-keep N|all] [--keep-period P|none] ... [--dry-run]
    ckpt best DIR [--metric NAME --mode min|max]   what to load: torch steps' state.pt, else
                                the step directory; never a step that fails its checksums

Exit status: 0 success, 1 damage found, 2 bad input (one line on stderr, never a traceback).
Human output is a rich table on a terminal and plain columns when piped; `--json` for scripts.

One module per command (`ls`, `show`, `verify`, `prune`, `best`); `_output` prints, `_arguments`
parses (and merges retention options over the run's recorded ones), `_targets` finds the runs
and step a command acts on. What a run keeps, ranks best and points at is the run model's
(`ckpt_core.run`, `ckpt_core.listing`): no command has rules of its own.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any, NoReturn

from .. import __version__
from ..errors import CheckpointError
from ._arguments import _add_retention, _directory, _positive
from ._output import EXIT_BAD_INPUT, EXIT_OK, BadInput, Output
from .best import cmd_best
from .ls import cmd_ls
from .prune import cmd_prune
from .show import cmd_show
from .verify import cmd_verify

__all__ = ["build_parser", "main"]


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
