"""The meetings of a multi-process save, with processes simulated by threads (no framework)."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from ckpt_core import CheckpointError, CheckpointLockedError, CheckpointManager
from ckpt_core.errors import CorruptCheckpointError, ProcessGroupError, ProcessGroupWarning
from ckpt_core.processes import InMemoryStore, Meeting, ProcessGroup, detect


def meetings(count: int, timeout: float = 2.0, directory: str = "/run") -> list[Meeting]:
    store = InMemoryStore()
    return [Meeting(ProcessGroup(i, count, store), directory, timeout) for i in range(count)]


def in_threads(fns: list[Any]) -> list[Any]:
    """Run one function per simulated process; their results or raised errors, in order."""
    out: list[Any] = [None] * len(fns)

    def run(i: int) -> None:
        try:
            out[i] = fns[i]()
        except BaseException as e:
            out[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


class SimulatedJob:
    """Threads standing for the processes of one job, whose managers meet through one
    `InMemoryStore`: a thread calls `become(i)` before it opens a manager as process i."""

    def __init__(self, monkeypatch: Any, count: int = 2) -> None:
        self.store = InMemoryStore()
        self._groups = [ProcessGroup(i, count, self.store) for i in range(count)]
        self._local = threading.local()
        monkeypatch.setattr("ckpt_core.manager.detect", lambda: self._local.group)

    def become(self, index: int) -> None:
        self._local.group = self._groups[index]


def test_no_framework_means_a_single_process():
    assert detect() is None  # torch.distributed and jax.distributed are not initialised here


def test_multiprocess_true_without_a_job_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="found no multi-process job"):
        CheckpointManager(tmp_path / "run", multiprocess=True)


def test_gather_brings_every_value_to_the_primary_in_process_order():
    ms = meetings(3)
    topics = [m.topic("save") for m in ms]
    assert len(set(topics)) == 1  # the same key in every process
    got = in_threads(
        [lambda m=m, t=topics[0]: m.gather(t, m.group.index * 10, what="", hint="") for m in ms]
    )
    assert got == [[0, 10, 20], None, None]


def test_share_gives_the_primarys_value_to_everyone():
    ms = meetings(2)
    topic = ms[0].topic("open")
    got = in_threads([lambda: ms[0].share(topic, {"a": 1}, what="", hint=""),
                      lambda: ms[1].share(topic, None, what="", hint="")])  # fmt: skip
    assert got == [{"a": 1}, {"a": 1}]


def test_a_process_that_never_comes_is_named_after_the_timeout():
    ms = meetings(3, timeout=0.3)
    topic = ms[0].topic("save")
    began = time.monotonic()
    got = in_threads([lambda: ms[0].gather(topic, 0, what="in writing step 7", hint="restart."),
                      lambda: ms[1].gather(topic, 1, what="", hint="")])  # fmt: skip
    error = got[0]
    assert isinstance(error, ProcessGroupError)
    assert "process 2 of 3" in str(error) and "step 7" in str(error) and "0.3 s" in str(error)
    assert time.monotonic() - began < 5


def test_a_failed_process_fails_the_others_at_once_with_its_error_type():
    ms = meetings(2, timeout=30)
    topic = ms[0].topic("open")
    ms[0].fail(topic, CheckpointLockedError("run is being written by pid 1"))
    began = time.monotonic()
    with pytest.raises(CheckpointLockedError, match=r"process 0 of 2 failed .*pid 1"):
        ms[1].share(topic, None, what="in opening run", hint="")
    assert time.monotonic() - began < 5


def test_managers_of_simulated_processes_commit_one_step_together(tmp_path, monkeypatch):
    """The whole save protocol, on threads: the primary locks and commits, the other joins."""
    job = SimulatedJob(monkeypatch)
    run = tmp_path / "run"

    def process(i: int) -> Any:
        job.become(i)
        with CheckpointManager(run, max_to_keep=1, best_fn="loss") as mgr:
            for step, loss in ((1, 2.0), (2, 1.0), (3, 3.0)):
                mgr.save(step, {"w": np.full(3, step)}, metrics={"loss": loss})
            return mgr.all_steps(), mgr.best_step(), mgr.restore(3)["w"].tolist()

    got = in_threads([lambda: process(0), lambda: process(1)])
    assert got[0] == got[1] == ([2, 3], 2, [3, 3, 3])
    assert sorted(p.name for p in run.iterdir()) == [
        ".lock", "best", "latest", "run.json", "step_00000002", "step_00000003",
    ]  # fmt: skip


def test_a_second_job_on_the_directory_is_locked_out_in_every_process(tmp_path, monkeypatch):
    job = SimulatedJob(monkeypatch)
    run = tmp_path / "run"

    def process(i: int) -> Any:
        job.become(i)
        CheckpointManager(run, barrier_timeout_secs=5)

    with CheckpointManager(run, multiprocess=False):  # the first job's writer
        began = time.monotonic()
        got = in_threads([lambda: process(0), lambda: process(1)])
    assert all(isinstance(e, CheckpointLockedError) for e in got), got
    assert "process 0 of 2 failed in opening" in str(got[1])
    assert time.monotonic() - began < 5


def test_saves_called_with_different_steps_fail_every_process_before_any_writes(
    tmp_path, monkeypatch
):
    job = SimulatedJob(monkeypatch)
    run = tmp_path / "run"

    def process(i: int) -> Any:
        job.become(i)
        with CheckpointManager(run, barrier_timeout_secs=5) as mgr:
            mgr.save(1, {"w": np.zeros(3)})
            mgr.save(2 + i, {"w": np.ones(3)})  # process 1 is one step ahead

    began = time.monotonic()
    got = in_threads([lambda: process(0), lambda: process(1)])
    assert isinstance(got[0], ValueError) and isinstance(got[1], ProcessGroupError), got
    for error in got:
        assert "called save() with different steps" in str(error)
        assert "process 0: step 2; process 1: step 3" in str(error)
    assert time.monotonic() - began < 5  # at once, not at the timeout
    with CheckpointManager(run, read_only=True) as mgr:
        assert mgr.all_steps() == [1]
    assert not [
        p for p in run.iterdir() if p.name.startswith("step_") and p.name != "step_00000001"
    ]


def test_a_primary_kept_waiting_at_save_warns_whom_it_waits_for(tmp_path, monkeypatch):
    """A process late to save() (or never coming, as when only rank 0 opens a manager under
    DDP) is named in a warning long before the timeout; the save still commits if it comes."""
    monkeypatch.setattr("ckpt_core.processes.PATIENCE_SECS", 0.2)
    job = SimulatedJob(monkeypatch)
    run = tmp_path / "run"

    def process(i: int) -> Any:
        job.become(i)
        with CheckpointManager(run, barrier_timeout_secs=5) as mgr:
            time.sleep(0.6 * i)  # process 1 is late
            mgr.save(1, {"w": np.zeros(3)})
            return mgr.all_steps()

    with pytest.warns(ProcessGroupWarning) as caught:
        got = in_threads([lambda: process(0), lambda: process(1)])
    assert got == [[1], [1]]
    (warning,) = [w for w in caught if w.category is ProcessGroupWarning]
    message = str(warning.message)
    assert (
        "process 0 of 2 has waited 0.2 s for process 1 to take part in beginning step 1" in message
    )
    assert "multiprocess=False" in message


# ---------------------------------------------------------------- the store's keys are deleted


@pytest.mark.parametrize(
    "options",
    [{}, {"async_save": True, "save_interval_secs": 3600.0}],  # the second decides through "due"
    ids=["sync", "async-clock"],
)
def test_the_store_holds_a_bounded_number_of_keys_over_many_saves(tmp_path, monkeypatch, options):
    count = 3
    job = SimulatedJob(monkeypatch, count)
    held: list[int] = []  # the number of keys after each save, seen by the primary
    stale: list[str] = []  # keys of save N still there once the primary returned from N+2

    def process(i: int) -> Any:
        job.become(i)
        with CheckpointManager(tmp_path / "run", max_to_keep=2, **options) as mgr:
            for step in range(1, 21):
                mgr.save(step, {"w": np.full(3, step)})
                if i == 0:
                    mgr.wait()
                    keys = job.store.held()
                    held.append(len(keys))
                    stale.extend(k for k in keys if f"/save/{step - 2}/" in k)
            mgr.wait()
            return mgr.all_steps()

    got = in_threads([lambda i=i: process(i) for i in range(count)])
    assert got == [[19, 20]] * count
    assert not stale
    assert max(held) <= 2 + count, held  # one save's shared keys, and others' arriving early
    assert job.store.held() == []  # close(): the last save's keys too, once every process closed


def test_close_leaves_the_keys_when_another_process_never_closes(tmp_path, monkeypatch):
    job = SimulatedJob(monkeypatch)
    monkeypatch.setattr("ckpt_core.processes.LEAVE_SECS", 0.2)
    closing = threading.Event()

    def process(i: int) -> Any:
        job.become(i)
        mgr = CheckpointManager(tmp_path / "run")
        mgr.save(1, {"w": np.zeros(3)})
        if i == 0:
            began = time.monotonic()
            mgr.close()  # does not raise, waits about LEAVE_SECS
            closing.set()
            return time.monotonic() - began
        closing.wait(10)  # process 1 never closes its manager
        return None

    got = in_threads([lambda: process(0), lambda: process(1)])
    assert 0.1 < got[0] < 5
    assert any("/save/1/commit/" in k for k in job.store.held())  # still readable by process 1


# ---------------------------------------------------------------- restore verified together


class CountingStorage:
    """A storage whose `hash_file` calls are counted (the files one process checksums)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.hashed: list[str] = []

    def hash_file(self, rel: str) -> Any:
        self.hashed.append(rel.rsplit("/", 1)[-1])
        return self._inner.hash_file(rel)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def step_of_files(tmp_path: Any, sizes: dict[str, int]) -> tuple[Any, Any]:
    from ckpt_core.manifest import Manifest
    from ckpt_core.storage import open_storage

    storage = open_storage(tmp_path, None)
    (tmp_path / "step_00000001").mkdir()
    for name, size in sizes.items():
        (tmp_path / "step_00000001" / name).write_bytes(bytes(range(256)) * (size // 256))
    records = {name: storage.hash_file(f"step_00000001/{name}") for name in sizes}
    return storage, Manifest(step=1, format="dcp", files=records)


def verify_in_threads(
    storage: Any, manifest: Any, count: int, counting: type[CountingStorage] = CountingStorage
) -> tuple[list[Any], list[Any]]:
    from ckpt_core.formats import StepReader

    counted = [counting(storage) for _ in range(count)]
    readers = [
        StepReader(counted[m.group.index], "step_00000001", manifest, meeting=m)
        for m in meetings(count, directory=storage.root)
    ]
    return in_threads([r.verify_all for r in readers]), [c.hashed for c in counted]


def test_each_process_verifies_its_share_of_a_restored_step(tmp_path):
    sizes = {f"__{i}_0.distcp": 256 * (8 - i) for i in range(6)} | {".metadata": 256}
    storage, manifest = step_of_files(tmp_path, sizes)
    got, hashed = verify_in_threads(storage, manifest, 3)
    assert got == [None, None, None]
    assert sorted(n for names in hashed for n in names) == sorted(sizes)  # each file once
    loads = [sum(sizes[n] for n in names) for names in hashed]
    assert max(loads) - min(loads) <= 256 * 3, loads  # the bytes shared out evenly


@pytest.mark.parametrize("damaged", ["__0_0.distcp", ".metadata", "__5_0.distcp"])
def test_a_damaged_file_fails_every_process_naming_it(tmp_path, damaged):
    sizes = {f"__{i}_0.distcp": 256 * (8 - i) for i in range(6)} | {".metadata": 256}
    storage, manifest = step_of_files(tmp_path, sizes)
    path = tmp_path / "step_00000001" / damaged
    path.write_bytes(b"\xff" + path.read_bytes()[1:])  # same size, another checksum
    got, hashed = verify_in_threads(storage, manifest, 3)
    assert sum(damaged in names for names in hashed) == 1  # one process found it
    for error in got:
        assert isinstance(error, CorruptCheckpointError), got
        assert damaged in str(error) and "checksum" in str(error)
        assert error.path is not None and error.path.endswith(f"step_00000001/{damaged}")


def test_a_missing_file_fails_every_process_naming_it(tmp_path):
    sizes = {f"__{i}_0.distcp": 256 for i in range(4)}
    storage, manifest = step_of_files(tmp_path, sizes)
    (tmp_path / "step_00000001" / "__3_0.distcp").unlink()
    got, _ = verify_in_threads(storage, manifest, 2)
    for error in got:
        assert isinstance(error, CorruptCheckpointError), got
        assert "__3_0.distcp is listed in the manifest but missing" in str(error)


def test_a_process_failing_otherwise_in_verifying_fails_the_others_at_once(tmp_path):
    sizes = {f"__{i}_0.distcp": 256 for i in range(4)}
    storage, manifest = step_of_files(tmp_path, sizes)

    made: list[CountingStorage] = []

    class Unreadable(CountingStorage):  # the storage of process 1 cannot be read
        def __init__(self, inner: Any) -> None:
            super().__init__(inner)
            made.append(self)

        def hash_file(self, rel: str) -> Any:
            if self is made[1]:
                raise PermissionError(f"[Errno 13] Permission denied: {rel!r}")
            return super().hash_file(rel)

    began = time.monotonic()
    got, _ = verify_in_threads(storage, manifest, 3, Unreadable)
    assert time.monotonic() - began < 1.5  # not the 2 s timeout
    assert isinstance(got[1], PermissionError)
    for error in (got[0], got[2]):
        assert isinstance(error, ProcessGroupError), got
        assert "process 1 of 3 failed in verifying step 1" in str(error)
        assert "Permission denied" in str(error)
