"""Many processes, one checkpoint: who takes part in a save, and how the processes meet.

A manager is part of a multi-process job when the job's framework says so, asked lazily
(never importing a framework):

* JAX: `jax.distributed.initialize(...)` was called and `jax.process_count() > 1`;
* torch: `torch.distributed` has an initialised default process group of world size > 1.

Process 0 (JAX's process index, torch's global rank) is the primary. The processes meet
through the framework's own key-value store (the `jax.distributed` client, torch's c10d
store), never through device collectives, so a meeting can run on a background thread and
gives up after a timeout instead of hanging: the error names the processes that did not
come, the step, and what to do.

A format takes part through two optional attributes (`dcp` and `orbax` have both):
`collective = True` when its `write` is a collective call every process makes with its own
shards (otherwise the state is taken as replicated and the primary alone writes it), and
`process_of(name) -> int`, the process that wrote a payload file (it checksums that file;
the primary by default). The save protocol itself is `commit.write_step`.

The store lives in process 0's memory for the whole job, so a meeting's keys are deleted once
no process can still read them (best effort: a failed delete never fails a save). A key that
only the primary reads (a process's share of a gather) goes as soon as it is read. A key the
primary publishes for everyone (`share`) goes at the primary's next gather that starts after
it: `mark()` before, `release(mark)` after. A process that publishes to a gather has read
everything the primary shared before the gather began, as the processes make their calls in
the same order and a manager's save or restore waits for the save in flight. The keys the last
meeting leaves are deleted by `leave()`, the manager's `close()`, once every process closed.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from . import errors
from .errors import ProcessGroupError, ProcessGroupWarning

PRIMARY = 0
DEFAULT_TIMEOUT_SECS = 300.0
LEAVE_SECS = 10.0  # how long a closing primary waits for the others to close
PATIENCE_SECS = 10.0  # then a quick meeting's primary warns that it is still waiting
_POLL_SECS = 0.05


class KeyValueStore(Protocol):
    """The framework's key-value store, shared by every process of the job."""

    name: str  # for messages: "jax.distributed", "torch.distributed"

    def set(self, key: str, value: str) -> None:
        """Publish `value` under `key` (each key is set once)."""

    def get(self, key: str, timeout: float) -> str | None:
        """The value of `key`, waiting up to `timeout` seconds for it; None if it never came."""

    def delete(self, key: str) -> None:
        """Remove `key` (absent: nothing happens)."""


@dataclass(frozen=True)
class ProcessGroup:
    """The processes of one job that save and restore one checkpoint together."""

    index: int
    count: int
    store: KeyValueStore

    @property
    def is_primary(self) -> bool:
        return self.index == PRIMARY


def detect() -> ProcessGroup | None:
    """The multi-process job this process belongs to, or None for a single process.

    Only frameworks the program imported itself are asked; none is imported here.
    """
    return _jax_group() or _torch_group()


def _jax_group() -> ProcessGroup | None:
    jax = sys.modules.get("jax")
    if jax is None:
        return None
    try:
        from jax._src import distributed
    except ImportError:  # pragma: no cover - a JAX without the distributed runtime
        return None
    client = getattr(distributed.global_state, "client", None)
    if client is None:  # jax.distributed.initialize() was not called: one process
        return None
    count = int(jax.process_count())
    if count <= 1:
        return None
    return ProcessGroup(int(jax.process_index()), count, _JaxStore(client))


def _torch_group() -> ProcessGroup | None:
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    count = int(dist.get_world_size())
    if count <= 1:
        return None
    store = dist.distributed_c10d._get_default_store()
    return ProcessGroup(int(dist.get_rank()), count, _TorchStore(store))


class _JaxStore:
    name = "jax.distributed"

    def __init__(self, client: Any) -> None:
        self._client = client

    def set(self, key: str, value: str) -> None:
        self._client.key_value_set(key, value)

    def get(self, key: str, timeout: float) -> str | None:
        try:
            return str(self._client.blocking_key_value_get(key, max(1, int(timeout * 1000))))
        except Exception as e:
            if "DEADLINE_EXCEEDED" in str(e):
                return None
            raise _store_failed(self.name, e) from e

    def delete(self, key: str) -> None:
        self._client.key_value_delete(key)


class _TorchStore:
    name = "torch.distributed"

    def __init__(self, store: Any) -> None:
        self._store = store

    def set(self, key: str, value: str) -> None:
        self._store.set(key, value)

    def get(self, key: str, timeout: float) -> str | None:
        try:
            self._store.wait([key], datetime.timedelta(seconds=max(timeout, 0.001)))
            return bytes(self._store.get(key)).decode()
        except Exception as e:
            if "timeout" in str(e).lower() and "connect" not in str(e).lower():
                return None
            raise _store_failed(self.name, e) from e

    def delete(self, key: str) -> None:
        self._store.delete_key(key)


