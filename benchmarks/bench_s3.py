"""Benchmark: save/restore throughput of a 256 MB state on a local S3 server vs local disk.

Measures, for the same state (float32 numpy arrays, `tree` format):

- `CheckpointManager` on `s3://` (moto's S3 server in its own process on 127.0.0.1) and on a
  local directory: save (committed, incl. pruning the previous step) and restore (every byte
  checksummed) throughput;
- the ceiling of that server: the same bytes written and read as one object with s3fs alone;
- the HTTP requests one save makes, by S3 operation, counted from the server's access log (so
  every request is seen, whoever sends it), and those of opening a manager and of a restore.

Not part of the test suite; run `python benchmarks/bench_s3.py [--mb 256 --repeats 3]`.
Prints a markdown snippet and writes `benchmarks/results_s3.json`.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ckpt_core import CheckpointManager

HERE = Path(__file__).resolve().parent
BUCKET = "ckpt-bench"
N_ARRAYS = 32
# Access log lines of the server (werkzeug): "METHOD /path?query HTTP/1.1" STATUS
LOG_LINE = re.compile(r'"(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP/[\d.]+" (\d{3})')
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # werkzeug colours some status codes (206, 404, ...)


def make_state(total_mb: float) -> dict[str, np.ndarray]:
    """`N_ARRAYS` float32 arrays holding `total_mb` MB together (MB = 10**6 bytes)."""
    per_array = int(total_mb * 1e6 / 4 / N_ARRAYS)
    rng = np.random.default_rng(0)
    return {f"layer_{i:02d}": rng.standard_normal(per_array, dtype=np.float32) for i in range(32)}


def operation(method: str, target: str) -> str:
    """The S3 API operation of one request, from its method and path."""
    path, _, query = target.partition("?")
    params = set(re.findall(r"(?:^|&)([^=&]+)", query))
    is_bucket = path.strip("/").count("/") == 0
    if method == "POST":
        if "uploads" in params:
            return "CreateMultipartUpload"
        if "uploadId" in params:
            return "CompleteMultipartUpload"
        return "DeleteObjects" if "delete" in params else "POST"
    if method == "PUT":
        return "UploadPart" if "partNumber" in params else "PutObject"
    if method == "GET":
        return "ListObjects" if is_bucket else "GetObject"
    if method == "HEAD":
        return "HeadBucket" if is_bucket else "HeadObject"
    return "AbortMultipartUpload" if "uploadId" in params else "DeleteObject"


class S3Server:
    """moto's S3 server as a child process; counts the requests it logs."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        env = {**os.environ, "NO_PROXY": "127.0.0.1"}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self._lock = threading.Lock()
        self._seen: list[tuple[str, str, str]] = []
        threading.Thread(target=self._read_log, daemon=True).start()
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.1)

    def _read_log(self) -> None:
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            if m := LOG_LINE.search(ANSI.sub("", line)):
                with self._lock:
                    self._seen.append((m.group(1), m.group(2), m.group(3)))

    def count(self) -> int:
        with self._lock:
            return len(self._seen)

    def requests_since(self, mark: int) -> list[tuple[str, str, str]]:
        time.sleep(0.5)  # a request is logged just after its response is sent
        with self._lock:
            return self._seen[mark:]

    def storage_options(self) -> dict[str, Any]:
        return {
            "key": "bench",
            "secret": "bench",
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
        }

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)


def by_operation(requests: list[tuple[str, str, str]]) -> dict[str, int]:
    return dict(sorted(collections.Counter(operation(m, t) for m, t, _ in requests).items()))


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def bench_manager(
    directory: str, state: dict[str, np.ndarray], repeats: int, options: dict[str, Any] | None
) -> dict[str, Any]:
    """Median save and restore seconds of `state` through a CheckpointManager on `directory`."""
    step = iter(range(1, 1000))
    with CheckpointManager(directory, max_to_keep=1, storage_options=options) as mgr:
        save = timed(lambda: mgr.save(next(step), state), repeats)
        restore = timed(lambda: mgr.restore(), repeats)
        restored = mgr.restore()
        assert all(np.array_equal(restored[k], v) for k, v in state.items())
    return {"save_s": save, "restore_s": restore}


