"""Start N real processes of one job over loopback, wait for them with a bound, kill every one
(`run_processes`; one still running at the deadline first prints its threads' stacks).

`launch`: each process runs `python -m tests.multiprocess.worker SCENARIO INDEX COUNT PORT DIR
ARGS` and ends its output with one `RESULT {json}` line. `fit_sharded`: a Lightning job of
`lightning_fit`, whose ranks write their results to files.
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
    worker = [sys.executable, "-m", "tests.multiprocess.worker", scenario]
    commands = [
        [*worker, str(index), str(processes), str(port), str(directory), spec]
        for index in range(processes)
    ]
    return run_processes(commands, [child_env] * processes, timeout)


def run_processes(
    commands: list[list[str]], envs: list[dict[str, str]], timeout: float
) -> list[Outcome]:
    """Run every command in its own session and wait for all until `timeout`. Those still
    running then print every thread's stack (SIGUSR1, which `worker` and `lightning_fit` hand
    to faulthandler) and are killed with their children. Every process's outcome, in order."""
    logs = [tempfile.TemporaryFile("w+") for _ in commands]  # noqa: SIM115  (closed below)
    children: list[subprocess.Popen[str]] = []
    codes: list[int | None] = []
    try:
        for command, env, log in zip(commands, envs, logs, strict=True):
            children.append(
                subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + timeout
        for child in children:
            try:
                codes.append(child.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                codes.append(None)
    finally:
        late = [child for child in children if child.poll() is None]
        for child in late:
            os.killpg(child.pid, signal.SIGUSR1)
        time.sleep(2.0 if late else 0.0)
        for child in children:  # its group too: a rank it started may outlive it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    outcomes = []
    for index, (log, code) in enumerate(zip(logs, codes, strict=True)):
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
    outcomes = run_processes([command] * len(node_env), [{**env, **e} for e in node_env], timeout)
    failed = [
        f"node {o.index} exited with {o.returncode} (None: killed at the {timeout} s deadline):"
        f"\n{o.output[-8000:]}"
        for o in outcomes
        if o.returncode != 0
    ]
    assert not failed, "\n".join(failed)
    results = [directory / f"result_{rank}.json" for rank in range(devices * nodes)]
    assert all(r.exists() for r in results), outcomes[0].output[-8000:]
    return [json.loads(r.read_text()) for r in results]
