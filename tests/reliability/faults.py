"""Fault injection shared by the reliability tests: failing system calls, damage, states.

`SyscallFaults` wraps the calls a save makes to put bytes on disk (file writes, `fsync`,
`rename`/`replace`, opening files for writing, `mkdir`) and, for calls that touch one
checkpoint directory, counts them or fails the k-th with a chosen errno. A first pass
counts the call sites of one save; then one run per site fails exactly that call.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

WRITE_MODES = ("w", "a", "x", "+")


@dataclass
class Call:
    kind: str  # write, fsync, rename, replace, open, mkdir
    path: str


class InjectedFault(OSError):
    """The error a failing call raises (an OSError with the requested errno)."""


@dataclass
class SyscallFaults:
    """Counts, and optionally fails, the write-side system calls that touch `root`.

    Args:
        root: only calls on paths under this directory count.
        fail_at: fail the call with this index (0-based, in call order); None: only count.
        errno_: the errno of the injected failure (EIO: an I/O error; ENOSPC: disk full).
        budget: bytes that may be written; every write beyond fails with ENOSPC.
        fail_when: fail the first call for which this returns True.
    """

    root: Path
    fail_at: int | None = None
    errno_: int = errno.EIO
    budget: int | None = None  # bytes: once written, every further write fails with ENOSPC
    fail_when: Callable[[Call], bool] | None = None  # or: fail the first call this selects
    calls: list[Call] = field(default_factory=list)
    failed: Call | None = None
    written: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _inside(self, path: Any) -> bool:
        try:
            text = os.fsdecode(path)
        except TypeError:
            return False
        return text.startswith(str(self.root) + os.sep) or text == str(self.root)

    def _fd_path(self, fd: int) -> str:
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return ""

    def hit(self, kind: str, path: Any, nbytes: int = 0) -> None:
        """Record a call on `path`; raise the injected error if it is the one to fail."""
        if not self._inside(path):
            return
        with self._lock:
            index = len(self.calls)
            call = Call(kind, os.fsdecode(path))
            self.calls.append(call)
            full = self.budget is not None and self.written + nbytes > self.budget
            if not full:
                self.written += nbytes
            chosen = index == self.fail_at or (
                self.fail_when is not None and self.failed is None and self.fail_when(call)
            )
            if not chosen and not full:
                return
            self.failed = call
        code = errno.ENOSPC if full else self.errno_
        message = f"injected {os.strerror(code)} at {kind} call #{index} on {call.path}"
        raise InjectedFault(code, message)

    @contextlib.contextmanager
    def active(self) -> Iterator[SyscallFaults]:
        faults = self
        real = {
            name: getattr(os, name)
            for name in ("write", "pwrite", "fsync", "fdatasync", "rename", "replace", "mkdir")
        }
        real_open = builtins.open
        real_os_open = os.open

        class FaultyFileIO(io.FileIO):
            def write(self, data: Any) -> int | None:
                faults.hit("write", self.name, memoryview(data).nbytes)
                return super().write(data)

        def faulty_open(file: Any, mode: str = "r", buffering: int = -1, *args: Any, **kw: Any):
            if (
                isinstance(file, int)
                or not any(c in mode for c in WRITE_MODES)
                or not faults._inside(file)
            ):
                return real_open(file, mode, buffering, *args, **kw)
            faults.hit("open", file)
            raw_mode = mode.replace("b", "").replace("t", "") + "b"
            raw = FaultyFileIO(file, raw_mode.replace("+b", "b+"))
            if buffering == 0:
                return raw
            buffered: Any = io.BufferedRandom(raw) if "+" in mode else io.BufferedWriter(raw)
            if "b" in mode:
                return buffered
            return io.TextIOWrapper(buffered, *args, **kw)

        def by_fd(name: str, kind: str) -> Any:
            def call(fd: int, *args: Any) -> Any:
                nbytes = memoryview(args[0]).nbytes if kind == "write" else 0
                faults.hit(kind, faults._fd_path(fd), nbytes)
                return real[name](fd, *args)

            return call

        def by_path(name: str) -> Any:
            def call(path: Any, *args: Any, **kw: Any) -> Any:
                # mkdir of an existing directory (`exist_ok=True`) writes nothing: not a site.
                if name != "mkdir" or not os.path.isdir(path):
                    faults.hit(name, path)
                return real[name](path, *args, **kw)

            return call

        def faulty_os_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                faults.hit("open", path)
            return real_os_open(path, flags, *args, **kw)

        patches = {
            "write": by_fd("write", "write"),
            "pwrite": by_fd("pwrite", "write"),
            "fsync": by_fd("fsync", "fsync"),
            "fdatasync": by_fd("fdatasync", "fsync"),
            "rename": by_path("rename"),
            "replace": by_path("replace"),
            "mkdir": by_path("mkdir"),
        }
        # The core swaps a replaced step in with renameat2(RENAME_EXCHANGE) through ctypes,
        # which no `os` patch sees: count (and fail) it as a rename too.
        import ckpt_core.storage.atomicity as storage_module

        real_exchange = getattr(storage_module, "_exchange", None)

        def faulty_exchange(a: Any, b: Any) -> Any:
            faults.hit("rename", a)
            assert real_exchange is not None
            return real_exchange(a, b)

        try:
            for name, fn in patches.items():
                setattr(os, name, fn)
            os.open = faulty_os_open
            builtins.open = faulty_open
            io.open = faulty_open  # pathlib opens through io.open
            if real_exchange is not None:
                storage_module._exchange = faulty_exchange
            yield self
        finally:
            for name, fn in real.items():
                setattr(os, name, fn)
            os.open = real_os_open
            builtins.open = real_open
            io.open = real_open
            if real_exchange is not None:
                storage_module._exchange = real_exchange

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.calls:
            out[c.kind] = out.get(c.kind, 0) + 1
        return out


# ---------------------------------------------------------------- damage


DAMAGES = ("flip", "truncate", "delete")


def damage(path: Path, how: str, position: float = 0.5) -> None:
    """Flip one byte (at `position` of the file), cut the last byte off, or delete the file."""
    if how == "flip":
        data = bytearray(path.read_bytes())
        data[min(int(len(data) * position), len(data) - 1)] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "truncate":
        os.truncate(path, path.stat().st_size - 1)
    elif how == "delete":
        path.unlink()
    else:
        raise ValueError(how)


def step_files(step_dir: Path) -> list[Path]:
    """Every file of a committed step, manifest included, sorted."""
    return sorted(p for p in step_dir.rglob("*") if p.is_file())


# ---------------------------------------------------------------- states


def numbered_state(n: int, size: int = 1000) -> dict:
    """A small tree whose every value is a function of `n`."""
    rng = np.random.default_rng(n)
    return {
        "w": rng.standard_normal(size).astype(np.float32),
        "opt": {"m": np.full(3, n, np.int64), "lr": 0.1 * n},
        "n": n,
    }


def state_in(fmt: str, n: int, size: int = 1000) -> Any:
    """`numbered_state` in the leaf kind of a format (torch tensors, jax arrays, numpy)."""
    base = numbered_state(n, size)
    if fmt == "torch":
        import torch

        return {
            "w": torch.from_numpy(base["w"]),
            "opt": {"m": torch.from_numpy(base["opt"]["m"]), "lr": base["opt"]["lr"]},
            "n": n,
        }
    if fmt == "orbax":
        import jax.numpy as jnp

        return {"w": jnp.asarray(base["w"]), "opt": {"m": base["opt"]["m"]}, "n": n}
    return base


def same_state(got: Any, want: Any) -> bool:
    """Exact equality of two trees of arrays and scalars, leaf kinds ignored."""
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and set(got) == set(want)
            and all(same_state(got[k], want[k]) for k in want)
        )
    if isinstance(want, int | float | str) or want is None:
        return bool(np.asarray(got).item() == want) if want is not None else got is None
    a, b = np.asarray(got), np.asarray(want)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def which_state(got: Any, fmt: str, candidates: list[int], size: int = 1000) -> int | None:
    """Which of the numbered states `got` is exactly, or None."""
    for n in candidates:
        if same_state(got, state_in(fmt, n, size)):
            return n
    return None


# ---------------------------------------------------------------- checking a directory

LEFTOVER_PREFIXES = (".tmp-", ".old-")


def leftovers(directory: Path) -> list[str]:
    """Temporaries a writer leaves behind (none may remain once a manager has opened)."""
    return sorted(
        p.name
        for p in directory.iterdir()
        if p.name.startswith(LEFTOVER_PREFIXES) or p.name.endswith(".partial")
    )


def check_steps(mgr: Any, fmt: str, allowed: dict[int, set[int]], size: int = 1000) -> list[str]:
    """Every step of `mgr` verifies and restores to one of the states allowed for it.

    Args:
        mgr: an open CheckpointManager.
        fmt: the format (for the leaf kinds of the expected states).
        allowed: step -> the numbered states it may hold (e.g. the old and the new one).

    Returns:
        The problems found (empty: the directory is valid).
    """
    problems = []
    for step in mgr.all_steps():
        if step not in allowed:
            problems.append(f"unexpected step {step}")
            continue
        try:
            mgr.verify(step)
            got = mgr.restore(step)
        except Exception as e:
            problems.append(f"step {step} does not restore: {type(e).__name__}: {e}")
            continue
        if which_state(got, fmt, sorted(allowed[step]), size) is None:
            problems.append(f"step {step} holds none of the states {sorted(allowed[step])}")
    return problems


def error_chain(error: BaseException | None) -> list[BaseException]:
    out = []
    while error is not None and error not in out:
        out.append(error)
        error = error.__cause__ or error.__context__
    return out
