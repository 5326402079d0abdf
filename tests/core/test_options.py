"""Careless input, as a new user types it, gets a short error naming what is wrong, and nothing is
written: options of the wrong type, metrics that are no numbers, the state passed as the step,
directories that cannot hold a run, and errors of background saves (issue 12, item 5)."""

from __future__ import annotations

import errno
import math
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckpt_core import (
    CheckpointError,
    CheckpointManager,
    CheckpointNotFoundError,
    DiskFullError,
    RetentionPolicy,
    UnrankedStepWarning,
    checkpoint_exists,
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


# ---------------------------------------------------------------- directories


def test_a_file_where_the_directory_should_be_is_named_with_a_hint(tmp_path):
    afile = tmp_path / "notes.txt"
    afile.write_text("mine\n")
    for directory in (afile, afile / "run"):
        for read_only in (False, True):
            with pytest.raises(NotADirectoryError, match="is a file, not a directory") as err:
                CheckpointManager(directory, read_only=read_only)
            assert f"{afile} is a file" in str(err.value) and "HINT" in str(err.value)
    with pytest.raises(NotADirectoryError, match=f"{afile} is a file.*HINT"):
        save_checkpoint(afile / "ckpt", state(1))
    assert not checkpoint_exists(afile / "ckpt")
    assert entries(tmp_path) == ["notes.txt"] and afile.read_text() == "mine\n"


def test_a_directory_under_proc_is_refused_with_a_hint():
    with pytest.raises(CheckpointNotFoundError, match=r"/proc/self/ckpt.*HINT: .*regular"):
        CheckpointManager("/proc/self/ckpt")
    with pytest.raises(CheckpointNotFoundError, match=r"/proc/self.*HINT"):
        save_checkpoint("/proc/self/ckpt", state(1))
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        CheckpointManager("/proc/self/ckpt", read_only=True)


def test_a_missing_directory_opened_read_only_is_not_found_and_not_created(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match=r"runs/typo does not exist.*HINT"):
        CheckpointManager(tmp_path / "runs" / "typo", read_only=True)
    assert entries(tmp_path) == []
    (tmp_path / "empty").mkdir()  # an existing directory without steps still opens
    with CheckpointManager(tmp_path / "empty", read_only=True) as mgr:
        assert mgr.all_steps() == []
    assert entries(tmp_path / "empty") == []


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch):
    """A directory that cannot be written: a read-only tmpfs as root, else mode 0o500; as root
    where mount is not permitted, EROFS injected into every mkdir and open for writing below it
    (as the disk-full suite injects ENOSPC)."""
    where = tmp_path / "ro"
    where.mkdir()
    if os.geteuid() != 0:
        where.chmod(0o500)
        yield where
        where.chmod(0o700)
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        _inject_read_only(monkeypatch, where)
        yield where
        return
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _inject_read_only(monkeypatch: pytest.MonkeyPatch, where: Path) -> None:
    real_mkdir, real_open = os.mkdir, os.open

    def refuse(path: Any) -> None:
        if str(os.fspath(path)).startswith(str(where)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        refuse(path)
        real_mkdir(path, *args, **kwargs)

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)


def test_a_read_only_filesystem_is_named_with_a_hint(read_only_dir):
    for directory in (read_only_dir, read_only_dir / "run"):
        with pytest.raises(OSError, match=f"cannot keep checkpoints in {directory}.*HINT") as err:
            CheckpointManager(directory)
        assert err.value.errno in (errno.EROFS, errno.EACCES)
        assert isinstance(err.value.__cause__, OSError)
    with pytest.raises(OSError, match=r"cannot keep checkpoints in .*HINT"):
        save_checkpoint(read_only_dir / "ckpt", state(1))
    assert entries(read_only_dir) == []


# ---------------------------------------------------------------- background errors


class DiskFilling:
    """A format whose write fails the way a full disk makes `write` fail."""

    name = "disk-filling-test"

    def accepts(self, s: Any) -> bool:
        return False

    def snapshot(self, s: Any) -> Any:
        return s

    def write(self, s: Any, writer: Any) -> None:
        with writer.open("payload.bin") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def read(self, reader: Any, like: Any = None) -> Any:  # pragma: no cover
        raise AssertionError


@pytest.mark.parametrize("async_save", [False, True])
def test_a_full_disk_raises_disk_full_error_sync_or_async(run_dir, async_save):
    with CheckpointManager(run_dir, format=DiskFilling(), async_save=async_save) as mgr:
        with pytest.raises(DiskFullError, match="the disk is full") as err:
            mgr.save(1, state(1))
            mgr.wait()
        assert isinstance(err.value, OSError) and isinstance(err.value, CheckpointError)
        assert err.value.errno == errno.ENOSPC
        assert isinstance(err.value.__cause__, OSError)
        assert err.value.__cause__.errno == errno.ENOSPC
        assert mgr.all_steps() == []
        with pytest.raises(DiskFullError):  # raised once; the next save is attempted anew
            mgr.save(2, state(2))
            mgr.wait()
    assert entries(run_dir) == [".lock", "run.json"]


# ---------------------------------------------------------------- one-shot functions


def test_one_shot_metadata_that_is_not_json_is_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match=r"metadata must be JSON-serialisable.*ndarray.*HINT"):
        save_checkpoint(tmp_path / "ckpt", state(1), metadata={"mean": np.ones(3)})
    with pytest.raises(TypeError, match=r"metadata must be JSON-serialisable.*set"):
        save_checkpoint(tmp_path / "ckpt", state(1), metadata={"tags": {"a"}})
    assert entries(tmp_path) == []
    with pytest.raises(CheckpointNotFoundError, match=r"manifest\.json is missing"):
        load_checkpoint(tmp_path / "ckpt")
