"""Kill a saving process at random instants and check what it left behind.

The child (`python -m tests.killing DIR FORMAT MODE ON_EXISTING`) opens the directory like
a restarted job would, continues from the latest step, and saves forever; each step's state
is a pure function of the step, so whatever survives can be checked exactly.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ELEMENTS = 1 << 19  # 2 MiB of float32 per array: a save takes a few milliseconds


def expected_state(step: int, fmt: str) -> dict:
    rng = np.random.default_rng(step)
    arrays = {"a": rng.standard_normal(ELEMENTS, dtype=np.float32), "b": np.full(7, step, np.int64)}
    if fmt == "torch":
        import torch

        return {k: torch.from_numpy(v) for k, v in arrays.items()} | {"step": step}
    if fmt == "orbax":
        import jax.numpy as jnp

        return {"a": jnp.asarray(arrays["a"]), "b": arrays["b"], "step": step}
    return arrays | {"step": step}


def child(directory: str, fmt: str, mode: str, on_existing: str) -> None:
    from ckpt_core import CheckpointManager

    mgr = CheckpointManager(
        directory,
        format=fmt,
        async_save=(mode == "async"),
        max_to_keep=3,
        keep_period=10,
        on_existing=on_existing,
    )
    step = (mgr.latest_step() or 0) + 1
    expected_state(step, fmt)  # import the framework before the parent starts its clock
    print("ready", flush=True)
    while True:
        mgr.save(step, expected_state(step, fmt), metrics={"step": step})
        step += 1


def as_numpy(tree: dict) -> dict:
    return {k: np.asarray(v) for k, v in tree.items()}


@dataclass
class KillReport:
    kills: int = 0
    steps_checked: int = 0
    problems: list[str] = field(default_factory=list)


def kill_and_check(
    directory: Path, fmt: str, mode: str, kills: int, seed: int, on_existing: str = "resume"
) -> KillReport:
    """Start, SIGKILL at a random instant, reopen with resume and check every step; repeat."""
    from ckpt_core import CheckpointManager

    rnd = random.Random(seed)
    report = KillReport()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    for _ in range(kills):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.killing", str(directory), fmt, mode, on_existing],
            stdout=subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != b"ready":
            proc.kill()
            report.problems.append(f"child did not start: {line!r}")
            break
        time.sleep(rnd.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        report.kills += 1
        with CheckpointManager(directory, on_existing="resume", format=fmt) as mgr:
            for step in mgr.all_steps():
                mgr.verify(step)
                got = as_numpy(mgr.restore(step))
                want = as_numpy(expected_state(step, fmt))
                if set(got) != set(want) or any(not np.array_equal(got[k], want[k]) for k in want):
                    report.problems.append(f"{directory}: step {step} differs from what was saved")
                report.steps_checked += 1
        leftovers = [p.name for p in directory.iterdir() if p.name.startswith((".tmp-", ".old-"))]
        if leftovers:
            report.problems.append(f"leftovers after reopening: {leftovers}")
    return report


if __name__ == "__main__":
    child(*sys.argv[1:5])
