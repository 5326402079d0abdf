"""Benchmark: blocking and total time per save of a ~512 MB params+adam state, CkptHook vs orbax.

Compares, on the same TrainState (float32 params, adam mu and nu: three equal parts):

- `CkptHook(async_save=True)`: blocking = the `hook(...)` call, total = until `hook.wait()`;
- `CkptHook(async_save=False)`: blocking = total = the `hook(...)` call;
- orbax's own `CheckpointManager` with async checkpointing: blocking = `save()`, total = until
  `wait_until_finished()`;
- raw `write` + `fsync` of the same bytes into one file (the disk's ceiling);
- for reference, `CkptHook(format="tree", async_save=True)` (the core's safetensors format).

Between two saves a jitted "train step" replaces every array, as training would. Not part of
the test suite; run `python benchmarks/bench_flax.py [--mb 512 --repeats 3 --dir DIR]`.
Prints a markdown table and writes `benchmarks/results_flax.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax.training import train_state

from integrations.flax import CkptHook

HERE = Path(__file__).resolve().parent
N_ARRAYS = 32


def make_state(total_mb: float) -> train_state.TrainState:
    """A TrainState whose params, adam mu and adam nu together hold about `total_mb` MB."""
    floats_per_array = int(total_mb * 1e6 / 3 / 4 / N_ARRAYS)
    cols = 1024
    rows = max(1, floats_per_array // cols)
    keys = jax.random.split(jax.random.key(0), N_ARRAYS)
    params = {
        f"layer_{i:02d}": jax.random.normal(keys[i], (rows, cols), jnp.float32)
        for i in range(N_ARRAYS)
    }
    state = train_state.TrainState.create(apply_fn=None, params=params, tx=optax.adam(1e-3))
    # Non-zero moments, as after some training.
    return fake_step(state)


@jax.jit
def fake_step(state: train_state.TrainState) -> train_state.TrainState:
    grads = jax.tree.map(lambda p: p * 1e-3 + 1e-4, state.params)
    return state.apply_gradients(grads=grads)


def state_bytes(state: Any) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(state) if hasattr(x, "nbytes"))


def timed(
    name: str,
    save: Callable[[int, Any], None],
    finish: Callable[[], None],
    state: Any,
    repeats: int,
) -> tuple[dict[str, Any], Any]:
    """Warm up once, then time `repeats` saves; returns the row and the evolved state."""
    blocking, total = [], []
    for i in range(repeats + 1):
        state = fake_step(state)
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        save(i, state)
        t1 = time.perf_counter()
        finish()
        t2 = time.perf_counter()
        if i:  # the first save compiles and allocates: not timed
            blocking.append(t1 - t0)
            total.append(t2 - t0)
    return {
        "name": name,
        "blocking_ms": 1e3 * statistics.median(blocking),
        "total_s": statistics.median(total),
        "blocking_ms_all": [round(1e3 * b, 2) for b in blocking],
        "total_s_all": [round(t, 4) for t in total],
    }, state


def bench_hook(
    root: Path, state: Any, repeats: int, async_save: bool, format: str = "orbax"
) -> tuple[dict, Any]:
    mode = "async" if async_save else "sync"
    hook = CkptHook(
        root / f"hook_{format}_{mode}", max_to_keep=2, async_save=async_save, format=format
    )
    try:
        row, state = timed(
            f"CkptHook ({format} format, {mode})",
            lambda step, s: hook(step, s, force=True),
            hook.wait,
            state,
            repeats,
        )
    finally:
        hook.close()
    return row, state


def bench_orbax(root: Path, state: Any, repeats: int) -> tuple[dict, Any]:
    options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=True)
    mgr = ocp.CheckpointManager(root / "orbax_manager", options=options)
    try:
        row, state = timed(
            "orbax CheckpointManager (async)",
            lambda step, s: mgr.save(step, args=ocp.args.StandardSave(s)),
            mgr.wait_until_finished,
            state,
            repeats,
        )
    finally:
        mgr.close()
    return row, state


def bench_raw(root: Path, state: Any, repeats: int) -> tuple[dict, Any]:
    directory = root / "raw"
    directory.mkdir()

    def save(step: int, s: Any) -> None:
        path = directory / f"state_{step}.bin"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for leaf in jax.tree.leaves(s):
                view = memoryview(np.ascontiguousarray(np.asarray(leaf))).cast("B")
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        previous = directory / f"state_{step - 1}.bin"
        if previous.exists():
            previous.unlink()

    return timed("raw write + fsync", save, lambda: None, state, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=512, help="state size in MB (1e6 bytes)")
    parser.add_argument("--repeats", type=int, default=3, help="timed saves per variant")
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--out", default=str(HERE / "results_flax.json"))
    args = parser.parse_args()

    # orbax logs a warning whenever a save waits on the previous one; the table says it all.
    logging.getLogger("absl").setLevel(logging.ERROR)
    state = make_state(args.mb)
    nbytes = state_bytes(state)
    root = Path(tempfile.mkdtemp(prefix="bench_flax_", dir=args.dir))
    try:
        rows = []
        for run in (
            lambda s: bench_hook(root, s, args.repeats, async_save=True),
            lambda s: bench_hook(root, s, args.repeats, async_save=False),
            lambda s: bench_orbax(root, s, args.repeats),
            lambda s: bench_raw(root, s, args.repeats),
            # For reference: the core's own safetensors format, same hook.
            lambda s: bench_hook(root, s, args.repeats, async_save=True, format="tree"),
        ):
            row, state = run(state)
            row["gb_per_s"] = nbytes / 1e9 / row["total_s"]
            rows.append(row)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    orbax_row = next(r for r in rows if r["name"].startswith("orbax"))
    hook_async = rows[0]
    result = {
        "state_bytes": nbytes,
        "repeats": args.repeats,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "jax_devices": [str(d) for d in jax.devices()],
            "jax": jax.__version__,
            "orbax_checkpoint": ocp.__version__,
        },
        "rows": rows,
        "hook_async_vs_orbax": {
            "blocking_ratio": hook_async["blocking_ms"] / orbax_row["blocking_ms"],
            "throughput_ratio": hook_async["gb_per_s"] / orbax_row["gb_per_s"],
        },
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    print(f"Save of a {nbytes / 1e6:.0f} MB params+adam TrainState, median of {args.repeats}")
    print(f"({os.cpu_count()} CPUs, {jax.devices()[0].platform}, orbax {ocp.__version__}):\n")
    print("| variant | blocking per save | total per save | throughput |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['name']} | {row['blocking_ms']:.1f} ms | {row['total_s']:.2f} s "
            f"| {row['gb_per_s']:.2f} GB/s |"
        )
    ratios = result["hook_async_vs_orbax"]
    print(
        f"\nCkptHook async vs orbax async: blocking {ratios['blocking_ratio']:.2f}x "
        f"(target <= 1.5x), throughput {ratios['throughput_ratio']:.2f}x (target >= 1.2x)."
    )
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
