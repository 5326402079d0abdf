"""Timing, memory sampling, raw I/O and machine description shared by the benchmarks.

Every timing is a list of samples (seconds) taken after untimed warm-up runs; reports use the
median. Where the harness times a call itself it also records the process's CPU time (all
threads), which shows the intrinsic cost of an operation when other jobs share the CPU.
Page caches cannot be dropped without root and without disturbing other users of the
machine, so reads are measured from a warm cache: the file was just written or read.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime
import gc
import mmap
import os
import platform
import resource
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MB = 1 << 20
PAGE_SIZE = resource.getpagesize()


# ---------------------------------------------------------------- results


@dataclass
class Record:
    """One measured quantity: what, on which state and size, and its samples."""

    id: str  # stable key used by the targets, e.g. "ckpt_tree_save"
    label: str  # what a reader sees in the tables
    state: str  # "torch", "numpy", "jax", "lightning", "bytes" (a flat buffer) or "-"
    mb: int  # state size in MiB (0 when not size dependent)
    unit: str  # "s" (seconds) or "bytes"
    samples: list[float]
    nbytes: int = 0  # payload bytes, for bandwidths
    cpu_samples: list[float] | None = None  # process CPU seconds of the same runs

    @property
    def cpu_median(self) -> float | None:
        return statistics.median(self.cpu_samples) if self.cpu_samples else None

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def gb_per_s(self) -> float | None:
        """Payload bandwidth in GB/s (1e9 bytes), for timings of a known payload."""
        if self.unit != "s" or not self.nbytes or self.median <= 0:
            return None
        return self.nbytes / 1e9 / self.median


@dataclass
class Results:
    """Every record of one run, looked up by (id, state, mb)."""

    records: list[Record] = field(default_factory=list)

    def add(self, record: Record) -> Record:
        self.records.append(record)
        return record

    def get(self, id: str, state: str = "-", mb: int = 0) -> Record | None:
        for r in self.records:
            if (r.id, r.state, r.mb) == (id, state, mb):
                return r
        return None

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {**asdict(r), "median": r.median, "cpu_median": r.cpu_median, "gb_per_s": r.gb_per_s}
            for r in self.records
        ]


@dataclass
class Bench:
    """A benchmark run: the scratch directory on the disk under test, repeats, and results."""

    root: Path
    repeats: int
    results: Results = field(default_factory=Results)
    log: Callable[[str], None] = print

    def fresh_dir(self, name: str) -> Path:
        """A scratch path `root/name` with nothing there (not created: some tools insist on it)."""
        path = self.root / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        return path

    def record(
        self,
        id: str,
        label: str,
        state: str,
        mb: int,
        samples: list[float] | Timing,
        *,
        unit: str = "s",
        nbytes: int = 0,
    ) -> Record:
        """Store a measurement (wall-time samples, or a `Timing` with CPU times) and log it."""
        if isinstance(samples, Timing):
            wall, cpu = samples.wall, samples.cpu
        else:
            wall, cpu = samples, None
        rec = self.results.add(Record(id, label, state, mb, unit, wall, nbytes, cpu))
        self.log_record(rec)
        return rec

    def log_record(self, rec: Record) -> None:
        self.log(f"  {rec.state:>9} {rec.mb:>5} MiB  {rec.label:<58} {describe(rec)}")


def describe(rec: Record) -> str:
    """'412.3 ms  1.30 GB/s' / '12.0 MiB': a record's median in its natural unit."""
    if rec.unit == "bytes":
        return f"{rec.median / MB:.1f} MiB"
    text = format_seconds(rec.median)
    if rec.gb_per_s is not None:
        text += f"  {rec.gb_per_s:.2f} GB/s"
    if rec.cpu_median is not None:
        text += f"  (CPU {format_seconds(rec.cpu_median)})"
    return text


def format_seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


# ---------------------------------------------------------------- timing


