"""Checks of user-given options: a wrong type is a TypeError, a wrong value a ValueError.

Each message names the option, what was found and what is expected, and never dumps a large
value (a tree passed by mistake is described by its type only). The core and the adapters
share these, so `every_n_steps="10"` and `max_to_keep="3"` read alike.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping
from typing import Any, Literal

OnExisting = Literal["error", "resume", "overwrite"]
"""What opening an existing run directory does: refuse, continue it, or start over."""


def describe(value: Any) -> str:
    """`value` for an error message: a short repr and type of a scalar, the type of the rest."""
    if value is None:
        return "None"
    if isinstance(value, bool | int | float | str | bytes):
        text = repr(value)
        text = text if len(text) <= 40 else f"{text[:37]}..."
        return f"{text} ({type(value).__name__})"
    kind = type(value)
    module = "" if kind.__module__ == "builtins" else f"{kind.__module__.split('.')[0]}."
    return f"a {module}{kind.__qualname__}"


def check_int(
    name: str, value: Any, *, minimum: int, none: str | None = None, example: Any = None
) -> None:
    """An int (not a bool) >= `minimum`; None too when `none` says what None means."""
    if value is None and none is not None:
        return
    allowed = f"an int >= {minimum}" + (f", or None ({none})" if none else "")
    hint = f" HINT: e.g. {name}={example if example is not None else max(minimum, 1)}."
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {allowed}; found {describe(value)}.{hint}")
    if value < minimum:
        raise ValueError(f"{name} must be {allowed}; found {value}.{hint}")


def check_bool(name: str, value: Any) -> None:
    """True or False: a truthy string such as "no" must not switch an option on."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False; found {describe(value)}.")


def check_seconds(name: str, value: Any) -> None:
    """None or a positive number of seconds."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a number of seconds or None; found {describe(value)}. "
            f"HINT: e.g. {name}=600."
        )
    if not float(value) > 0:  # NaN too
        raise ValueError(f"{name} must be a positive number of seconds or None; found {value}.")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        expected = ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}"
        raise ValueError(f"{name} must be {expected}; found {describe(value)}.")


def check_mapping(name: str, value: Any) -> None:
    """None or a mapping (e.g. fsspec's storage_options)."""
    if value is not None and not isinstance(value, Mapping):
        raise TypeError(
            f"{name} must be a dict or None; found {describe(value)}. "
            f"HINT: e.g. {name}={{'endpoint_url': 'http://localhost:9000'}}."
        )


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "pb": 10**15,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "pib": 2**50,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_size(name: str, value: Any) -> int | None:
    """None, a positive int of bytes, or a string such as "20GB", "500MiB", "1.5 GiB".

    Decimal units (kB, MB, GB, TB, PB) count powers of 1000, binary ones (KiB ... PiB) of 1024.
    """
    hint = f"HINT: e.g. {name}='20GB', {name}='500MiB' or {name}=2_000_000_000."
    if value is None:
        return None
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        unit = _SIZE_UNITS.get(match.group(2).lower()) if match else None
        if match is None or unit is None:
            raise ValueError(
                f"{name} must be a number of bytes or a size with a unit (B, kB, MB, GB, TB, "
                f"KiB, MiB, GiB, TiB); found {describe(value)}. {hint}"
            )
        nbytes = int(float(match.group(1)) * unit)
    elif isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name} must be an int of bytes, a size string or None; "
            f"found {describe(value)}. {hint}"
        )
    else:
        nbytes = value
    if nbytes <= 0:
        raise ValueError(f"{name} must be a positive size; found {describe(value)}. {hint}")
    return nbytes


def human_bytes(n: int | None) -> str:
    """`1.2 MB`: decimal units, as `ls -h --si` and disk vendors count."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def on_existing_from_flags(resume: bool, overwrite: bool, *, caller: str) -> OnExisting:
    """The `on_existing` option for an adapter's `resume` and `overwrite` flags.

    Raises:
        TypeError: one is not a bool (`resume="no"` must not resume).
        ValueError: both are set; the message names `caller`, e.g. "CkptCallback".
    """
    check_bool("resume", resume)
    check_bool("overwrite", overwrite)
    if resume and overwrite:
        raise ValueError(
            f"{caller} got resume=True and overwrite=True; they exclude each other. HINT: "
            "resume=True continues the run in the directory, overwrite=True deletes its "
            "checkpoints and starts over; pass only one."
        )
    return "resume" if resume else "overwrite" if overwrite else "error"
