"""The core benchmarks: ckpt-core's saves and restores beside the physical limits and the peers.

For each size, on the disk under test:

- limits: memory copy, xxh3 checksum, raw `os.write` + fsync, raw `readinto` (warm cache);
- peers: `torch.save` / `torch.load`, safetensors, orbax (sync and async), Lightning
  `Trainer.save_checkpoint`, each made durable with fsync where it does not do so itself;
- ckpt-core: sync and async saves (durable: payload, manifest, fsyncs and rename), restores
  with checksum verification, and the extra peak memory of a sync and an async save;

and, once: `import ckpt_core`, `should_save`, and the bookkeeping of a save into a directory
that already holds 10,000 steps. Every save writes a fresh file or step directory; deleting
the previous one is left out of the timings. `run_all` fills `bench.results`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import xxhash
from _harness import (
    MB,
    Bench,
    PeakRSS,
    Timing,
    fsync_path,
    fsync_tree,
    read_into,
    release_free_memory,
    time_phases,
    time_repeats,
    write_durably,
)

import ckpt_core
from ckpt_core import CheckpointManager

N_ARRAYS = 32  # every state holds this many equal float32 arrays
COLUMNS = 1024
STATE_KINDS = ("torch", "numpy", "jax")
BOOKKEEPING_STEPS = 10_000
FRAMEWORKS = ("torch", "jax", "flax", "orbax", "lightning", "gymnasium")


# ---------------------------------------------------------------- states


def _rows(mb: int) -> int:
    return max(1, mb * MB // (N_ARRAYS * 4 * COLUMNS))


def make_state(kind: str, mb: int) -> Any:
    """A `kind` state of `mb` MiB in `N_ARRAYS` float32 arrays.

    torch: a flat `state_dict`; numpy and jax: a nested pytree (params, optimizer moments,
    scalars), as a JAX training loop would hold it.
    """
    rng = np.random.default_rng(0)
    shape = (_rows(mb), COLUMNS)
    if kind == "torch":
        import torch

        torch.manual_seed(0)
        return {f"layers.{i:02d}.weight": torch.randn(shape) for i in range(N_ARRAYS)}
    arrays = [rng.standard_normal(shape, dtype=np.float32) for _ in range(N_ARRAYS)]
    if kind == "jax":
        import jax.numpy as jnp

        arrays = [jnp.asarray(a) for a in arrays]
    quarter = N_ARRAYS // 4
    return {
        "params": {f"dense_{i:02d}": {"kernel": a} for i, a in enumerate(arrays[: 2 * quarter])},
        "opt_state": {
            "mu": {f"dense_{i:02d}": a for i, a in enumerate(arrays[2 * quarter : 3 * quarter])},
            "nu": {f"dense_{i:02d}": a for i, a in enumerate(arrays[3 * quarter :])},
        },
        "step": 1234,
        "config": {"learning_rate": 1e-3, "warmup_steps": 100},
    }


def array_leaves(state: Any) -> list[Any]:
    if isinstance(state, dict):
        return [leaf for value in state.values() for leaf in array_leaves(value)]
    return [state] if hasattr(state, "shape") else []


def state_nbytes(state: Any) -> int:
    return sum(int(leaf.nbytes) for leaf in array_leaves(state))


def plain_copy(state: Any) -> Any:
    """The least an async snapshot must do: a fresh host copy of every array."""
    if isinstance(state, dict):
        return {k: plain_copy(v) for k, v in state.items()}
    if hasattr(state, "clone"):
        return state.clone()
    if isinstance(state, np.ndarray):
        return state.copy()
    return state


# ---------------------------------------------------------------- limits


def bench_limits(bench: Bench, mb: int) -> None:
    """memcpy, checksum, raw write + fsync and raw read of one `mb` MiB buffer."""
    nbytes = mb * MB
    src = np.random.default_rng(1).integers(0, 255, nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    dst.fill(0)  # fault the pages in: a memcpy limit, not a page-fault benchmark
    rec = bench.record
    rec(
        "memcpy",
        "memcpy (np.copyto into a preallocated array)",
        "bytes",
        mb,
        time_repeats(lambda: np.copyto(dst, src), repeats=bench.repeats),
        nbytes=nbytes,
    )
    rec(
        "xxh3",
        "xxh3-64 checksum (the core's per-file checksum)",
        "bytes",
        mb,
        time_repeats(lambda: xxhash.xxh3_64(src).digest(), repeats=bench.repeats),
        nbytes=nbytes,
    )
    rec(
        "raw_write",
        "raw os.write + fsync (one new file; sampled throughout)",
        "bytes",
        mb,
        _raw_writes(bench, src),
        nbytes=nbytes,
    )
    path = bench.fresh_dir("raw.bin")
    write_durably(path, [src.data])
    rec(
        "raw_read",
        "raw readinto a preallocated buffer (warm cache)",
        "bytes",
        mb,
        time_repeats(lambda: read_into(path, dst.data), repeats=bench.repeats),
        nbytes=nbytes,
    )
    path.unlink()


def _raw_writes(bench: Bench, data: np.ndarray) -> Timing:
    path = bench.fresh_dir("raw.bin")
    return time_repeats(
        lambda: write_durably(path, [data.data]), repeats=bench.repeats, teardown=path.unlink
    )


def resample_raw_write(bench: Bench, mb: int) -> None:
    """Add raw write + fsync samples to this size's limit.

    The disk's speed drifts with whatever else writes to it; sampling the limit again after
    each state's benchmarks makes its median describe the same period as the rows it is
    compared with.
    """
    record = bench.results.get("raw_write", "bytes", mb)
    assert record is not None and record.cpu_samples is not None
    timing = _raw_writes(bench, np.full(mb * MB, 7, np.uint8))
    record.samples += timing.wall
    record.cpu_samples += timing.cpu
    bench.log_record(record)


# ---------------------------------------------------------------- peers


def bench_torch_peers(bench: Bench, state: Any, mb: int) -> None:
    import safetensors.torch
    import torch

    nbytes = state_nbytes(state)
    path = bench.fresh_dir("peer.pt")

    def torch_save() -> None:
        torch.save(state, path)
        fsync_path(path)

    def safetensors_save() -> None:
        safetensors.torch.save_file(state, path)
        fsync_path(path)

    for save_id, save_label, save, load_id, load_label, load in (
        (
            "torch_save",
            "torch.save + fsync",
            torch_save,
            "torch_load",
            "torch.load (warm cache, weights_only)",
            lambda: torch.load(path, weights_only=True),
        ),
        (
            "safetensors_save",
            "safetensors.torch save_file + fsync",
            safetensors_save,
            "safetensors_load",
            "safetensors.torch load_file (memory-mapped: pages not read)",
            lambda: safetensors.torch.load_file(path),
        ),
    ):
        samples = time_repeats(save, repeats=bench.repeats, teardown=path.unlink)
        bench.record(save_id, save_label, "torch", mb, samples, nbytes=nbytes)
        save()
        samples = time_repeats(load, repeats=bench.repeats)
        bench.record(load_id, load_label, "torch", mb, samples, nbytes=nbytes)
        path.unlink()
    record_plain_copy(bench, "torch", state, mb, "clone")


def record_plain_copy(bench: Bench, kind: str, state: Any, mb: int, how: str) -> None:
    """The reference of the async-blocking target: a fresh copy of every array."""
    bench.record(
        "plain_copy",
        f"plain copy of every array ({how})",
        kind,
        mb,
        time_repeats(lambda: plain_copy(state), repeats=bench.repeats),
        nbytes=state_nbytes(state),
    )


def bench_numpy_peers(bench: Bench, state: Any, mb: int) -> None:
    import safetensors.numpy

    nbytes = state_nbytes(state)
    flat = {f"a{i}": leaf for i, leaf in enumerate(array_leaves(state))}
    path = bench.fresh_dir("peer.safetensors")

    def save() -> None:
        safetensors.numpy.save_file(flat, path)
        fsync_path(path)

    bench.record(
        "safetensors_save",
        "safetensors.numpy save_file + fsync (flattened)",
        "numpy",
        mb,
        time_repeats(save, repeats=bench.repeats, teardown=path.unlink),
        nbytes=nbytes,
    )
    save()
    bench.record(
        "safetensors_load",
        "safetensors.numpy load_file (warm cache)",
        "numpy",
        mb,
        time_repeats(lambda: safetensors.numpy.load_file(path), repeats=bench.repeats),
        nbytes=nbytes,
    )
    path.unlink()
    record_plain_copy(bench, "numpy", state, mb, "ndarray.copy")


def bench_jax_peers(bench: Bench, state: Any, mb: int) -> None:
    """orbax StandardCheckpointer (sync) and CheckpointManager (async), fsynced afterwards."""
    import orbax.checkpoint as ocp

    nbytes = state_nbytes(state)
    target = bench.fresh_dir("orbax")
    checkpointer = ocp.StandardCheckpointer()

    def standard_save() -> None:
        checkpointer.save(target, state)
        checkpointer.wait_until_finished()
        fsync_tree(target)

    bench.record(
        "orbax_save",
        "orbax StandardCheckpointer save (sync) + fsync",
        "jax",
        mb,
        time_repeats(standard_save, repeats=bench.repeats, teardown=lambda: shutil.rmtree(target)),
        nbytes=nbytes,
    )
    checkpointer.close()

    manager: list[Any] = []

    def open_manager() -> None:
        options = ocp.CheckpointManagerOptions(max_to_keep=None, enable_async_checkpointing=True)
        manager.append(ocp.CheckpointManager(bench.fresh_dir("orbax_manager"), options=options))

    def close_manager() -> None:
        manager.pop().close()
        shutil.rmtree(bench.root / "orbax_manager")

    def async_save() -> dict[str, float]:
        mgr = manager[-1]
        start = time.perf_counter()
        mgr.save(0, args=ocp.args.StandardSave(state))
        returned = time.perf_counter()
        mgr.wait_until_finished()
        fsync_tree(bench.root / "orbax_manager")
        done = time.perf_counter()
        return {"blocking": returned - start, "total": done - start}

    phases = time_phases(
        async_save, repeats=bench.repeats, setup=open_manager, teardown=close_manager
    )
    bench.record(
        "orbax_async_block",
        "orbax CheckpointManager async save: blocking",
        "jax",
        mb,
        phases["blocking"],
    )
    bench.record(
        "orbax_async_total",
        "orbax CheckpointManager async save: total + fsync",
        "jax",
        mb,
        phases["total"],
        nbytes=nbytes,
    )


PEERS: dict[str, Callable[[Bench, Any, int], None]] = {
    "torch": bench_torch_peers,
    "numpy": bench_numpy_peers,
    "jax": bench_jax_peers,
}


# ---------------------------------------------------------------- ckpt-core


class _Managers:
    """A fresh `CheckpointManager` in a fresh directory per repeat (opened and closed untimed)."""

    def __init__(self, bench: Bench, name: str, **options: Any) -> None:
        self.bench = bench
        self.name = name
        self.options = options
        self.current: CheckpointManager | None = None

    def open(self) -> None:
        self.current = CheckpointManager(self.bench.fresh_dir(self.name), **self.options)

    def close(self) -> None:
        assert self.current is not None
        self.current.close()
        self.current = None
        shutil.rmtree(self.bench.root / self.name)

    @property
    def mgr(self) -> CheckpointManager:
        assert self.current is not None
        return self.current


def bench_ckpt_core(bench: Bench, kind: str, state: Any, mb: int, fmt: str) -> None:
    """Sync save, async save, restore and peak memory of ckpt-core in format `fmt`."""
    nbytes = state_nbytes(state)
    what = f"ckpt-core {fmt} format"
    prefix = f"ckpt_{fmt}"

    sync = _Managers(bench, f"{prefix}_sync", format=fmt, max_to_keep=None)
    bench.record(
        f"{prefix}_save",
        f"{what}: sync save (durable)",
        kind,
        mb,
        time_repeats(
            lambda: sync.mgr.save(0, state),
            repeats=bench.repeats,
            setup=sync.open,
            teardown=sync.close,
        ),
        nbytes=nbytes,
    )

    background = _Managers(bench, f"{prefix}_async", format=fmt, async_save=True, max_to_keep=2)

    def open_and_warm_up() -> None:
        # Steady state, as in a training run: one manager saves again and again, so the
        # timed save is the second one and reuses the first one's snapshot buffers.
        background.open()
        background.mgr.save(0, state)
        background.mgr.wait()

    def async_save() -> dict[str, float]:
        start = time.perf_counter()
        background.mgr.save(1, state)
        returned = time.perf_counter()
        background.mgr.wait()
        return {"blocking": returned - start, "total": time.perf_counter() - start}

    phases = time_phases(
        async_save, repeats=bench.repeats, setup=open_and_warm_up, teardown=background.close
    )
    bench.record(
        f"{prefix}_async_block", f"{what}: async save, blocking", kind, mb, phases["blocking"]
    )
    bench.record(
        f"{prefix}_async_total",
        f"{what}: async save, total (durable)",
        kind,
        mb,
        phases["total"],
        nbytes=nbytes,
    )

    bench_restore(bench, kind, state, mb, fmt)
    bench_save_memory(bench, kind, state, mb, fmt)


def bench_restore(bench: Bench, kind: str, state: Any, mb: int, fmt: str) -> None:
    nbytes = state_nbytes(state)
    directory = bench.fresh_dir(f"ckpt_{fmt}_restore")
    with CheckpointManager(directory, format=fmt) as mgr:
        mgr.save(0, state)
    with CheckpointManager(directory, read_only=True) as mgr:
        bench.record(
            f"ckpt_{fmt}_restore",
            f"ckpt-core {fmt} format: restore, checksums verified (warm)",
            kind,
            mb,
            time_repeats(mgr.restore, repeats=bench.repeats),
            nbytes=nbytes,
        )
        if fmt == "torch":
            bench.record(
                "ckpt_torch_restore_lazy",
                "ckpt-core torch format: lazy (mmap) restore, verified",
                kind,
                mb,
                time_repeats(lambda: mgr.restore(lazy=True), repeats=bench.repeats),
                nbytes=nbytes,
            )
    shutil.rmtree(directory)


def bench_save_memory(bench: Bench, kind: str, state: Any, mb: int, fmt: str) -> None:
    """Extra peak RSS of a sync save, and of two async saves back to back (one in flight).

    Runs after the timed saves of the same format, so imports and first-call caches are warm.
    """
    nbytes = state_nbytes(state)
    for async_save in (False, True):
        directory = bench.fresh_dir(f"ckpt_{fmt}_memory")
        with CheckpointManager(
            directory, format=fmt, async_save=async_save, max_to_keep=None
        ) as mgr:
            release_free_memory()
            with PeakRSS() as peak:
                mgr.save(0, state)
                if async_save:
                    mgr.save(1, state)  # must wait for the first: never two snapshots at once
                mgr.wait()
        shutil.rmtree(directory)
        mode = "async" if async_save else "sync"
        bench.record(
            f"ckpt_{fmt}_{mode}_memory",
            f"ckpt-core {fmt} format: extra peak RSS, "
            + ("2 async saves back to back" if async_save else "sync save"),
            kind,
            mb,
            [float(peak.extra)],
            unit="bytes",
            nbytes=nbytes,
        )


# ---------------------------------------------------------------- Lightning


def bench_lightning(bench: Bench, mb: int) -> None:
    """`Trainer.save_checkpoint` + fsync vs ckpt-core saving the same Lightning checkpoint dict."""
    import lightning.pytorch as pl
    import torch

    for name in ("lightning.pytorch", "lightning.fabric"):  # its INFO lines would bury the log
        logging.getLogger(name).setLevel(logging.ERROR)

    class BigModel(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.weights = torch.nn.ParameterList(
                torch.nn.Parameter(t) for t in make_state("torch", mb).values()
            )

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return (self.weights[0][0, 0] * batch[0]).sum()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.0)

    model = BigModel()
    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=bench.fresh_dir("lightning_root"),
    )
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(1, 1)))
    trainer.fit(model, train_dataloaders=data)
    nbytes = state_nbytes(dict(model.state_dict()))
    path = bench.fresh_dir("lightning.ckpt")

    def lightning_save() -> None:
        trainer.save_checkpoint(path)
        fsync_path(path)

    bench.record(
        "lightning_save",
        "Lightning Trainer.save_checkpoint + fsync",
        "lightning",
        mb,
        time_repeats(lightning_save, repeats=bench.repeats, teardown=path.unlink),
        nbytes=nbytes,
    )
    managers = _Managers(bench, "ckpt_lightning", format="torch", max_to_keep=None)

    def ckpt_save() -> None:
        # What the Lightning adapter does: Lightning builds the dict, ckpt-core writes it.
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        managers.mgr.save(0, checkpoint)

    bench.record(
        "ckpt_torch_save",
        "ckpt-core torch format: sync save of the same dict (durable)",
        "lightning",
        mb,
        time_repeats(
            ckpt_save, repeats=bench.repeats, setup=managers.open, teardown=managers.close
        ),
        nbytes=nbytes,
    )
    shutil.rmtree(bench.root / "lightning_root", ignore_errors=True)


# ---------------------------------------------------------------- fixed costs


_IMPORT_PROBE = """
import json, sys, time
{preload}
start = time.perf_counter()
import ckpt_core
elapsed = time.perf_counter() - start
print(json.dumps([elapsed, [m for m in {frameworks!r} if m in sys.modules]]))
"""


def bench_import(bench: Bench, runs: int = 7) -> list[str]:
    """`import ckpt_core` in fresh interpreters, alone and after numpy (its one heavy dependency).

    Returns the frameworks the import pulled in (there should be none).
    """
    pulled: set[str] = set()
    for preload, id, label in (
        ("", "import", "import ckpt_core (fresh interpreter)"),
        ("import numpy", "import_after_numpy", "import ckpt_core after numpy (its own cost)"),
    ):
        code = _IMPORT_PROBE.format(preload=preload, frameworks=FRAMEWORKS)
        samples: list[float] = []
        for _ in range(runs + 1):  # the first run warms the file cache and __pycache__
            out = subprocess.run(
                [sys.executable, "-c", code], check=True, capture_output=True, text=True
            ).stdout
            seconds, frameworks = json.loads(out)
            samples.append(seconds)
            pulled.update(frameworks)
        bench.record(id, label, "-", 0, samples[1:])
    return sorted(pulled)


def bench_should_save(bench: Bench) -> None:
    directory = bench.fresh_dir("should_save")
    with CheckpointManager(directory, save_interval_steps=100, save_interval_secs=3600) as mgr:
        number = 200_000
        totals = timeit.repeat(
            "should_save(12345)",
            globals={"should_save": mgr.should_save},
            number=number,
            repeat=max(5, bench.repeats),
        )
    shutil.rmtree(directory)
    bench.record(
        "should_save",
        "should_save(step) (step and time intervals set)",
        "-",
        0,
        [t / number for t in totals],
    )


def _fabricate_steps(directory: Path, count: int) -> None:
    """`count` committed tiny steps, fast: one real save, then copies with their own manifest.

    Real saves would cost ~10 fsyncs each (minutes for 10,000); the copies are what such a
    run leaves on disk, byte for byte except `step`, `time` and the metric in the manifest.
    """
    with CheckpointManager(directory, max_to_keep=None) as mgr:
        mgr.save(0, {"w": np.zeros(4, np.float32)}, metrics={"loss": 1.0})
    template = directory / "step_00000000"
    manifest = json.loads((template / "manifest.json").read_text())
    payload = [p.name for p in template.iterdir() if p.name != "manifest.json"]
    for step in range(1, count):
        step_dir = directory / f"step_{step:08d}"
        step_dir.mkdir()
        for name in payload:
            os.link(template / name, step_dir / name)
        manifest.update(step=step, time=manifest["time"] + 1, metrics={"loss": 1.0 / step})
        (step_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))


@contextlib.contextmanager
def _fsync_disabled() -> Iterator[None]:
    """Make `os.fsync` a no-op, to time a save's CPU and metadata work without disk latency.

    The fsync of a tiny file varies by tens of milliseconds on a busy disk, which would
    swamp the difference this benchmark looks for; nothing else is changed.
    """
    real = os.fsync
    os.fsync = lambda fd: None
    try:
        yield
    finally:
        os.fsync = real


def _tiny_saves(bench: Bench, count: int) -> dict[str, Timing]:
    """Open a directory of `count` fabricated steps; time tiny saves into it (all kept)."""
    directory = bench.fresh_dir(f"bookkeeping_{count}")
    _fabricate_steps(directory, count)
    start = time.perf_counter()
    mgr = CheckpointManager(directory, max_to_keep=None, best_fn="loss", on_existing="resume")
    samples = {"open": Timing([time.perf_counter() - start])}
    tiny = {"w": np.zeros(4, np.float32)}
    steps = iter(range(count, count + 1000))
    repeats = max(7, bench.repeats)

    def save() -> None:
        mgr.save(next(steps), tiny, metrics={"loss": 0.5})

    with mgr:
        samples["durable"] = time_repeats(save, repeats=repeats)
        with _fsync_disabled():
            samples["no_fsync"] = time_repeats(save, repeats=repeats)
    shutil.rmtree(directory)
    return samples


def bench_bookkeeping(bench: Bench) -> None:
    """What a save costs beyond its payload when 10,000 steps are already committed.

    The same tiny save is timed into a directory holding 1 step and one holding 10,000 (all
    kept, best tracked by a metric). With fsync disabled, the difference of the medians is
    the listing, retention and pointer work that grows with the directory. Durable tiny
    saves and opening (scanning) the big directory are recorded too.
    """
    few = _tiny_saves(bench, 1)
    many = _tiny_saves(bench, BOOKKEEPING_STEPS)
    where = f"{BOOKKEEPING_STEPS:,} steps"
    for samples, steps in ((few, "1 step"), (many, where)):
        bench.record("tiny_save", f"tiny save (durable) into {steps}", steps, 0, samples["durable"])
        bench.record(
            "tiny_save_no_fsync",
            f"tiny save, fsync disabled, into {steps}",
            steps,
            0,
            samples["no_fsync"],
        )
    label = f"CheckpointManager(on_existing='resume') on {where}"
    bench.record("open_resume", label, where, 0, many["open"])
    base = statistics.median(few["no_fsync"].wall)
    bench.record(
        "bookkeeping",
        f"bookkeeping of a save at {where} (fsync disabled, minus at 1 step)",
        "-",
        0,
        [s - base for s in many["no_fsync"].wall],
    )


# ---------------------------------------------------------------- everything


def run_all(bench: Bench, sizes_mb: list[int], *, lightning: bool = True) -> dict[str, Any]:
    """Every core benchmark into `bench.results`; returns notes for the report."""
    notes: dict[str, Any] = {"ckpt_core_version": ckpt_core.__version__}
    bench.log("fixed costs")
    notes["frameworks_imported_by_ckpt_core"] = bench_import(bench)
    bench_should_save(bench)
    bench_bookkeeping(bench)
    for mb in sizes_mb:
        bench.log(f"{mb} MiB")
        bench_limits(bench, mb)
        for kind in STATE_KINDS:
            state = make_state(kind, mb)
            PEERS[kind](bench, state, mb)
            for fmt in ("tree", "torch") if kind == "torch" else ("tree",):
                bench_ckpt_core(bench, kind, state, mb, fmt)
            del state
            resample_raw_write(bench, mb)
        if lightning:
            bench_lightning(bench, mb)
            resample_raw_write(bench, mb)

    return notes
