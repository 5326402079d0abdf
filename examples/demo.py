"""`make demo`: each example training run is killed with SIGKILL mid-way, resumed, and shown.

For every example below: start it, wait until it has committed a few checkpoints, SIGKILL it
(no cleanup runs), start it again with the same arguments (it resumes by itself), let it finish,
then print the checkpoint table with `ckpt ls`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "demo"

# (title, script, arguments, checkpoints to see before the kill)
EXAMPLES = [
    ("numpy training loop + CheckpointManager", "quickstart.py", ["--steps", "200"], 4),
    ("Lightning + CkptCallback", "lightning_resume.py", [], 2),
    ("Flax/JAX + CkptHook", "flax_resume.py", [], 2),
    ("Gymnasium DQN + RunnerConfig(resume=True)", "gym_resume.py", [], 2),
]


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def run_until_saves(cmd: list[str], saves: int, timeout: float = 120) -> None:
    """Start `cmd`, echo its output, SIGKILL it once it reported `saves` checkpoints."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
    )
    assert proc.stdout is not None
    seen, deadline = 0, time.monotonic() + timeout
    for line in proc.stdout:
        print(f"   | {line.rstrip()}", flush=True)
        if "saved" in line.lower():
            seen += 1
        if seen >= saves or time.monotonic() > deadline:
            break
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        print(f"   >>> SIGKILL sent to pid {proc.pid} after {seen} checkpoints", flush=True)
    else:
        print(f"   (the run finished before it could be killed, exit {proc.returncode})")


def run_to_end(cmd: list[str]) -> None:
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    for line in out.stdout.splitlines():
        print(f"   | {line}")
    if out.returncode != 0:
        raise SystemExit(f"{cmd} failed with exit status {out.returncode}")


def main() -> None:
    shutil.rmtree(RUNS, ignore_errors=True)
    RUNS.mkdir(parents=True)
    for title, script, args, saves in EXAMPLES:
        path = ROOT / "examples" / script
        if not path.exists():
            continue
        banner(title)
        run_dir = RUNS / path.stem
        cmd = [sys.executable, str(path), "--dir", str(run_dir), *args]
        print(f"$ {' '.join(cmd[1:])}", flush=True)
        run_until_saves(cmd, saves)
        print("$ (same command again: it resumes)", flush=True)
        run_to_end(cmd)
    banner(f"ckpt ls {RUNS.relative_to(ROOT)}")
    ckpt = Path(sys.executable).with_name("ckpt")
    env = {**os.environ, "COLUMNS": os.environ.get("COLUMNS", "120")}
    subprocess.run([str(ckpt), "ls", str(RUNS)], check=False, env=env)


if __name__ == "__main__":
    main()
