"""Incremental saves: bytes written and time per save when only part of the state changed.

    .venv/bin/python benchmarks/bench_incremental.py [--mb 512] [--repeats 5]

Two states, each saved by a manager with `incremental=True` and, for reference, by one
without (today's single-file layout):

- a `--mb` MiB state of 64 equal float32 leaves where 4 (1/16) change per step (a frozen base
  with a trained part);
- a (1M, 8) float32 replay buffer written as a ring, 10,000 new rows per step.

Bytes written per save are the bytes of the new step's files that no other step shares (hard
link count 1), i.e. what reached the disk. Save times are durable (payload, manifest, fsyncs,
rename). Restore times restore the whole state from a full and from an incremental step (warm
page cache). Hashing is xxh3 over the whole state, what an incremental save spends to find
what changed. Writes `results_incremental.json` beside this file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import xxhash
from _harness import MB, machine_info

from ckpt_core import CheckpointManager

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
N_LEAVES = 64
CHANGED_PER_STEP = 4  # 1/16 of the leaves
BUFFER_ROWS, BUFFER_COLS, NEW_ROWS = 1_000_000, 8, 10_000


def unshared_bytes(step_dir: Path) -> int:
    """Bytes of the step's files that no other step holds (what this save wrote)."""
    total = 0
    for p in step_dir.rglob("*"):
        if p.is_file():
            st = p.stat()
            total += st.st_size if st.st_nlink == 1 else 0
    return total


def all_bytes(step_dir: Path) -> int:
    return sum(p.stat().st_size for p in step_dir.rglob("*") if p.is_file())


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def leaves_case(root: Path, mb: int, repeats: int) -> dict[str, Any]:
    per_leaf = mb * MB // N_LEAVES // 4
    rng = np.random.default_rng(0)
    state = {
        f"layer{i:02d}": rng.standard_normal(per_leaf, dtype=np.float32) for i in range(N_LEAVES)
    }
    out: dict[str, Any] = {
        "state_mib": mb,
        "leaves": N_LEAVES,
        "changed_per_step": CHANGED_PER_STEP,
    }

    def run(incremental: bool) -> dict[str, Any]:
        directory = root / f"leaves-{incremental}"
        shutil.rmtree(directory, ignore_errors=True)
        times, written = [], []
        with CheckpointManager(directory, incremental=incremental, max_to_keep=2) as mgr:
            mgr.save(0, state)  # the base of the next saves
            for step in range(1, repeats + 1):
                for k in range(CHANGED_PER_STEP):
                    state[f"layer{(step * CHANGED_PER_STEP + k) % N_LEAVES:02d}"] += 1.0
                times.append(timed(lambda s=step: mgr.save(s, state)))
                mgr.wait()
                written.append(unshared_bytes(Path(mgr.path(step))))
            full = all_bytes(Path(mgr.path(repeats)))
        return {
            "save_s": times,
            "written_bytes": written,
            "step_bytes": full,
        }

    out["full"] = run(False)
    out["incremental"] = run(True)
    # Restores alternate between the two layouts, so a neighbour's load hits both alike.
    for kind in ("full", "incremental"):
        out[kind]["restore_s"] = []
    readers = {
        kind: CheckpointManager(root / f"leaves-{kind == 'incremental'}", read_only=True)
        for kind in ("full", "incremental")
    }
    for _ in range(repeats + 1):  # the first round warms the page cache of both
        for kind, mgr in readers.items():
            out[kind]["restore_s"].append(timed(lambda m=mgr: m.restore()))
    for kind, mgr in readers.items():
        out[kind]["restore_s"].pop(0)
        mgr.close()
        shutil.rmtree(root / f"leaves-{kind == 'incremental'}", ignore_errors=True)
    # A first save (no previous step to share with) writes every shard: alternated with the
    # single-file save into fresh directories, so both meet the same disk state.
    for kind in ("full", "incremental"):
        out[kind]["first_save_s"] = []
    for r in range(repeats):
        for kind in ("full", "incremental"):
            directory = root / f"first-{kind}-{r}"
            with CheckpointManager(directory, incremental=kind == "incremental") as mgr:
                out[kind]["first_save_s"].append(timed(lambda m=mgr: m.save(0, state)))
            shutil.rmtree(directory, ignore_errors=True)
    flat = np.concatenate(list(state.values()))
    out["xxh3_whole_state_s"] = [
        timed(lambda: xxhash.xxh3_64(flat).hexdigest()) for _ in range(repeats)
    ]
    return out


