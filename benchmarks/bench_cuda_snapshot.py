"""Benchmark: how long an async save of a GPU state keeps the training loop waiting.

An async save returns once the state is copied to host memory (the device-to-host snapshot);
the write runs in the background. Measured on one CUDA device, for a state of 64 tensors:

- the physical limit: a copy of every tensor into pinned host buffers allocated beforehand
  (non-blocking copies, one synchronize);
- the naive snapshot: `tensor.to("cpu")` for every tensor (fresh pageable memory);
- `CheckpointManager.save(..., async_save=True)` until it returns, in the `tree`, `torch` and
  `dcp` formats; each manager's first save, which fills its buffers, is reported apart (only
  the first manager's allocates pinned memory: CUDA's allocator keeps freed pinned blocks);
- the peer: `torch.distributed.checkpoint.async_save` until its staging (the copy to host
  memory) has completed, the moment the state may change again; with its default stager,
  and with a `BlockingAsyncStager(cache_staged_state_dict=True)`, which reuses its buffers.

And what `CkptCallback` does under `ModelParallelStrategy`: an FSDP2 model and its Adam state
(8 layers of 4096x4096, 1.5 GiB in all, one process) turned into state dicts and saved
async in the `dcp` format, with the state dicts offloaded to the CPU (`cpu_offload=True`,
Lightning's choice for its own distributed checkpoints) and left on the GPU.

Needs CUDA (exits without writing anything elsewhere). Not part of the test suite; run
`CUDA_VISIBLE_DEVICES=0 python benchmarks/bench_cuda_snapshot.py [--mb 1024 --repeats 5]`.
Writes `benchmarks/results_cuda_snapshot.json`.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]
TENSORS = 64


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    import torch

    samples = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024, help="the whole state, MiB")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="scratch directory")
    parser.add_argument("--out", default=str(HERE / "results_cuda_snapshot.json"))
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing measured (set CUDA_VISIBLE_DEVICES on a GPU machine)")
        return
    import torch.distributed.checkpoint as dcp

    from ckpt_core import CheckpointManager

    numel = (args.mb << 20) // 4 // TENSORS
    state = {f"w{i}": torch.randn(numel, device="cuda") for i in range(TENSORS)}
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    pinned = {k: torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for k, t in state.items()}

    def pinned_copy() -> None:
        for k, t in state.items():
            pinned[k].copy_(t, non_blocking=True)
        torch.cuda.synchronize()

    def pageable_copy() -> None:
        for t in state.values():
            t.to("cpu")

    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-cuda-", dir=HERE.parent))
    samples: dict[str, list[float]] = {
        "pinned copy (limit)": timed(pinned_copy, args.repeats),
        "tensor.to('cpu')": timed(pageable_copy, args.repeats),
    }
    first: dict[str, float] = {}
    try:
        for fmt in ("tree", "torch", "dcp"):
            with CheckpointManager(root / fmt, format=fmt, async_save=True, max_to_keep=1) as mgr:
                seconds = []
                for step in range(args.repeats + 1):
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                    mgr.save(step, state)
                    seconds.append(time.perf_counter() - start)
                    mgr.wait()  # untimed: the write itself
            first[fmt] = seconds[0]  # it fills the manager's buffers
            samples[f"CheckpointManager async save, {fmt}"] = seconds[1:]
        # DCP's default stager (fresh pinned memory each save), and its fastest: one that
        # caches the staged state dict for the next save.
        from torch.distributed.checkpoint.staging import BlockingAsyncStager

        for label, stager in (
            ("torch.distributed.checkpoint.async_save, staged", None),
            ("torch.distributed.checkpoint.async_save, cached stager", BlockingAsyncStager(True)),
        ):
            seconds = []
            for i in range(args.repeats + 1):
                target = root / f"dcp-peer-{i}"
                torch.cuda.synchronize()
                start = time.perf_counter()
                response = dcp.async_save(state, checkpoint_id=str(target), async_stager=stager)
                staged = getattr(response, "staging_completion", None)
                if staged is not None:
                    staged.result()  # until then the state must not change
                seconds.append(time.perf_counter() - start)
                getattr(response, "upload_completion", response).result()
                shutil.rmtree(target, ignore_errors=True)
            first[label] = seconds[0]  # it allocates the staging buffers
            samples[label] = seconds[1:]
        fsdp2 = {f"cpu_offload={o}": fsdp2_saves(root, o, args.repeats) for o in (True, False)}
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)

    limit = statistics.median(samples["pinned copy (limit)"])
    rows = [
        {
            "measurement": what,
            "ms": round(statistics.median(s) * 1e3, 1),
            "GB_per_s": round(nbytes / 1e9 / statistics.median(s), 2),
            "vs_limit": round(statistics.median(s) / limit, 2),
        }
        for what, s in samples.items()
    ]
    doc = {
        "state_MiB": args.mb,
        "tensors": TENSORS,
        "repeats": args.repeats,
        "rows": rows,
        "first_save_ms": {k: round(v * 1e3, 1) for k, v in first.items()},
        "fsdp2_state_dicts_and_async_dcp_save_ms": {
            k: round(statistics.median(v) * 1e3, 1) for k, v in fsdp2.items()
        },
        "samples_s": samples,
        "machine": {
            "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name(),
            "torch": torch.__version__,
        },
    }
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    for row in rows:
        print(f"{row['measurement']:<52} {row['ms']:>8.1f} ms {row['vs_limit']:>6.2f}x limit")
    print(f"first saves (ms): {doc['first_save_ms']}")
    print(
        f"FSDP2 state dicts + async dcp save (ms): {doc['fsdp2_state_dicts_and_async_dcp_save_ms']}"
    )
    print(f"wrote {args.out}")


def fsdp2_saves(root: Path, offload: bool, repeats: int) -> list[float]:
    """Seconds until `save` returns, state dicts included, after an untimed first save."""
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )
    from torch.distributed.fsdp import fully_shard

    from ckpt_core import CheckpointManager

    if not dist.is_initialized():
        torch.cuda.set_device(0)
        rendezvous = f"file://{root / 'rendezvous'}"
        dist.init_process_group("cpu:gloo,cuda:nccl", init_method=rendezvous, rank=0, world_size=1)
    model = nn.Sequential(*[nn.Linear(4096, 4096) for _ in range(8)]).cuda()
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4096, device="cuda")).sum().backward()
    optimizer.step()
    options = StateDictOptions(cpu_offload=offload)
    seconds = []
    directory = root / f"fsdp2-{offload}"
    with CheckpointManager(directory, format="dcp", async_save=True, max_to_keep=1) as mgr:
        for step in range(repeats + 1):
            torch.cuda.synchronize()
            start = time.perf_counter()
            state = {
                "model": get_model_state_dict(model, options=options),
                "optim": get_optimizer_state_dict(model, optimizer, options=options),
            }
            mgr.save(step, state)
            seconds.append(time.perf_counter() - start)
            mgr.wait()
    return seconds[1:]


if __name__ == "__main__":
    main()
