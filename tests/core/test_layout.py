"""The on-disk names: what is a step, what the library owns, and what it never touches."""

from __future__ import annotations

import pytest

from ckpt_core import layout


@pytest.mark.parametrize("step", [0, 7, 100, 99_999_999, 123_456_789_012])
def test_step_names_round_trip(step: int) -> None:
    name = layout.step_dirname(step)
    assert name.startswith(layout.STEP_PREFIX)
    assert layout.parse_step(name) == step


@pytest.mark.parametrize(
    "name",
    [
        "step_1",
        "step_",
        "step_0000000a",
        "step_00000001x",
        "Step_00000001",
        "step_-0000001",
        "00000001",
        "step_00000001/",
        "step_00000001.corrupt-5",
    ],
)
def test_names_this_library_does_not_write_are_not_steps(name: str) -> None:
    assert layout.parse_step(name) is None


def test_step_names_sort_in_step_order_up_to_the_padded_width() -> None:
    steps = [3, 20, 100, 1_000, 99_999_999]
    assert sorted(layout.step_dirname(s) for s in reversed(steps)) == [
        layout.step_dirname(s) for s in steps
    ]


def test_every_name_the_library_writes_is_owned() -> None:
    step = layout.step_dirname(300)
    written = [
        step,
        layout.tmp_dirname(step, "1f2e3d4c5b6a"),
        layout.old_dirname(step, "9a8b7c6d5e4f"),
        layout.corrupt_dirname(300, 1_732_000_000),
        layout.corrupt_run_filename(1_732_000_000),
        layout.partial_name(layout.LATEST_POINTER),
        layout.partial_name(layout.RUN_FILE),
        *layout.SMALL_FILES,
    ]
    for name in written:
        assert layout.is_owned(name), name


@pytest.mark.parametrize(
    "name",
    [
        "notes.txt",
        "step_1",
        "tensorboard",
        ".tmp-mine",
        ".old-notes-9a8b7c6d5e4f",
        "run.json.bak",
        ".latest",
        "best.txt",
        "model.ckpt",
        ".lock-old",
    ],
)
def test_a_users_files_are_never_owned(name: str) -> None:
    """`overwrite` and `clear()` remove exactly what is owned: anything else is the user's."""
    assert not layout.is_owned(name)


def test_temporary_and_replaced_entries_are_recognised() -> None:
    step = layout.step_dirname(12)
    assert layout.is_temporary(layout.tmp_dirname(step, "abc123"))
    assert not layout.is_temporary(step)
    assert layout.replaced_entry_of(layout.old_dirname(step, "0123456789ab")) == step
    assert layout.replaced_entry_of(step) is None
    assert layout.is_quarantined(layout.corrupt_dirname(12, 5))
    assert not layout.is_quarantined(step)
