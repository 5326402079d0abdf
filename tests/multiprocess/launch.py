"""Start N real processes of one job over loopback, wait for them with a bound, kill every one.

Each process runs `python -m tests.multiprocess.worker SCENARIO INDEX COUNT PORT DIR ARGS`
and ends its output with one `RESULT {json}` line.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Outcome:
    """What one process of a launch did."""

    index: int
    returncode: int | None  # None: it was still running at the deadline and was killed
    output: str

    @property
    def result(self) -> Any:
        for line in reversed(self.output.splitlines()):
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT ") :])
        raise AssertionError(f"process {self.index} reported no result:\n{self.output[-4000:]}")


def launch(
    scenario: str,
    directory: str | Path,
    *,
    processes: int = 2,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
    **args: Any,
) -> list[Outcome]:
    """Run `scenario` in `processes` processes; every one is killed by the end, however it ends."""
    port = free_port()
    child_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "JAX_PLATFORMS": "cpu",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    spec = json.dumps(args)
    children: list[subprocess.Popen[str]] = []
    logs = []
    try:
        for index in range(processes):
            log = tempfile.TemporaryFile("w+")  # noqa: SIM115  (closed below)
            logs.append(log)
            command = [sys.executable, "-m", "tests.multiprocess.worker", scenario]
            command += [str(index), str(processes), str(port), str(directory), spec]
            children.append(
                subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=child_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        deadline = time.monotonic() + timeout
        codes: list[int | None] = []
        for child in children:
            try:
                codes.append(child.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                codes.append(None)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
                child.wait()
    outcomes = []
    for index, (log, code) in enumerate(zip(logs, codes, strict=False)):
        log.seek(0)
        outcomes.append(Outcome(index, code, log.read()))
        log.close()
    return outcomes


def succeeded(outcomes: list[Outcome]) -> list[Any]:
    """Every process's result; fails naming the process that did not exit cleanly."""
    for o in outcomes:
        assert o.returncode == 0, (
            f"process {o.index} exited with {o.returncode}:\n{o.output[-6000:]}"
        )
    results = [o.result for o in outcomes]
    for o, result in zip(outcomes, results, strict=True):
        assert "error" not in result, f"process {o.index} failed:\n{o.output[-6000:]}"
    return results


def assert_store_emptied(results: list[Any], saves: int) -> None:
    """What `worker.watch_store_keys` reported: in every process, no key of save N after
    save N + 2, and none at all after every process closed."""
    for result in results:
        assert result["checked"] == saves * 4  # begin, process 1's step and files, commit
        assert result["stale"] == {str(step): [] for step in range(1, saves + 1)}
        assert result["left"] == []


def fit_sharded(
    directory: Path,
    timeout: float = 240.0,
    devices: int = 2,
    resume_with: str = "resume",
    strategy: str = "model_parallel",
    accelerator: str = "cpu",
    nodes: int = 1,
    **callback: Any,
) -> list[Any]:
    """Run `lightning_fit` on `devices * nodes` ranks; every rank's result, by rank.

    Lightning starts a node's other ranks itself; with `nodes` > 1 one process per node is
    started here (Lightning's own environment variables, every node on this machine).
    """
    args = {
        "callback": callback,
        "devices": devices,
        "resume_with": resume_with,
        "strategy": strategy,
        "accelerator": accelerator,
        "nodes": nodes,
    }
    command = [sys.executable, "-m", "tests.multiprocess.lightning_fit", str(directory)]
    command.append(json.dumps(args))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")
        if accelerator == "cuda"
        else "",
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "PYTHONWARNINGS": "ignore",
    }
    node_env: list[dict[str, str]] = [{}]
    if nodes > 1:
        node_env = [{"NODE_RANK": str(n), "LOCAL_RANK": "0"} for n in range(nodes)]
    # Each node in its own session: on a timeout the whole job (every rank) is killed.
    logs = [tempfile.TemporaryFile("w+") for _ in node_env]  # noqa: SIM115  (closed below)
    jobs = [
        subprocess.Popen(
            command,
            cwd=ROOT,
            env={**env, **extra},
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for extra, log in zip(node_env, logs, strict=True)
    ]
    deadline = time.monotonic() + timeout
    try:
        for job in jobs:
            with contextlib.suppress(subprocess.TimeoutExpired):  # killed below, then reported
                job.wait(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        late = [job for job in jobs if job.poll() is None]
        for job in late:  # every rank prints where it is stuck (`lightning_fit`), then dies
            os.killpg(job.pid, signal.SIGUSR1)
        time.sleep(2.0 if late else 0.0)
        for job in late:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    failed = [
        f"node {node} exited with {job.returncode} (-9: killed at the {timeout} s deadline):\n"
        + output[-8000:]
        for node, (job, output) in enumerate(zip(jobs, outputs, strict=True))
        if job.returncode != 0
    ]
    assert not failed, "\n".join(failed)
    results = [directory / f"result_{rank}.json" for rank in range(devices * nodes)]
    assert all(r.exists() for r in results), outputs[0][-8000:]
    return [json.loads(r.read_text()) for r in results]
