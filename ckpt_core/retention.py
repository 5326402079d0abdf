"""Retention: which committed steps to keep, as pure functions over step records.

No I/O and no arrays: a step is anything with `.step` and `.metrics`, so the rules are tested
with plain lists. A step is kept if at least one rule keeps it:

* "latest": it is the newest step;
* "recent": it is among the `max_to_keep` newest;
* "period": `keep_period` divides it;
* "best": it is among the `keep_best` best by `best_fn` (ties: the newer wins; NaN and
  infinities never rank: an infinite score, from a run gone wrong, would stay best forever).

A byte budget (`max_bytes`) then deletes kept steps until the run fits: those kept only as
recent (oldest first), then those kept by `keep_period` (oldest first), then those kept by
rank (worst first). The latest and the best step are never deleted for the budget. A file
shared between steps (a hard link of an incremental save) is counted once: sizes are given
per step as {file identity: size}, and `committed_bytes` is the one place that adds them up.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from .options import check_choice, check_int, describe, parse_size

BestFn = str | Callable[[Mapping[str, float]], float]
KEEP_REASONS = ("latest", "recent", "period", "best")
OVER_BUDGET = "over budget"  # how `ckpt ls` and `ckpt prune` explain a budget deletion

StepFiles = Mapping[Hashable, int]  # one step's payload files: identity -> size


def committed_bytes(files_of_steps: Iterable[StepFiles]) -> int:
    """The bytes of these steps on disk, a file that several steps share counted once."""
    unique: dict[Hashable, int] = {}
    for files in files_of_steps:
        unique.update(files)
    return sum(unique.values())


def files_from_sizes(records: Sequence[StepRecord]) -> dict[int, StepFiles]:
    """Each step's `bytes` as one unshared file: for records that know no file identities."""
    return {r.step: {("step", r.step): int(getattr(r, "bytes", 0))} for r in records}


class StepRecord(Protocol):
    @property
    def step(self) -> int: ...

    @property
    def metrics(self) -> Mapping[str, float]: ...


@dataclass(frozen=True)
class RetentionPolicy:
    """The retention options of `CheckpointManager`, validated.

    Its field defaults are the one place the retention defaults are written: the manager's
    signature and `ckpt` (for a run that recorded none) take them from `DEFAULT_POLICY`.
    """

    max_to_keep: int | None = 5
    keep_period: int | None = None
    best_fn: BestFn | None = None
    best_mode: Literal["min", "max"] = "min"
    keep_best: int | None = 1  # None: every ranked step
    max_bytes: int | None = None  # also accepts "20GB", "500MiB": stored as an int

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_bytes", parse_size("max_bytes", self.max_bytes))
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

    def to_delete(
        self, records: Sequence[StepRecord], files: Mapping[int, StepFiles] | None = None
    ) -> list[int]:
        """The steps no rule keeps, and those the byte budget deletes, ascending.

        Args:
            records: the committed steps.
            files: each step's payload files, {identity: size}; default: each record's
                `bytes` as one unshared file.
        """
        steps = sorted({r.step for r in records})
        keep = set().union(*self._kept(steps, records).values())
        return sorted([s for s in steps if s not in keep] + self.over_budget(records, files))

    def over_budget(
        self, records: Sequence[StepRecord], files: Mapping[int, StepFiles] | None = None
    ) -> list[int]:
        """The kept steps the byte budget deletes, in the order it deletes them.

        Steps kept only as recent go first (oldest first), then those kept by `keep_period`
        (oldest first), then those kept by rank (worst first), until the rest fit
        `max_bytes`. The latest and the best step are never deleted: they may stay over it.
        """
        if self.max_bytes is None or not records:
            return []
        files = files_from_sizes(records) if files is None else files
        steps = sorted({r.step for r in records})
        kept = self._kept(steps, records)
        remaining = set().union(*kept.values())
        protected = {steps[-1], *self.ranked(records, 1)}
        ranked = [s for s in self.ranked(records, self.keep_best) if s in kept["best"]]
        order = [s for s in steps if s in kept["recent"] - kept["period"] - kept["best"]]
        order += [s for s in steps if s in kept["period"] - kept["best"]]
        order += ranked[::-1]
        # How many remaining steps hold each file: deleting a step frees only what no other holds.
        holders = Counter(ident for s in remaining for ident in files.get(s, {}))
        total = committed_bytes(files.get(s, {}) for s in remaining)
        deleted: list[int] = []
        for step in order if total > self.max_bytes else ():
            if step in protected:
                continue
            deleted.append(step)
            for ident, size in files.get(step, {}).items():
                holders[ident] -= 1
                total -= size if holders[ident] == 0 else 0
            if total <= self.max_bytes:
                break
        return deleted

    def budget_exceeded(
        self, records: Sequence[StepRecord], files: Mapping[int, StepFiles] | None = None
    ) -> str | None:
        """A warning when the steps the budget never deletes (latest, best) alone exceed it."""
        if self.max_bytes is None or not records:
            return None
        files = files_from_sizes(records) if files is None else files
        steps = sorted({r.step for r in records})
        kept = set().union(*self._kept(steps, records).values())
        protected = sorted({steps[-1], *self.ranked(records, 1)} & kept)
        total = committed_bytes(files.get(s, {}) for s in protected)
        if total <= self.max_bytes:
            return None
        which = " and ".join(
            f"step {s} ({'latest' if s == protected[-1] else 'best'})" for s in protected
        )
        return (
            f"max_bytes={self.max_bytes} is exceeded: {which} alone "
            f"{'hold' if len(protected) > 1 else 'holds'} {total} bytes, and the "
            "budget never deletes the latest or the best step. HINT: raise max_bytes above "
            f"{total}, or save a smaller state."
        )

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
            "max_bytes": self.max_bytes,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, object]) -> RetentionPolicy:
        """The settings `to_json` recorded (a function `best_fn`, recorded by name, is None)."""
        fields = ("max_to_keep", "keep_period", "best_fn", "best_mode", "keep_best", "max_bytes")
        options = {k: doc[k] for k in fields if k in doc}
        if not isinstance(options.get("best_fn"), str):
            options["best_fn"] = None
        return cls(**options)  # type: ignore[arg-type]

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


DEFAULT_POLICY = RetentionPolicy()  # what `CheckpointManager` applies when given no options
