"""Optional frameworks a format imports only when it runs, failing with the install hint."""

from __future__ import annotations

from typing import Any


def framework_missing(package: str, extra: str, why: str) -> ImportError:
    return ImportError(
        f"{why} needs {package!r}, which is not installed. HINT: pip install 'ckpt-core[{extra}]'"
    )


def torch_module() -> Any:
    try:
        import torch
    except ImportError:
        raise framework_missing("torch", "torch", "the torch format") from None
    return torch