@dataclass
class Timing:
    """Wall and CPU seconds of the same runs."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def time_repeats(
    fn: Callable[[], Any],
    *,
    repeats: int,
    warmup: int = 1,
    setup: Callable[[], Any] | None = None,
    teardown: Callable[[], Any] | None = None,
) -> Timing:
    """Wall and CPU time of `fn()` over `repeats` runs after `warmup` untimed ones.

    `setup` and `teardown` run around every call, untimed (fresh directory, delete a file).
    Every run starts from a trimmed heap (`release_free_memory`): whether an allocation
    reuses memory freed by the previous run, or page-faults fresh memory, would otherwise
    depend on the allocator's history and change results by 2-5x.
    """
    timing = Timing()
    for i in range(warmup + repeats):
        if setup is not None:
            setup()
        release_free_memory()
        cpu = time.process_time()
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        if teardown is not None:
            teardown()
        if i >= warmup:
            timing.wall.append(elapsed)
            timing.cpu.append(cpu)
    return timing


def time_phases(
    fn: Callable[[], dict[str, float]],
    *,
    repeats: int,
    warmup: int = 1,
    setup: Callable[[], Any] | None = None,
    teardown: Callable[[], Any] | None = None,
) -> dict[str, list[float]]:
    """Like `time_repeats`, for an `fn` that times its own phases and returns {phase: seconds}."""
    samples: dict[str, list[float]] = {}
    for i in range(warmup + repeats):
        if setup is not None:
            setup()
        release_free_memory()
        phases = fn()
        if teardown is not None:
            teardown()
        if i >= warmup:
            for phase, seconds in phases.items():
                samples.setdefault(phase, []).append(seconds)
    return samples


# ---------------------------------------------------------------- memory


def release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so an RSS baseline is honest.

    Without `malloc_trim`, glibc keeps freed arrays of a few MiB in the heap and a later
    allocation reuses them without growing RSS, which would hide it from `PeakRSS`.
    """
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(libc_name).malloc_trim(0)


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm (cheap: one small read)."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


class PeakRSS:
    """Samples RSS every `interval` seconds in a thread; `extra` = peak minus the start value.

    tracemalloc cannot see numpy or torch buffers, and `ru_maxrss` never goes down, so a
    sampler is the honest way to see the extra memory of one operation in a long process.
    Allocations shorter than the interval can be missed; 1 ms is short next to any save.
    """

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.baseline = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.baseline = self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def extra(self) -> int:
        return max(0, self.peak - self.baseline)


# ---------------------------------------------------------------- raw I/O


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """fsync every file and directory under `root` (for peers that do not fsync themselves)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fsync_path(os.path.join(dirpath, name))
        fsync_path(dirpath)


def write_durably(path: str | os.PathLike[str], buffers: list[memoryview]) -> None:
    """The physical limit of a save: `os.write` of whole buffers into a new file, then fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for buffer in buffers:
            view = buffer.cast("B")
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def write_direct(path: str | os.PathLike[str], buffer: mmap.mmap) -> None:
    """The disk alone: one page-aligned buffer written with O_DIRECT (no page cache), then fsync.

    `buffer`'s length must be a multiple of 4096 (the file is that long)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    try:
        view = memoryview(buffer)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_into(path: str | os.PathLike[str], buffer: memoryview) -> None:
    """The physical limit of a restore: `readinto` a preallocated buffer (no Python copies)."""
    view = buffer.cast("B")
    with open(path, "rb", buffering=0) as f:
        while view:
            n = f.readinto(view)
            if not n:
                raise EOFError(f"{path} ended {len(view)} bytes before the buffer was full")
            view = view[n:]


# ---------------------------------------------------------------- the machine


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def filesystem_of(path: Path) -> str:
    """'ext4 on /dev/vda (mounted at /)' for the mount holding `path`, from /proc/mounts."""
    target = path.resolve()
    best: tuple[str, str, str] | None = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mountpoint, fstype, *_ = line.split()
            mountpoint = mountpoint.replace("\\040", " ")
            if target.is_relative_to(mountpoint) and (
                best is None or len(mountpoint) > len(best[1])
            ):
                best = (device, mountpoint, fstype)
    if best is None:
        return "unknown"
    device, mountpoint, fstype = best
    return f"{fstype} on {device} (mounted at {mountpoint})"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def machine_info(bench_dir: Path) -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, RAM, filesystem, versions, load, date."""
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(ram_bytes() / (1 << 30), 1),
        "bench_dir": str(bench_dir),
        "filesystem": filesystem_of(bench_dir),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": load_average(),
    }


def package_versions(names: list[str]) -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions
