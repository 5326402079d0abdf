"""Checkpoint payload formats: `tree`, `torch`, `orbax`, `pickle`, and user-registered ones."""

from .protocol import DescribableFormat, Format, TreeEntry, TreeListing
from .reader import StepReader
from .registry import auto_format, get_format, register_format, resolve_format
from .snapshot import SnapshotBuffers

__all__ = [
    "DescribableFormat",
    "Format",
    "SnapshotBuffers",
    "StepReader",
    "TreeEntry",
    "TreeListing",
    "auto_format",
    "get_format",
    "register_format",
    "resolve_format",
]