def bench_raw_s3(server: S3Server, state: dict[str, np.ndarray], repeats: int) -> dict[str, Any]:
    """The same bytes through s3fs alone, as one object: the server's ceiling."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **server.storage_options())
    path = f"{BUCKET}/raw/blob"

    def write() -> None:
        with fs.open(path, "wb") as f:
            for array in state.values():
                f.write(memoryview(array).cast("B"))

    def read() -> None:
        with fs.open(path, "rb", block_size=8 << 20) as f:
            buf = bytearray(8 << 20)
            while f.readinto(buf):
                pass

    return {"save_s": timed(write, repeats), "restore_s": timed(read, repeats)}


def count_requests(server: S3Server, state: dict[str, np.ndarray], name: str) -> dict[str, Any]:
    """Requests of opening a manager, of one steady-state save and of one restore.

    Opening with `on_existing="resume"` verifies the newest step, so it downloads it once.
    """
    url = f"s3://{BUCKET}/{name}"
    options = server.storage_options()
    with CheckpointManager(url, max_to_keep=1, storage_options=options) as mgr:
        mgr.save(1, state)
    mark = server.count()
    t0 = time.perf_counter()
    mgr = CheckpointManager(url, max_to_keep=1, on_existing="resume", storage_options=options)
    open_s = time.perf_counter() - t0
    opening = server.requests_since(mark)
    mark = server.count()
    mgr.save(2, state)  # replaces nothing, prunes step 1, moves the `latest` pointer
    saving = server.requests_since(mark)
    mark = server.count()
    mgr.restore()
    restoring = server.requests_since(mark)
    mgr.close()
    return {
        "open_manager": {
            "total": len(opening),
            "by_operation": by_operation(opening),
            "seconds": round(open_s, 3),
        },
        "save": {"total": len(saving), "by_operation": by_operation(saving)},
        "restore": {"total": len(restoring), "by_operation": by_operation(restoring)},
    }


def summarize(result: dict[str, Any], nbytes: int) -> dict[str, Any]:
    out = dict(result)
    for kind in ("save", "restore"):
        median = statistics.median(result[f"{kind}_s"])
        out[f"{kind}_median_s"] = round(median, 3)
        out[f"{kind}_MB_per_s"] = round(nbytes / 1e6 / median, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=256, help="state size in MB (10**6 bytes)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="local directory for the disk runs")
    parser.add_argument("--out", default=str(HERE / "results_s3.json"))
    args = parser.parse_args()

    state = make_state(args.mb)
    nbytes = sum(a.nbytes for a in state.values())
    server = S3Server()
    local_root = Path(args.dir or tempfile.mkdtemp(prefix="bench-s3-local-"))
    try:
        import boto3

        boto3.client(
            "s3",
            endpoint_url=server.endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        ).create_bucket(Bucket=BUCKET)
        results = {
            "s3": summarize(
                bench_manager(f"s3://{BUCKET}/run", state, args.repeats, server.storage_options()),
                nbytes,
            ),
            "local_disk": summarize(
                bench_manager(str(local_root / "run"), state, args.repeats, None), nbytes
            ),
            "s3_raw_s3fs_one_object": summarize(bench_raw_s3(server, state, args.repeats), nbytes),
        }
        requests = count_requests(server, state, "count-big")
        small = count_requests(server, make_state(1), "count-small")
    finally:
        server.stop()
        if args.dir is None:
            shutil.rmtree(local_root, ignore_errors=True)

    doc = {
        "state_bytes": nbytes,
        "arrays": N_ARRAYS,
        "format": "tree",
        "repeats": args.repeats,
        "results": results,
        "requests_256MB": requests,
        "requests_1MB": small,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "server": "moto S3 server (own process, 127.0.0.1, in-memory objects)",
    }
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")

    print(f"State: {nbytes / 1e6:.0f} MB ({N_ARRAYS} float32 arrays, `tree` format), ")
    print(f"median of {args.repeats}; {os.cpu_count()} CPUs; S3 = moto's server on 127.0.0.1.\n")
    print("| target | save MB/s | restore MB/s (verified) |")
    print("|---|---|---|")
    labels = {
        "s3": "`s3://` CheckpointManager",
        "local_disk": "local disk CheckpointManager",
        "s3_raw_s3fs_one_object": "`s3://` raw s3fs, one object (ceiling)",
    }
    for key, label in labels.items():
        r = results[key]
        print(f"| {label} | {r['save_MB_per_s']} | {r['restore_MB_per_s']} |")
    print()
    print("| HTTP requests | 256 MB state | 1 MB state |")
    print("|---|---|---|")
    for what in ("save", "open_manager", "restore"):
        big, one = requests[what], small[what]
        ops = ", ".join(f"{k} {v}" for k, v in big["by_operation"].items())
        print(f"| {what.replace('_', ' ')} | {big['total']} ({ops}) | {one['total']} |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
