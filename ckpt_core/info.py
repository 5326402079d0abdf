"""`CheckpointInfo`: what is known about a committed step, read from its manifest alone."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CheckpointInfo:
    """One committed step.

    Attributes:
        step: the training step.
        time: when it was committed (seconds since the epoch).
        metrics: the numbers saved with it.
        metadata: the JSON metadata saved with it.
        path: its directory (a `Path` locally, a URL string on object stores).
        bytes: the size of its payload files.
        format: the format that wrote it.
        kept_because: why retention keeps it: any of "latest", "recent", "period", "best".
    """

    step: int
    time: float
    metrics: Mapping[str, float]
    metadata: Any
    path: Path | str
    bytes: int
    format: str
    kept_because: tuple[str, ...] = field(default=())
