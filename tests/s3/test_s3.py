"""The core's guarantees on `s3://` URLs, against a real S3 API served by moto on 127.0.0.1.

Every test gets its own prefix in one bucket (see conftest.py) and checks what is stored with
a plain boto3 client, independent of s3fs and of the code under test.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import fsspec
import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ckpt_core import (
    CheckpointError,
    CheckpointExistsError,
    CheckpointLockedError,
    CheckpointManager,
    CorruptCheckpointError,
    StructureMismatchError,
)
from ckpt_core.lock import LeaseLock
from integrations.gym import CkptRunnerHook, RunnerCallback, RunnerConfig
from integrations.gym import run as gym_run
from integrations.lightning import CkptCallback
from tests.core.test_formats_contract_torch_jax import CASES, assert_same, mismatched
from tests.s3.conftest import ACCESS_KEY, BUCKET, SECRET, S3Run, S3Server

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "examples") not in sys.path:
    sys.path.insert(0, str(ROOT / "examples"))

from agents import TabularQAgent  # noqa: E402


def state(step: int) -> dict[str, Any]:
    return {"w": np.full((4,), step, dtype=np.float32), "step": step}


def fill(run: S3Run, steps: list[int], **options: Any) -> None:
    with CheckpointManager(run.url, storage_options=run.options, **options) as mgr:
        for s in steps:
            mgr.save(s, state(s), metrics={"loss": 1.0 / (s + 1)})


def payload_keys(run: S3Run, step: int) -> list[str]:
    return [k for k in run.step_keys(step) if not k.endswith("manifest.json")]


def expire_lease(run: S3Run) -> None:
    """Make the stored lease look as if its TTL ran out (a dead writer's lease, 60 s later)."""
    holder = json.loads(run.get(".lock"))
    run.put(".lock", json.dumps({**holder, "expires": time.time() - 1}).encode())


# ---------------------------------------------------------------- the format contract


@pytest.fixture(params=sorted(CASES))
def case(request):
    return CASES[request.param]


def test_round_trip_in_every_format_gives_like_types(s3_run, case):
    fmt, make = case
    saved = make()
    with CheckpointManager(
        s3_run.url, format=fmt, allow_pickle=True, storage_options=s3_run.options
    ) as mgr:
        mgr.save(1, saved)
        assert_same(saved, mgr.restore(like=make()))
        if fmt not in ("orbax", "dcp"):  # these give back the saved leaf kinds without `like`
            assert_same(saved, mgr.restore())
        assert mgr.info(1).format == fmt
        assert mgr.path(1) == f"{s3_run.url}/step_00000001"
    keys = s3_run.step_keys(1)
    assert "step_00000001/manifest.json" in keys and len(keys) > 1


@pytest.mark.parametrize("name", ["tree-torch", "torch", "orbax"])
def test_structure_mismatch_names_every_differing_path(s3_run, name):
    fmt, make = CASES[name]
    with CheckpointManager(s3_run.url, format=fmt, storage_options=s3_run.options) as mgr:
        mgr.save(1, make())
        like, dropped = mismatched(make())
        with pytest.raises(StructureMismatchError) as err:
            mgr.restore(like=like)
    message = str(err.value)
    assert "added: in `like` but not in the checkpoint" in message
    assert f"{dropped}: in the checkpoint but not in `like`" in message


def damage(run: S3Run, key: str, how: str) -> None:
    if how == "delete":
        run.delete(key)
        return
    data = bytearray(run.get(key))
    if how == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) // 2 :]
    run.put(key, bytes(data))


def test_flipped_bytes_in_every_format_are_detected_and_the_object_named(s3_run, case):
    fmt, make = case
    with CheckpointManager(
        s3_run.url, format=fmt, allow_pickle=True, storage_options=s3_run.options
    ) as mgr:
        mgr.save(1, make())
        sizes = {k: len(s3_run.get(k)) for k in payload_keys(s3_run, 1)}
        victim = max(sizes, key=sizes.__getitem__)
        damage(s3_run, victim, "flip")
        with pytest.raises(CorruptCheckpointError) as err:
            mgr.restore()
        with pytest.raises(CorruptCheckpointError):
            mgr.verify(1)
    assert f"{s3_run.url}/{victim}" in str(err.value)


