"""Retention: which committed steps to keep, as pure functions over step records.

No I/O and no arrays: a step is anything with `.step` and `.metrics`, so the rules are tested
with plain lists. A step is kept if at least one rule keeps it:

* "latest": it is the newest step;
* "recent": it is among the `max_to_keep` newest;
* "period": `keep_period` divides it;
* "best": it is among the `keep_best` best by `best_fn` (ties: the newer wins; NaN and
  infinities never rank: an infinite score, from a run gone wrong, would stay best forever).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from ._options import check_choice, check_int, describe

BestFn = str | Callable[[Mapping[str, float]], float]
KEEP_REASONS = ("latest", "recent", "period", "best")


class StepRecord(Protocol):
    @property
    def step(self) -> int: ...

    @property
    def metrics(self) -> Mapping[str, float]: ...


@dataclass(frozen=True)
class RetentionPolicy:
    """The retention options of `CheckpointManager`, validated."""

    max_to_keep: int | None = 5
    keep_period: int | None = None
    best_fn: BestFn | None = None
    best_mode: Literal["min", "max"] = "min"
    keep_best: int | None = 1  # None: every ranked step

    def __post_init__(self) -> None:
        check_int("max_to_keep", self.max_to_keep, minimum=1, none="keep all", example=5)
        check_int("keep_period", self.keep_period, minimum=1, none="off", example=1000)
        check_choice("best_mode", self.best_mode, ("min", "max"))
        check_int("keep_best", self.keep_best, minimum=0, none="every ranked step", example=1)
        if self.best_fn is not None and not (
            isinstance(self.best_fn, str) or callable(self.best_fn)
        ):
            raise ValueError(
                f"best_fn must be a metric name or a function of the metrics dict, got "
                f"{describe(self.best_fn)}"
            )

    def score(self, metrics: Mapping[str, float]) -> float | None:
        """The step's rank score, or None when it cannot be ranked (missing metric, NaN, inf)."""
        best_fn = self.best_fn
        if best_fn is None:
            return None
        try:
            value = float(metrics[best_fn] if isinstance(best_fn, str) else best_fn(metrics))
        except (KeyError, TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None

    def ranked(self, records: Sequence[StepRecord], k: int | None = None) -> list[int]:
        """The `k` best steps (all if None), best first; unrankable steps are left out.

        Ties go to the newer step. O(n log k): cheap with 10,000 steps in the directory.
        """
        sign = 1.0 if self.best_mode == "min" else -1.0
        keyed = [(sign * s, -r.step) for r in records if (s := self.score(r.metrics)) is not None]
        top = sorted(keyed) if k is None else heapq.nsmallest(k, keyed)
        return [-neg_step for _, neg_step in top]

    def best_step(self, records: Sequence[StepRecord]) -> int | None:
        best = self.ranked(records, 1)
        return best[0] if best else None

    def _kept(self, steps: list[int], records: Sequence[StepRecord]) -> dict[str, set[int]]:
        """For each rule, the steps it keeps (`steps` ascending)."""
        kept: dict[str, set[int]] = {"latest": {steps[-1]} if steps else set()}
        kept["recent"] = set(steps if self.max_to_keep is None else steps[-self.max_to_keep :])
        period = self.keep_period
        kept["period"] = {s for s in steps if s % period == 0} if period else set()
        kept["best"] = set(self.ranked(records, self.keep_best)) if self.keep_best != 0 else set()
        return kept

    def reasons(self, records: Sequence[StepRecord]) -> dict[int, tuple[str, ...]]:
        """For every step, why it is kept; an empty tuple means retention deletes it."""
        steps = sorted({r.step for r in records})
        kept = self._kept(steps, records)
        return {s: tuple(rule for rule in KEEP_REASONS if s in kept[rule]) for s in steps}

    def to_delete(self, records: Sequence[StepRecord]) -> list[int]:
        """The steps no rule keeps, ascending."""
        steps = sorted({r.step for r in records})
        keep = set().union(*self._kept(steps, records).values())
        return [s for s in steps if s not in keep]

    def to_json(self) -> dict[str, object]:
        """The settings, for `run.json` (a callable `best_fn` is recorded by name only)."""
        best_fn = self.best_fn
        return {
            "max_to_keep": self.max_to_keep,
            "keep_period": self.keep_period,
            "best_fn": best_fn if isinstance(best_fn, str) or best_fn is None else None,
            "best_fn_callable": getattr(best_fn, "__qualname__", None)
            if callable(best_fn)
            else None,
            "best_mode": self.best_mode,
            "keep_best": self.keep_best,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, object]) -> RetentionPolicy:
        fields = ("max_to_keep", "keep_period", "best_fn", "best_mode", "keep_best")
        return cls(**{k: doc[k] for k in fields if k in doc})  # type: ignore[arg-type]

    def missing_metric(self, metrics: Mapping[str, float]) -> str | None:
        """A warning when `best_fn` cannot rank a step saved with `metrics`, else None."""
        if self.best_fn is None or self.score(metrics) is not None:
            return None
        if isinstance(self.best_fn, str) and self.best_fn not in metrics:
            return (
                f"best_fn metric {self.best_fn!r} is not among the saved metrics "
                f"{sorted(metrics)}; this step is not ranked for best. HINT: pass "
                f"metrics={{{self.best_fn!r}: value}} to save()."
            )
        if isinstance(self.best_fn, str):
            return (
                f"best_fn metric {self.best_fn!r} is {metrics[self.best_fn]}, not a finite "
                "number; this step is not ranked for best (it is kept by the other rules only)."
            )
        return (
            f"best_fn could not score the saved metrics {sorted(metrics)}; this step is not "
            "ranked for best."
        )
