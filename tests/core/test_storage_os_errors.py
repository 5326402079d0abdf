"""Operating-system errors (`ckpt_core.storage.os_errors`): a file, /proc, a missing or read-only
directory and a full disk are each named with what to do, and nothing half-written is left."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ckpt_core import (
    CheckpointError,
    CheckpointManager,
    CheckpointNotFoundError,
    DiskFullError,
    checkpoint_exists,
    save_checkpoint,
)
from tests.core.test_options import entries, state

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
