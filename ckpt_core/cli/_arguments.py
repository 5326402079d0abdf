"""The types of the `ckpt` command's arguments, and the retention options two commands share."""

from __future__ import annotations

import argparse

from ..options import parse_size

OFF = "none"  # `--keep-period none`, `--metric none`: turn off a rule the run recorded


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
