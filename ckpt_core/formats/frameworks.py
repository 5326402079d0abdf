"""Optional frameworks a format imports only when it runs, failing with the install hint."""

from __future__ import annotations

import importlib
from typing import Any


def framework_missing(package: str, extra: str, why: str) -> ImportError:
    return ImportError(
        f"{why} needs {package!r}, which is not installed. HINT: pip install 'ckpt-core[{extra}]'"
    )


def require(module: str, *, package: str, extra: str, why: str) -> Any:
    """Import `module`, or raise the ImportError that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise framework_missing(package, extra, why) from None


def torch_module() -> Any:
    return require("torch", package="torch", extra="torch", why="the torch format")
