"""What `ckpt ls` sees (`ckpt_core.listing`): each entry of a run classified, nested runs found."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ckpt_core import CheckpointManager, layout
from ckpt_core.listing import find_runs, scan_run
from ckpt_core.retention import RetentionPolicy
from ckpt_core.run import open_directory


def fill(run_dir: Path, losses: dict[int, float], **options) -> None:
    with CheckpointManager(run_dir, best_fn="loss", max_to_keep=None, **options) as mgr:
        for step, loss in losses.items():
            mgr.save(step, {"w": np.full(3, step, np.float32)}, metrics={"loss": loss})


def test_every_library_entry_is_classified_and_user_files_are_not_listed(run_dir: Path) -> None:
    fill(run_dir, {1: 0.5, 2: 0.2, 3: 0.4})
    (run_dir / ".tmp-step_00000004-0a1b2c").mkdir()  # a writer killed mid-save
    (run_dir / ".old-step_00000002-0123456789ab").mkdir()  # kept until a replacement commits
    (run_dir / "step_00000005.corrupt-1700000000").mkdir()  # quarantined on resume
    (run_dir / "step_00000006").mkdir()  # no manifest: not a step
    (run_dir / "notes.txt").write_text("mine")

    listing = scan_run(open_directory(run_dir))

    assert [info.step for info in listing.steps] == [1, 2, 3]
    assert listing.steps[1].metrics == {"loss": 0.2} and listing.steps[1].format == "tree"
    kinds = {entry.name: (entry.kind, entry.step) for entry in listing.others}
    assert kinds == {
        ".tmp-step_00000004-0a1b2c": ("temporary", 4),
        ".old-step_00000002-0123456789ab": ("replaced", 2),
        "step_00000005.corrupt-1700000000": ("quarantined", 5),
        "step_00000006": ("invalid", 6),
    }
    invalid = next(e for e in listing.others if e.kind == "invalid")
    assert layout.MANIFEST in invalid.detail and str(run_dir) not in invalid.detail
    assert (listing.latest_pointer, listing.best_pointer) == (3, 2)
    assert set(listing.files) == {1, 2, 3}


def test_the_runs_own_best_comes_from_the_retention_it_recorded(run_dir: Path) -> None:
    fill(run_dir, {1: 0.5, 2: 0.2, 3: 0.4})
    listing = scan_run(open_directory(run_dir))
    assert listing.recorded_policy == RetentionPolicy(max_to_keep=None, best_fn="loss")
    assert listing.run_best() == 2 and not listing.complete
    assert listing.ranked_steps(RetentionPolicy(best_fn="loss", best_mode="max")) == [1, 3, 2]
    kept = listing.kept_because(RetentionPolicy(max_to_keep=1, best_fn="loss"))
    assert "best" in kept[2] and "latest" in kept[3] and kept[1] == ()


def test_a_damaged_run_json_is_reported_and_the_best_pointer_stands_in(run_dir: Path) -> None:
    fill(run_dir, {1: 0.5, 2: 0.2, 3: 0.4})
    (run_dir / layout.RUN_FILE).write_text("[]")
    listing = scan_run(open_directory(run_dir))
    assert listing.run_doc == {} and listing.recorded_policy is None
    assert listing.run_doc_error is not None and "damaged" in listing.run_doc_error
    assert listing.run_best() == 2  # the writer's `best` pointer


def test_a_finished_run_is_complete(run_dir: Path) -> None:
    with CheckpointManager(run_dir) as mgr:
        mgr.save(1, {"w": np.zeros(2)})
        mgr.mark_complete()
    assert scan_run(open_directory(run_dir)).complete
    assert json.loads((run_dir / layout.RUN_FILE).read_text())["complete"] is True


def test_nested_runs_are_found_in_natural_order_without_entering_steps(tmp_path: Path) -> None:
    for name in ("sweep/trial_10", "sweep/trial_2", "sweep/trial_2/inner", "other"):
        fill(tmp_path / name, {1: 1.0})
    (tmp_path / "sweep" / ".hidden").mkdir()
    fill(tmp_path / "sweep" / ".hidden" / "run", {1: 1.0})
    (tmp_path / "empty").mkdir()
    runs = [str(Path(r).relative_to(tmp_path)) for r in find_runs(tmp_path)]
    assert runs == ["other", "sweep/trial_2", "sweep/trial_2/inner", "sweep/trial_10"]
    assert find_runs(tmp_path / "other") == [str(tmp_path / "other")]


def test_an_emptied_run_still_counts_as_a_run(run_dir: Path) -> None:
    with CheckpointManager(run_dir) as mgr:
        mgr.save(1, {"w": np.zeros(2)})
        mgr.clear()
    assert find_runs(run_dir) == [str(run_dir)]


def test_find_runs_refuses_a_missing_directory_and_a_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_runs(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a checkpoint directory"):
        find_runs(tmp_path / "file")
