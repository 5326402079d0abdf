"""The meetings of a multi-process save, with processes simulated by threads (no framework)."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from ckpt_core import CheckpointError, CheckpointLockedError, CheckpointManager
from ckpt_core.errors import ProcessGroupError
from ckpt_core.processes import InMemoryStore, Meeting, ProcessGroup, detect


def meetings(count: int, timeout: float = 2.0) -> list[Meeting]:
    store = InMemoryStore()
    return [Meeting(ProcessGroup(i, count, store), "/run", timeout) for i in range(count)]


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
    store = InMemoryStore()
    groups = [ProcessGroup(i, 2, store) for i in range(2)]
    local = threading.local()
    monkeypatch.setattr("ckpt_core.manager.detect", lambda: local.group)
    run = tmp_path / "run"

    def process(i: int) -> Any:
        local.group = groups[i]
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
    store = InMemoryStore()
    groups = [ProcessGroup(i, 2, store) for i in range(2)]
    local = threading.local()
    monkeypatch.setattr("ckpt_core.manager.detect", lambda: local.group)
    run = tmp_path / "run"

    def process(i: int) -> Any:
        local.group = groups[i]
        CheckpointManager(run, barrier_timeout_secs=5)

    with CheckpointManager(run, multiprocess=False):  # the first job's writer
        began = time.monotonic()
        got = in_threads([lambda: process(0), lambda: process(1)])
    assert all(isinstance(e, CheckpointLockedError) for e in got), got
    assert "process 0 of 2 failed in opening" in str(got[1])
    assert time.monotonic() - began < 5
