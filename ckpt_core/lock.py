"""The single-writer lock: `flock` on local disks, an expiring lease object on object stores.

A local lock dies with its process (the kernel drops `flock` locks of a killed process), so a
lock left by a dead writer is simply taken. Object stores have no such primitive: there the
lock is a lease object naming its owner and an expiry, refreshed while the manager is open.
The lease is advisory: two writers that start within one refresh interval can both win.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import json
import os
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from .errors import CheckpointError, CheckpointLockedError


class Lock(Protocol):
    """What a storage's `acquire_lock` returns."""

    lost: bool  # another writer took the directory over: saving must stop

    def release(self) -> None:
        """Let go now; idempotent."""

    def release_abandoned(self) -> None:
        """Let go from a garbage-collector callback: no blocking I/O, no Python locks."""


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "an unknown process"
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')!r} "
        f"(since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('since', 0)))})"
    )


def _locked_error(
    where: str, holder: dict[str, Any] | None, extra: str = ""
) -> CheckpointLockedError:
    if holder and _is_this_process(holder):
        return CheckpointLockedError(
            f"{where} is already open for writing by another CheckpointManager of this same "
            f"process (pid {os.getpid()}), which is still in use. HINT: call close() on the earlier "
            "manager first (or open managers in a `with` block), or open this one with "
            "read_only=True to inspect and restore."
        )
    return CheckpointLockedError(
        f"{where} is being written by {_describe(holder)}. Only one writer may use a checkpoint "
        f"directory at a time.{extra} HINT: stop the other run, write to another directory, or "
        "open this one with read_only=True to inspect and restore."
    )


def _read_holder(fd: int) -> dict[str, Any] | None:
    """The current holder's description.

    The holder writes it right after taking the lock, so a writer that lost the race by
    microseconds may first read nothing, or what a previous holder left. Unless the file
    names a live process of this machine, wait up to half a second for it to change.
    """
    first = last = _parse_holder(fd)
    for _ in range(50):
        if last is not None and (last != first or _alive_here(last)):
            return last
        time.sleep(0.01)
        last = _parse_holder(fd)
    return last


def _parse_holder(fd: int) -> dict[str, Any] | None:
    with contextlib.suppress(ValueError, OSError):
        holder = json.loads(os.pread(fd, 4096, 0) or b"null")
        return holder if isinstance(holder, dict) else None
    return None


def _is_this_process(holder: dict[str, Any]) -> bool:
    return holder.get("pid") == os.getpid() and _on_this_machine(holder)


def _collect_abandoned_here(holder: dict[str, Any] | None) -> bool:
    """Whether the holder is this process: then collect garbage, so that a manager of this
    process that is no longer reachable (a notebook cell run twice) releases the lock."""
    if not holder or not _is_this_process(holder):
        return False
    gc.collect()
    return True


def _alive_here(holder: dict[str, Any]) -> bool:
    """The holder is a live process of this machine, in this pid namespace."""
    return _on_this_machine(holder) and not _died_here(holder)


def _on_this_machine(holder: dict[str, Any]) -> bool:
    mine = machine_identity()
    return "boot_id" in mine and all(holder.get(k) == v for k, v in mine.items())


def machine_identity() -> dict[str, str]:
    """What tells this machine (boot) and pid namespace apart from others sharing a hostname."""
    ident = {"host": socket.gethostname()}
    with contextlib.suppress(OSError):
        ident["boot_id"] = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    with contextlib.suppress(OSError):
        ident["pid_ns"] = os.readlink("/proc/self/ns/pid")
    return ident


def _died_here(holder: dict[str, Any]) -> bool:
    """The lease's holder ran on this machine, in this pid namespace, and is gone."""
    if not _on_this_machine(holder):
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, KeyError, ValueError, TypeError):
        return False
    return False


class FileLock:
    """An exclusive `flock` on `<dir>/.lock`, holding the owner's description for messages."""

    lost = False  # a kernel lock cannot be taken away while its process lives

    def __init__(self, path: Path, owner: dict[str, Any]) -> None:
        try:
            # Never through a symlink: the lock file is truncated and rewritten below.
            self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            raise CheckpointError(
                f"{path} is a symlink; the lock file must be a plain file of the checkpoint "
                "directory. HINT: remove the link (the library recreates the file)."
            ) from None
        try:
            self._take()
        except BlockingIOError:
            holder = _read_holder(self._fd)
            try:
                if not _collect_abandoned_here(holder):
                    raise
                self._take()  # the earlier manager of this process was garbage: now released
            except BlockingIOError:
                os.close(self._fd)
                self._fd = None
                raise _locked_error(str(path.parent), holder) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps({**owner, **machine_identity()}).encode(), 0)

    def _take(self) -> None:
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    # Two system calls, no Python locks: safe from a garbage-collector callback.
    release_abandoned = release


# The leases this process holds (by token), and the refresh threads still running. A lease of
# this process that is no longer held was dropped with its manager: its thread deletes it.
_HELD_HERE: set[str] = set()
_REFRESHERS: dict[str, threading.Thread] = {}


class LeaseLock:
    """A lease object `{owner, pid, host, expires}` refreshed by a daemon thread."""

    def __init__(
        self, fs: Any, url: str, owner: dict[str, Any], ttl: float = 60.0, display: str = ""
    ) -> None:
        self._fs, self._url, self._ttl = fs, url, ttl
        self._owner = dict(owner)
        self._owner.update(machine_identity())
        now = time.time()
        with contextlib.suppress(FileNotFoundError, ValueError):
            holder = json.loads(fs.cat_file(url))
            live = float(holder.get("expires", 0)) > now and not _died_here(holder)
            if holder.get("token") != owner["token"] and live and not _dropped_here(holder):
                raise _locked_error(
                    display or url.rsplit("/", 1)[0],
                    holder,
                    f" The lease expires at {time.strftime('%H:%M:%S', time.localtime(holder['expires']))}"
                    " unless its holder refreshes it.",
                )
        self._write()
        current = json.loads(fs.cat_file(url))
        if current.get("token") != owner["token"]:
            raise _locked_error(display or url.rsplit("/", 1)[0], current)
        self.lost = False
        # The refresh thread's mailbox: None stops it, "release" stops it and deletes
        # the lease. SimpleQueue.put is reentrant, so a GC callback may post to it.
        self._mailbox: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._refresh, name="ckpt-lease", daemon=True)
        _HELD_HERE.add(owner["token"])
        _REFRESHERS[owner["token"]] = self._thread
        self._thread.start()

    def _write(self) -> None:
        self._fs.pipe_file(
            self._url, json.dumps({**self._owner, "expires": time.time() + self._ttl}).encode()
        )

    def _refresh(self) -> None:
        try:
            self._refresh_until_told()
        finally:
            _REFRESHERS.pop(self._owner["token"], None)

    def _refresh_until_told(self) -> None:
        while True:
            try:
                message = self._mailbox.get(timeout=self._ttl / 3)
            except queue.Empty:
                with contextlib.suppress(Exception):  # a missed refresh is retried; expiry is far
                    holder = json.loads(self._fs.cat_file(self._url))
                    if holder.get("token") != self._owner["token"]:
                        self.lost = True  # another writer took the lease: never take it back
                        return
                    self._write()
                continue
            if message == "release":
                self._delete()
            return

    def _delete(self) -> None:
        with contextlib.suppress(Exception):
            holder = json.loads(self._fs.cat_file(self._url))
            if holder.get("token") == self._owner["token"]:
                self._fs.rm_file(self._url)

    def release(self) -> None:
        """Stop refreshing and delete the lease now, so the next writer need not wait."""
        _HELD_HERE.discard(self._owner["token"])
        self._mailbox.put(None)
        self._thread.join(timeout=self._ttl / 3)  # a refresh in flight must not rewrite it
        self._delete()

    def release_abandoned(self) -> None:
        """Release from a garbage-collector callback, which may run in any thread at any point.

        Network I/O there can deadlock (the collector may interrupt the very thread that
        serves the request), so the lease's own thread deletes it instead.
        """
        _HELD_HERE.discard(self._owner["token"])
        self._mailbox.put("release")


def _dropped_here(holder: dict[str, Any]) -> bool:
    """The lease belongs to a manager of this process that was dropped without `close()`.

    Garbage is collected first, so a manager that is unreachable but in a reference cycle
    lets go too; then its refresh thread is given the time to delete the lease.
    """
    token = holder.get("token")
    if not _collect_abandoned_here(holder) or token in _HELD_HERE:
        return False
    thread = _REFRESHERS.get(str(token))
    if thread is not None:
        thread.join(timeout=10.0)
    return True
