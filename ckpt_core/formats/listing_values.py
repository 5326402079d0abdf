"""How a step listing shows a scalar leaf: short enough for one table cell."""

from __future__ import annotations

from typing import Any


def short_value(value: Any) -> Any:
    """A scalar as a listing shows it: long text cut, bytes and bytearrays as their length."""
    if isinstance(value, str) and len(value) > 60:
        return value[:57] + "..."
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    return value