def _store_failed(name: str, e: BaseException) -> ProcessGroupError:
    return ProcessGroupError(
        f"the key-value store of {name} failed ({type(e).__name__}: {str(e)[:200]}): the "
        "process that hosts it (process 0) has probably died. HINT: restart the job; it "
        "resumes from the newest committed step."
    )


class InMemoryStore:
    """A `KeyValueStore` for processes simulated by threads of one process (tests)."""

    name = "in-memory"

    def __init__(self) -> None:
        self._values: dict[str, str] = {}
        self._changed = threading.Condition()

    def set(self, key: str, value: str) -> None:
        with self._changed:
            self._values[key] = value
            self._changed.notify_all()

    def get(self, key: str, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while key not in self._values:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(min(left, _POLL_SECS * 20))
            return self._values[key]

    def delete(self, key: str) -> None:
        with self._changed:
            self._values.pop(key, None)

    def held(self) -> list[str]:
        """Every key held now (for tests: the store must not grow with every save)."""
        with self._changed:
            return sorted(self._values)


def decided_by(meeting: Meeting | None, due: bool, step: int) -> bool:
    """Whether to save `step`: `due` here, or as the primary of `meeting` decided. A manager
    saving on a clock or on signals asks the primary, as clocks and signals differ between
    processes and a save needs them all; one saving by step count decides alone."""
    if meeting is None:
        return due
    topic, what = meeting.topic("due"), f"in deciding whether to save step {step}"
    return bool(meeting.share(topic, due, what=what, hint="call save() in every process."))


def split(sizes: Mapping[str, int], count: int) -> dict[str, int]:
    """Which of `count` processes takes each named item of work: the same answer in every
    process, the sizes balanced (largest first, each to the least loaded process)."""
    load = [0] * count
    out: dict[str, int] = {}
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        index = min(range(count), key=lambda i: (load[i], i))
        out[name] = index
        load[index] += max(sizes[name], 1)
    return out


# ---------------------------------------------------------------- meeting the others

_OPENED: Counter[str] = Counter()
_OPENED_LOCK = threading.Lock()


class Meeting:
    """The meetings of one manager's processes: one namespace of keys, the same in every
    process because every process opens its managers in the same order (the SPMD convention).

    Every message is JSON. A process that fails publishes its error instead of its value, so
    the others fail at once with its message instead of waiting for the timeout.
    """

    def __init__(self, group: ProcessGroup, directory: str, timeout: float) -> None:
        self.group = group
        self.timeout = timeout
        digest = hashlib.sha1(directory.encode()).hexdigest()[:12]
        opened = f"{digest}/{group.index}"  # per process index: threads can stand for processes
        with _OPENED_LOCK:
            _OPENED[opened] += 1
            self._namespace = f"ckpt_core/{digest}/{_OPENED[opened]}"
        self._topics: Counter[str] = Counter()
        self._topics_lock = threading.Lock()  # also over the keys below
        self._shared: list[str] = []  # the primary's shared keys not yet deleted, oldest first
        self._released = 0  # how many shared keys were deleted before them
        self._broken = False  # a meeting failed: the others may never come again

    def topic(self, name: str) -> str:
        """A fresh key prefix for one meeting; call it in the same order in every process."""
        with self._topics_lock:
            self._topics[name] += 1
            return f"{self._namespace}/{name}/{self._topics[name]}"

    def share(self, topic: str, value: Any, *, what: str, hint: str) -> Any:
        """The primary's `value`, in every process (the primary passes it, others None).

        Raises:
            ProcessGroupError: the primary did not publish it within the timeout, or
                published an error instead (its type and message are kept).
        """
        key = f"{topic}/primary"
        if self.group.is_primary:
            self.group.store.set(key, json.dumps({"value": value}))
            self._published(key)
            return value
        # The primary itself may wait up to the timeout for the others first.
        message = self._get(key, 2 * self.timeout, what)
        if message is None:
            raise self._absent([PRIMARY], 2 * self.timeout, what, hint)
        return self._unpack(message, PRIMARY, what)

    def fail(self, topic: str, error: BaseException) -> None:
        """Tell the others that this process failed at meeting `topic` (best effort)."""
        self._broken = True
        key = f"{topic}/primary" if self.group.is_primary else f"{topic}/{self.group.index}"
        try:
            self.group.store.set(
                key, json.dumps({"error": f"{error}", "type": type(error).__name__})
            )
        except Exception:  # the store itself is gone: the others time out instead
            return
        if self.group.is_primary:
            self._published(key)

    def gather(
        self,
        topic: str,
        value: Any,
        *,
        what: str,
        hint: str,
        timeout: float | None = None,
        impatient: str | None = None,
    ) -> list[Any] | None:
        """Every process's `value`, in process order, in the primary; None elsewhere.

        `impatient`: for a meeting that should be quick, the HINT of a `ProcessGroupWarning`
        the primary gives (once) when it has waited PATIENCE_SECS for a process.

        Raises:
            ProcessGroupError: in the primary, when processes did not publish within the
                timeout (the manager's, unless `timeout`; all of them are named) or one
                published an error.
        """
        group = self.group
        if not group.is_primary:
            group.store.set(f"{topic}/{group.index}", json.dumps({"value": value}))
            return None
        waited = self.timeout if timeout is None else timeout
        values: list[Any] = [value]
        began = time.monotonic()
        deadline = began + waited
        for index in range(1, group.count):
            message = None
            if impatient is not None and began + PATIENCE_SECS < deadline:
                patience = max(0.0, began + PATIENCE_SECS - time.monotonic())
                message = self._get(f"{topic}/{index}", patience, what)
                if message is None:
                    self._warn_waiting(index, waited, what, impatient)
                impatient = None
            left = max(0.0, deadline - time.monotonic())
            if message is None:
                message = self._get(f"{topic}/{index}", left, what)
            if message is None:
                missing = [
                    i
                    for i in range(index, group.count)
                    if self._get(f"{topic}/{i}", _POLL_SECS, what) is None
                ]
                raise self._absent(missing, waited, what, hint)
            self._delete(f"{topic}/{index}")  # read once, by the primary alone
            values.append(self._unpack(message, index, what))
        return values

    def pool(self, name: str, compute: Callable[[], Any], *, what: str, hint: str) -> list[Any]:
        """Every process's `compute()`, in process order, in every process: a gather, then a
        share of what was gathered. A process whose `compute` raises makes every other one
        raise too (its error type kept for a CheckpointError, else ProcessGroupError).

        Raises:
            ProcessGroupError: a process did not come within the timeout, or failed.
        """
        topic, mark = self.topic(name), self.mark()
        primary = self.group.is_primary
        try:
            gathered = self.gather(f"{topic}/each", compute(), what=what, hint=hint)
        except BaseException as e:
            self.fail(f"{topic}/all" if primary else f"{topic}/each", e)
            raise
        if primary:
            self.release(mark)
        return list(self.share(f"{topic}/all", gathered, what=what, hint=hint))

    def mark(self) -> int:
        """The position after the keys shared so far, for `release` (primary)."""
        with self._topics_lock:
            return self._released + len(self._shared)

    def release(self, mark: int) -> None:
        """Delete the keys shared before `mark`: call it when every process has come to a
        gather that began after `mark`, so that each has read them (primary; best effort)."""
        with self._topics_lock:
            count = max(0, mark - self._released)
            keys, self._shared = self._shared[:count], self._shared[count:]
            self._released += count
        for key in keys:
            self._delete(key)

    def leave(self) -> None:
        """At the manager's close: once every process closed, delete the keys the last
        meetings left. Waits at most LEAVE_SECS for the others; never raises (a process that
        does not come leaves a few keys behind, not an error)."""
        if self._broken:  # the others failed or are gone: keys are the least of the problems
            return
        try:
            mark, topic = self.mark(), self.topic("close")
            wait = min(self.timeout, LEAVE_SECS)
            if self.gather(topic, None, what="in closing", hint="", timeout=wait) is not None:
                self.release(mark)
        except Exception:
            pass

    def _published(self, key: str) -> None:
        with self._topics_lock:
            self._shared.append(key)

    def _delete(self, key: str) -> None:
        try:
            self.group.store.delete(key)
        except Exception:  # best effort: the key only costs memory
            pass

    def _get(self, key: str, timeout: float, what: str) -> str | None:
        try:
            return self.group.store.get(key, timeout)
        except ProcessGroupError as e:  # the store itself failed: say where this process was
            self._broken = True
            group = self.group
            raise ProcessGroupError(
                f"process {group.index} of {group.count} lost the others {what}: {e}"
            ) from e

    def _warn_waiting(self, index: int, timeout: float, what: str, hint: str) -> None:
        warnings.warn(
            f"ckpt_core: process {self.group.index} of {self.group.count} has waited "
            f"{PATIENCE_SECS:g} s for process {index} to take part {what}; it fails after "
            f"{timeout:g} s (barrier_timeout_secs). HINT: {hint}",
            ProcessGroupWarning,
            stacklevel=2,
        )

    def _unpack(self, message: str, index: int, what: str) -> Any:
        doc = json.loads(message)
        if "error" not in doc:
            return doc["value"]
        self._broken = True
        kind = getattr(errors, doc.get("type", ""), None)
        text = f"process {index} of {self.group.count} failed {what}: {doc['error']}"
        if isinstance(kind, type) and issubclass(kind, errors.CheckpointError):
            raise kind(text)  # e.g. CheckpointLockedError, as the primary met it
        raise ProcessGroupError(text)

    def _absent(self, missing: list[int], waited: float, what: str, hint: str) -> ProcessGroupError:
        self._broken = True
        names = ", ".join(map(str, missing))
        plural = "es" if len(missing) > 1 else ""
        return ProcessGroupError(
            f"process{plural} {names} of {self.group.count} ({self.group.store.name}) did not "
            f"take part {what} within {waited:g} s: died, hung, or never made the same call. "
            f"HINT: {hint}"
        )