def buffer_case(root: Path, repeats: int) -> dict[str, Any]:
    buffer = np.random.default_rng(1).standard_normal((BUFFER_ROWS, BUFFER_COLS), dtype=np.float32)
    directory = root / "buffer"
    shutil.rmtree(directory, ignore_errors=True)
    times, written = [], []
    cursor = 0
    with CheckpointManager(directory, incremental=True, max_to_keep=2) as mgr:
        mgr.save(0, {"buffer": buffer, "cursor": cursor})
        for step in range(1, 2 * repeats + 1):
            rows = (np.arange(NEW_ROWS) + cursor) % BUFFER_ROWS  # the ring wraps too
            buffer[rows] = step
            cursor = int((cursor + NEW_ROWS) % BUFFER_ROWS)
            times.append(
                timed(lambda s=step, c=cursor: mgr.save(s, {"buffer": buffer, "cursor": c}))
            )
            written.append(unshared_bytes(Path(mgr.path(step))))
    shutil.rmtree(directory, ignore_errors=True)
    return {
        "buffer_bytes": buffer.nbytes,
        "new_rows": NEW_ROWS,
        "save_s": times,
        "written_bytes": written,
    }


def target_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target of issue 17 (and the costs that decide the default), for RESULTS.md."""
    med = statistics.median
    leaves, buf = res["leaves"], res["buffer"]
    full, inc = leaves["full"], leaves["incremental"]
    mb = leaves["state_mib"]
    cases = [
        (
            f"{mb} MiB, 1/16 of leaves change: bytes written vs a full save",
            med(inc["written_bytes"]),
            full["step_bytes"],
            0.1,
            "B",
        ),
        (
            f"{mb} MiB, 1/16 of leaves change: save time vs a full save",
            med(inc["save_s"]),
            med(full["save_s"]),
            0.25,
            "s",
        ),
        (
            "(1M, 8) float32 ring, 10,000 new rows per step: bytes written (worst step) vs buffer",
            max(buf["written_bytes"]),
            buf["buffer_bytes"],
            0.15,
            "B",
        ),
        (
            f"{mb} MiB: restore time vs a full step (within noise: 1.2x)",
            med(inc["restore_s"]),
            med(full["restore_s"]),
            1.2,
            "s",
        ),
        (
            f"{mb} MiB: first save (nothing to share yet) vs a full save",
            med(inc["first_save_s"]),
            med(full["first_save_s"]),
            1.2,
            "s",
        ),
        (
            f"{mb} MiB: xxh3 of the whole state vs a full save",
            med(leaves["xxh3_whole_state_s"]),
            med(full["save_s"]),
            0.25,
            "s",
        ),
    ]
    return [
        {
            "target": what,
            "measured": f"{measured:.4g} {unit}",
            "reference": f"{reference:.4g} {unit}",
            "ratio": round(measured / reference, 3),
            "goal": f"<= {goal}x",
            "verdict": "PASS" if measured <= goal * reference else "MISS",
        }
        for what, measured, reference, goal, unit in cases
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=os.environ.get("CKPT_BENCH_DIR", str(REPO / ".bench_tmp")))
    args = parser.parse_args()
    root = Path(args.dir) / f"incremental-{os.getpid()}"
    root.mkdir(parents=True, exist_ok=True)
    try:
        machine = machine_info(root)
        leaves = leaves_case(root, args.mb, args.repeats)
        buffer = buffer_case(root, args.repeats)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = target_rows({"leaves": leaves, "buffer": buffer})
    # "targets" first: RESULTS.md renders it as a table; the raw samples follow.
    results = {"targets": rows, "machine": machine, "leaves": leaves, "buffer": buffer}
    (HERE / "results_incremental.json").write_text(json.dumps(results, indent=1) + "\n")
    for row in rows:
        print(f"{row['verdict']}  {row['ratio']:>6}x (goal {row['goal']})  {row['target']}")


if __name__ == "__main__":
    main()
