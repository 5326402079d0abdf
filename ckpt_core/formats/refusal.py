"""Why a format cannot save a state: `Refusal`, and the fix every refusal may offer (pickle)."""

from __future__ import annotations

from typing import NamedTuple

PICKLE_HINT = "save with format='pickle' (restore then needs allow_pickle=True)"


class Refusal(NamedTuple):
    """Why a format cannot save a state: the first part it refuses, and a message with the fix."""

    path: str  # of the refused leaf (or container), as `_tree.path_str` writes it
    found: str  # what is there, e.g. "the pathlib.PosixPath"
    message: str  # what was found, what the format takes, and a HINT