@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_truncated_or_deleted_object_is_detected_and_named(s3_run, how):
    fill(s3_run, [1])
    damage(s3_run, "step_00000001/arrays.safetensors", how)
    with CheckpointManager(s3_run.url, read_only=True, storage_options=s3_run.options) as mgr:
        with pytest.raises(CorruptCheckpointError, match=r"step_00000001/arrays\.safetensors"):
            mgr.restore()


def test_async_saves_commit_in_the_background_and_close_waits(s3_run):
    live = {"w": torch.zeros(256, 64), "n": torch.tensor(0)}
    with CheckpointManager(
        s3_run.url, async_save=True, max_to_keep=None, storage_options=s3_run.options
    ) as mgr:
        for step in range(1, 4):
            live["w"].fill_(step)
            live["n"].fill_(step)
            assert mgr.save(step, live)
            live["w"].fill_(-1)  # training moves on while the upload runs
        # the last save may still be uploading here: `with` exit commits it
    with CheckpointManager(s3_run.url, read_only=True, storage_options=s3_run.options) as mgr:
        assert mgr.all_steps() == [1, 2, 3]
        for step in (1, 2, 3):
            back = mgr.restore(step, like={"w": torch.empty(256, 64), "n": torch.tensor(0)})
            assert torch.equal(back["w"], torch.full((256, 64), float(step)))
            assert int(back["n"]) == step


def test_a_failed_background_upload_is_raised_by_the_next_call(s3_run, monkeypatch):
    with CheckpointManager(s3_run.url, async_save=True, storage_options=s3_run.options) as mgr:
        mgr.save(1, state(1))
        mgr.wait()
        fs = mgr.storage.fs

        def refuse(*args: Any, **kwargs: Any) -> None:
            raise PermissionError("Access Denied (simulated: the bucket policy changed)")

        monkeypatch.setattr(fs, "pipe_file", refuse)  # the manifest PUT is refused
        mgr.save(2, state(2))
        with pytest.raises(PermissionError, match="Access Denied"):  # as a sync save raises it
            mgr.wait()
        monkeypatch.undo()
        assert mgr.all_steps() == [1]
    assert s3_run.step_keys(2) == []  # the aborted upload left nothing behind


# ---------------------------------------------------------------- the resume table


@pytest.mark.parametrize("on_existing", ["error", "resume", "overwrite"])
def test_no_committed_steps_is_a_fresh_start_and_sweeps_uploads(s3_run, on_existing):
    s3_run.put("step_00000007/arrays.safetensors", b"an upload that never committed")
    with CheckpointManager(
        s3_run.url, on_existing=on_existing, storage_options=s3_run.options
    ) as mgr:
        assert mgr.resuming is False and mgr.all_steps() == []
        assert s3_run.step_keys(7) == []


def test_resume_continues_from_the_latest_step(s3_run):
    fill(s3_run, [0, 5, 10])
    with CheckpointManager(s3_run.url, on_existing="resume", storage_options=s3_run.options) as mgr:
        assert mgr.resuming is True and mgr.latest_step() == 10
        np.testing.assert_array_equal(mgr.restore()["w"], state(10)["w"])


def test_overwrite_removes_library_objects_and_leaves_the_others(s3_run):
    fill(s3_run, [1, 2], best_fn="loss")
    with CheckpointManager(s3_run.url, storage_options=s3_run.options, on_existing="resume") as m:
        m.update_run_metadata({"seed": 3})
    mine = ["notes.txt", "step_notes/readme", "tensorboard/events.out"]
    for key in mine:
        s3_run.put(key, b"not a checkpoint")
    assert {"best", "latest", "run.json"} <= set(s3_run.object_keys())
    with CheckpointManager(
        s3_run.url, on_existing="overwrite", storage_options=s3_run.options
    ) as mgr:
        assert mgr.resuming is False and mgr.all_steps() == []
        # left: the lease (while open), a fresh run.json and the objects that are not ours
        assert s3_run.object_keys() == sorted([".lock", "run.json", *mine])
        assert "seed" not in json.loads(s3_run.get("run.json")).get("metadata", {})
    assert s3_run.object_keys() == sorted(["run.json", *mine])


