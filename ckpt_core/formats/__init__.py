"""Checkpoint payload formats: `tree`, `torch`, `orbax`, `pickle`, and user-registered ones."""

from .base import Format, StepReader, auto_format, get_format, register_format

__all__ = ["Format", "StepReader", "auto_format", "get_format", "register_format"]
