"""Two writers: one directory has one writer; a killed writer's lock is taken over.

* Several processes that open the same directory for writing at the same instant: exactly one
  wins, every other gets `CheckpointLockedError` naming the winner's pid.
* A writer SIGKILLed in the middle of an async save: while it lives, a second writer is
  refused; once it is dead, the second one takes the directory over, and what the dead one
  left is valid.
* A read-only manager is never blocked by the writer.
* On object stores the lock is a lease: an expired lease (its holder died) is taken over, a
  live one is respected.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest

from ckpt_core import CheckpointLockedError, CheckpointManager
from tests.reliability.faults import leftovers

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def child(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.children", *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=ENV,
    )


def race_round(run: Path, tmp_path: Path, n: int, round_: int, earlier: list[int]) -> int:
    """One race of `n` writers; returns how many losers' messages named the winner's pid.

    `earlier`: the winners of earlier rounds (appended to).
    """
    go, release = tmp_path / f"go-{round_}", tmp_path / f"release-{round_}"
    procs = [child("race", str(run), str(go), str(release)) for _ in range(n)]
    try:
        return _judge_race(procs, go, earlier)
    finally:  # whatever failed, no child is left waiting
        release.touch()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()


def _judge_race(procs: list, go: Path, earlier: list[int]) -> int:
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    go.touch()
    outcomes = {}
    for p in procs:
        assert p.stdout is not None
        outcomes[p.pid] = p.stdout.readline().strip()
    winners = [pid for pid, line in outcomes.items() if line.startswith("WON")]
    assert len(winners) == 1, outcomes
    named = 0
    for pid, line in outcomes.items():
        if pid != winners[0]:
            assert line.startswith("LOCKED") and "read_only=True" in line, line  # with the hint
            # The winner writes its name into the lock just after taking it; a loser waits
            # briefly for it (test_regression_a_writer_that_loses_a_race_names_the_holder) and
            # must never name an earlier, dead holder.
            stale = any(f"pid {w}" in line for w in earlier)
            assert not stale, line
            assert f"pid {winners[0]}" in line or "an unknown process" in line, line
            named += f"pid {winners[0]}" in line
    earlier.append(winners[0])
    return named


@pytest.mark.parametrize(
    "rounds", [pytest.param(2, id="quick"), pytest.param(15, id="stress", marks=pytest.mark.slow)]
)
def test_racing_writers_exactly_one_wins(tmp_path, tally, rounds):
    run = tmp_path / "run"
    n = 4
    winners: list[int] = []
    named = sum(race_round(run, tmp_path, n, r, winners) for r in range(rounds))
    tally(
        "two writers: racing opens",
        rounds * n,
        processes_per_round=n,
        rounds=rounds,
        losers_naming_the_winner=f"{named} of {rounds * (n - 1)}",
    )
    with CheckpointManager(run, read_only=True) as ro:
        assert ro.all_steps() == list(range(1, rounds + 1))[-5:]  # one save per winner


def kill_holder_round(run: Path) -> None:
    holder = child("hold", str(run))
    assert holder.stdout is not None
    line = holder.stdout.readline().strip()
    assert line == f"holding {holder.pid}", line
    with pytest.raises(CheckpointLockedError, match=f"pid {holder.pid}"):
        CheckpointManager(run, on_existing="resume")
    with CheckpointManager(run, read_only=True) as ro:  # a reader is never blocked
        ro.all_steps()
    time.sleep(np.random.default_rng(holder.pid).uniform(0, 0.05))  # mid-save, or just after
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
    with CheckpointManager(run, on_existing="resume", max_to_keep=2) as mgr:  # taken over
        owner = json.loads((run / ".lock").read_text())
        assert owner["pid"] == os.getpid()
        assert leftovers(run) == []
        for step in mgr.all_steps():
            mgr.verify(step)
            got = mgr.restore(step)
            assert got["step"] == step and np.all(got["w"] == step)


@pytest.mark.parametrize(
    "rounds", [pytest.param(3, id="quick"), pytest.param(30, id="stress", marks=pytest.mark.slow)]
)
def test_lock_of_a_writer_killed_mid_save_is_taken_over(tmp_path, tally, rounds):
    run = tmp_path / "run"
    for _ in range(rounds):
        kill_holder_round(run)
    tally("two writers: killed holder taken over", rounds, mid_async_save=True)


def test_lease_on_object_store_live_is_respected_and_expired_is_taken_over(tally):
    url = f"memory://ckpt-reliability/{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    lease = url.removeprefix("memory://") + "/.lock"
    dead = {"pid": 999999, "host": "gone", "since": 0, "token": "deadbeef0000"}
    fs.pipe_file(lease, json.dumps({**dead, "expires": time.time() + 600}).encode())
    with pytest.raises(CheckpointLockedError, match="pid 999999"):
        CheckpointManager(url)
    fs.pipe_file(lease, json.dumps({**dead, "expires": time.time() - 1}).encode())
    with CheckpointManager(url) as mgr:
        mgr.save(1, {"w": np.ones(2)})
        assert json.loads(fs.cat_file(lease))["pid"] == os.getpid()
    tally("two writers: object-store lease", 2)


def test_regression_a_writer_that_loses_a_race_names_the_holder(run_dir, tally):
    """Regression (core bug fixed in 68ebd23): `lock.FileLock` reads the holder's name once, right after its own flock fails.

    The winner of a race writes its name into `.lock` just after taking the flock; a loser
    that reads in between reports "an unknown process" (or the name of the previous, dead
    holder still in the file). Here a holder takes the flock and writes its name 50 ms later.
    """
    import fcntl
    import threading

    run_dir.mkdir()
    lock = run_dir / ".lock"
    lock.write_text(json.dumps({"pid": 999999, "host": "gone", "since": 0}))  # a dead holder
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    me = {"pid": 424242, "host": "here", "since": time.time()}

    def write_name_late():
        time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)

    writer = threading.Thread(target=write_name_late)
    writer.start()
    try:
        with pytest.raises(CheckpointLockedError) as err:
            CheckpointManager(run_dir)
    finally:
        writer.join()
        os.close(fd)
    tally("two writers: holder named during a race", 1)
    assert "pid 424242" in str(err.value), str(err.value)
