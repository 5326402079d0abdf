"""Preemption: the time from a SIGTERM to the committed step, for the benchmark states.

    .venv/bin/python benchmarks/bench_preemption.py [--sizes 64 512] [--repeats 3]

A child process trains (a 20 ms sleep per step standing in for the step) with
`save_on_signals=(signal.SIGTERM,)` and a save interval it never reaches, so the only save is
the one the signal triggers. The parent sends SIGTERM at a random point of a step and reads
back when `save` returned with `preempted` True (the step committed: payload, manifest,
fsyncs, rename) and when the process exited. Both clocks are CLOCK_MONOTONIC. The time
includes the rest of the step that was running when the signal arrived, as a real one does.
Writes `results_preemption.json` beside this file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _harness import machine_info

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STEP_SECONDS = 0.02


def child(directory: str, kind: str, mb: int, mode: str) -> None:
    from bench_core import make_state

    from ckpt_core import CheckpointManager

    state = make_state(kind, mb)
    with CheckpointManager(
        directory,
        save_interval_steps=10**9,
        save_on_signals=(signal.SIGTERM,),
        async_save=mode == "async",
    ) as mgr:
        for step in range(1, 10**9):
            time.sleep(STEP_SECONDS)  # the training step
            mgr.save(step, state)
            if mgr.preempted:
                print(f"committed {time.monotonic()!r} {step}", flush=True)
                break
            if step == 1:
                print("ready", flush=True)


def measure(root: Path, kind: str, mb: int, mode: str) -> dict[str, float]:
    directory = root / f"{kind}-{mb}-{mode}"
    shutil.rmtree(directory, ignore_errors=True)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", str(directory), kind, str(mb), mode],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)])},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3 + random.random() * STEP_SECONDS)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    line = proc.stdout.readline().split()
    assert line and line[0] == "committed", line
    status = proc.wait(timeout=600)
    exited = time.monotonic()
    assert status == 0, status
    shutil.rmtree(directory, ignore_errors=True)
    return {"to_commit": float(line[1]) - sent, "to_exit": exited - sent}


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        directory, kind, mb, mode = sys.argv[2:6]
        child(directory, kind, int(mb), mode)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--kinds", nargs="+", default=["numpy", "torch", "jax"])
    parser.add_argument("--modes", nargs="+", default=["sync", "async"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", help="scratch directory (default $CKPT_BENCH_DIR or .bench_tmp)")
    args = parser.parse_args()
    root = Path(args.dir or os.environ.get("CKPT_BENCH_DIR") or REPO / ".bench_tmp") / "preempt"
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for mb in args.sizes:
        for kind in args.kinds:
            for mode in args.modes:
                samples = [measure(root, kind, mb, mode) for _ in range(args.repeats)]
                row = {
                    "size_mib": mb,
                    "kind": kind,
                    "mode": mode,
                    "to_commit_s": statistics.median(s["to_commit"] for s in samples),
                    "to_exit_s": statistics.median(s["to_exit"] for s in samples),
                    "samples": samples,
                }
                rows.append(row)
                print(
                    f"{mb:>5} MiB {kind:<6} {mode:<5} signal->commit "
                    f"{row['to_commit_s']:.2f} s, signal->exit {row['to_exit_s']:.2f} s",
                    flush=True,
                )
    out = HERE / "results_preemption.json"
    doc = {
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine_info(root.parent),
        "step_seconds": STEP_SECONDS,
        "rows": rows,
    }
    out.write_text(json.dumps(doc, indent=1))
    shutil.rmtree(root, ignore_errors=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
