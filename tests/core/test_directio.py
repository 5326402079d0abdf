"""DirectFile: large payload files bypass the page cache, and every path writes the same bytes."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import threading

import numpy as np
import pytest

from ckpt_core import CheckpointManager, directio
from ckpt_core.storage import local as storage_module

BUFFER = 64 << 10


@pytest.fixture(autouse=True)
def small_buffers(monkeypatch):
    monkeypatch.setattr(directio, "BUFFER_BYTES", BUFFER)


def direct_io_supported(directory) -> bool:
    probe = directory / "probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
    except OSError:
        return False
    os.close(fd)
    probe.unlink()
    return True


def open_on(fd: int, path) -> bool:
    """Whether descriptor `fd` is open on `path` (a closed number may be reused elsewhere)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == str(path)
    except OSError:
        return False


def write_in_pieces(path, data: bytes, pieces: list[int]) -> directio.DirectFile:
    f = directio.DirectFile(path)
    at = 0
    for n in pieces:
        assert f.write(memoryview(data)[at : at + n]) == len(data[at : at + n])
        at += n
    f.write(memoryview(data)[at:])
    f.close()
    return f


@pytest.mark.parametrize(
    "size", [0, 1, 4095, BUFFER - 1, BUFFER, BUFFER + 1, 2 * BUFFER, 5 * BUFFER + 12345]
)
def test_every_size_is_written_exactly(tmp_path, size):
    data = np.random.default_rng(size).bytes(size)
    rng = np.random.default_rng(1)
    pieces = [int(n) for n in rng.integers(1, 3 * BUFFER, size=8)]
    f = write_in_pieces(tmp_path / "f", data, pieces)
    assert (tmp_path / "f").read_bytes() == data
    assert f.closed


def test_a_large_file_bypasses_the_page_cache_where_the_filesystem_allows(tmp_path):
    f = directio.DirectFile(tmp_path / "f")
    f.write(b"x" * (3 * BUFFER))
    flags = fcntl.fcntl(f.fileno(), fcntl.F_GETFL)
    assert bool(flags & os.O_DIRECT) == direct_io_supported(tmp_path)
    f.write(b"tail")
    f.close()
    assert (tmp_path / "f").read_bytes() == b"x" * (3 * BUFFER) + b"tail"


def test_a_small_file_is_written_through_the_page_cache(tmp_path):
    f = directio.DirectFile(tmp_path / "f")
    f.write(b"small")
    assert not fcntl.fcntl(f.fileno(), fcntl.F_GETFL) & os.O_DIRECT
    f.close()
    assert (tmp_path / "f").read_bytes() == b"small"


def test_a_filesystem_without_direct_io_gets_the_same_bytes(tmp_path, monkeypatch):
    real = fcntl.fcntl

    def refuse_direct(fd, cmd, arg=0):
        if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "O_DIRECT not supported")
        return real(fd, cmd, arg)

    monkeypatch.setattr(directio.fcntl, "fcntl", refuse_direct)
    data = np.random.default_rng(0).bytes(4 * BUFFER + 7)
    f = write_in_pieces(tmp_path / "f", data, [BUFFER // 3] * 5)
    assert not f._direct
    assert (tmp_path / "f").read_bytes() == data


def test_a_write_refused_under_direct_io_is_retried_through_the_page_cache(tmp_path, monkeypatch):
    real = os.pwrite
    refused = []

    def refuse_direct_writes(fd, data, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(directio.os, "pwrite", refuse_direct_writes)
    data = np.random.default_rng(0).bytes(4 * BUFFER + 7)
    write_in_pieces(tmp_path / "f", data, [BUFFER] * 3)
    assert (tmp_path / "f").read_bytes() == data
    assert refused == ([0] if direct_io_supported(tmp_path) else [])


def test_an_io_error_on_the_io_thread_reaches_the_writer(tmp_path, monkeypatch):
    def failing(fd, data, offset):
        raise OSError(errno.EIO, "injected I/O error")

    monkeypatch.setattr(directio.os, "pwrite", failing)
    f = directio.DirectFile(tmp_path / "f")
    fd = f.fileno()
    with pytest.raises(OSError, match="injected"):
        f.write(b"x" * (4 * BUFFER))  # the third buffer waits for the first, which failed
    with pytest.raises(OSError, match="injected"):
        f.close()  # the second buffer failed too: said, not swallowed
    assert f.closed and not open_on(fd, tmp_path / "f")  # the descriptor is not leaked


def test_pruned_steps_are_removed_off_the_saving_thread(tmp_path, monkeypatch):
    removing = threading.Event()
    release = threading.Event()
    real_rmtree = shutil.rmtree

    def slow_rmtree(path, *args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            removing.set()
            assert release.wait(10)
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(storage_module.shutil, "rmtree", slow_rmtree)
    run = tmp_path / "run"
    with CheckpointManager(run, max_to_keep=1) as mgr:
        mgr.save(1, {"w": np.zeros(4)})
        mgr.save(2, {"w": np.ones(4)})  # returns while step 1's files are being removed
        assert removing.wait(10)
        assert mgr.all_steps() == [2] and not (run / "step_00000001").exists()
        assert any(name.startswith(".tmp-step_00000001") for name in os.listdir(run))
        release.set()
        mgr.wait()
        assert sorted(n for n in os.listdir(run) if n.startswith("step_")) == ["step_00000002"]
        assert not [n for n in os.listdir(run) if n.startswith(".tmp-")]


def test_an_unclosed_file_is_dropped_without_writing(tmp_path):
    f = directio.DirectFile(tmp_path / "f")
    f.write(b"buffered, never written")
    fd = f.fileno()
    assert open_on(fd, tmp_path / "f")
    del f  # no close(): the finalizer releases the descriptor and writes nothing
    assert not open_on(fd, tmp_path / "f")
    assert (tmp_path / "f").read_bytes() == b""
