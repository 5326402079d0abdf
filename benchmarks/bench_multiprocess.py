"""Benchmark: two processes each holding half of a 512 MiB state save one checkpoint.

Measures, with 2 real processes over loopback (torch: gloo, DTensors sharded over both;
JAX: jax.distributed, a 4-device mesh, 2 CPU devices per process):

- aggregate save throughput of `CheckpointManager` (`dcp` and `orbax` formats), committed;
- the same state saved by the engine alone (`torch.distributed.checkpoint.save`, orbax's
  `Checkpointer.save`), twice per round around the manager's save: the second engine save
  against the first is the noise floor of the engine comparison;
- the disk limit: the same bytes written by one process with O_DIRECT, then fsync;
- the blocking time of an async save, against one process holding the whole state, and
  against a plain copy of each process's own shards in the same job (what a snapshot of
  host memory cannot beat);
- restoring the latest step onto one process without a process group.

Every writer works alike: each save goes into a new directory and the previous one is
deleted, untimed for the engine and by retention (`max_to_keep=1`) for the manager (which
removes the files in the background; the benchmark waits for that, untimed), as in a
training run. Here memory never touched before is slow to fill (a VM's first touch): a
writer through the page cache whose files pile up would be timed on that, not on the disk.
After each barrier the processes wait 0.2 s before the clock starts, so that gloo's threads,
which poll for a while after a collective, are not timed as part of a save on 2 cores.

Not part of the test suite; run `python benchmarks/bench_multiprocess.py [--mb 512
--repeats 5 --dir DIR]`. Prints a summary and writes `benchmarks/results_multiprocess.json`.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
ROWS = 1024  # columns of every tensor; rows are split between the processes
SETTLE_S = 0.2  # after a barrier, before the clock starts (see the module notes)


def _barrier(kind: str, name: str) -> None:
    if kind == "torch":
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
    else:
        import jax
        from jax.experimental import multihost_utils

        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(name)


def _timed(kind: str, name: str, fn: Any) -> float:
    _barrier(kind, f"{name}-start")
    time.sleep(SETTLE_S)
    began = time.perf_counter()
    fn()
    _barrier(kind, f"{name}-end")
    return time.perf_counter() - began


def _blocking(kind: str, name: str, fn: Any) -> float:
    """How long `fn` holds up this process (not waiting for the others to finish theirs)."""
    _barrier(kind, name)
    time.sleep(SETTLE_S)
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def torch_state(mb: int, count: int) -> dict[str, Any]:
    """8 float32 tensors of `mb` MiB together, sharded by rows over `count` processes."""
    import torch

    rows = mb * (1 << 20) // 4 // ROWS // 8
    torch.manual_seed(0)
    if count == 1:
        return {f"layer{i}": torch.randn(rows, ROWS) for i in range(8)}
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    return {
        f"layer{i}": distribute_tensor(torch.randn(rows, ROWS), mesh, [Shard(0)]) for i in range(8)
    }


def jax_state(mb: int) -> dict[str, Any]:
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    rows = mb * (1 << 20) // 4 // ROWS // 8
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("x",)), P("x"))
    # Random values: orbax compresses (zstd), and a constant array would write almost nothing.
    rng = np.random.default_rng(0)
    state = {}
    for i in range(8):
        whole = rng.standard_normal((rows, ROWS), dtype=np.float32)
        state[f"layer{i}"] = jax.make_array_from_callback(
            (rows, ROWS), sharding, lambda idx, whole=whole: whole[idx]
        )
    return state


def worker(kind: str, index: int, count: int, port: int, root: Path, mb: int, repeats: int) -> None:
    """One process of the job: every measurement of `kind`, process 0 reports."""
    from ckpt_core import CheckpointManager

    out: dict[str, Any] = {}
    if kind == "torch":
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp

        if count > 1:
            dist.init_process_group(
                "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=index, world_size=count
            )
        state = torch_state(mb, count)
        fmt = "dcp"

        def engine(path: Path) -> None:
            dcp.save(state, checkpoint_id=str(path))
    else:
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        import jax

        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=count, process_id=index)
        import orbax.checkpoint as ocp

        state = jax_state(mb)
        fmt = "orbax"
        checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())

        def engine(path: Path) -> None:
            checkpointer.save(path, args=ocp.args.StandardSave(state))

    def fresh(name: str) -> Path:
        path = root / name
        if index == 0:
            shutil.rmtree(path, ignore_errors=True)
        _barrier(kind, f"fresh-{name}")
        return path

    if count > 1:
        engine_s, again_s, ckpt_s = [], [], []
        engine_root = fresh(f"{kind}-engine")

        def engine_once(name: str) -> float:
            path = engine_root / name
            took = _timed(kind, name, lambda: engine(path))
            _barrier(kind, f"{name}-written")
            if index == 0:
                shutil.rmtree(path)  # untimed, as retention deletes a step
            return took

        with CheckpointManager(fresh(f"{kind}-ckpt"), format=fmt, max_to_keep=1) as mgr:
            for r in range(repeats + 1):  # the first round is a warm-up
                e = engine_once(f"first{r}")
                c = _timed(kind, f"ckpt{r}", lambda r=r: mgr.save(r, state, force=True))
                mgr.wait()  # untimed: the pruned step's files are gone, as the engine's are
                a = engine_once(f"again{r}")
                if r:
                    engine_s.append(e)
                    ckpt_s.append(c)
                    again_s.append(a)
        out.update(engine_save_s=engine_s, engine_again_s=again_s, ckpt_save_s=ckpt_s)
    # Async: each round times a plain copy of the shards, then the save; both in each process.
    copy = plain_copier(kind, state)
    blocking, copies = [], []
    with CheckpointManager(
        fresh(f"{kind}-async-{count}"), format=fmt, async_save=True, max_to_keep=1
    ) as mgr:
        for r in range(repeats + 1):  # the first round is a warm-up
            mgr.wait()
            if copy is not None:
                took = _blocking(kind, f"copy{r}", copy)
                copies += [took] if r else []
            took = _blocking(kind, f"async{r}", lambda r=r: mgr.save(r, state, force=True))
            blocking += [took] if r else []
    out["plain_copy_s"] = copies
    out["async_blocking_s"] = blocking
    if index == 0:
        print("RESULT " + json.dumps(out), flush=True)


def plain_copier(kind: str, state: dict[str, Any]) -> Any:
    """A plain copy of this process's own shards into buffers allocated beforehand (JAX:
    None, nothing to copy: its arrays are immutable)."""
    if kind != "torch":
        return None
    from torch.distributed.tensor import DTensor

    local = [v.to_local() if isinstance(v, DTensor) else v for v in state.values()]
    buffers = [t.clone() for t in local]

    def copy() -> None:
        for buffer, tensor in zip(buffers, local):
            buffer.copy_(tensor)

    return copy


def restore_onto_one(root: Path, mb: int, repeats: int) -> list[float]:
    """Restore the 2-process `dcp` step into plain tensors in this process (no process group)."""
    import torch

    from ckpt_core import CheckpointManager

    rows = mb * (1 << 20) // 4 // ROWS // 8
    like = {f"layer{i}": torch.empty(rows, ROWS) for i in range(8)}
    times = []
    with CheckpointManager(root / "torch-ckpt", read_only=True) as mgr:
        for r in range(repeats + 1):
            began = time.perf_counter()
            mgr.restore(like=like)
            if r:
                times.append(time.perf_counter() - began)
    return times


def disk_limit(root: Path, mb: int, repeats: int) -> list[float]:
    from _harness import write_direct

    buffer = mmap.mmap(-1, mb << 20)
    buffer.write(os.urandom(1 << 20) * mb)
    times = []
    for r in range(repeats + 1):
        path = root / f"direct-{r}"
        began = time.perf_counter()
        write_direct(path, buffer)
        if r:
            times.append(time.perf_counter() - began)
        path.unlink()
    return times


def launch(kind: str, count: int, root: Path, mb: int, repeats: int) -> dict[str, Any]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": str(HERE.parent),
    }
    command = [sys.executable, __file__, "--role", kind, "--port", str(port), "--count", str(count)]
    command += ["--dir", str(root), "--mb", str(mb), "--repeats", str(repeats)]
    children = [
        subprocess.Popen([*command, "--index", str(i)], env=env, stdout=subprocess.PIPE, text=True)
        for i in range(count)
    ]
    try:
        outputs = [child.communicate(timeout=1800)[0] for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    for line in outputs[0].splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    raise RuntimeError(f"{kind} x{count} reported nothing: {outputs[0][-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=512, help="the whole state, MiB")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="scratch directory on the disk under test")
    parser.add_argument("--out", default=str(HERE / "results_multiprocess.json"))
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        worker(args.role, args.index, args.count, args.port, Path(args.dir), args.mb, args.repeats)
        os._exit(0)

    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-mp-", dir=HERE.parent))
    root.mkdir(parents=True, exist_ok=True)
    nbytes = args.mb << 20
    try:
        disk = disk_limit(root, args.mb, args.repeats)
        torch2 = launch("torch", 2, root, args.mb, args.repeats)
        torch1 = launch("torch", 1, root, args.mb, args.repeats)
        restore = restore_onto_one(root, args.mb, args.repeats)
        jax2 = launch("jax", 2, root, args.mb, args.repeats)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)

    def gbps(samples: list[float]) -> float:
        return round(nbytes / 1e9 / statistics.median(samples), 3)

    disk_gbps = gbps(disk)

    def median_ms(samples: list[float]) -> float:
        return round(statistics.median(samples) * 1e3, 1)

    rows = [
        {"measurement": "disk limit: 1 process, O_DIRECT + fsync", "GB_per_s": disk_gbps},
        {"measurement": "torch.distributed.checkpoint.save, 2 processes", "GB_per_s": gbps(torch2["engine_save_s"])},
        {"measurement": "CheckpointManager dcp save, 2 processes", "GB_per_s": gbps(torch2["ckpt_save_s"])},
        {"measurement": "orbax Checkpointer.save, 2 processes", "GB_per_s": gbps(jax2["engine_save_s"])},
        {"measurement": "CheckpointManager orbax save, 2 processes", "GB_per_s": gbps(jax2["ckpt_save_s"])},
        {"measurement": "dcp restore onto 1 process (verified)", "GB_per_s": gbps(restore)},
    ]  # fmt: skip
    blocking_ms = {
        "dcp async save, 2 processes": median_ms(torch2["async_blocking_s"]),
        "plain copy of a process's shards, 2 processes": median_ms(torch2["plain_copy_s"]),
        "dcp async save, 1 process, whole state": median_ms(torch1["async_blocking_s"]),
        "plain copy of the whole state, 1 process": median_ms(torch1["plain_copy_s"]),
        "orbax async save, 2 processes": median_ms(jax2["async_blocking_s"]),
    }
    ratios = {
        "dcp_vs_disk": round(gbps(torch2["ckpt_save_s"]) / disk_gbps, 3),
        "dcp_vs_engine": round(gbps(torch2["ckpt_save_s"]) / gbps(torch2["engine_save_s"]), 3),
        "dcp_engine_vs_itself": round(gbps(torch2["engine_again_s"]) / gbps(torch2["engine_save_s"]), 3),
        "orbax_vs_disk": round(gbps(jax2["ckpt_save_s"]) / disk_gbps, 3),
        "orbax_vs_engine": round(gbps(jax2["ckpt_save_s"]) / gbps(jax2["engine_save_s"]), 3),
        "orbax_engine_vs_itself": round(gbps(jax2["engine_again_s"]) / gbps(jax2["engine_save_s"]), 3),
        "async_blocking_2proc_vs_1proc_dcp": round(
            statistics.median(torch2["async_blocking_s"]) / statistics.median(torch1["async_blocking_s"]), 3
        ),
        "async_blocking_2proc_vs_plain_copy": round(
            statistics.median(torch2["async_blocking_s"]) / statistics.median(torch2["plain_copy_s"]), 3
        ),
    }  # fmt: skip
    doc = {
        "state_MiB": args.mb,
        "repeats": args.repeats,
        "rows": rows,
        "blocking_ms": blocking_ms,
        "ratios": ratios,
        "goals": "dcp/orbax vs disk >= 0.85, vs engine >= 1.0, async blocking ratio <= 1.0; "
        "*_engine_vs_itself: the engine's second save of a round against its first (noise)",
        "samples_s": {"disk": disk, "torch2": torch2, "torch1": torch1, "jax2": jax2, "restore": restore},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    for row in rows:
        print(f"{row['measurement']:<52} {row['GB_per_s']:.3f} GB/s")
    for what, ms in blocking_ms.items():
        print(f"{what:<52} {ms:.1f} ms")
    print(json.dumps(ratios, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
