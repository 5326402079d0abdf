"""Preemption: `save_on_signals=(SIGTERM,)` saves at the next step, and the run resumes exactly.

A subprocess trains (saving only every 1000 steps) and reports each step; the test sends
SIGTERM after step K. The loop must save step K+1 (the next step after the signal), close and
exit by itself. Started again, it resumes from K+1 and ends with the very weights, bit for bit,
of a run that was never interrupted.

Each adapter gets the same treatment with a child that waits at a known step while the test
signals it: a Flax `CkptHook` loop, `integrations.gym.run` and a Lightning `Trainer`. Each
must commit the step at the signal, exit 0 by itself, and resume from that step when run again.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ckpt_core import CheckpointManager
from tests.reliability.children import numpy_init, reference_numpy

ROOT = Path(__file__).resolve().parents[2]


def start(directory: Path, steps: int, *extra: str) -> subprocess.Popen:
    command = ["-m", "tests.reliability.children", "train", str(directory), "--steps", str(steps)]
    return subprocess.Popen(
        [sys.executable, *command, *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def run_to_end(directory: Path, steps: int, out: Path, *extra: str) -> list[str]:
    proc = start(directory, steps, "--out", str(out), *extra)
    stdout, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, stdout
    return stdout.splitlines()


def preempt_after(directory: Path, steps: int, k: int, *extra: str) -> list[str]:
    """Run with the handshake; send SIGTERM right after the child reports step `k`."""
    proc = start(directory, steps, "--handshake", *extra)
    assert proc.stdin is not None and proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line.strip())
        if line.startswith("step "):
            if int(line.split()[1]) == k:
                proc.send_signal(signal.SIGTERM)  # arrives while the child waits for us
            proc.stdin.write("go\n")
            proc.stdin.flush()
        if line.startswith("preempted"):
            break
    proc.stdin.close()
    lines += [x.strip() for x in proc.stdout.read().splitlines()]
    proc.stdout.close()
    assert proc.wait(timeout=120) == 0, lines  # it exited by itself, not killed by SIGTERM
    return lines


def preempted_run_matches(tmp_path: Path, steps: int, stops: list[int], *extra: str) -> int:
    """Preempt after each step in `stops`, resume each time, finish; compare to uninterrupted."""
    reference = tmp_path / "reference.npy"
    run_to_end(tmp_path / "uninterrupted", steps, reference, *extra)
    run = tmp_path / "preempted"
    resumed_from = None
    for k in stops:
        lines = preempt_after(run, steps, k, *extra)
        if resumed_from is not None:
            assert f"resumed from {resumed_from}" in lines
        # Saved at the very next step after the signal, and only then (interval: 1000 steps).
        assert lines[-1] == f"preempted {k + 1} saved=True", lines[-3:]
        with CheckpointManager(run, read_only=True) as ro:
            assert ro.latest_step() == k + 1
            if "--framework" not in extra:  # numpy: the saved state is the reference's
                got = ro.restore(like=numpy_init(0))
                want = reference_numpy(k + 2)
                assert np.array_equal(got["w"], want["w"]) and got["rng"] == want["rng"]
        resumed_from = k + 1
    final = tmp_path / "final.npy"
    lines = run_to_end(run, steps, final, *extra)
    assert f"resumed from {resumed_from}" in lines
    assert np.load(final).tobytes() == np.load(reference).tobytes()  # bit for bit
    return len(stops)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sigterm_saves_the_next_step_and_the_run_resumes_exactly(tmp_path, tally, mode):
    n = preempted_run_matches(tmp_path, 60, [17], "--mode", mode)
    tally("SIGTERM preemption", n, framework="numpy", mode=mode, steps=60)


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["numpy", "torch"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_stress_repeated_preemptions_resume_exactly(tmp_path, tally, framework, mode):
    rnd = random.Random(f"{framework}-{mode}")
    steps = 120
    # torch: fewer stops, each restart imports torch (seconds).
    stops = sorted(rnd.sample(range(2, steps - 2), 5 if framework == "numpy" else 3))
    stops = [s for i, s in enumerate(stops) if i == 0 or s > stops[i - 1] + 1]
    n = preempted_run_matches(tmp_path, steps, stops, "--mode", mode, "--framework", framework)
    tally("SIGTERM preemption", n, framework=framework, mode=mode, steps=steps)


# ---------------------------------------------------------------- adapters: save, then stop


def run_child(
    kind: str,
    directory: Path,
    steps: int,
    *extra: str,
    signal_at: int | None = None,
    signum: int = signal.SIGTERM,
) -> list[str]:
    """Run an adapter child; with `signal_at`, send `signum` while it waits at that step."""
    command = [sys.executable, "-m", "tests.reliability.children", kind, str(directory)]
    command += ["--steps", str(steps), "--signal", signal.Signals(signum).name, *extra]
    if signal_at is not None:
        command += ["--wait-at", str(signal_at)]
    proc = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdin is not None and proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.startswith("ready "):
            proc.send_signal(signum)  # arrives while the child waits for this line
            proc.stdin.write("go\n")
            proc.stdin.flush()
    proc.stdin.close()
    # It stopped by itself (not killed by the signal, not hung) and exited 0.
    assert proc.wait(timeout=120) == 0, "\n".join(lines[-30:])
    return lines


def said(lines: list[str], prefix: str) -> str:
    found = [line for line in lines if line.startswith(prefix)]
    assert found, "\n".join(lines[-30:])
    return found[-1]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_flax_hook_saves_the_step_at_the_signal_and_the_loop_stops(tmp_path, tally, mode):
    run = tmp_path / "run"
    lines = run_child("flax", run, 50, "--mode", mode, signal_at=7)
    assert said(lines, "preempted") == "preempted 8"  # the step after the wait, not later
    with CheckpointManager(run, read_only=True) as ro:
        assert ro.all_steps() == [0, 8] and not ro.is_complete  # 0: every_n_steps=1000
    lines = run_child("flax", run, 50, "--mode", mode)
    assert said(lines, "resumed from") == "resumed from 8 w=9.0"
    assert lines[-1] == "done"
    tally("SIGTERM preemption", 1, framework="flax", mode=mode, steps=50)


def test_gym_run_saves_at_the_next_episode_end_and_returns(tmp_path, tally):
    reference = run_child("gym", tmp_path / "uninterrupted", 3_000)
    run = tmp_path / "run"
    lines = run_child("gym", run, 3_000, signal_at=1_234)
    stopped = int(said(lines, "preempted").split()[1])
    assert 1_234 < stopped < 1_334  # FrozenLake episodes last at most 100 steps
    with CheckpointManager(run, read_only=True) as ro:
        assert ro.all_steps() == [stopped] and not ro.is_complete
    lines = run_child("gym", run, 3_000)
    assert said(lines, "resumed from") == f"resumed from {stopped}"
    # The resumed run ends where the uninterrupted one does.
    assert said(lines, "returns") == said(reference, "returns") and lines[-1] == "done"
    tally("SIGTERM preemption", 1, framework="gym", mode="sync", steps=3_000)


@pytest.mark.parametrize(
    ("signum", "mode"),
    [(signal.SIGTERM, "sync"), (signal.SIGUSR1, "async")],
    ids=["SIGTERM-sync", "SIGUSR1-async"],
)
def test_lightning_trainer_saves_the_step_at_the_signal_and_stops(tmp_path, tally, signum, mode):
    # SIGTERM: Lightning's own handler raises SIGTERMException (exit status 0) after our save;
    # SIGUSR1: only CkptCallback acts, through trainer.should_stop, and fit returns.
    run = tmp_path / "run"
    lines = run_child("lightning", run, 40, "--mode", mode, signal_at=5, signum=signum)
    assert said(lines, "preempted") == "preempted 5", "\n".join(lines[-30:])
    with CheckpointManager(run, read_only=True) as ro:
        assert ro.all_steps() == [5] and not ro.is_complete
        assert ro.metadata(5)["trigger"] == "preemption"
    lines = run_child("lightning", run, 40, "--mode", mode)
    assert said(lines, "resumed from") == "resumed from 5"
    assert lines[-1] == "done"
    with CheckpointManager(run, read_only=True) as ro:
        assert ro.latest_step() == 40 and ro.is_complete
    tally("SIGTERM preemption", 1, framework="lightning", mode=mode, steps=40)


@pytest.mark.parametrize("adapter", ["flax", "gym", "lightning"])
def test_adapters_check_save_on_signals_when_built(tmp_path, adapter):
    if adapter == "flax":
        from integrations.flax import CkptHook

        def build(value: object) -> object:
            return CkptHook(tmp_path / "run", save_on_signals=value)
    elif adapter == "gym":
        from integrations.gym import RunnerConfig

        def build(value: object) -> object:
            return RunnerConfig(10, checkpoint_dir=tmp_path / "run", save_on_signals=value)
    else:
        from integrations.lightning import CkptCallback

        def build(value: object) -> object:
            return CkptCallback(tmp_path / "run", save_on_signals=value)

    caller = {"flax": "CkptHook", "gym": "RunnerConfig", "lightning": "CkptCallback"}[adapter]
    with pytest.raises(ValueError, match=rf"{caller}\(save_on_signals=.*SIGKILL cannot be caught"):
        build((signal.SIGKILL,))
    with pytest.raises(TypeError, match=rf"{caller}\(save_on_signals='SIGTERM'\).*string"):
        build("SIGTERM")
    assert not (tmp_path / "run").exists()
