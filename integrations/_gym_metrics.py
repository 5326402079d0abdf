"""A Gymnasium run's checkpoint metrics: what `learn` returned, averaged between checkpoints.

`learn` returns metrics at every env step; a checkpoint records their means since the
previous one, with the runner's own episode metrics (mean return and length over the last
`metric_window` episodes). Values are converted by the core's `to_float_metrics` as they
arrive, so a value that is not a number fails at the step that returned it, with the core's
message. Ranking by `best_metric` is the manager's; this module only says, in the runner's
terms, when the metric it ranks by is missing.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ckpt_core import UnrankedStepWarning
from ckpt_core.manifest import to_float_metrics

from ._gym_config import RunnerConfig

# Metrics the runner reports itself (see `MetricAverages.pop`).
EPISODE_METRICS = ("episode_return", "episode_length")


class MetricAverages:
    """Sums and counts of each metric `learn` returned since the previous checkpoint."""

    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self.reported: set[str] = set()  # every key `learn` returned in this process

    def add(self, metrics: Mapping[str, Any] | None) -> None:
        """Add one step's metrics (None: the step reported none)."""
        if not metrics:
            return
        if not self.reported.issuperset(metrics):
            self.reported.update(metrics)
        for key, value in to_float_metrics(metrics).items():
            self._sums[key] = self._sums.get(key, 0.0) + value
            self._counts[key] = self._counts.get(key, 0) + 1

    def pop(
        self, step: int, episode_returns: Sequence[float], episode_lengths: Sequence[int]
    ) -> tuple[dict[str, float], bool]:
        """The metrics of checkpoint `step`, then start over.

        Returns:
            The means since the previous checkpoint with the episode metrics, and whether the
            step is unranked for lack of `best_metric` (then the warning was given).

        Raises:
            ValueError: see `check_best_metric`.
        """
        window = self.config.metric_window
        out = {key: self._sums[key] / self._counts[key] for key in self._sums}
        if episode_returns:
            out["episode_return"] = float(np.mean(episode_returns[-window:]))
            out["episode_length"] = float(np.mean(episode_lengths[-window:]))
        self._sums.clear()
        self._counts.clear()
        directory = self.config.checkpoint_dir
        unranked = check_best_metric(
            self.config.best_metric, out, self.reported, step=step, directory=directory
        )
        return out, unranked


def check_best_metric(
    name: str | None,
    metrics: Mapping[str, float],
    reported: set[str],
    *,
    step: int,
    directory: Any,
) -> bool:
    """Refuse a `best_metric` that nothing reports; warn if it is merely not there yet.

    Returns:
        True if checkpoint `step` will be unranked (and the warning was given).

    Raises:
        ValueError: `learn` returned metrics, never this one, and it is not an episode metric.
    """
    if name is None or name in metrics:
        return False
    names = sorted(reported)
    if name not in EPISODE_METRICS and name not in names and names:
        shown = ", ".join(map(repr, names[:5])) + (", ..." if len(names) > 5 else "")
        raise ValueError(
            f"RunnerConfig(best_metric={name!r}): nothing reports it at checkpoint {step}. "
            f"The runner reports 'episode_return' and 'episode_length'; the agent's learn() "
            f"returned {shown}. HINT: return {{{name!r}: value}} from learn(), or pick one "
            "of those names."
        )
    if name in EPISODE_METRICS:
        why = "no episode has finished yet"
    elif names:
        why = "the agent's learn() has not returned it since the previous checkpoint"
    else:
        why = "the agent's learn() has returned no metrics yet"
    warnings.warn(
        f"checkpoint {step} in {directory} has no {name!r} (best_metric): "
        f"{why}, so it is saved unranked. HINT: the runner reports 'episode_return' and "
        f"'episode_length'; an agent reports {name!r} by returning it from learn().",
        UnrankedStepWarning,
        stacklevel=5,
    )
    return True
