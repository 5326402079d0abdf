"""Careless input (`ckpt_core.options`), as a new user types it, gets a short error naming what is
wrong, and nothing is written: options of the wrong type, metrics that are no numbers, the state
passed as the step (issue 12, item 5). Directories that cannot hold a run and a full disk are in
test_storage_os_errors.py."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckpt_core import (
    CheckpointManager,
    CheckpointNotFoundError,
    RetentionPolicy,
    UnrankedStepWarning,
    load_checkpoint,
    save_checkpoint,
)

MAX_MESSAGE = 400  # "a few hundred characters": never a dumped array or state


def state(v: float) -> dict[str, Any]:
    return {"w": np.full(4, v, np.float32)}


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# ---------------------------------------------------------------- options


@pytest.mark.parametrize(
    "options, error, fragment",
    [
        ({"save_interval_secs": "60"}, TypeError, "save_interval_secs must be a number"),
        ({"save_interval_secs": 0}, ValueError, "save_interval_secs must be a positive"),
        ({"async_save": "no"}, TypeError, "async_save must be True or False; found 'no'"),
        ({"async_save": 1}, TypeError, "async_save must be True or False; found 1"),
        ({"read_only": "no"}, TypeError, "read_only must be True or False"),
        ({"allow_pickle": "yes"}, TypeError, "allow_pickle must be True or False"),
        ({"max_to_keep": "3"}, TypeError, "max_to_keep must be an int >= 1, or None"),
        ({"max_to_keep": 3.0}, TypeError, r"max_to_keep .* found 3\.0 \(float\)"),
        ({"max_to_keep": True}, TypeError, r"max_to_keep .* found True \(bool\)"),
        ({"keep_period": 1.5}, TypeError, r"keep_period .* found 1\.5"),
        ({"keep_best": True}, TypeError, r"keep_best .* found True"),
        ({"keep_best": "2"}, TypeError, r"keep_best .* found '2' \(str\)"),
        ({"best_mode": "Min"}, ValueError, "best_mode must be 'min' or 'max'; found 'Min'"),
        ({"save_interval_steps": "10"}, TypeError, "save_interval_steps must be an int"),
        ({"storage_options": "key=x"}, TypeError, "storage_options must be a dict or None"),
        ({"storage_options": ["key"]}, TypeError, "storage_options .* found a list"),
    ],
)
def test_an_option_of_the_wrong_type_or_value_is_refused_naming_it(
    run_dir, options, error, fragment
):
    with pytest.raises(error, match=fragment) as err:
        CheckpointManager(run_dir, **options)
    assert len(str(err.value)) < MAX_MESSAGE
    assert not run_dir.exists()  # refused before anything is created


def test_an_empty_directory_is_refused_not_taken_as_the_current_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"directory is '': it names no directory.*HINT"):
        CheckpointManager("")
    with pytest.raises(TypeError, match="must be a path or a URL; found None"):
        CheckpointManager(None)  # type: ignore[arg-type]
    assert entries(tmp_path) == []
    CheckpointManager(".").close()  # the current directory, when asked for, still works


# ---------------------------------------------------------------- metrics


@pytest.mark.parametrize(
    "metrics, fragment",
    [
        (0.5, r"metrics must be a mapping of names to numbers; found 0\.5 \(float\)"),
        ([("loss", 0.5)], "metrics must be a mapping .* found a list"),
        ({"loss": "0.5"}, r"metric 'loss' must be a scalar number.*found '0\.5' \(str\)"),
        ({"loss": True}, r"metric 'loss' .* found True \(bool\).*HINT"),
        ({"ok": np.bool_(True)}, r"metric 'ok' .* found a numpy\.bool"),
        ({"loss": np.ones(1000)}, r"metric 'loss' .* found a numpy\.ndarray"),
    ],
)
def test_metrics_that_are_no_numbers_are_refused_and_nothing_is_saved(run_dir, metrics, fragment):
    with CheckpointManager(run_dir, best_fn="loss") as mgr:
        with pytest.raises(TypeError, match=fragment) as err:
            mgr.save(1, state(1), metrics=metrics)
        assert len(str(err.value)) < MAX_MESSAGE
        assert mgr.all_steps() == []
    assert not any(p.name.startswith("step_") for p in run_dir.iterdir())


def test_infinite_metrics_are_kept_but_never_rank_as_best(run_dir):
    with CheckpointManager(run_dir, best_fn="loss", max_to_keep=None) as mgr:
        mgr.save(1, state(1), metrics={"loss": 0.5})
        for step, value in ((2, -math.inf), (3, math.inf), (4, np.float32("-inf"))):
            with pytest.warns(UnrankedStepWarning, match=r"'loss' is -?inf, not a finite number"):
                mgr.save(step, state(step), metrics={"loss": value})
        assert mgr.best_step() == 1  # -inf used to be the best forever
        assert mgr.metrics(2) == {"loss": -math.inf}  # stored as given
        assert "best" not in mgr.info(2).kept_because
    with CheckpointManager(run_dir, best_fn="loss", best_mode="max", read_only=True) as mgr:
        assert mgr.best_step() == 1
    assert RetentionPolicy(best_fn=lambda m: m["loss"]).score({"loss": math.inf}) is None


def test_the_unranked_warning_comes_only_after_the_save_went_through(run_dir):
    unsaveable = {"w": np.ones(2), "handle": object()}
    for async_save in (False, True):
        with CheckpointManager(
            run_dir, best_fn="loss", format="tree", async_save=async_save
        ) as mgr:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with pytest.raises(TypeError):
                    mgr.save(1, unsaveable, metrics={"acc": 1.0})
            assert [w.message for w in caught] == []
            with pytest.warns(UnrankedStepWarning, match="'loss' is not among"):
                mgr.save(1, state(1), metrics={"acc": 1.0})
            mgr.clear()


def test_run_metadata_must_be_a_mapping(run_dir):
    with CheckpointManager(run_dir) as mgr:
        with pytest.raises(TypeError, match=r"takes a dict of JSON values; found a list"):
            mgr.update_run_metadata([("seed", 0)])  # type: ignore[arg-type]
        assert mgr.run_metadata == {}


# ---------------------------------------------------------------- steps


def test_restore_given_the_state_as_step_says_so_briefly(run_dir):
    big = {"w": np.arange(100_000.0), "opt": {"m": np.zeros(50_000)}}
    with CheckpointManager(run_dir) as mgr:
        mgr.save(1, big)
        with pytest.raises(ValueError, match=r"found a dict\. HINT: .*like=") as err:
            mgr.restore(big)  # type: ignore[arg-type]
        assert len(str(err.value)) < MAX_MESSAGE
        with pytest.raises(ValueError, match=r"found an? numpy\.ndarray") as err:
            mgr.restore(big["w"])  # type: ignore[arg-type]
        assert len(str(err.value)) < MAX_MESSAGE
        with pytest.raises(ValueError, match=r"HINT: the step comes first") as err:
            mgr.save(big, 2)  # type: ignore[arg-type]
        assert len(str(err.value)) < MAX_MESSAGE
        with pytest.raises(ValueError, match=r"found -1\. HINT: restore\('latest'\)"):
            mgr.restore(-1)


# ---------------------------------------------------------------- one-shot functions


def test_one_shot_metadata_that_is_not_json_is_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match=r"metadata must be JSON-serialisable.*ndarray.*HINT"):
        save_checkpoint(tmp_path / "ckpt", state(1), metadata={"mean": np.ones(3)})
    with pytest.raises(TypeError, match=r"metadata must be JSON-serialisable.*set"):
        save_checkpoint(tmp_path / "ckpt", state(1), metadata={"tags": {"a"}})
    assert entries(tmp_path) == []
    with pytest.raises(CheckpointNotFoundError, match=r"the directory does not exist.*HINT"):
        load_checkpoint(tmp_path / "ckpt")


def test_input_checks(run_dir):
    with CheckpointManager(run_dir) as mgr:
        assert mgr.save(np.int64(5), state(5))
        assert mgr.all_steps() == [5]
    with pytest.raises(TypeError, match="Format object"):
        CheckpointManager(run_dir / "x", format=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_to_keep"):  # a bool is no count
        RetentionPolicy(max_to_keep=True)
