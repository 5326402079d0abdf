"""Benchmark: `ckpt ls` on a run of 10,000 steps (target: under a second).

One step is written by the core (`CheckpointManager.save`); the other steps are copies of it
(payload files hard-linked, manifest rewritten with its own step, time and metrics), which is
what 10,000 real saves would leave on disk, minus an hour of fsyncs. `--files-per-step 20`
makes every manifest list 20 payload files, as an orbax step does.

Times the installed console command end to end (a fresh process each time, as a user runs it):
piped (plain text), `--json`, and on a "terminal" (FORCE_COLOR=1, coloured output); and, in
this process, the parts: the directory scan (every manifest read and validated), retention
reasons, and for comparison `CheckpointManager(read_only=True)` opening the same directory.

Wall time depends on what else the machine runs; the CPU time (user+sys) of the command
does not much, so both are printed. Not part of the test suite; run `python benchmarks/bench_cli.py [--steps 10000 --repeats 5]`.
Prints a markdown table and writes `benchmarks/results_cli.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ckpt_core import CheckpointManager, RetentionPolicy, layout
from ckpt_core.listing import scan_run
from ckpt_core.run import open_directory

HERE = Path(__file__).resolve().parent
CKPT = Path(sys.executable).with_name("ckpt")


def make_run(directory: Path, steps: int, files_per_step: int) -> None:
    """A run of `steps` committed steps: one written by the core, the rest cloned from it."""
    with CheckpointManager(directory, max_to_keep=None, best_fn="loss") as mgr:
        state = {f"layer_{i}": np.zeros(16, np.float32) for i in range(4)}
        mgr.save(0, state, metrics={"loss": 1.0, "acc": 0.0}, metadata={"epoch": 0})
    first = directory / layout.step_dirname(0)
    manifest = json.loads((first / layout.MANIFEST).read_bytes())
    records = dict(manifest["files"])
    extra = next(iter(records.values()))
    for i in range(len(records), files_per_step):  # pad the manifest to `files_per_step` records
        records[f"extra/file_{i:03d}"] = extra
    manifest["files"] = records
    start = time.time() - steps
    for step in range(steps):
        target = directory / layout.step_dirname(step)
        target.mkdir(exist_ok=True)
        for name in os.listdir(first):
            if name != layout.MANIFEST and not (target / name).exists():
                os.link(first / name, target / name)
        manifest.update(
            step=step,
            time=start + step,
            metrics={"loss": 1.0 / (step + 1), "acc": step / steps},
            metadata={"epoch": step // 100},
        )
        (target / layout.MANIFEST).write_text(json.dumps(manifest, indent=1))


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


CPU_SECONDS: dict[str, list[float]] = {}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cli(args: list[str], env: dict[str, str] | None = None) -> None:
    before = children_cpu()
    result = subprocess.run(
        [str(CKPT), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"ckpt {' '.join(args)} failed: {result.stderr.decode()}")
    key = " ".join(args[:-1]) + ("" if not env else " " + " ".join(env))
    CPU_SECONDS.setdefault(key, []).append(children_cpu() - before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--files-per-step", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", help="where to build the run (default: a temporary directory)")
    args = parser.parse_args()

    base = Path(args.dir or tempfile.mkdtemp(prefix="bench_cli_"))
    run = base / "run"
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    make_run(run, args.steps, args.files_per_step)
    build_s = time.perf_counter() - t0
    manifest_bytes = (run / layout.step_dirname(0) / layout.MANIFEST).stat().st_size

    rows: list[tuple[str, list[float]]] = []
    rows.append(("`ckpt ls DIR` piped (plain text), end to end", []))
    rows[-1][1].extend(timed(lambda: run_cli(["ls", str(run)]), args.repeats))
    rows.append(("`ckpt ls --json DIR`, end to end", []))
    rows[-1][1].extend(timed(lambda: run_cli(["ls", "--json", str(run)]), args.repeats))
    rows.append(("`ckpt ls DIR` on a terminal (FORCE_COLOR=1), end to end", []))
    rows[-1][1].extend(timed(lambda: run_cli(["ls", str(run)], {"FORCE_COLOR": "1"}), args.repeats))
    rows.append(("`python -c 'import ckpt_core.cli'` (interpreter + imports)", []))
    rows[-1][1].extend(
        timed(
            lambda: subprocess.run([sys.executable, "-c", "import ckpt_core.cli"], check=True),
            args.repeats,
        )
    )
    storage = open_directory(run)
    rows.append(("in process: scan (list + read + validate every manifest)", []))
    rows[-1][1].extend(timed(lambda: scan_run(storage), args.repeats))
    listing = scan_run(storage)
    rows.append(("in process: retention reasons for every step", []))
    rows[-1][1].extend(timed(lambda: RetentionPolicy().reasons(listing.steps), args.repeats))
    rows.append(("in process: `CheckpointManager(DIR, read_only=True)` (the core's scan)", []))
    rows[-1][1].extend(timed(lambda: CheckpointManager(run, read_only=True).close(), args.repeats))

    print(
        f"\n{args.steps} steps, {args.files_per_step} files per manifest "
        f"({manifest_bytes} bytes each); built in {build_s:.1f} s; "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}\n"
    )
    cpu = list(CPU_SECONDS.values())
    print("| what | median s | min s | median CPU s (user+sys) |")
    print("|---|---:|---:|---:|")
    results = []
    for i, (what, times) in enumerate(rows):
        cpu_s = statistics.median(cpu[i]) if i < len(cpu) else None
        cpu_text = f"{cpu_s:.3f}" if cpu_s is not None else ""
        print(f"| {what} | {statistics.median(times):.3f} | {min(times):.3f} | {cpu_text} |")
        results.append({"what": what, "seconds": times, "cpu_seconds": cpu_s})
    print(f"\nload average while measuring: {os.getloadavg()[0]:.1f}")
    (HERE / "results_cli.json").write_text(
        json.dumps(
            {
                "steps": args.steps,
                "files_per_step": args.files_per_step,
                "manifest_bytes": manifest_bytes,
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "load_average": os.getloadavg()[0],
                "results": results,
            },
            indent=1,
        )
    )
    if not args.dir:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
