"""The names of everything the library writes in a checkpoint directory, in one place.

    run/
      step_00000100/            a committed step: payload files + manifest.json (written last)
      step_00000200/
      .tmp-step_00000300-1f2e/  a step being written (local disks); swept when found stale
      .old-step_00000200-9a8b/  a replaced step, kept until its replacement is committed
      step_00000100.corrupt-1732000000/   a damaged step moved aside on resume (kept for
                                inspection; only `overwrite` and `clear()` remove it)
      latest, best              one-line pointers to step directories, for people and tools
      run.json                  run-level metadata and the completion mark
      .lock                     the single-writer lock (a lease object on object stores)

Everything matching these names is the library's; anything else in the directory is the
user's and is never touched (not even by `on_existing="overwrite"` or `clear()`).
"""

from __future__ import annotations

import re

MANIFEST = "manifest.json"
RUN_FILE = "run.json"
LOCK_FILE = ".lock"
LATEST_POINTER = "latest"
BEST_POINTER = "best"

STEP_PREFIX = "step_"
STEP_DIGITS = 8
TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
CORRUPT_MARK = ".corrupt-"

SMALL_FILES = (LATEST_POINTER, BEST_POINTER, RUN_FILE)
PARTIAL_SUFFIX = ".partial"  # `.latest.partial`: a small file being replaced

_STEP_RE = re.compile(r"^step_([0-9]+)$")
_TMP_RE = re.compile(r"^\.tmp-step_[0-9]+-[0-9a-f]+$")
_OLD_RE = re.compile(r"^\.old-(.+)-[0-9a-f]{12}$")
_CORRUPT_RE = re.compile(r"^step_[0-9]+\.corrupt-[0-9]+$")
_CORRUPT_RUN_RE = re.compile(r"^run\.json\.corrupt-[0-9]+$")


def step_dirname(step: int) -> str:
    return f"{STEP_PREFIX}{step:0{STEP_DIGITS}d}"


def parse_step(name: str) -> int | None:
    """The step of a step directory name as this library writes it, or None for any other."""
    m = _STEP_RE.match(name)
    if m is None:
        return None
    step = int(m.group(1))
    return step if step_dirname(step) == name else None  # `step_1` is not ours


def tmp_dirname(name: str, token: str) -> str:
    return f"{TMP_PREFIX}{name}-{token}"


def old_dirname(name: str, token: str) -> str:
    return f"{OLD_PREFIX}{name}-{token}"


def corrupt_dirname(step: int, stamp: int) -> str:
    return f"{step_dirname(step)}{CORRUPT_MARK}{stamp}"


def corrupt_run_filename(stamp: int) -> str:
    """Where a damaged `run.json` is moved aside, for inspection."""
    return f"{RUN_FILE}{CORRUPT_MARK}{stamp}"


def is_temporary(name: str) -> bool:
    return bool(_TMP_RE.match(name))


def partial_name(name: str) -> str:
    return f".{name}{PARTIAL_SUFFIX}"


def is_partial(name: str) -> bool:
    return name in {partial_name(n) for n in SMALL_FILES}


def replaced_entry_of(name: str) -> str | None:
    """For a `.old-<name>-<token>` entry, the directory it was moved aside from."""
    m = _OLD_RE.match(name)
    return m.group(1) if m else None


def is_quarantined(name: str) -> bool:
    return bool(_CORRUPT_RE.match(name))


def is_owned(name: str) -> bool:
    """True for every top-level entry the library writes (what `overwrite` and `clear` remove)."""
    return (
        parse_step(name) is not None
        or is_temporary(name)
        or is_quarantined(name)
        or is_partial(name)
        or parse_step(replaced_entry_of(name) or "") is not None
        or name in SMALL_FILES
        or bool(_CORRUPT_RUN_RE.match(name))
    )
