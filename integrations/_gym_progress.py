"""The reference loop's progress bar (rich, on stderr): timesteps, episodes, mean return."""

from __future__ import annotations

import math
from typing import Any

# Progress bar refresh period in timesteps: a redraw per step would cost more than the step.
_PROGRESS_EVERY = 250


class ProgressBar:
    """A rich progress bar: timesteps, episodes, recent mean return."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]timesteps"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("episodes {task.fields[episodes]}"),
            TextColumn("mean return {task.fields[mean_return]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.task: Any = None

    def _fields(self, hook: Any) -> dict[str, Any]:
        mean = hook.mean_return()
        return {
            "episodes": hook.episodes,
            "mean_return": "-" if math.isnan(mean) else f"{mean:.2f}",
        }

    def on_start(self, hook: Any) -> None:
        self.progress.start()
        self.task = self.progress.add_task(
            "run", total=hook.config.total_timesteps, completed=hook.timesteps, **self._fields(hook)
        )

    def on_step(self, hook: Any) -> None:
        if hook.timesteps % _PROGRESS_EVERY == 0:
            self.progress.update(self.task, completed=hook.timesteps)

    def on_episode_end(self, hook: Any, episode_return: float, length: int) -> None:
        self.progress.update(self.task, completed=hook.timesteps, **self._fields(hook))

    def on_end(self, hook: Any, result: Any) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=hook.timesteps, **self._fields(hook))

    def close(self) -> None:
        self.progress.stop()


def stderr_is_terminal() -> bool:
    from rich.console import Console

    return Console(stderr=True).is_terminal
