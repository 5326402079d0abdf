"""The types of the `ckpt` command's arguments, and the retention policy they ask for."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..options import human_bytes, parse_size
from ..retention import DEFAULT_POLICY, RetentionPolicy
from ._output import BadInput

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


def _int_at_least(minimum: int, expected: str) -> Callable[[str], int]:
    """An argument type: an integer >= `minimum`, refused as "expected <expected>"."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


_positive = _int_at_least(1, "a positive integer")
_non_negative = _int_at_least(0, "an integer >= 0")


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


@dataclass
class Retention:
    """The retention policy a command applies, and where its options came from."""

    policy: RetentionPolicy
    source: str

    def describe(self, keeps_run_best: bool = True) -> str:
        p = self.policy
        parts = [f"max_to_keep={'all' if p.max_to_keep is None else p.max_to_keep}"]
        if p.keep_period is not None:
            parts.append(f"keep_period={p.keep_period}")
        if p.best_fn is not None:
            parts.append(f"keep_best={p.keep_best} by {p.best_fn!s} ({p.best_mode})")
        elif p.keep_best and keeps_run_best:
            parts.append("the run's best pointer")
        if p.max_bytes is not None:
            parts.append(f"within max_bytes={human_bytes(p.max_bytes)}")
        return " + ".join(parts) + f" ({self.source})"

    def as_json(self) -> dict[str, Any]:
        doc = {k: v for k, v in self.policy.to_json().items() if k != "best_fn_callable"}
        return {**doc, "source": self.source}


def _retention(
    args: argparse.Namespace, run_doc: dict[str, Any], run_doc_error: str | None = None
) -> Retention:
    """Command-line options over the run's recorded retention over the manager's defaults."""
    source = "CheckpointManager defaults; pass the run's options to match it"
    if run_doc_error is not None:
        source = "CheckpointManager defaults: run.json is unreadable; pass the run's options"
    recorded = run_doc.get("retention")
    given: dict[str, Any] = {
        "max_to_keep": getattr(args, "max_to_keep", None),
        "keep_period": getattr(args, "keep_period", None),
        "best_fn": getattr(args, "metric", None),
        "best_mode": getattr(args, "mode", None),
        "keep_best": getattr(args, "keep_best", None),
        "max_bytes": getattr(args, "max_bytes", None),
    }
    given = {k: v for k, v in given.items() if v is not None}
    given = {
        k: None if v == OFF or (k, v) == ("max_to_keep", "all") else v for k, v in given.items()
    }
    try:  # a hand-edited run.json or a bad combination of options: bad input
        policy = DEFAULT_POLICY
        if isinstance(recorded, dict):
            policy, source = RetentionPolicy.from_json(recorded), "recorded in run.json"
        if given:
            policy = dataclasses.replace(policy, **given)
            recorded_too = isinstance(recorded, dict)
            source = f"command line + {source}" if recorded_too else "from the command line"
    except (TypeError, ValueError) as e:
        raise BadInput(str(e)) from None
    return Retention(policy, source)
