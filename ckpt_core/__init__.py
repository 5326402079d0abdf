"""ckpt_core: crash-safe checkpoints for training runs, independent of any framework."""

__version__ = "0.1.0"

from .errors import (
    CheckpointError,
    CheckpointExistsError,
    CheckpointLockedError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    DiskFullError,
    OverBudgetWarning,
    ResumeNotExactError,
    StructureMismatchError,
    UnrankedStepWarning,
    UnsafeFormatError,
)
from .exactness import ResumeReport, check_resume_is_exact
from .formats import Format, StepReader, get_format, register_format
from .info import CheckpointInfo
from .manager import CheckpointManager
from .oneshot import checkpoint_exists, load_checkpoint, load_metadata, save_checkpoint
from .retention import RetentionPolicy

__all__ = [
    "CheckpointError",
    "CheckpointExistsError",
    "CheckpointInfo",
    "CheckpointLockedError",
    "CheckpointManager",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "DiskFullError",
    "Format",
    "OverBudgetWarning",
    "ResumeNotExactError",
    "ResumeReport",
    "RetentionPolicy",
    "StepReader",
    "StructureMismatchError",
    "UnrankedStepWarning",
    "UnsafeFormatError",
    "__version__",
    "check_resume_is_exact",
    "checkpoint_exists",
    "get_format",
    "load_checkpoint",
    "load_metadata",
    "register_format",
    "save_checkpoint",
]