def test_error_names_the_url_the_latest_step_and_the_options(s3_run):
    fill(s3_run, [3, 4])
    with pytest.raises(CheckpointExistsError) as err:
        CheckpointManager(s3_run.url, storage_options=s3_run.options)
    message = str(err.value)
    assert s3_run.url in message and "step 4" in message
    assert "on_existing='resume'" in message and "on_existing='overwrite'" in message
    assert ".lock" not in s3_run.object_keys()  # the failed open gave its lease back
    with CheckpointManager(s3_run.url, on_existing="resume", storage_options=s3_run.options):
        pass


def test_read_only_manager_reads_without_a_lease_and_refuses_writes(s3_run):
    fill(s3_run, [1])
    with CheckpointManager(s3_run.url, read_only=True, storage_options=s3_run.options) as mgr:
        assert ".lock" not in s3_run.object_keys()
        assert mgr.latest_step() == 1
        with pytest.raises(CheckpointError, match="read_only=True"):
            mgr.save(2, state(2))


# ---------------------------------------------------------------- retention and best


def test_retention_best_tracking_and_pointers_survive_restarts(s3_run):
    losses = {1: 0.5, 2: 0.1, 3: 0.4, 4: 0.3, 5: 0.6, 6: 0.7, 7: 0.8}
    options = dict(max_to_keep=2, keep_period=4, best_fn="loss", storage_options=s3_run.options)
    with CheckpointManager(s3_run.url, **options) as mgr:
        for s in (1, 2, 3, 4, 5):
            mgr.save(s, state(s), metrics={"loss": losses[s]})
        assert mgr.all_steps() == [2, 4, 5] and mgr.best_step() == 2
    # Best is derived from the manifests: a new process ranks the same way.
    with CheckpointManager(s3_run.url, on_existing="resume", **options) as mgr:
        assert mgr.best_step() == 2
        for s in (6, 7):
            mgr.save(s, state(s), metrics={"loss": losses[s]})
        assert mgr.all_steps() == [2, 4, 6, 7]
        assert "best" in mgr.info(2).kept_because and "latest" in mgr.info(7).kept_because
        np.testing.assert_array_equal(mgr.restore("best")["w"], state(2)["w"])
    steps = sorted({k.split("/")[0] for k in s3_run.object_keys() if k.startswith("step_")})
    assert steps == ["step_00000002", "step_00000004", "step_00000006", "step_00000007"]
    assert s3_run.get("latest").decode().strip() == "step_00000007"
    assert s3_run.get("best").decode().strip() == "step_00000002"


def test_replacing_a_step_keeps_exactly_one_payload(s3_run):
    with CheckpointManager(s3_run.url, storage_options=s3_run.options) as mgr:
        for value in (1, 2, 3):
            mgr.save(5, state(value))
            np.testing.assert_array_equal(mgr.restore(5)["w"], state(value)["w"])
    keys = s3_run.step_keys(5)
    payload_dirs = {k.split("/")[1] for k in keys if k.count("/") == 2}
    assert len(payload_dirs) == 1 and payload_dirs.pop().startswith("rev-")
    assert not [k for k in keys if k.count("/") == 1 and not k.endswith("manifest.json")]


# ---------------------------------------------------------------- killed saves

CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from ckpt_core import CheckpointManager, storage
    from ckpt_core.storage import atomicity

    url, stop = sys.argv[1], sys.argv[2]
    # 5 MiB parts (S3's minimum): the 24 MiB payload goes up as a multipart upload.
    mgr = CheckpointManager(url, storage_options={"default_block_size": 5 << 20})
    mgr.save(1, {"w": np.full(1000, 1.0, np.float32)})

    def stopped():
        print("stopped", flush=True)
        time.sleep(600)

    write = storage.HashingWriter.write
    def write_then_stop(self, data):
        n = write(self, data)
        if stop == "mid-upload" and self.size >= 12 << 20:
            stopped()  # parts are uploaded, the upload is not completed
        return n
    storage.HashingWriter.write = write_then_stop
    if stop == "before-manifest":
        atomicity.ManifestLastStepWriter.commit = lambda self, manifest: stopped()
    mgr.save(2, {"w": np.ones(6 << 20, np.float32)})
    """
)


def start_child(s3_server: S3Server, run: S3Run, stop: str) -> subprocess.Popen[str]:
    # Credentials and endpoint reach the child the usual way: the environment.
    env = {**os.environ, **s3_server.env(), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, run.url, stop], stdout=subprocess.PIPE, text=True, env=env
    )


@pytest.mark.parametrize("stop", ["mid-upload", "before-manifest"])
def test_sigkilled_upload_leaves_no_visible_step_and_the_next_writer_sweeps_it(
    s3_server, s3_run, stop
):
    with start_child(s3_server, s3_run, stop) as child:  # `with` closes the pipe and reaps
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "stopped"
        finally:
            child.send_signal(signal.SIGKILL)
    if stop == "mid-upload":
        uploads = s3_run.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
        assert f"{s3_run.prefix}/step_00000002/arrays.safetensors" in [u["Key"] for u in uploads]
    else:
        assert "step_00000002/arrays.safetensors" in s3_run.step_keys(2)
        assert "step_00000002/manifest.json" not in s3_run.step_keys(2)
    with CheckpointManager(s3_run.url, read_only=True, storage_options=s3_run.options) as ro:
        assert ro.all_steps() == [1]  # readers need no special case
    expire_lease(s3_run)
    with CheckpointManager(s3_run.url, on_existing="resume", storage_options=s3_run.options) as mgr:
        assert mgr.all_steps() == [1] and mgr.latest_step() == 1
        assert s3_run.step_keys(2) == []  # swept
        mgr.save(2, state(2))
        np.testing.assert_array_equal(mgr.restore(2)["w"], state(2)["w"])


def test_lease_of_a_writer_killed_on_this_host_is_taken_over(s3_server, s3_run):
    # The killed writer's lease has most of its TTL left, but its holder is on this host and
    # provably dead: the restarted job must not wait for the expiry (SPEC: the lock error is
    # for "another live process").
    code = (
        "import time\nfrom ckpt_core import CheckpointManager\n"
        f"m = CheckpointManager({s3_run.url!r})\nprint('ready', flush=True)\ntime.sleep(600)\n"
    )
    env = {**os.environ, **s3_server.env(), "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env
    ) as child:
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        finally:
            child.send_signal(signal.SIGKILL)
    with CheckpointManager(s3_run.url, storage_options=s3_run.options) as mgr:
        assert mgr.save(1, state(1))


def test_killed_replacement_leaves_no_orphaned_payload_after_the_next_open(s3_run):
    # A replacement killed before its manifest PUT leaves `step_X/rev-<token>/` beside the
    # committed payload; the next writer's open must remove it, or every such kill would leak
    # one step's worth of storage.
    fill(s3_run, [1])
    with CheckpointManager(s3_run.url, on_existing="resume", storage_options=s3_run.options) as mgr:
        writer = mgr.storage.begin_step("step_00000001")
        with writer.open("arrays.safetensors") as f:
            f.write(b"uploaded, then the process was killed")
        # neither commit nor abort: what a SIGKILL leaves
    with CheckpointManager(s3_run.url, on_existing="resume", storage_options=s3_run.options) as mgr:
        np.testing.assert_array_equal(mgr.restore(1)["w"], state(1)["w"])
    assert sorted(s3_run.step_keys(1)) == [
        "step_00000001/arrays.safetensors",
        "step_00000001/manifest.json",
        "step_00000001/tree.json",
    ]


# ---------------------------------------------------------------- damage found on resume


def test_resume_moves_a_damaged_newest_step_aside_and_uses_the_newest_intact(s3_run):
    # Moving a step aside is a per-object copy on S3 (there are no directories to rename):
    # every object must move, and none may stay behind under the old name.
    fill(s3_run, [1, 2, 3])
    damage(s3_run, "step_00000003/arrays.safetensors", "flip")
    with pytest.warns(RuntimeWarning, match="damaged"):
        mgr = CheckpointManager(s3_run.url, on_existing="resume", storage_options=s3_run.options)
    with mgr:
        assert mgr.latest_step() == 2
        np.testing.assert_array_equal(mgr.restore()["w"], state(2)["w"])
    aside = {k.split("/")[0] for k in s3_run.object_keys() if ".corrupt-" in k}
    assert [n.split(".")[0] for n in aside] == ["step_00000003"]
    assert s3_run.step_keys(3) == []
    assert s3_run.get("latest").decode().strip() == "step_00000002"


# ---------------------------------------------------------------- the lease


def test_second_writer_is_locked_out_and_the_lease_is_released_at_close(s3_run):
    with CheckpointManager(s3_run.url, storage_options=s3_run.options) as mgr:
        mgr.save(1, state(1))
        lease = json.loads(s3_run.get(".lock"))
        assert lease["pid"] == os.getpid() and lease["expires"] > time.time() + 30
        with pytest.raises(CheckpointLockedError, match=f"pid {os.getpid()}") as err:
            CheckpointManager(s3_run.url, on_existing="resume", storage_options=s3_run.options)
        assert "read_only=True" in str(err.value)
        with CheckpointManager(s3_run.url, read_only=True, storage_options=s3_run.options) as ro:
            assert ro.all_steps() == [1]  # readers are never locked out
    assert ".lock" not in s3_run.object_keys()
    with CheckpointManager(s3_run.url, on_existing="resume", storage_options=s3_run.options):
        pass


def test_a_live_foreign_lease_locks_and_an_expired_one_is_taken_over(s3_run):
    foreign = {"pid": 4242, "host": "node-17", "since": time.time() - 100, "token": "f00d"}
    s3_run.put(".lock", json.dumps({**foreign, "expires": time.time() + 60}).encode())
    with pytest.raises(CheckpointLockedError, match="pid 4242 on host 'node-17'"):
        CheckpointManager(s3_run.url, storage_options=s3_run.options)
    expire_lease(s3_run)
    with CheckpointManager(s3_run.url, storage_options=s3_run.options) as mgr:
        assert mgr.save(1, state(1))
        assert json.loads(s3_run.get(".lock"))["pid"] == os.getpid()


def test_the_lease_is_refreshed_while_held(s3_run):
    fs, _ = fsspec.core.url_to_fs(s3_run.url, **s3_run.options)
    url = f"{BUCKET}/{s3_run.prefix}/.lock"
    lease = LeaseLock(fs, url, {"pid": 1, "host": "a", "since": 0.0, "token": "aaa"}, ttl=0.6)
    try:
        first = json.loads(s3_run.get(".lock"))["expires"]
        time.sleep(1.0)  # longer than the TTL: only a refresh keeps the lease alive
        assert json.loads(s3_run.get(".lock"))["expires"] > first
        with pytest.raises(CheckpointLockedError):
            LeaseLock(fs, url, {"pid": 2, "host": "b", "since": 0.0, "token": "bbb"}, ttl=0.6)
    finally:
        lease.release()
    assert ".lock" not in s3_run.object_keys()


class _ThreadRecordingFS:
    """Forwards to a filesystem, noting which thread made each call."""

    def __init__(self, fs: Any) -> None:
        self.fs, self.threads = fs, []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.fs, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.threads.append(threading.current_thread().name)
            return method(*args, **kwargs)

        return call


def test_an_abandoned_lease_is_deleted_by_its_own_thread_not_the_collectors(s3_run):
    # The garbage collector runs finalizers in whichever thread it interrupts, possibly one
    # holding a lock the network request needs (the server's own thread, in one CI run).
    fs, _ = fsspec.core.url_to_fs(s3_run.url, **s3_run.options)
    recording = _ThreadRecordingFS(fs)
    owner = {"pid": 1, "host": "a", "since": 0.0, "token": "aaa"}
    lease = LeaseLock(recording, f"{BUCKET}/{s3_run.prefix}/.lock", owner)
    recording.threads.clear()
    lease.release_abandoned()
    lease._thread.join(timeout=10)
    assert ".lock" not in s3_run.object_keys()
    assert recording.threads and set(recording.threads) == {"ckpt-lease"}


def test_a_dropped_manager_frees_the_store_for_the_next_writer(s3_run):
    CheckpointManager(s3_run.url, storage_options=s3_run.options).save(1, state(1))  # no close
    gc.collect()
    deadline = time.monotonic() + 10
    while ".lock" in s3_run.object_keys() and time.monotonic() < deadline:
        time.sleep(0.05)
    with CheckpointManager(s3_run.url, on_existing="resume", storage_options=s3_run.options) as mgr:
        assert mgr.latest_step() == 1


# ---------------------------------------------------------------- credentials and configuration


def test_credentials_are_never_written_to_the_store_or_the_logs(s3_run, caplog):
    caplog.set_level(logging.DEBUG)
    with CheckpointManager(
        s3_run.url, best_fn="loss", max_to_keep=1, storage_options=s3_run.options
    ) as mgr:
        mgr.update_run_metadata({"config": {"lr": 0.1}})
        for s in (1, 2):
            mgr.save(s, state(s), metrics={"loss": 1.0 / s}, metadata={"note": "x"})
        stored_while_open = {k: s3_run.get(k) for k in s3_run.object_keys()}
        mgr.mark_complete()
        shown = [repr(mgr), str(mgr.info(2)), str(mgr.path(2))]
    with pytest.raises(CheckpointExistsError) as err:
        CheckpointManager(s3_run.url, storage_options=s3_run.options)
    stored = {**stored_while_open, **{k: s3_run.get(k) for k in s3_run.object_keys()}}
    assert {".lock", "step_00000002/manifest.json", "run.json", "best", "latest"} <= set(stored)
    for key, data in stored.items():
        assert SECRET.encode() not in data and ACCESS_KEY.encode() not in data, key
    assert s3_run.server.endpoint.encode() not in stored["step_00000002/manifest.json"]
    ours = [*shown, str(err.value)]
    ours += [r.getMessage() for r in caplog.records if r.name.startswith(("ckpt_core", "integ"))]
    assert not [t for t in ours if SECRET in t or ACCESS_KEY in t]
    # botocore's own DEBUG log shows the key id in signed headers, never the secret.
    assert caplog.records and not [r.name for r in caplog.records if SECRET in r.getMessage()]


def test_credentials_and_endpoint_from_the_environment(s3_server, s3_run, monkeypatch):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    with CheckpointManager(s3_run.url) as mgr:  # no storage_options at all
        mgr.save(1, state(1))
    assert "step_00000001/manifest.json" in s3_run.object_keys()


def test_missing_s3fs_fails_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "s3fs", None)  # `import s3fs` raises ImportError
    monkeypatch.delitem(sys.modules["fsspec.registry"]._registry, "s3", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'ckpt-core\[s3\]'"):
        CheckpointManager(f"s3://{BUCKET}/run", read_only=True)


def test_storage_options_for_a_local_directory_are_refused(tmp_path, s3_server):
    with pytest.raises(ValueError, match="apply only to fsspec URLs"):
        CheckpointManager(tmp_path / "run", storage_options=s3_server.storage_options())


# ---------------------------------------------------------------- listing caches


def test_listing_caches_do_not_hide_new_or_deleted_steps(s3_run):
    # The reader gets its own s3fs instance, so no write of the writer passes through its cache.
    reader_options = {**s3_run.options, "skip_instance_cache": True}
    fill(s3_run, [1])
    with CheckpointManager(s3_run.url, read_only=True, storage_options=reader_options) as reader:
        fs = reader.storage.fs
        root = f"{BUCKET}/{s3_run.prefix}"
        assert reader.all_steps() == [1]
        assert f"{root}/step_00000002" not in fs.ls(root, detail=False)  # warms the cache
        with CheckpointManager(
            s3_run.url, on_existing="resume", max_to_keep=1, storage_options=s3_run.options
        ) as writer:
            writer.save(2, state(2))  # commits 2 and prunes 1
        assert f"{root}/step_00000001" in fs.ls(root, detail=False)  # s3fs still serves stale
        reader.reload()
        assert reader.all_steps() == [2]
        np.testing.assert_array_equal(reader.restore(2)["w"], state(2)["w"])


def test_a_bucket_root_is_a_checkpoint_directory(s3_server):
    bucket = f"ckpt-root-{uuid.uuid4().hex[:8]}"
    s3_server.client().create_bucket(Bucket=bucket)
    options = s3_server.storage_options()
    with CheckpointManager(f"s3://{bucket}", max_to_keep=1, storage_options=options) as mgr:
        mgr.save(1, state(1))
        mgr.save(2, state(2))
        assert mgr.path(2) == f"s3://{bucket}/step_00000002"
    with CheckpointManager(f"s3://{bucket}", on_existing="resume", storage_options=options) as m:
        assert m.all_steps() == [2]
    listed = s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(o["Key"] for o in listed) == [
        "latest",
        "run.json",
        "step_00000002/arrays.safetensors",
        "step_00000002/manifest.json",
        "step_00000002/tree.json",
    ]


# ---------------------------------------------------------------- the `ckpt` command


def test_ckpt_ls_show_verify_best_and_prune_on_s3(s3_server, s3_run, monkeypatch, capsys):
    from ckpt_core.cli import main

    fill(s3_run, [1, 2, 3], best_fn="loss", max_to_keep=2)
    for name, value in s3_server.env().items():  # the command reads credentials from the env
        monkeypatch.setenv(name, value)

    def ckpt(*argv: str) -> tuple[int, Any]:
        code = main([*argv, "--json"])
        return code, json.loads(capsys.readouterr().out)

    code, listing = ckpt("ls", s3_run.url)
    assert code == 0 and [s["step"] for s in listing["runs"][0]["steps"]] == [2, 3]
    code, best = ckpt("best", s3_run.url)
    assert code == 0 and best["path"] == f"{s3_run.url}/step_00000003"
    code, shown = ckpt("show", s3_run.url, "3")
    assert code == 0 and shown["path"] == f"{s3_run.url}/step_00000003"
    assert "w" in json.dumps(shown["tree"])
    code, verified = ckpt("verify", s3_run.url)
    assert code == 0 and verified["intact"] is True
    code, pruned = ckpt("prune", s3_run.url, "--max-to-keep", "1")
    assert code == 0 and pruned["deleted"] == [2] and s3_run.step_keys(2) == []
    damage(s3_run, "step_00000003/arrays.safetensors", "flip")
    code, report = ckpt("verify", s3_run.url)
    assert code != 0 and report["intact"] is False
    damaged = [d["path"] for s in report["runs"][0]["steps"] for d in s["damaged"]]
    assert damaged == [f"{s3_run.url}/step_00000003/arrays.safetensors"]


# ---------------------------------------------------------------- adapters writing to s3://


class TinyRegressor(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def tiny_fit(callback: CkptCallback, max_epochs: int) -> tuple[TinyRegressor, Trainer]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, generator=gen)
    data = DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=4)
    torch.manual_seed(0)
    model = TinyRegressor()
    trainer = Trainer(
        max_epochs=max_epochs,
        callbacks=[callback],
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, data, data)
    return model, trainer


def test_lightning_callback_writes_to_s3_and_resumes_from_it(s3_run):
    first = CkptCallback(
        s3_run.url, monitor="val_loss", max_to_keep=1, storage_options=s3_run.options
    )
    tiny_fit(first, max_epochs=2)
    assert first.last_model_path == f"{s3_run.url}/step_00000008/state.pt"
    assert first.best_model_path.startswith(f"{s3_run.url}/step_") and first.best_model_score
    with CheckpointManager(s3_run.url, read_only=True, storage_options=s3_run.options) as mgr:
        assert mgr.latest_step() == 8 and mgr.info(8).format == "torch"
        assert "val_loss" in mgr.metrics(8)
    resumed = CkptCallback(
        s3_run.url, monitor="val_loss", max_to_keep=1, resume=True, storage_options=s3_run.options
    )
    model, trainer = tiny_fit(resumed, max_epochs=3)
    assert resumed.resumed_step == 8 and trainer.global_step == 12
    uninterrupted, _ = tiny_fit(
        CkptCallback(s3_run.url + "-ref", storage_options=s3_run.options), 3
    )
    for a, b in zip(model.parameters(), uninterrupted.parameters()):
        assert torch.equal(a, b)


def test_gym_runner_writes_to_s3_and_resumes_exactly(s3_server, s3_run):
    def config(**kwargs: Any) -> RunnerConfig:
        if kwargs.get("checkpoint_dir"):
            kwargs["storage_options"] = s3_server.storage_options()
        return RunnerConfig(total_timesteps=3_000, checkpoint_interval=1_000, seed=7, **kwargs)

    def make() -> tuple[Any, Any]:
        env = gym.make("FrozenLake-v1")
        return env, TabularQAgent(env.observation_space, env.action_space, epsilon_decay=3_000)

    class Interrupt(Exception):
        pass

    class InterruptAt(RunnerCallback):
        def on_step(self, hook: CkptRunnerHook) -> None:
            if hook.timesteps == 2_222:
                raise Interrupt

    with pytest.raises(Interrupt):
        gym_run(*make(), config(checkpoint_dir=s3_run.url), callbacks=[InterruptAt()])
    with CheckpointManager(s3_run.url, read_only=True, storage_options=s3_run.options) as mgr:
        committed = mgr.all_steps()
    assert committed and max(committed) < 2_222
    resumed = gym_run(*make(), config(checkpoint_dir=s3_run.url, resume=True))
    reference = gym_run(*make(), config())
    assert resumed.resumed_from == max(committed)
    assert resumed.episode_returns == reference.episode_returns
    assert resumed.timesteps == reference.timesteps == 3_000


def test_a_missing_bucket_is_a_clear_error(s3_server):
    url = "s3://no-such-bucket-ckpt/run"
    with pytest.raises(FileNotFoundError, match=r"s3://no-such-bucket-ckpt/run.*create the bucket"):
        CheckpointManager(url, storage_options=s3_server.storage_options())


# ---------------------------------------------------------------- incremental saves


def test_incremental_saves_copy_unchanged_shards_server_side(s3_run, monkeypatch):
    from ckpt_core.storage.atomicity import ManifestLastStepWriter

    uploaded: list[str] = []
    copied: list[str] = []
    open_for_upload = ManifestLastStepWriter.open
    share = ManifestLastStepWriter._share

    def counting_open(self: Any, name: str) -> Any:
        uploaded.append(name)
        return open_for_upload(self, name)

    def counting_share(self: Any, source: str, name: str) -> bool:
        copied.append(name)
        return share(self, source, name)

    monkeypatch.setattr(ManifestLastStepWriter, "open", counting_open)
    monkeypatch.setattr(ManifestLastStepWriter, "_share", counting_share)
    frozen = np.random.default_rng(0).standard_normal((1024, 2048), np.float32)  # 8 MiB
    with CheckpointManager(s3_run.url, incremental=True, storage_options=s3_run.options) as mgr:
        mgr.save(1, {"frozen": frozen, "head": np.zeros(4)})
        first = sorted(n for n in uploaded if n.startswith("arrays-"))
        uploaded.clear()
        mgr.save(2, {"frozen": frozen, "head": np.ones(4)})
    shards_of_2 = [k for k in s3_run.step_keys(2) if "/arrays-" in k]
    assert len(first) >= 2 and len(shards_of_2) == len(first)
    # Only the shard holding `head` went up again; the frozen blocks were copied by the server.
    assert len([n for n in uploaded if n.startswith("arrays-")]) == 1
    assert len(copied) == len(first) - 1
    with CheckpointManager(s3_run.url, read_only=True, storage_options=s3_run.options) as ro:
        for key in s3_run.step_keys(1):  # every object of step 1: the copies are independent
            s3_run.delete(key)
        ro.reload()
        restored = ro.restore(2)
        assert np.array_equal(restored["frozen"], frozen) and restored["head"].sum() == 4
