"""A real S3 API on 127.0.0.1 (moto's server mode), started once per session, one prefix per test."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

BUCKET = "ckpt-tests"
REGION = "us-east-1"
ACCESS_KEY = "AKIACKPTTESTKEYID0001"
# Unique per session, so a test can grep every stored byte for it and find it nowhere.
SECRET = f"ckpt-test-secret-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class S3Server:
    """Where the local S3 server listens and how to reach it."""

    endpoint: str

    def storage_options(self, **extra: Any) -> dict[str, Any]:
        """fsspec/s3fs options for `CheckpointManager(..., storage_options=...)`."""
        return {
            "key": ACCESS_KEY,
            "secret": SECRET,
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": REGION},
            **extra,
        }

    def env(self) -> dict[str, str]:
        """The AWS_* variables that point botocore (and so s3fs) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def client(self) -> Any:
        """A plain boto3 client: the tests' independent view of what is stored."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET,
        )


@dataclass
class S3Run:
    """One test's checkpoint directory `s3://ckpt-tests/<unique prefix>` and direct object access."""

    server: S3Server
    prefix: str
    client: Any = field(repr=False)

    @property
    def url(self) -> str:
        return f"s3://{BUCKET}/{self.prefix}"

    @property
    def options(self) -> dict[str, Any]:
        return self.server.storage_options()

    def object_keys(self) -> list[str]:
        """Every object under the run, relative to it, sorted."""
        found: list[str] = []
        pages = self.client.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=BUCKET, Prefix=f"{self.prefix}/"):
            found += [o["Key"][len(self.prefix) + 1 :] for o in page.get("Contents", [])]
        return sorted(found)

    def get(self, rel: str) -> bytes:
        return bytes(
            self.client.get_object(Bucket=BUCKET, Key=f"{self.prefix}/{rel}")["Body"].read()
        )

    def put(self, rel: str, data: bytes) -> None:
        self.client.put_object(Bucket=BUCKET, Key=f"{self.prefix}/{rel}", Body=data)

    def delete(self, rel: str) -> None:
        self.client.delete_object(Bucket=BUCKET, Key=f"{self.prefix}/{rel}")

    def step_keys(self, step: int) -> list[str]:
        name = f"step_{step:08d}/"
        return [k for k in self.object_keys() if k.startswith(name)]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port, with the test bucket; stopped at session end."""
    # werkzeug logs every request at INFO; the tests do not need that on stderr.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")  # a developer's proxy must not see the tests
        try:
            host, port = server.get_host_and_port()
            s3 = S3Server(endpoint=f"http://{host}:{port}")
            s3.client().create_bucket(Bucket=BUCKET)
            yield s3
        finally:
            server.stop()


@pytest.fixture
def s3_run(s3_server: S3Server) -> S3Run:
    """A fresh, empty checkpoint directory on the local S3 server."""
    return S3Run(s3_server, f"run-{uuid.uuid4().hex[:12]}", s3_server.client())
