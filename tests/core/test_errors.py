"""The error hierarchy (`ckpt_core.errors`): each error is the builtin a user would catch, and
every message reads as plain text, whichever library it quotes."""

from __future__ import annotations

import errno

import pytest

from ckpt_core import (
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
from ckpt_core.errors import plain_text


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (CheckpointExistsError, FileExistsError),
        (CheckpointNotFoundError, FileNotFoundError),
        (StructureMismatchError, ValueError),
        (DiskFullError, OSError),
        (ResumeNotExactError, AssertionError),
        (CorruptCheckpointError, Exception),
        (CheckpointLockedError, Exception),
        (UnsafeFormatError, Exception),
    ],
)
def test_every_error_is_a_checkpoint_error_and_the_builtin_a_user_catches(error, builtin):
    assert issubclass(error, CheckpointError) and issubclass(error, builtin)


def test_errors_that_subclass_os_errors_still_carry_their_message():
    """`except FileNotFoundError` catches a missing checkpoint; its text is the library's own."""
    with pytest.raises(FileNotFoundError) as caught:
        raise CheckpointNotFoundError("no committed step in /r. HINT: save one first.")
    assert str(caught.value) == "no committed step in /r. HINT: save one first."
    disk_full = DiskFullError(errno.ENOSPC, "no space left on /r")
    assert disk_full.errno == errno.ENOSPC and isinstance(disk_full, OSError)


def test_a_corrupt_checkpoint_names_its_file_and_a_failed_resume_keeps_its_report():
    corrupt = CorruptCheckpointError("checksum of w.safetensors differs", path="/r/w.safetensors")
    assert corrupt.path == "/r/w.safetensors" and "w.safetensors" in str(corrupt)
    assert CorruptCheckpointError("manifest is not JSON").path is None
    report = object()
    assert ResumeNotExactError("2 leaves differ", report).report is report


def test_warnings_are_runtime_warnings_that_can_be_filtered_apart():
    assert issubclass(UnrankedStepWarning, RuntimeWarning)
    assert issubclass(OverBudgetWarning, RuntimeWarning)
    assert not issubclass(UnrankedStepWarning, OverBudgetWarning)


def test_plain_text_keeps_newlines_and_tabs_and_drops_other_control_characters():
    assert plain_text("a\x07b\x00c\x7f\n\td") == "abc\n\td"
    assert plain_text("\x1b[31;1mred\x1b[0m") == "red"


def test_error_messages_carry_no_terminal_escape_codes():
    error = CheckpointError("torch said: \x1b[1mtrust the source\x1b[0m.\n\tdetails")
    assert str(error) == "torch said: trust the source.\n\tdetails"
